"""Real servers on 127.0.0.1 for the integration tests, and small helpers around them."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (ptrace of another process, perf -a, eBPF)")


def require_tool(name: str) -> str:
    path = shutil.which(name) or (os.path.join(os.path.dirname(sys.executable), name)
                                  if os.path.exists(os.path.join(os.path.dirname(sys.executable), name)) else None)
    if not path:
        pytest.skip(f"{name} is not installed (make setup installs it as root)")
    return path


@contextmanager
def example_server(module: str, *args: str, cwd: str | None = None):
    """Start `python -m diag.examples.MODULE ARGS` and yield (Popen, port); always stopped."""
    p = subprocess.Popen([sys.executable, "-m", f"diag.examples.{module}", *args], stdout=subprocess.PIPE,
                         text=True, cwd=cwd or ROOT)
    try:
        line = p.stdout.readline()
        assert line.startswith("listening on"), f"server did not start: {line!r}"
        yield p, int(line.rsplit(":", 1)[1])
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


@contextmanager
def redis_server():
    exe = require_tool("redis-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                          "--daemonize", "no", "--logfile", ""], stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield p, port
    finally:
        p.terminate()
        p.wait(10)


def http_ok(port: int) -> bool:
    import http.client
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/")
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except OSError:
        return False


def tracer_pid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    return 0


def all_tracers(pid: int) -> dict[int, int]:
    """TracerPid of every thread of `pid`."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("TracerPid:"):
                        out[int(tid)] = int(line.split()[1])
        except OSError:
            pass
    return out


def diag(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diag", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, **kw)


def load_json(path) -> dict:
    with open(path) as f:
        return json.load(f)
