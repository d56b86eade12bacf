"""What every kind of test needs: skips with the reason, waiting for a state (never for a time),
and the state of processes (alive, traced, mentioned by some command line).

tests/ is on sys.path in every test run (its conftest.py puts it there): `from toolbox import ...`.
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
import time

import pytest


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (ptrace of another process, perf -a, eBPF)")


def require_tool(name: str) -> str:
    path = shutil.which(name) or (os.path.join(os.path.dirname(sys.executable), name)
                                  if os.path.exists(os.path.join(os.path.dirname(sys.executable), name)) else None)
    if not path:
        pytest.skip(f"{name} is not installed (`make setup` installs it as root)")
    return path


def wait_until(predicate, what, timeout_s: float = 120.0, interval_s: float = 0.02):
    """Poll `predicate` until it returns a true value (returned); fail saying `what` (a string, or
    a callable giving one) did not happen. The deadline only bounds a hung test: it is generous,
    never the thing tested."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"{what() if callable(what) else what}: not within {timeout_s:.0f} s")
        time.sleep(interval_s)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def procs_mentioning(text: str) -> list[int]:
    """Pids of processes (other than this one) whose command line mentions `text`."""
    import psutil
    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.info["pid"] != os.getpid() and any(text in a for a in proc.info["cmdline"] or ()):
                out.append(proc.info["pid"])
        except psutil.Error:
            pass
    return out


def tracer_pid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    return 0


def all_tracers(pid: int) -> dict[int, int]:
    """TracerPid of every thread of `pid` ({} once it has exited)."""
    out: dict[int, int] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("TracerPid:"):
                        out[int(tid)] = int(line.split()[1])
        except OSError:
            pass
    return out


def listening(port: int, timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout_s).close()
        return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port nobody listens on now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
