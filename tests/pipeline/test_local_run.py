"""The whole pipeline through the real kfp local runner (SubprocessRunner), as `tlp` runs it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

TLP = [sys.executable, "-m", "tlp.pipelines.cli"]
SMALL = ["--weights", "none", "--alpha", "0.35", "--image-size", "64", "--batch-size", "16"]


def tlp(*args, cwd=None):
    result = subprocess.run([*TLP, *args], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def passing_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    summary_path = out / "summary.json"
    stdout = tlp(
        "run", "--data", "sample:30", *SMALL, "--epochs", "5", "--fine-tune-epochs", "1",
        "--devices", "cpu:2", "--max-gap", "0.5", "--min-accuracy", "0.5",
        "--output-dir", str(out), "--summary-json", str(summary_path),
    )
    return out, json.loads(summary_path.read_text()), stdout


@pytest.mark.slow
def test_every_key_of_a_real_summary_is_declared_for_the_reference_page(passing_run):
    from tlp.pipelines.summary import SUMMARY_FIELDS, undeclared_keys

    _out, summary, _stdout = passing_run
    assert undeclared_keys(summary) == []
    top_level = {field.name for field in SUMMARY_FIELDS if "." not in field.name}
    assert top_level - set(summary) == {"tuning"}  # only a tuned run has it


@pytest.mark.slow
def test_full_run_on_two_logical_cpus_registers_a_version(passing_run):
    out, summary, stdout = passing_run
    assert "tlp run: summary" in stdout and "registered sample version 1" in stdout
    assert summary["replicas"] == 2  # MirroredStrategy over cpu:0 and cpu:1
    assert summary["data"]["spec"] == "sample:30" and summary["weights"] == "none"
    assert sum(sum(c.values()) for c in summary["data"]["counts"].values()) == 60
    assert summary["data"]["split"]["method"] == "content-sha256" and summary["data"]["source_fingerprint"]
    assert summary["data"]["skipped"] == []
    for key in ("train_accuracy", "val_accuracy", "test_accuracy", "gap"):
        assert 0.0 <= summary["metrics"][key] <= 1.0 or key == "gap"
    assert summary["gate"]["passed"] is True and len(summary["gate"]["reasons"]) == 2
    assert summary["registered"]["version"] == "1" and summary["registered"]["name"] == "sample"
    assert summary["registered"]["champion"] is True and "first version" in summary["registered"]["reason"]
    assert summary["registered"]["registry"] == f"sqlite:///{out}/registry.db"
    assert set(summary["steps"]) == {"data-fingerprint", "data-prep", "data-checks", "feature-extraction",
                                     "fine-tuning", "evaluation", "registration"}
    assert summary["checks"]["passed"] and summary["checks"]["champion"] is None
    assert all(seconds > 0 for seconds in summary["steps"].values())
    assert os.path.isfile(os.path.join(summary["model"], "saved_model.pb"))
    assert summary["report"].endswith(".html"), "the summary names a file a browser shows as a page"
    report = open(summary["report"], encoding="utf-8").read()
    assert "<html" in report and "Registered <b>sample</b> version <b>1</b>" in report


def _test_images(summary, directory):
    """Writes two test-split images to files; returns their paths and true labels."""
    import tensorflow as tf

    from tlp.components.lib.dataprep import records

    dataset = os.path.join(summary["run_dir"], "data-prep", "dataset")
    batch, labels = next(iter(records.read_split(dataset, "test", 6)))
    paths = []
    for i in range(len(labels)):
        path = os.path.join(directory, f"test{i}.jpg")
        with open(path, "wb") as handle:
            handle.write(tf.io.encode_jpeg(batch[i]).numpy())
        paths.append(path)
    return paths, labels.numpy()


@pytest.mark.slow
def test_predict_with_registered_version_and_model_dir(passing_run, tmp_path):
    out, summary, _ = passing_run
    paths, labels = _test_images(summary, str(tmp_path))
    registry = summary["registered"]["registry"]
    by_version = tlp("predict", "sample/1", *paths, "--registry", registry, "--json")
    by_dir = tlp("predict", summary["model"], *paths, "--json")
    rows = [json.loads(line) for line in by_version.strip().splitlines()]
    assert [r["probability"] for r in rows] == pytest.approx(
        [json.loads(line)["probability"] for line in by_dir.strip().splitlines()]
    )
    assert all(r["label"] in ("circles", "squares") and 0.5 <= r["probability"] <= 1.0 for r in rows)
    predicted = np.array([["circles", "squares"].index(r["label"]) for r in rows])
    accuracy = float(np.mean(predicted == labels))
    assert accuracy == pytest.approx(summary["metrics"]["test_accuracy"], abs=0.2)


def _printed_outputs(stdout, component):
    """The outputs `tlp component` lists after its closing line: NAME = VALUE or NAME -> PATH."""
    tail = stdout.split(f"tlp component {component}: outputs in", 1)[1].splitlines()[1:]
    pairs = [line.strip().replace(" -> ", " = ", 1).partition(" =") for line in tail if line.strip()]
    return {name: value.strip() for name, _, value in pairs}  # a value may be empty (promote_command)


@pytest.mark.slow
def test_single_component_runs_on_earlier_outputs(passing_run, tmp_path):
    out, summary, _ = passing_run
    run_dir = summary["run_dir"]
    stdout = tlp(
        "component", "evaluation",
        "--input", f"dataset={run_dir}/data-prep/dataset",
        "--input", f"model={summary['model']}",
        "--input", f"feature_history={run_dir}/feature-extraction/history",
        "--input", f"fine_tune_history={run_dir}/fine-tuning/history",
        "--param", "max_gap=1.0", "--param", "min_accuracy=0.0",
        "--output-dir", str(tmp_path),
    )
    printed = _printed_outputs(stdout, "evaluation")
    assert printed["Output"] == "True"
    assert os.path.isfile(printed["report"]) and "metrics" in printed


@pytest.mark.slow
def test_single_data_prep_component(tmp_path):
    stdout = tlp("component", "data-prep", "--param", "data=sample:10", "--param", "image_size=32",
                 "--output-dir", str(tmp_path))
    printed = _printed_outputs(stdout, "data-prep")
    counts = [int(printed[f"{split}_images"]) for split in ("train", "val", "test")]
    assert sum(counts) == 20 and min(counts) >= 1 and printed["skipped"] == "0"
    metadata = json.load(open(os.path.join(printed["dataset"], "metadata.json")))
    assert metadata["image_size"] == 32


@pytest.mark.slow
def test_failed_gate_registers_nothing(tmp_path):
    """Labels carry no signal (random noise images): the default gate must fail."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("left", "right"):
        (tmp_path / "noise" / name).mkdir(parents=True)
        for i in range(40):
            pixels = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "noise" / name / f"{i}.png")
    summary_path = tmp_path / "summary.json"
    stdout = tlp(
        "run", "--data", f"folder:{tmp_path / 'noise'}", *SMALL, "--image-size", "32",
        "--epochs", "3", "--fine-tune-epochs", "0", "--output-dir", str(tmp_path / "out"),
        "--summary-json", str(summary_path),
    )
    summary = json.loads(summary_path.read_text())
    assert summary["gate"]["passed"] is False and summary["registered"] is None
    assert "registered nothing" in stdout
    assert all(("exceeds" in r) or ("below" in r) for r in summary["gate"]["reasons"])
    from tlp.components.lib.registry import open_registry

    client = open_registry(f"sqlite:///{tmp_path / 'out' / 'registry.db'}").client
    assert client.search_model_versions("name = 'noise'") == []


@pytest.mark.slow
def test_a_failing_step_ends_with_its_own_error_sentence(tmp_path):
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(10):
            colour = (i * 20, 0, 0) if name == "a" else (0, 0, i * 20)  # no duplicates across classes
            Image.new("RGB", (20, 20), colour).save(tmp_path / "photos" / name / f"{i}.png")
        for i in range(3):
            (tmp_path / "photos" / name / f"broken{i}.jpg").write_bytes(b"not really a jpeg")
    result = subprocess.run(
        [*TLP, "run", "--data", f"folder:{tmp_path / 'photos'}", *SMALL, "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tlp: error: step data-prep failed: 6 of 26 image files")
    assert "--max-skipped-fraction 0.1" in last


@pytest.mark.slow
def test_local_run_registers_into_vertex_ai_and_predicts_from_it(passing_run, standin, tmp_path):
    """A local run's registration step, through kfp.local, into the Vertex AI Model Registry
    (the stand-in); then `tlp predict` fetches the champion back from there."""
    out, summary, _ = passing_run
    run_dir = summary["run_dir"]
    standin.add_bucket("tlp-staging")
    registry = f"vertex://tlp-test/us-central1/shapes?api_endpoint={standin.url}&staging_bucket=gs://tlp-staging"
    stdout = tlp(
        "component", "registration",
        "--input", f"model={summary['model']}", "--input", f"dataset={run_dir}/data-prep/dataset",
        "--input", f"metrics={run_dir}/evaluation/metrics", "--input", f"report={run_dir}/evaluation/report",
        "--param", f"registry={registry}", "--output-dir", str(tmp_path),
    )
    printed = _printed_outputs(stdout, "registration")
    assert printed["name"] == "shapes" and printed["version"] == "1" and printed["champion"] == "True"
    [upload] = standin.find("POST", r"/models:upload$")
    assert upload.body["model"]["labels"]["test_accuracy"] == f"{summary['metrics']['test_accuracy']:.4f}".replace(
        ".", "_")

    paths, _labels = _test_images(summary, str(tmp_path))
    from_vertex = tlp("predict", "shapes@champion", *paths, "--registry", registry, "--json")
    by_dir = tlp("predict", summary["model"], *paths, "--json")
    assert [json.loads(line)["probability"] for line in from_vertex.strip().splitlines()] == pytest.approx(
        [json.loads(line)["probability"] for line in by_dir.strip().splitlines()])
