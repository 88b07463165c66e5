"""The documentation site's generated pages and the README as its front door (the site itself is
built in strict mode by `make docs`, which `make test` runs: a broken link fails it)."""

import importlib.util
import json
import re
from pathlib import Path

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


def test_the_benchmarks_page_gives_every_figure_its_date_machine_and_command(tmp_path):
    results = {
        "mode": "quick", "command": "python -m bench.run --quick --only tuning",
        "started_at": "2026-12-07T20:01:02+00:00",
        "host": {"cpus": 2, "machine": "x86_64", "platform": "Linux-6.1", "python": "3.11.7",
                 "load_average_at_start": [4.5, 3.0, 2.0], "versions": {"tensorflow": "2.21.0"}},
        "summary": {"targets": 2, "met": 1, "missed": ["tuning: tuned / one run"], "errors": []},
        "benchmarks": {"tuning": {"title": "11. Tuning", "status": "ok", "rows": [
            {"label": "tuned / one run", "value": 2.9, "unit": "x", "target": "<= 2.6", "passed": False},
            {"label": "one run", "value": 62.4, "unit": "s", "target": None, "passed": None},
        ]}},
    }
    path = tmp_path / "bench-2026-12-07-quick.json"
    path.write_text(json.dumps(results))
    page = _hooks().benchmarks_page([str(path)])
    section = page[page.index("### 11. Tuning"):]
    assert "2026-12-07T20:01:02+00:00" in section and "2 CPUs" in section
    assert "`python -m bench.run --quick --only tuning`" in section
    assert "| tuned / one run | 2.9 x | <= 2.6 | **no** |" in section and "| one run | 62.4 s | — | — |" in section
    assert "load average 4.5" in page and "Targets met: 1 of 2" in page


def test_without_a_results_file_the_page_says_how_to_make_one():
    assert "make bench" in _hooks().benchmarks_page([])


def test_the_changelog_page_is_the_changelog():
    assert _hooks().changelog() == (ROOT / "CHANGELOG.md").read_text()
    assert "<!-- generated:changelog -->" in (ROOT / "docs" / "changelog.md").read_text()


def test_the_license_is_the_apache_license_pyproject_names():
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
