"""CPU accounting for the bench: whose CPU a tool process is, its CPU over the load window, and how
busy the shared machine was meanwhile.

Throughput on a 2-core VM shared with other people's test runs swings by tens of percent between
two runs a minute apart; CPU seconds per request (the target's, the observer's, the load
generator's) move far less, because they do not depend on who else got the cores. So every run
records them, and records what else was loading the machine (load average, other processes
holding eBPF programs: their programs run on every syscall of ours too).
"""
from __future__ import annotations

import os
import threading

import psutil

# labels, shared by the modes, the tables and the goal verdicts
EBPF_AGENT = "ebpf agent"
SYSCOUNT = "syscount-bpfcc"
DIAG = "diag (orchestrator, process sampler, pyruntime, analysis)"
HOST = "collector host (process sampler, pyruntime)"


def classify(cmdline: list[str]) -> str:
    """Which tool a process belongs to, from its command line."""
    if not cmdline:
        return "other"
    base = os.path.basename(cmdline[0])
    joined = " ".join(cmdline)
    if "diag.agent" in joined:
        return EBPF_AGENT
    if "syscount-bpfcc" in joined:
        return SYSCOUNT
    if "bench.collector_host" in joined:
        return HOST
    if base == "strace":
        return "strace"
    if base == "perf":
        sub = cmdline[1] if len(cmdline) > 1 else ""
        return f"perf {sub}".strip()
    if base == "py-spy":
        sub = cmdline[1] if len(cmdline) > 1 else ""
        return f"py-spy {sub}".strip()
    if "-m diag" in joined or base == "diag":
        return DIAG
    if base == "env":                 # `env PYTHONPATH=... python -m diag.agent` before its exec
        return "other"
    return base


class CpuMonitor:
    """Poll a process tree's CPU times every `interval_s`; `mark(name)` snapshots them (load start
    and end), so a tool's CPU over the load window excludes its start-up and its analysis."""

    def __init__(self, root_pids: list[int], interval_s: float = 0.05) -> None:
        self.roots = list(root_pids)
        self.interval = interval_s
        self.last: dict[int, tuple[str, float]] = {}     # pid -> (label, cpu s), the latest seen
        self.marks: dict[str, dict[int, tuple[str, float]]] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._procs: dict[int, psutil.Process] = {}

    def start(self) -> "CpuMonitor":
        self.poll()
        self.thread.start()
        return self

    def poll(self) -> None:
        procs: list[psutil.Process] = []
        for pid in self.roots:
            try:
                root = self._procs.get(pid) or psutil.Process(pid)
                self._procs[pid] = root
                procs += [root] + root.children(recursive=True)
            except psutil.Error:
                continue
        for p in procs:
            p = self._procs.setdefault(p.pid, p)
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    label = classify(p.cmdline())
            except psutil.Error:
                continue
            with self._lock:
                prev = self.last.get(p.pid)
                if prev and prev[0] != "other" and label == "other":
                    label = prev[0]          # a zombie's empty cmdline must not relabel it
                cpu = max(t.user + t.system, prev[1] if prev else 0.0)
                self.last[p.pid] = (label, cpu)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def mark(self, name: str) -> None:
        self.poll()
        with self._lock:
            self.marks[name] = dict(self.last)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(2)

    @staticmethod
    def _by_label(snap: dict[int, tuple[str, float]], base: dict[int, tuple[str, float]] | None = None) -> dict:
        out: dict[str, float] = {}
        for pid, (label, cpu) in snap.items():
            b = base.get(pid, (label, 0.0))[1] if base is not None else 0.0
            out[label] = out.get(label, 0.0) + max(0.0, cpu - b)
        return out

    def window(self, a: str, b: str) -> dict[str, float]:
        return self._by_label(self.marks.get(b, {}), self.marks.get(a, {}))

    def total(self) -> dict[str, float]:
        return self._by_label(self.last)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


def loadavg() -> float:
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def foreign_bpf(ours: set[int]) -> list[str]:
    """Other processes holding BPF programs (someone else's tracer): their programs run on our
    syscalls too, so a run measured beside them is noisier. `ours`: pids to leave out."""
    out = []
    for pid in psutil.pids():
        if pid in ours or pid == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:bpf-prog":
                    out.append(f"{pid}:{psutil.Process(pid).name()}")
                    break
            except (OSError, psutil.Error):
                continue
    return out
