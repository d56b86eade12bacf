"""Helpers shared by every test directory. Keep it small: per-area fixtures live with their tests."""
from __future__ import annotations

import os
import shutil
import sys

import pytest


def _require_tool(name: str) -> str:
    """The path of command `name` (on PATH or next to this Python), or skip the test saying so."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    path = shutil.which(name) or (here if os.access(here, os.X_OK) else None)
    if not path:
        pytest.skip(f"{name} is not installed (`make setup` installs it as root)")
    return path


@pytest.fixture
def require_tool():
    """`require_tool("strace")` -> its path, or the test is skipped with the reason."""
    return _require_tool


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh empty directory that is also the test's current directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
