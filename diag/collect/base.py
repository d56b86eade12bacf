"""The collector interface, and the base for collectors that drive an external tool.

Every collector (py-spy, strace, perf, eBPF, the process sampler) has the same life:
`check(target)` says whether it can run here (a reason and a fix when not), `start(...)` attaches
and begins writing its raw stream into the capture, `stats()` reports progress for the live view,
`stop()` detaches and finalizes. The orchestrator (`diag.collect.session`) owns ordering, signals
and the guarantee that nothing stays attached to the target.

Subprocess collectors are started with PR_SET_PDEATHSIG: if diag itself is killed (even with
SIGKILL), the kernel sends each tool the signal that makes it detach and flush (SIGTERM for strace
and perf, SIGINT for py-spy), so the target is never left traced.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from diag.capture.bundle import CaptureWriter
from diag.capture.clock import monotonic_ns

PR_SET_PDEATHSIG = 1

# Collector states as written in the manifest and shown in the report.
OK, DEGRADED, UNAVAILABLE, FAILED, NOT_APPLICABLE = "ok", "degraded", "unavailable", "failed", "not-applicable"


@dataclass
class Target:
    """The process under diagnosis."""

    pid: int
    cmdline: list[str] = field(default_factory=list)
    comm: str = ""
    is_python: bool = False
    launched: bool = False          # started by `diag run` (we own its lifetime)
    follow_children: bool = False
    tree: object | None = None      # diag.collect.targets.ProcessTree: every member seen (the session keeps it)
    uid: int | None = None          # its owner (real uid), when known
    user: str | None = None

    def pids(self) -> set[int]:
        """The processes watched: the target and, following children, every member seen so far."""
        return set(self.tree.pids()) | {self.pid} if self.tree is not None else {self.pid}

    def threads(self) -> list[int]:
        """The target's thread ids now (threads born later are seen by the tracers' clone events)."""
        try:
            return sorted(int(t) for t in os.listdir(f"/proc/{self.pid}/task"))
        except OSError:
            return []

    def to_json(self) -> dict:
        out = {"pid": self.pid, "cmdline": self.cmdline, "comm": self.comm, "python": self.is_python,
               "launched": self.launched, "follow_children": self.follow_children, "threads": self.threads()}
        if self.tree is not None:
            out["processes"] = self.tree.to_json()
        if self.is_python:
            from diag.collect.pyruntime import gil_state

            state = gil_state(self.pid)
            if state:
                out["gil_state"] = list(state)
        if self.uid is not None:
            out.update(uid=self.uid, user=self.user)
        return out


@dataclass
class CollectorStats:
    events: int = 0
    lost: int = 0
    running: bool = False
    note: str = ""
    slowest: list[tuple[str, int]] = field(default_factory=list)   # (syscall, dur_ns) so far


class Unavailable(Exception):
    """Raised by `start` when a collector turns out not to work here; the capture goes on."""


class Collector(Protocol):
    name: str

    def check(self, target: Target) -> str | None:
        """None when the collector can run on this target here; else why not and how to fix it."""

    def start(self, target: Target, writer: CaptureWriter) -> None: ...

    def stats(self) -> CollectorStats: ...

    def stop(self) -> None:
        """Detach and finalize. Must be safe to call twice and after a failed start."""


def pdeathsig_preexec(sig: int):
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        # Own process group: a Ctrl-C in the terminal reaches diag, which stops the tools in
        # order, instead of reaching every tool at once.
        os.setpgid(0, 0)

    return preexec


def tool_path(name: str, extra_dirs: tuple[str, ...] = ()) -> str | None:
    """Find an external tool: next to our interpreter first (py-spy from the venv), then PATH."""
    import sys

    here = Path(sys.executable).parent
    for d in (str(here), *extra_dirs):
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return shutil.which(name)


class SubprocessCollector:
    """Base for collectors that run an external tool writing into the capture.

    Subclasses set `name`, `stop_signal`, build the argv in `command()`, and update the manifest
    entry. This base owns spawning (with the death signal), stderr capture, and a bounded stop.
    """

    name = "subprocess"
    stop_signal = signal.SIGTERM
    stop_timeout_s = 10.0

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.writer: CaptureWriter | None = None
        self.stderr_path: Path | None = None
        self.started_ns: int | None = None
        self._stopped = False
        self.status = OK
        self.reason: str | None = None

    def spawn(self, argv: list[str], writer: CaptureWriter, stdout=None) -> subprocess.Popen:
        self.writer = writer
        self.stderr_path = writer.root / "logs" / f"{self.name}.stderr"
        self.stderr_path.parent.mkdir(exist_ok=True)
        err = open(self.stderr_path, "wb")
        self.started_ns = monotonic_ns()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout or subprocess.DEVNULL,
                                     stderr=err, preexec_fn=pdeathsig_preexec(self.stop_signal), close_fds=True)
        err.close()
        return self.proc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_tail(self, n: int = 400) -> str:
        if not self.stderr_path or not self.stderr_path.exists():
            return ""
        data = self.stderr_path.read_bytes()[-n:].decode(errors="replace")
        return " ".join(data.split())

    def observer_cost(self) -> dict:
        """CPU this tool used: while capturing (sampled at the stop signal) and in all (its
        rusage when reaped, finalization included). The report states it as the observer effect."""
        out: dict = {}
        if getattr(self, "_cpu_at_stop", None) is not None:
            out["cpu_s_capture"] = round(self._cpu_at_stop, 3)
            if self.started_ns and getattr(self, "_stopped_ns", None):
                secs = (self._stopped_ns - self.started_ns) / 1e9
                if secs > 0:
                    out["cores"] = round(self._cpu_at_stop / secs, 4)
        if getattr(self, "_cpu_total", None) is not None:
            out["cpu_s_total"] = round(self._cpu_total, 3)
        return out

    def begin_stop(self) -> None:
        """Send the stop signal without waiting: the session tells every collector to stop at
        once, so that their streams end together, then waits for each (`stop`)."""
        if self.proc is None or getattr(self, "_signalled", False) or self.proc.poll() is not None:
            return
        self._note_cpu_at_stop()
        try:
            self.proc.send_signal(self.stop_signal)
            self._signalled = True
        except ProcessLookupError:
            pass

    def _note_cpu_at_stop(self) -> None:
        try:
            import psutil

            t = psutil.Process(self.proc.pid).cpu_times()
            self._cpu_at_stop = t.user + t.system + t.children_user + t.children_system
        except Exception:
            self._cpu_at_stop = None
        self._stopped_ns = monotonic_ns()

    def terminate(self) -> int | None:
        """Send the stop signal (unless begin_stop did), wait, escalate to SIGKILL after
        `stop_timeout_s`."""
        if self.proc is None:
            return None
        import resource

        if not getattr(self, "_signalled", False):
            self._note_cpu_at_stop()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        reaped_here = self.proc.returncode is None
        if self.proc.poll() is None:
            try:
                if not getattr(self, "_signalled", False):
                    self.proc.send_signal(self.stop_signal)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if reaped_here:
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            self._cpu_total = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return self.proc.returncode


def wait_for(predicate, timeout_s: float, interval_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
