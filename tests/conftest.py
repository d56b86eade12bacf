"""Fixtures shared by every test directory. Keep it small: per-area fixtures live with their tests,
and helpers every kind of test needs (skips, waits, process state) in toolbox.py."""
from __future__ import annotations

import pytest


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh empty directory that is also the test's current directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
