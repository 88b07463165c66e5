"""Installs tlp's run-time dependencies into an image at the versions of constraints.txt (the one
lock, shared with .venv), leaving out what no container step uses, and checks the result.

    python lock_install.py deps                 # everything tlp needs, minus OMITTED, in one layer
    python lock_install.py tensorflow cpu       # tensorflow-cpu at the locked tensorflow version
    python lock_install.py tensorflow gpu       # tensorflow itself (the training image)
    python lock_install.py check                # pip check: only OMITTED may be reported missing
    python lock_install.py serving              # the serving image: [tool.tlp] serving-dependencies only,
                                                # TensorFlow as tensorflow-cpu, no bytecode
    python lock_install.py check serving        # pip check there: tlp's other dependencies are left out

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
# Also left out of the serving image, each with why: declared by a serving package, imported by no
# code path of tlp-serve (no bytecode of theirs is loaded by a server's start-up and requests).
# What only they need goes with them.
SERVING_OMITTED = {
    "aiohttp": "KServe declares it, but its model server never imports it, and google-auth only for async "
    "credentials; with multidict, yarl, frozenlist and the rest, 10 MB",
    "grpcio-tools": "KServe declares it (code generation); grpcio imports it only for grpc.protos() at run time, "
    "which serving never calls (8 MB)",
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


def _parsed(requirement: str) -> tuple[str, frozenset[str]]:
    """A requirement's distribution name and the extras it asks for."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", requirement)
    return canonical(match.group(1)), frozenset(e.strip() for e in (match.group(2) or "").split(",") if e.strip())


def serving_dependencies() -> list[str]:
    """``[tool.tlp] serving-dependencies`` of pyproject.toml: what ``tlp-serve`` imports."""
    block = re.search(r"^serving-dependencies\s*=\s*\[(.*?)^\]", PYPROJECT.read_text(), re.S | re.M)
    if block is None:
        sys.exit(f"no [tool.tlp] serving-dependencies list found in {PYPROJECT}")
    return re.findall(r"\"([^\"]+)\"", block.group(1))


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def resolve(wanted: list[str], left_out: frozenset[str] = frozenset()) -> dict[str, str]:
    """Name -> version of every distribution ``wanted`` needs, as pip resolves them against the lock;
    without ``left_out`` and what only they need."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
            "--constraint", str(LOCK), *wanted)
        resolved = [item["metadata"] for item in json.loads(report.read_text())["install"]]
    if not left_out:
        return {canonical(item["name"]): item["version"] for item in resolved}
    return needed(resolved, wanted, left_out)


def needed(resolved: list[dict], wanted: list[str], left_out: frozenset[str] = frozenset()) -> dict[str, str]:
    """Of ``resolved`` (pip's report: each distribution's name, version and requires_dist), the
    name -> version of what ``wanted`` needs: each requirement followed (an extra's only when it was
    asked for, as in uvicorn[standard]), but not into ``left_out``."""
    versions = {canonical(item["name"]): item["version"] for item in resolved}
    requires = {canonical(item["name"]): item.get("requires_dist", []) for item in resolved}
    kept: set[str] = set()
    visited: set[tuple[str, frozenset[str]]] = set()
    stack = [_parsed(r) for r in wanted]
    while stack:
        name, extras = stack.pop()
        if name in left_out or name not in versions or (name, extras) in visited:
            continue
        visited.add((name, extras))
        kept.add(name)
        for requirement in requires[name]:
            # An extra's requirement names it in its marker (`extra == "a" or extra == "b"`): kept
            # when one of the extras named was asked for. Other markers are not evaluated: what they
            # leave out pip did not resolve, so it is not in ``versions`` either.
            named = re.findall(r"extra\s*==\s*['\"]([^'\"]+)['\"]", requirement)
            if not named or extras.intersection(named):
                stack.append(_parsed(requirement))
    return {name: version for name, version in versions.items() if name in kept}


def install_deps(serving: bool = False) -> None:
    """Every locked distribution tlp needs (``serving``: only those of ``serving-dependencies``,
    with tensorflow-cpu and without bytecode: ``check serving`` compiles what serving imports)."""
    pins = locked()
    if serving:
        resolved = resolve(serving_dependencies(), frozenset(SERVING_OMITTED))
    else:
        resolved = resolve([r for r in declared_dependencies() if requirement_name(r) not in OMITTED] + list(ADDED))
    unlocked = sorted(f"{name}=={version}" for name, version in resolved.items()
                      if name not in PROVIDED_BY_BASE and pins.get(name) != version)
    if unlocked:
        sys.exit(f"resolved but not in constraints.txt: {', '.join(unlocked)}; run `make lock`.")
    chosen = sorted(f"{name}=={version}" for name, version in resolved.items()
                    if name not in OMITTED and name not in PROVIDED_BY_BASE)
    left_out = sorted(OMITTED) + (sorted(SERVING_OMITTED) if serving else [])
    print(f"installing {len(chosen)} locked distributions; left out: {', '.join(left_out)}")
    if serving:
        chosen.append(f"tensorflow-cpu=={pins['tensorflow']}")
        pip("install", "--no-cache-dir", "--no-deps", "--no-compile", *chosen)
    else:
        pip("install", "--no-cache-dir", "--no-deps", *chosen)


def install_tensorflow(variant: str) -> None:
    version = locked()["tensorflow"]
    name = {"cpu": "tensorflow-cpu", "gpu": "tensorflow"}[variant]
    # Its dependencies are the same as tensorflow's and are already in the deps layer.
    pip("install", "--no-cache-dir", "--no-deps", f"{name}=={version}")


_MISSING = re.compile(r"^(\S+) (\S+) requires (\S+), which is not installed\.$")


def check(serving: bool = False) -> None:
    """pip check, accepting only the distributions OMITTED on purpose (``serving``: also every
    dependency of tlp that serving does not import); anything else fails."""
    serving_names = {requirement_name(r) for r in serving_dependencies()} if serving else set()
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
        left_for_serving = serving and match and (
            missing in SERVING_OMITTED or (canonical(match.group(1)) == "tlp" and missing not in serving_names))
        if left_for_serving:
            accepted.append(line)
        elif missing not in OMITTED:
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
    elif argv == ["serving"]:
        install_deps(serving=True)
    elif argv == ["check", "serving"]:
        check(serving=True)
    elif len(argv) == 1 and argv[0] in commands:
        commands[argv[0]]()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
