"""The repository's lint and type baseline, run by the README's test command.

``ruff check .`` and ``mypy`` (both configured in pyproject.toml) must report nothing; a
failure shows their own output so the finding can be fixed where it is.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: it is in the test extras (pip install -e '.[test]')")
    return found


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_check_is_clean() -> None:
    done = _run(_tool("ruff"), "check", ".", "--output-format", "concise", "--no-cache")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_is_clean() -> None:
    """Strict for gateway/policy and gateway/ops, the default checks for the rest of gateway/."""
    done = _run(_tool("mypy"), "--no-incremental")
    assert done.returncode == 0, done.stdout + done.stderr
