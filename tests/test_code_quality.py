"""The code stays as the house style says: ruff-clean, formatted, mypy-strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(
    "command",
    [("ruff", "check", "."), ("ruff", "format", "--check", "."), ("mypy",)],
    ids=["ruff-check", "ruff-format", "mypy-strict"],
)
def test_code_quality_tool_reports_nothing(command: tuple[str, ...]) -> None:
    proc = run(*command)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
