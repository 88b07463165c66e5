"""The option declarations are typed: mypy sees each option's type and each group's class, so a
wrong value or a group in another group's slot fails `make lint` (this keeps that from regressing)."""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SNIPPET = textwrap.dedent(
    """
    from tlp.components.lib.settings import DataOptions, HeadOptions, Settings

    def rate(head: HeadOptions) -> float:
        return head.dropout

    settings = Settings()
    ok: float = settings.head.dropout
    rate(settings.data)  # line 9: a DataOptions where a HeadOptions belongs
    wrong: str = settings.head.dropout  # line 10: a float is not a str
    """
)


def test_mypy_reports_a_wrong_group_and_a_wrong_option_type(tmp_path):
    mypy = os.path.join(os.path.dirname(sys.executable), "mypy")
    if not os.path.exists(mypy):
        pytest.skip("mypy is not installed (make install puts it in .venv)")
    snippet = tmp_path / "snippet.py"
    snippet.write_text(SNIPPET)
    result = subprocess.run(
        [mypy, "--config-file", os.path.join(ROOT, "pyproject.toml"), "--no-error-summary", str(snippet)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert any(":9:" in line and '"DataOptions"' in line and "HeadOptions" in line for line in errors), result.stdout
    assert any(":10:" in line and '"float"' in line for line in errors), result.stdout
    assert len(errors) == 2, result.stdout
