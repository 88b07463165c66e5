"""Writes bytecode for exactly the modules that importing MODULE... loads, and no others.

    python compile_imported.py MODULE [MODULE ...]

The serving image installs its packages without bytecode (pip --no-compile) and then runs this
with what `tlp-serve` imports before it is healthy: a replica compiles next to nothing when it
starts, and the thousands of modules it never imports (Kubernetes' API models, the rest of
TensorFlow's Python API: 40 MB of source) carry no .pyc. Run by the Dockerfile with the image's
Python (standard library only).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import py_compile
import sys
import sysconfig


def main(modules: list[str]) -> None:
    if not modules:
        sys.exit(__doc__)
    arguments, sys.argv = sys.argv, sys.argv[:1]  # KServe parses sys.argv when it is imported
    try:
        for name in modules:
            importlib.import_module(name)
    finally:
        sys.argv = arguments
    roots = tuple({sysconfig.get_paths()[key] for key in ("purelib", "platlib", "stdlib")})
    written = 0
    for module in list(sys.modules.values()):
        source = getattr(module, "__file__", None) or ""
        # The base image's standard library usually comes compiled: rewriting it would store it twice.
        if source.endswith(".py") and source.startswith(roots) and not _compiled(source):
            py_compile.compile(source, doraise=True)
            written += 1
    print(f"bytecode written for {written} modules that importing {' '.join(modules)} loads")


def _compiled(source: str) -> bool:
    cached = importlib.util.cache_from_source(source)
    return os.path.exists(cached) and os.path.getmtime(cached) >= os.path.getmtime(source)


if __name__ == "__main__":
    main(sys.argv[1:])
