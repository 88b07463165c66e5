"""The entry points a user types, run as typed: every `tlp` command's help through the console
script, `tlp options` against the docs' generated reference, and every Makefile target the README
names (`make -n`: the commands it would run, without running the slow ones)."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TLP = os.path.join(os.path.dirname(sys.executable), "tlp")

COMMANDS = [
    ["run"], ["component"], ["predict"], ["compile"], ["submit"], ["serve"], ["deploy"], ["options"],
    ["drift"], ["schedule", "create"], ["schedule", "list"], ["schedule", "pause"], ["schedule", "resume"],
    ["schedule", "delete"], ["models", "list"], ["models", "show"], ["models", "promote"], ["models", "rollback"],
]


def _tlp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TLP, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_every_command_answers_help_through_the_console_script():
    # One process for all: argparse's --help exits, so each runs through main() in a loop.
    code = (
        "import sys\nfrom tlp.pipelines.cli import main\n"
        f"for argv in {COMMANDS!r}:\n"
        "    try:\n        main([*argv, '--help'])\n    except SystemExit as done:\n"
        "        assert done.code == 0, (argv, done.code)\n    print('ok', ' '.join(argv))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [line for line in done.stdout.splitlines() if line.startswith("ok ")] == [
        "ok " + " ".join(argv) for argv in COMMANDS]
    assert "usage: tlp drift" in done.stdout and "usage: tlp models rollback" in done.stdout
    script = _tlp("--help")
    assert script.returncode == 0 and all(command in script.stdout for command in ("run", "drift", "models"))


def test_tlp_serve_script_takes_the_same_arguments_as_tlp_serve_and_imports_no_pipeline_code():
    """``tlp-serve`` (the serving image's entry point) is ``tlp serve`` alone: the same help, and
    none of kfp, MLflow or the cloud SDKs loaded to serve (the slim image has none of them)."""
    script = subprocess.run([os.path.join(os.path.dirname(sys.executable), "tlp-serve"), "--help"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert script.returncode == 0, script.stderr
    full = _tlp("serve", "--help")
    assert script.stdout.split("positional arguments:")[1] == full.stdout.split("positional arguments:")[1]
    assert "--drift-every" in script.stdout and "--drift-window" in script.stdout
    probe = ("import sys\nfrom tlp.pipelines import serve\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'kfp', 'mlflow', 'apache_beam', 'docker', "
             "'tensorflow_datasets', 'google_cloud_pipeline_components', 'sklearn'}))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


def test_tlp_options_markdown_is_what_the_docs_reference_shows():
    import importlib.util

    shown = _tlp("options", "run", "--markdown")
    assert shown.returncode == 0, shown.stderr
    spec = importlib.util.spec_from_file_location("docs_hooks", os.path.join(ROOT, "docs", "hooks.py"))
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    assert shown.stdout.strip() in hooks.command_reference()
    listed = _tlp("options", "submit")
    assert listed.returncode == 0 and "--pipeline-root" in listed.stdout and "--data-prep-runner" in listed.stdout


MAKE_TARGETS = {
    "help": None, "install": None, "run": "tlp run", "test": "pytest", "test-fast": "not slow", "lint": "mypy",
    "compile": "tlp compile --output pipeline.yaml", "lock": "pip freeze", "clean": "rm -rf", "images": "docker build",
    "standin-base": "standin-base.sh", "images-offline": "images", "push": "docker push", "bench": "bench.run",
    "docs": "mkdocs build --strict", "docs-serve": "mkdocs serve", "install-cuda": "tensorflow[and-cuda]==2.21.0",
}


@pytest.mark.parametrize("target", sorted(MAKE_TARGETS))
def test_every_makefile_target_the_readme_names(target):
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert f"make {target}" in readme or f"`{target}`" in readme, f"the README does not name make {target}"
    if target == "help":  # runs for real: it only reads the Makefile
        done = subprocess.run(["make", "help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert done.returncode == 0 and all(f"  {name}" in done.stdout for name in MAKE_TARGETS if name != "install")
        return
    done = subprocess.run(["make", "-n", target], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    if MAKE_TARGETS[target]:
        assert MAKE_TARGETS[target] in done.stdout, done.stdout


def _readme_examples() -> list[str]:
    """The `tlp ...` lines of the code blocks of the README and every docs page (continuations
    joined), without usage sketches ([optional], a|b, ...)."""
    import glob

    pages = [os.path.join(ROOT, "README.md"), *glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)]
    text = "\n".join(open(page, encoding="utf-8").read() for page in pages)
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            match = re.match(r"^\s*(?:\.venv/bin/)?tlp (.*)$", line.replace("$SA", "runner@p.iam.gserviceaccount.com"))
            if match:
                command = re.split(r"\s+#", match.group(1))[0].strip().removesuffix("&").strip()
                if not any(mark in command for mark in ("[", "|", "...", "…")):
                    found.append(command)
    return found


def test_the_readmes_examples_are_commands_tlp_takes():
    import shlex

    from tlp.components.lib.settings import PIPELINE_GROUPS
    from tlp.pipelines import cli

    examples = _readme_examples()
    assert len(examples) >= 15, examples
    for example in examples:
        try:
            args = cli.build_parser().parse_args(shlex.split(example))
        except SystemExit:
            pytest.fail(f"the docs' `tlp {example}` is refused by tlp's parser")
        if args.command in ("run", "submit") or getattr(args, "action", "") == "create":
            values = vars(args)
            if all(opt.name in values for opt in cli.iter_options(PIPELINE_GROUPS)):
                cli._settings(args)  # every value passes its declared checks (ConfigError otherwise)
