"""Installs tlp's run-time dependencies into an image at the versions of constraints.txt (the one
lock, shared with .venv), leaving out what no container step uses, and checks the result.

    python lock_install.py deps                 # everything tlp needs, minus OMITTED, in one layer
    python lock_install.py tensorflow cpu       # tensorflow-cpu at the locked tensorflow version
    python lock_install.py tensorflow gpu       # tensorflow itself (the training image)
    python lock_install.py check                # pip check: only OMITTED may be reported missing

Run by the Dockerfiles with the base image's Python (standard library only). The `deps` layer is
the same instruction with the same inputs in every Dockerfile, so Docker builds it once when the
images share a base. pip resolves tlp's dependencies against the lock (`--dry-run --report`), and
every resolved distribution must be pinned there: an image never installs an unlocked version.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# Beside this file in an image (/opt/tlp-lock), one folder up in the repository.
HERE = Path(__file__).resolve().parent
FILES = HERE if (HERE / "constraints.txt").is_file() else HERE.parent
LOCK = FILES / "constraints.txt"
PYPROJECT = FILES / "pyproject.toml"

# Left out of every image, each with why. `pip check` reports exactly these as missing, and
# `check` accepts nothing else: the gap between the declared dependencies and the image is
# written down here, not hidden.
OMITTED = {
    "tensorflow": "each image adds its own build of the locked version in the next layer: "
    "tensorflow-cpu (same modules, no CUDA kernels) in the CPU images, tensorflow in the training image",
    "mlflow": "the registry needs only MLflow's client and SQL store (mlflow-skinny + sqlalchemy + "
    "alembic, same release); full mlflow adds the tracking server and UI (Flask, gunicorn, graphene, "
    "pandas, pyarrow, scipy pins) that no step runs",
    "libclang": "a tensorflow dependency for building custom ops, never imported at run time (64 MB)",
    "pyarrow": "tensorflow-datasets imports it lazily, only for Parquet-backed datasets; the "
    "pipeline reads TFRecords (160 MB)",
}
# What stands in for mlflow: its client, and the SQL store behind sqlite:/// registries.
ADDED = ("mlflow-skinny", "sqlalchemy", "alembic")
# pip's own tooling comes with the base image (pip freeze, hence the lock, leaves it out). Not
# setuptools: grpcio-tools (kserve's) needs setuptools>=77 at run time, newer than some bases'
# (Debian bookworm's is 66), so the lock pins it and the image installs it.
PROVIDED_BY_BASE = {"pip", "wheel"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return canonical(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1))


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, _, version = line.partition("==")
            pins[canonical(name)] = version.strip()
    return pins


def declared_dependencies() -> list[str]:
    """``[project] dependencies`` of pyproject.toml (tomllib is not in every base's Python)."""
    text = PYPROJECT.read_text()
    block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", text, re.S | re.M)
    if block is None:
        sys.exit(f"no [project] dependencies list found in {PYPROJECT}")
    lines = [line.split("#", 1)[0] for line in block.group(1).splitlines()]
    return re.findall(r"\"([^\"]+)\"", "\n".join(lines))


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def resolve() -> dict[str, str]:
    """Name -> version of every distribution tlp needs, as pip resolves them against the lock."""
    wanted = [r for r in declared_dependencies() if requirement_name(r) not in OMITTED] + list(ADDED)
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
            "--constraint", str(LOCK), *wanted)
        installs = json.loads(report.read_text())["install"]
    return {canonical(item["metadata"]["name"]): item["metadata"]["version"] for item in installs}


def install_deps() -> None:
    pins = locked()
    resolved = resolve()
    unlocked = sorted(f"{name}=={version}" for name, version in resolved.items()
                      if name not in PROVIDED_BY_BASE and pins.get(name) != version)
    if unlocked:
        sys.exit(f"resolved but not in constraints.txt: {', '.join(unlocked)}; run `make lock`.")
    chosen = sorted(f"{name}=={version}" for name, version in resolved.items()
                    if name not in OMITTED and name not in PROVIDED_BY_BASE)
    print(f"installing {len(chosen)} locked distributions; left out: {', '.join(sorted(OMITTED))}")
    pip("install", "--no-cache-dir", "--no-deps", *chosen)


def install_tensorflow(variant: str) -> None:
    version = locked()["tensorflow"]
    name = {"cpu": "tensorflow-cpu", "gpu": "tensorflow"}[variant]
    # Its dependencies are the same as tensorflow's and are already in the deps layer.
    pip("install", "--no-cache-dir", "--no-deps", f"{name}=={version}")


_MISSING = re.compile(r"^(\S+) (\S+) requires (\S+), which is not installed\.$")


def check() -> None:
    """pip check, accepting only the distributions OMITTED on purpose; anything else fails."""
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    installed = {
        canonical(line.split("==")[0]): line.split("==")[1]
        for line in subprocess.run([sys.executable, "-m", "pip", "freeze", "--all"],
                                   capture_output=True, text=True, check=True).stdout.splitlines()
        if "==" in line
    }
    problems, accepted = [], []
    for line in result.stdout.splitlines():
        match = _MISSING.match(line.strip())
        missing = canonical(match.group(3)) if match else None
        if missing not in OMITTED:
            problems.append(line)
        elif missing == "tensorflow" and "tensorflow-cpu" not in installed:
            problems.append(f"{line} (and tensorflow-cpu is not installed either)")
        else:
            accepted.append(line)
    tensorflow = installed.get("tensorflow") or installed.get("tensorflow-cpu")
    if tensorflow != locked()["tensorflow"]:
        problems.append(f"tensorflow {tensorflow} installed, the lock says {locked()['tensorflow']}")
    for line in accepted:
        print(f"pip check, left out on purpose: {line}")
    if problems:
        sys.exit("pip check failed:\n  " + "\n  ".join(problems))
    print(f"pip check: consistent apart from {len(accepted)} line(s) left out on purpose")


def main(argv: list[str]) -> None:
    commands = {"deps": install_deps, "check": check}
    if len(argv) == 2 and argv[0] == "tensorflow" and argv[1] in ("cpu", "gpu"):
        install_tensorflow(argv[1])
    elif len(argv) == 1 and argv[0] in commands:
        commands[argv[0]]()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
