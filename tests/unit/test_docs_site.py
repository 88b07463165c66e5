"""The documentation site's generated pages and the README as its front door (the site itself is
built in strict mode by `make docs`, which `make test` runs: a broken link fails it)."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    return hooks


def test_the_readme_is_a_front_door_whose_links_lead_somewhere():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    targets = re.findall(r"\]\(((?:docs/|CHANGELOG|LICENSE)[^)#]*)", readme)
    assert len(targets) >= 20
    for target in targets:
        assert (ROOT / target).is_file(), target


def test_every_docs_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").rglob("*.md"):
        assert str(page.relative_to(ROOT / "docs")) in nav, page


SAMPLE_RESULTS = {
    "benchmark": "tuning", "title": "11. Tuning", "mode": "quick", "date": "2026-12-07T20:03:04+00:00",
    "started_at": "2026-12-07T20:01:02+00:00", "seconds": 122.5,
    "command": "python -m bench.run --quick --publish",
    "reproduce": "python -m bench.run --quick --only tuning --publish",
    "code": "1b1f0bf1234",
    "host": {"cpus": 2, "machine": "x86_64", "platform": "Linux-6.1", "python": "3.11.7",
             "versions": {"tensorflow": "2.21.0"},
             "load_average_at_start": [4.5, 3.0, 2.0], "load_average_at_end": [6.25, 4.0, 2.5],
             "others_cpu_share": [0.31, 0.84]},
    "rows": [
        {"measurement": "tuned / one run", "value": 2.9, "unit": "x", "target": "<= 2.6", "pass": False},
        {"measurement": "one run", "value": 62.4, "unit": "s", "target": None, "pass": None},
    ],
    "notes": ["Four separate runs would cost about 4x."],
}


def test_the_benchmarks_page_gives_every_figure_its_date_machine_and_command(tmp_path):
    (tmp_path / "bench-tuning.json").write_text(json.dumps(SAMPLE_RESULTS))
    page = _hooks().benchmarks_page(str(tmp_path), {"memory": "4. Memory", "tuning": "11. Tuning"})
    section = page[page.index("## 11. Tuning"):]
    assert "Measured 2026-12-07T20:03:04+00:00 (quick mode, 122.5 s) on 2 CPUs (x86_64)" in section
    assert "load average 4.5 at start, 6.25 at end; other processes used 31%-84% of the CPUs" in section
    assert "Command: `python -m bench.run --quick --publish`" in section
    assert "`python -m bench.run --quick --only tuning --publish`" in section and "`1b1f0bf1234`" in section
    assert "| tuned / one run | 2.9 x | <= 2.6 | **no** |" in section and "| one run | 62.4 s | — | — |" in section
    assert "- Four separate runs would cost about 4x." in section
    (tmp_path / "bench-tuning.json").write_text(json.dumps({**SAMPLE_RESULTS, "seconds": 0.0}))
    shared = _hooks().benchmarks_page(str(tmp_path), {"tuning": "11. Tuning"})
    assert "(quick mode, its runs made by an earlier benchmark of the same command)" in shared


def test_a_benchmark_without_a_committed_result_is_named_with_the_command_that_makes_one(tmp_path):
    (tmp_path / "bench-tuning.json").write_text(json.dumps(SAMPLE_RESULTS))
    page = _hooks().benchmarks_page(str(tmp_path), {"memory": "4. Memory", "tuning": "11. Tuning"})
    assert page.startswith("No committed result yet for: `memory`")
    memory = page[page.index("## 4. Memory"):page.index("## 11. Tuning")]
    assert "`python -m bench.run --only memory --publish`" in memory and "docs/data/bench-memory.json" in memory
    everything_missing = _hooks().benchmarks_page(str(tmp_path / "none"))
    assert all(f"--only {name} --publish" in everything_missing for name in _hooks().declared_benchmarks())


def test_the_benchmarks_page_reads_what_bench_run_publishes(tmp_path):
    """The file bench.run --publish writes is the file the page reads: one real Report through both."""
    from bench import run

    report = run.Report("tuning", "11. Tuning", seconds=12.0)
    report.check("tuned / one run", 2.4, "x", "<= 2.6", True)
    report.notes.append("a note")
    document = {"mode": "full", "command": "python -m bench.run --only tuning --publish", "code": "abc",
                "host": run.host_info(), "model": {}}
    window = {"started_at": "2026-12-07T22:00:00+00:00", "ended_at": "2026-12-07T22:00:12+00:00",
              "load_at_start": [1.0, 1.0, 1.0], "load_at_end": [2.0, 1.0, 1.0], "children": [],
              "reproduce": run.reproduce_command("tuning", "full", "calibrated", None)}
    path = run.publish(run.published_entry(report, document, window), tmp_path)
    assert path == str(tmp_path / "bench-tuning.json")
    page = _hooks().benchmarks_page(str(tmp_path), {"tuning": "11. Tuning"})
    assert "| tuned / one run | 2.4 x | <= 2.6 | yes |" in page and "full mode, 12 s" in page
    assert "this benchmark alone: `python -m bench.run --only tuning --publish`" in page


def test_a_quick_run_does_not_replace_a_published_full_size_result(tmp_path):
    from bench import run

    full = {**SAMPLE_RESULTS, "mode": "full"}
    assert run.publish(full, tmp_path) == str(tmp_path / "bench-tuning.json")
    assert run.publish({**SAMPLE_RESULTS, "date": "later"}, tmp_path) is None
    assert json.loads((tmp_path / "bench-tuning.json").read_text())["mode"] == "full"
    assert run.publish({**full, "date": "later"}, tmp_path)  # a full run replaces it


def test_the_changelog_page_is_the_changelog():
    assert _hooks().changelog() == (ROOT / "CHANGELOG.md").read_text()
    assert "<!-- generated:changelog -->" in (ROOT / "docs" / "changelog.md").read_text()


def test_the_license_is_the_apache_license_pyproject_names():
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_the_summary_reference_lists_every_declared_key_and_a_stray_key_is_found():
    from tlp.pipelines.summary import SUMMARY_FIELDS, undeclared_keys

    page = _hooks().summary_reference()
    assert all(f"| `{field.name}` | {field.type} |" in page for field in SUMMARY_FIELDS)
    assert "<!-- generated:summary -->" in (ROOT / "docs" / "reference" / "summary.md").read_text()
    summary = {"data": {"spec": "sample:2", "shiny": 1}, "metrics": {"val_accuracy": 0.5, "val_f1": 0.4},
               "steps": {"data-prep": 1.0}, "extra": None}
    assert undeclared_keys(summary) == ["data.shiny", "metrics.val_f1", "extra"]


def _scale_results(cpu: dict[str, tuple[float, float]]) -> dict:
    """A scale results file as bench.run --publish writes it, at 2,000 and 20,000 photos."""
    sizes = []
    for index, photos in enumerate((2000, 20000)):
        steps = {step: {"seconds": 1.0, "cpu_seconds": pair[index], "peak_mb": 100.0} for step, pair in cpu.items()}
        sizes.append({"photos": photos, "wall_seconds": 100.0, "steps": steps})
    return {**SAMPLE_RESULTS, "benchmark": "scale", "reproduce": "python -m bench.run --only scale --publish",
            "data": {"sizes": sizes}}


def test_the_ten_million_plan_divides_the_measured_per_photo_cost_over_the_plans_machines():
    hooks = _hooks()
    published = json.loads((ROOT / "docs" / "data" / "published.json").read_text())
    scale = _scale_results({"data-fingerprint": (0.2, 0.2), "data-prep": (20.0, 110.0), "data-checks": (6.0, 6.0)})
    page = hooks.ten_million_plan(scale, published, parallel_prep={})
    # data prep: 10 CPU s fixed + 5 CPU ms per photo, at 10M photos over the plan's 200 Dataflow vCPUs
    assert published["plan"]["dataflow_vcpus"] == 200
    assert f"| data-prep | {hooks._hours((10 + 0.005 * 10_000_000) / 200)} |" in page
    assert "5.000 CPU ms per photo + 10 CPU s fixed" in page
    assert "13.9 vCPU-hours x 0.056 USD per vCPU-hour (`dataflow_vcpu_hour`) = about 0.78 USD" in page
    # fine-tuning: the default 10 epochs of 8M photos at the published 8-GPU training throughput, plus validation
    fit, infer = published["figures"]["gpu_training_8x"]["value"], published["figures"]["gpu_inference_1x"]["value"] * 8
    assert f"| fine-tuning | {hooks._hours(10 * (8_000_000 / fit + 1_000_000 / infer))} |" in page
    assert "2026-12-07T20:03:04+00:00" in page and "`python -m bench.run --only scale --publish`" in page
    for figure in published["figures"].values():  # every figure names its source, link and date
        assert figure["link"] in page and figure["source_date"].split(" ")[0] in page
    shares = [int(cell) for cell in re.findall(r"\| (\d+)% \|", page)]
    assert len(shares) == 7 and 98 <= sum(shares) <= 102


def test_data_prep_at_ten_million_is_priced_at_the_default_image_size_when_measured():
    """The scale runs prepare 64 px images; benchmark parallel_prep measures data prep at the
    default size, which costs about 3x more per photo: the plan takes that one when committed."""
    hooks = _hooks()
    published = json.loads((ROOT / "docs" / "data" / "published.json").read_text())
    scale = _scale_results({"data-fingerprint": (0.2, 0.2), "data-prep": (20.0, 110.0), "data-checks": (6.0, 6.0)})
    parallel_prep = {"mode": "full", "date": "2026-12-07T23:00:00+00:00", "rows": [
        {"measurement": "photos: 5,000 photos, 1.2 MP mean, up to 5.0 MP, 300 KB mean", "value": 1501.3},
        {"measurement": "CPU seconds, one / all (workers included)", "value": "63.3 / 75.0"}]}
    page = hooks.ten_million_plan(scale, published, parallel_prep=parallel_prep)
    # 10 CPU s fixed (the scale fit) + 15 CPU ms per photo (75 s / 5,000 photos with every core)
    assert f"| data-prep | {hooks._hours((10 + 0.015 * 10_000_000) / 200)} |" in page
    assert "15.0 CPU ms per photo at the default image size" in page and "5.0 ms + 10 CPU s fixed" in page
    quick = {**parallel_prep, "mode": "quick"}  # a smoke test's figure is not used
    assert "5.000 CPU ms per photo" in hooks.ten_million_plan(scale, published, parallel_prep=quick)


def test_without_a_scale_results_file_the_plan_says_so_and_shows_only_the_published_rows():
    page = _hooks().ten_million_plan({}, json.loads((ROOT / "docs" / "data" / "published.json").read_text()))
    assert "No scale results file is committed yet" in page and "--only scale" in page
    assert "| data-prep |" not in page and "| fine-tuning |" in page


def _site_copy(tmp_path: Path) -> Path:
    """The site's sources (and bench/, whose declarations the hook reads) in a folder of their own."""
    copy = tmp_path / "repo"
    for name in ("docs", "bench"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__", "results.json"))
    for name in ("mkdocs.yml", "CHANGELOG.md"):
        shutil.copy(ROOT / name, copy / name)
    for committed in (copy / "docs" / "data").glob("bench-*.json"):
        committed.unlink()
    return copy


def _strict_build(copy: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", "site"],
                          cwd=copy, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return (copy / "site" / "benchmarks" / "index.html").read_text()


@pytest.mark.slow
def test_the_strict_build_passes_with_and_without_results_files(tmp_path):
    copy = _site_copy(tmp_path)
    page = _strict_build(copy)
    assert "No committed result yet for" in page and "--only tuning --publish" in page
    costs = (copy / "site" / "reference" / "costs" / "index.html").read_text()
    assert "No scale results file is committed yet" in costs
    (copy / "docs" / "data" / "bench-tuning.json").write_text(json.dumps({**SAMPLE_RESULTS, "mode": "full"}))
    scale = _scale_results({"data-fingerprint": (0.2, 0.2), "data-prep": (20.0, 110.0), "data-checks": (6.0, 6.0)})
    (copy / "docs" / "data" / "bench-scale.json").write_text(json.dumps(scale))
    page = _strict_build(copy)
    assert "tuned / one run" in page and "2026-12-07T20:03:04+00:00" in page
    costs = (copy / "site" / "reference" / "costs" / "index.html").read_text()
    assert "No scale results file is committed yet" not in costs and "CPU ms per photo" in costs


def test_the_scale_benchmarks_published_file_feeds_the_plan(tmp_path):
    """bench.run's own scale rows (as _scale_rows makes them from two measured sizes) published and
    read back by the plan: per step seconds, CPU seconds, peak MB and per photo, no process started."""
    from bench import run

    def measured(photos: int, prep_cpu: float) -> dict:
        steps = {step: {"peak_rss_mb": 500.0, "cpu_seconds": 5.0} for step in run.PIPELINE_STEPS}
        steps["data-prep"] = {"peak_rss_mb": 700.0, "cpu_seconds": prep_cpu}
        steps["orchestrator"] = {"peak_rss_mb": 280.0, "cpu_seconds": 5.0}
        return {"wall_seconds": 100.0 + photos / 100, "others_cpu_share": 0.5, "steps": steps,
                "summary_steps": {step: 10.0 + photos / 1000 for step in run.PIPELINE_STEPS}}

    report = run.Report("scale", "12. Scale")
    run._scale_rows(report, {2000: measured(2000, 20.0), 20000: measured(20000, 110.0)})
    sizes = report.published["sizes"]
    assert [size["photos"] for size in sizes] == [2000, 20000]
    assert sizes[1]["steps"]["data-prep"] == {"seconds": 30.0, "cpu_seconds": 110.0, "peak_mb": 700.0,
                                              "seconds_per_photo": 0.0015, "cpu_seconds_per_photo": 0.0055}
    document = {"mode": "full", "command": "python -m bench.run --only scale --publish", "code": None,
                "host": run.host_info(), "model": {}}
    window = {"started_at": "s", "ended_at": "2026-12-08T01:00:00+00:00", "load_at_start": [1.0], "load_at_end": [1.0],
              "children": [], "reproduce": run.reproduce_command("scale", "full", "calibrated", [2000, 20000])}
    run.publish(run.published_entry(report, document, window), tmp_path)
    hooks = _hooks()
    page = hooks.ten_million_plan(hooks.load_results("scale", str(tmp_path)),
                                  json.loads((ROOT / "docs" / "data" / "published.json").read_text()), parallel_prep={})
    assert "`python -m bench.run --only scale --scale-sizes 2000 20000 --publish`" in page
    assert f"| data-prep | {hooks._hours((10 + 0.005 * 10_000_000) / 200)} |" in page
    assert "| data-fingerprint |" in page and "| data-checks |" in page


def test_a_results_file_written_without_publish_is_published_afterwards(tmp_path):
    """A long scale run started without --publish (bench/results.json) is published with --publish-from."""
    from bench import run

    def measured(photos: int, prep_cpu: float) -> dict:
        steps = {step: {"peak_rss_mb": 500.0, "cpu_seconds": 5.0} for step in run.PIPELINE_STEPS}
        steps["data-prep"]["cpu_seconds"] = prep_cpu
        return {"wall_seconds": 100.0, "others_cpu_share": 0.5, "steps": steps,
                "summary_steps": {step: 10.0 for step in run.PIPELINE_STEPS}}

    report = run.Report("scale", "12. Scale", seconds=3600.0)
    runs = {2000: measured(2000, 20.0), 20000: measured(20000, 110.0)}
    run._scale_rows(report, runs)
    bench = {**report.to_json(), "details": {"sizes": [2000, 20000], "runs": runs}}
    document = {"mode": "full", "command": "python -m bench.run --only scale --scale-sizes 2000 20000",
                "started_at": "2026-12-08T00:01:02+00:00", "host": run.host_info(), "config": {"weights": "calibrated"},
                "model": {}, "benchmarks": {"scale": bench, "serving": {"status": "error", "error": "no image"}},
                "load_average_at_end": [3.0, 2.0, 1.0], "children": []}
    results = tmp_path / "results.json"
    results.write_text(json.dumps(document))
    assert run.main(["--publish-from", str(results), "--publish", str(tmp_path / "data")]) == 0
    assert not (tmp_path / "data" / "bench-serving.json").exists()
    published = json.loads((tmp_path / "data" / "bench-scale.json").read_text())
    assert published["date"] == "2026-12-08T00:01:02+00:00" and published["rows"] and published["data"]["sizes"]
    assert published["reproduce"] == "python -m bench.run --only scale --scale-sizes 2000 20000 --publish"
    hooks = _hooks()
    plan = hooks.ten_million_plan(published, json.loads((ROOT / "docs" / "data" / "published.json").read_text()),
                                  parallel_prep={})
    assert f"| data-prep | {hooks._hours((10 + 0.005 * 10_000_000) / 200)} |" in plan
