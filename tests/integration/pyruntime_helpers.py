"""What the CPython runtime sampler's tests share: the interpreters on this machine, their
headers, real target programs, and a collector run into a throw-away capture."""
from __future__ import annotations

import glob
import json
import os
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from diag.capture.bundle import CaptureWriter
from diag.collect.base import Target
from diag.collect.pyruntime import PyRuntimeCollector
from diag.load import load_inputs
from diag.pyruntime.offsets import SUPPORTED

PYENV = "/root/.pyenv/versions"


@dataclass(frozen=True)
class Interp:
    label: str
    exe: str
    include: str          # the directory holding Python.h (and internal/)

    def version(self) -> tuple[int, int, int]:
        out = subprocess.run([self.exe, "-c", "import sys; print(*sys.version_info[:3])"], capture_output=True,
                             text=True, timeout=60)
        return tuple(int(x) for x in out.stdout.split())  # type: ignore[return-value]


def _candidates() -> list[Interp]:
    found = [Interp("debian-python3", "/usr/bin/python3", "/usr/include/python3.11")]
    for root in sorted(glob.glob(f"{PYENV}/3.*")):
        v = os.path.basename(root)
        mm = ".".join(v.split(".")[:2])
        inc = next(iter(sorted(glob.glob(f"{root}/include/python{mm}*"))), f"{root}/include/python{mm}")
        found.append(Interp(f"pyenv-{v}", f"{root}/bin/python{mm}", inc))
    return found


def _minor(i: Interp) -> tuple[int, int] | None:
    """(major, minor) from the path, without running it (parametrization happens at import)."""
    if i.label.startswith("debian"):
        real = os.path.realpath(i.exe)
        base = os.path.basename(real).removeprefix("python")
    else:
        base = i.label.removeprefix("pyenv-")
    parts = base.split(".")
    try:
        return int(parts[0]), int(parts[1].rstrip("m"))
    except (IndexError, ValueError):
        return None


def supported_params() -> list:
    """One pytest.param per interpreter diag has offsets for; a missing one skips with the reason."""
    out = []
    for i in _candidates():
        mm = _minor(i)
        if mm is not None and mm not in SUPPORTED:
            continue
        marks = [pytest.mark.skipif(not os.access(i.exe, os.X_OK), reason=f"{i.exe} is not installed")]
        out.append(pytest.param(i, id=i.label, marks=marks))
    if not out:
        out.append(pytest.param(None, id="none", marks=pytest.mark.skip(reason="no CPython 3.8-3.13 found")))
    return out


def unsupported_params() -> list:
    out = []
    for i in _candidates():
        mm = _minor(i)
        if mm is not None and mm not in SUPPORTED and os.access(i.exe, os.X_OK):
            out.append(pytest.param(i, id=i.label))
    if not out:
        out.append(pytest.param(None, id="none", marks=pytest.mark.skip(reason="no unsupported CPython "
                                                                                "(3.6/3.7) installed here")))
    return out


SPINNER = r"""
import json, threading, time
ready = threading.Event()
tid = []
def spin():
    tid.append(threading.get_native_id())
    ready.set()
    x = 0
    while True:
        x += 1
threading.Thread(target=spin, daemon=True, name="spinner").start()
ready.wait()
print(json.dumps({"spinner": tid[0], "main": threading.get_native_id()}), flush=True)
while True:
    time.sleep(1)
"""

# Two threads spinning in pure Python: they hand the GIL to each other every switch interval.
TWO_SPINNERS = r"""
import json, threading, time
tids = []
lock = threading.Lock()
both = threading.Barrier(3)
def spin():
    with lock:
        tids.append(threading.get_native_id())
    both.wait()
    x = 0
    while True:
        x += 1
for i in range(2):
    threading.Thread(target=spin, daemon=True).start()
both.wait()
print(json.dumps({"spinners": tids, "main": threading.get_native_id()}), flush=True)
while True:
    time.sleep(1)
"""

# A large cyclic graph kept alive, then full collections on "go", each timed by the target itself
# (gc.callbacks, CLOCK_MONOTONIC), printed as JSON. Automatic collection is off: every collection
# that runs is one the target asked for and timed.
GC_TARGET = r"""
import gc, json, sys, time
N = int(sys.argv[1])
ROUNDS = int(sys.argv[2])
gc.disable()
nodes = [[None, None] for _ in range(N)]
for i in range(N):
    nodes[i][0] = nodes[i - 1]
gc.collect()
runs = []
def timed(phase, info):
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    if phase == "start":
        runs.append({"generation": info["generation"], "start_ns": now, "end_ns": None})
    else:
        runs[-1]["end_ns"] = now
gc.callbacks.append(timed)
print(json.dumps({"ready": True}), flush=True)
sys.stdin.readline()
for _ in range(ROUNDS):
    gc.collect(2)
    time.sleep(0.05)      # idle between collections, so that each is seen as its own pause
print(json.dumps(runs), flush=True)
sys.stdin.readline()
"""


@contextmanager
def target(exe: str, source: str, *args: str):
    """Run `source` under `exe`; yield the Popen (stdin/stdout pipes, text). Always killed."""
    p = subprocess.Popen([exe, "-c", source, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield p
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(30)


def read_json_line(p: subprocess.Popen):
    line = p.stdout.readline()
    if not line:
        pytest.fail(f"target exited (code {p.wait()}) before printing its state")
    return json.loads(line)


class Sampling:
    """A PyRuntimeCollector writing a real capture directory (the way `diag attach` runs it)."""

    def __init__(self, pid: int, root, rate_hz: int = 200) -> None:
        self.capture = str(root / "c.diag")
        self.writer = CaptureWriter(self.capture, {"pid": pid, "python": True}, "attach")
        self.collector = PyRuntimeCollector(rate_hz=rate_hz)
        self.target = Target(pid=pid, is_python=True)

    def start(self) -> None:
        reason = self.collector.check(self.target)
        if reason and ("cannot read" in reason or "root" in reason):
            pytest.skip(f"pyruntime cannot run here: {reason}")
        assert reason is None, reason
        self.collector.start(self.target, self.writer)

    def stop(self):
        """Stop, finish the capture, and load it as `diag replay` does."""
        self.collector.stop()
        self.writer.finish()
        return load_inputs([self.capture])

    @property
    def samples(self) -> int:
        return self.collector.samples


def require_gcc() -> str:
    import shutil

    gcc = shutil.which("gcc")
    if not gcc:
        pytest.skip("gcc is not installed (apt-get install gcc): cannot compile against CPython's headers")
    return gcc


__all__ = ["Interp", "supported_params", "unsupported_params", "SPINNER", "TWO_SPINNERS", "GC_TARGET", "target", "read_json_line",
           "Sampling", "require_gcc"]
