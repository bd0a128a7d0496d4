"""`pipeline/` type-checks clean under the project's mypy settings ([tool.mypy]).

mypy runs as a subprocess from the project root, so it reads pyproject.toml (strict,
`files = ["pipeline"]`) and keeps its incremental cache in the project's .mypy_cache:
a rerun after a small change takes a few seconds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[test]')")


@pytest.mark.timeout(180)
def test_pipeline_passes_mypy() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"mypy found problems:\n{output}"
