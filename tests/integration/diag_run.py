"""Running diag itself in the integration tests: to completion or in the background, and reading
what it wrote (the JSON report, the capture's manifest, strace's log)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def diag(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diag", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, **kw)


def load_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


# ---- handshakes: wait for a state, never for a time -------------------------------------------------


def diag_popen(*args: str, **kw) -> subprocess.Popen:
    """`python -m diag ARGS` in the background (stdout/stderr captured as text unless given)."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, "-m", "diag", *args], cwd=ROOT, text=True, **kw)


def stop_diag(p: subprocess.Popen, timeout_s: float = 120.0) -> tuple[str, str]:
    """End a background diag with SIGINT (a clean end) and return its (stdout, stderr)."""
    import signal
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
    try:
        return p.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"diag did not end {timeout_s:.0f} s after SIGINT: {err[-2000:]}")


def collectors_started_ns(capture) -> int | None:
    """CLOCK_MONOTONIC ns at which every collector of a running capture had started (the
    manifest's ready mark), or None while they are still starting."""
    try:
        return load_json(os.path.join(capture, "manifest.json"))["clock"].get("collectors_started_monotonic_ns")
    except (OSError, ValueError, KeyError):
        return None


def strace_lines(path, pid: int | None = None) -> list[str]:
    """The lines strace wrote to `path` so far (only those of thread `pid` when given: with -f,
    each line starts with the tid)."""
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    if pid is not None:
        lines = [x for x in lines if x.split(" ", 1)[0] == str(pid)]
    return lines


def strace_completed(path, pid: int | None = None) -> int:
    """How many calls strace logged with their result and duration (`... = R <D>`) so far."""
    return sum(1 for x in strace_lines(path, pid) if " = " in x and x.rstrip().endswith(">"))
