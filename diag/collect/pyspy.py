"""The py-spy collector: timestamped Python stacks of every thread of a Python target.

Always `--nonblocking`: py-spy's default mode suspends the target with ptrace for each sample,
which collides with strace (a thread has one tracer: "Failed to suspend process: EPERM") and
cost ~35 % of a Python server's throughput here, against ~15 % without blocking. The price of
not blocking is an occasional torn stack (a frame read while the interpreter changes it).

Output is chrometrace (per-sample timestamps, µs from py-spy's start, anchored by the monotonic
time we saw py-spy start). Chrometrace names threads by pthread id; `--threads` adds the OS tid as
a pseudo root frame of every stack (what the parser keys samples by), and one `py-spy dump --json`
at start records pthread id -> OS tid as the stream's `tid_map`, for threads seen without it.
On SIGINT py-spy writes its output and exits; if diag dies, PDEATHSIG delivers SIGINT.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil

from diag.capture.bundle import CaptureWriter
from diag.collect import PYSPY_RATE_HZ
from diag.collect.base import (DEGRADED, OK, CollectorStats, SubprocessCollector, Target, Unavailable, tool_path)
from diag.collect.targets import is_python

class PyspyCollector(SubprocessCollector):
    name = "py-spy"
    stop_signal = signal.SIGINT
    stop_timeout_s = 20.0

    def __init__(self, rate: int = PYSPY_RATE_HZ, native: bool = False, idle: bool = True) -> None:
        super().__init__()
        self.rate = rate
        self.native = native
        self.idle = idle
        self.target: Target | None = None

    def check(self, target: Target) -> str | None:
        if not tool_path("py-spy"):
            return "py-spy is not installed: pip install py-spy (make setup installs it in the venv)"
        if not target.is_python and not is_python(target.pid):
            return "not applicable: the target is not a Python process"
        if os.geteuid() != 0:
            try:
                if psutil.Process(target.pid).uids().real != os.geteuid():
                    return f"pid {target.pid} belongs to another user: run diag with sudo"
            except psutil.Error:
                return f"pid {target.pid} does not exist"
        return None

    def start(self, target: Target, writer: CaptureWriter) -> None:
        self.target = target
        out = str(writer.stream_path("py-spy.json"))
        argv = [tool_path("py-spy") or "py-spy", "record", "--pid", str(target.pid), "--nonblocking",
                "--rate", str(self.rate), "--format", "chrometrace", "--threads", "--output", out]
        if self.idle:
            argv.append("--idle")
        if self.native:
            argv.append("--native")
        if target.follow_children:
            argv.append("--subprocesses")
        stdout_path = writer.root / "logs" / "py-spy.stdout"
        stdout_path.parent.mkdir(exist_ok=True)
        with open(stdout_path, "wb") as out_f:
            self.spawn(argv, writer, stdout=out_f)
        anchor = self._sampling_started(stdout_path)
        if not self.alive() and anchor is None:
            raise Unavailable(f"py-spy failed: {self.stderr_tail() or 'exited at once'}")
        writer.set_collector(self.name, status=OK, stream="py-spy.json", format="pyspy-chrometrace",
                             started_monotonic_ns=anchor or self.started_ns,
                             anchor="'Sampling process' line seen" if anchor else "py-spy spawn time",
                             tid_map=self.thread_map(target.pid),
                             settings={"rate_hz": self.rate, "nonblocking": True, "idle": self.idle,
                                       "native": self.native, "format": "chrometrace"})

    def _sampling_started(self, stdout_path) -> int | None:
        """CLOCK_MONOTONIC when py-spy printed "Sampling process": its chrometrace clock starts
        then (measured: 2-4 ms after the spawn, which anchored the stream that much early).
        Polled every 0.5 ms from the file py-spy writes, never a pipe: if diag dies, a pipe
        would kill py-spy with SIGPIPE before it writes its samples."""
        from diag.capture.clock import monotonic_ns

        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            try:
                if b"Sampling process" in stdout_path.read_bytes():
                    return monotonic_ns() - 250_000     # half the polling interval
            except OSError:
                pass
            if not self.alive():
                return None
            time.sleep(0.0005)
        return None

    def thread_map(self, pid: int) -> dict[str, int]:
        """pthread id -> OS tid, from one `py-spy dump` (also non-blocking)."""
        from diag.parse.pyspy import pthread_to_tid_map_from_dump

        try:
            r = subprocess.run([tool_path("py-spy") or "py-spy", "dump", "--pid", str(pid), "--nonblocking", "--json"],
                               capture_output=True, text=True, timeout=10)
        except (subprocess.TimeoutExpired, OSError):
            return {}
        return {str(k): v for k, v in pthread_to_tid_map_from_dump(r.stdout).items()}

    def stats(self) -> CollectorStats:
        return CollectorStats(running=self.alive(), note=f"{self.rate} Hz, non-blocking")

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        rc = self.terminate()
        if self.writer is None:
            return
        out = self.writer.stream_path("py-spy.json")
        ok = out.exists() and out.stat().st_size > 0
        status, reason = OK, None
        if not ok:
            status, reason = DEGRADED, f"py-spy wrote no samples (exit {rc}): {self.stderr_tail()}"
        self.writer.set_collector(self.name, status=status, reason=reason)
