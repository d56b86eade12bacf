"""Observer modes: what is attached to the target while the load runs.

Each mode starts its tool(s) against the target pid, waits until the tool is really attached
(strace: the target's TracerPid; py-spy: its "Sampling process" line; eBPF agent: its header line;
diag attach: the manifest's collectors_started_monotonic_ns), lets the load run, then stops the
tool the way a user would (SIGTERM / SIGINT) and waits for it to finish. The standalone tools run
with the same flags diag's collectors use, so "strace filtered" is exactly the collector's strace.

A CpuMonitor polls the tool's process tree every 50 ms and attributes CPU seconds to collectors
by command line, both over the load window and over the tool's whole life.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from diag.collect.strace import tracer_of

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PYSPY = str(VENV_BIN / "py-spy") if (VENV_BIN / "py-spy").exists() else (shutil.which("py-spy") or "py-spy")
DIAG = [sys.executable, "-m", "diag"]


def _strace_traced() -> str:
    from diag.collect.strace import TRACED

    return TRACED


# ---------------------------------------------------------------------------------------------
# CPU accounting of tool processes

def classify(cmdline: list[str]) -> str:
    """Which collector a process belongs to, from its command line."""
    if not cmdline:
        return "other"
    base = os.path.basename(cmdline[0])
    joined = " ".join(cmdline)
    if "diag.collect.ebpf_agent" in joined:
        return "ebpf agent"
    if base == "strace":
        return "strace"
    if base == "perf":
        sub = cmdline[1] if len(cmdline) > 1 else ""
        return f"perf {sub}".strip()
    if base == "py-spy":
        sub = cmdline[1] if len(cmdline) > 1 else ""
        return f"py-spy {sub}".strip()
    if base.startswith("python") and "import bcc" in joined:
        return "diag (orchestrator, process sampler, analysis)"     # the collector's bcc probe
    if "-m diag" in joined or base == "diag":
        return "diag (orchestrator, process sampler, analysis)"
    if base == "env":
        return "ebpf agent" if "ebpf_agent" in joined else "other"
    return base


class CpuMonitor:
    """Poll a process tree's CPU times; `mark(name)` snapshots them (e.g. load start / end)."""

    def __init__(self, root_pid: int, interval_s: float = 0.05) -> None:
        self.root = root_pid
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
        try:
            root = self._procs.get(self.root) or psutil.Process(self.root)
            self._procs[self.root] = root
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            return
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
                if prev and prev[0] != "other" and label in ("other", "env"):
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


# ---------------------------------------------------------------------------------------------
# Modes

def _wait(pred, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


@dataclass
class Running:
    """A started observer."""

    proc: subprocess.Popen | None
    stop_signal: int = signal.SIGTERM
    monitor: CpuMonitor | None = None
    out: Path | None = None
    extra: dict = field(default_factory=dict)
    start_wall_s: float = 0.0


class Mode:
    name = "baseline"
    label = "baseline (nothing attached)"
    python_only = False
    stop_timeout_s = 30.0

    def applies(self, target) -> bool:
        return target.python or not self.python_only

    def command(self, target, out: Path) -> list[str] | None:
        return None

    def ready(self, run: Running, target) -> bool:
        return True

    def start(self, target, workdir: Path) -> Running:
        out = workdir / f"{self.name}.out"
        argv = self.command(target, out)
        if argv is None:
            return Running(None)
        t0 = time.monotonic()
        log = open(workdir / f"{self.name}.log", "wb")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=str(REPO),
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        log.close()
        run = Running(proc, self.stop_signal_value(), out=out)
        run.monitor = CpuMonitor(proc.pid).start()
        if not _wait(lambda: proc.poll() is not None or self.ready(run, target), 60.0):
            self.stop(run)
            raise RuntimeError(f"{self.name}: tool not ready after 60 s")
        if proc.poll() is not None:
            tail = (workdir / f"{self.name}.log").read_bytes()[-400:].decode(errors="replace")
            raise RuntimeError(f"{self.name}: tool exited at start (rc {proc.returncode}): {tail}")
        run.start_wall_s = time.monotonic() - t0
        return run

    def stop_signal_value(self) -> int:
        return signal.SIGTERM

    def stop(self, run: Running) -> dict:
        """Stop the tool, wait for it, and return what we learned (CPU, events lost...)."""
        info: dict = {}
        if run.proc is None:
            return info
        t0 = time.monotonic()
        if run.proc.poll() is None:
            try:
                os.kill(run.proc.pid, run.stop_signal)
            except ProcessLookupError:
                pass
        try:
            run.proc.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            info["note"] = f"did not stop in {self.stop_timeout_s:.0f} s: killed"
            try:
                os.killpg(run.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            run.proc.wait(5)
        info["stop_wall_s"] = time.monotonic() - t0
        info["rc"] = run.proc.returncode
        if run.monitor:
            run.monitor.stop()
            info["cpu_window"] = run.monitor.window("load_start", "load_end")
            info["cpu_total"] = run.monitor.total()
        info["start_wall_s"] = run.start_wall_s
        return info


class StraceAll(Mode):
    name = "strace-all"
    label = "strace -f -p (all syscalls)"

    def command(self, target, out):
        return ["strace", "-f", "-qq", "-ttt", "-T", "-o", str(out), "-p", str(target.pid)]

    def ready(self, run, target):
        return tracer_of(target.pid) == run.proc.pid


class StraceFiltered(StraceAll):
    name = "strace-filtered"
    label = "strace -f -p, diag's filter (collector flags)"

    def command(self, target, out):
        return ["strace", "-f", "-qq", "--absolute-timestamps=format:unix,precision:ns", "--syscall-times=ns",
                "-s", "0", "-y", "-e", f"trace={_strace_traced()}", "-o", str(out), "-p", str(target.pid)]


class PyspyBlocking(Mode):
    name = "pyspy-blocking"
    label = "py-spy record 100 Hz (blocking)"
    python_only = True
    nonblocking = False

    def command(self, target, out):
        a = [PYSPY, "record", "--pid", str(target.pid), "--rate", "100", "--format", "chrometrace", "--threads",
             "--idle", "--output", str(out)]
        if self.nonblocking:
            a.append("--nonblocking")
        return a

    def stop_signal_value(self):
        return signal.SIGINT

    def ready(self, run, target):
        try:
            return b"Sampling process" in (run.out.parent / f"{self.name}.log").read_bytes()
        except OSError:
            return False


    def stop(self, run):
        info = super().stop(run)
        try:
            text = (run.out.parent / f"{self.name}.log").read_bytes().decode(errors="replace")
        except OSError:
            return info
        m = re.search(r"Samples: (\d+) Errors: (\d+)", text)
        if m:
            info["pyspy_samples"], info["pyspy_errors"] = int(m.group(1)), int(m.group(2))
        return info


class PyspyNonblocking(PyspyBlocking):
    name = "pyspy-nonblocking"
    label = "py-spy record 100 Hz --nonblocking"
    nonblocking = True


class PerfRecord(Mode):
    name = "perf"
    label = "perf record -a -g -F 99"

    def command(self, target, out):
        return ["perf", "record", "-a", "-g", "-k", "CLOCK_MONOTONIC", "-F", "99", "-e", "cpu-clock", "-o", str(out),
                "--quiet"]

    def stop_signal_value(self):
        return signal.SIGINT

    def ready(self, run, target):
        # perf record -a has no "ready" line: it is recording once it has opened its output and
        # its events; give it the same 0.3 s the collector does.
        if not hasattr(run, "_t0"):
            run._t0 = time.monotonic()
        return time.monotonic() - run._t0 > 0.3 and run.out.exists()


class EbpfAgent(Mode):
    name = "ebpf-default"
    label = "eBPF agent: in-kernel aggregates + events > 1 ms"
    slow_ns = 1_000_000

    def command(self, target, out):
        return ["/usr/bin/python3", "-m", "diag.collect.ebpf_agent", "--pid", str(target.pid), "--slow-ns",
                str(self.slow_ns), "--out", str(out)]

    def ready(self, run, target):
        try:
            with open(run.out, "rb") as f:
                return f.readline().endswith(b"\n")
        except OSError:
            return False

    def stop(self, run):
        info = super().stop(run)
        info.update(ebpf_tail(run.out))
        return info


class EbpfNoRequests(EbpfAgent):
    name = "ebpf-noreq"
    label = "eBPF agent --no-requests (aggregates + events > 1 ms, no per-request records)"

    def command(self, target, out):
        return super().command(target, out) + ["--no-requests"]


class EbpfSyscallTracepoints(EbpfAgent):
    """Extra (not in `all`): one syscalls:sys_enter_X/sys_exit_X pair per traced syscall instead of
    raw_syscalls (which run the probe on every syscall of every process of the machine)."""
    name = "ebpf-tp-syscall"
    label = "eBPF agent --tracepoints syscall --no-requests (per-syscall tracepoints)"

    def command(self, target, out):
        return super().command(target, out) + ["--tracepoints", "syscall", "--no-requests"]


def agent_supports(flag: str) -> bool:
    try:
        r = subprocess.run(["/usr/bin/python3", "-m", "diag.collect.ebpf_agent", "--help"], capture_output=True,
                           text=True, timeout=30, cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)})
    except (OSError, subprocess.TimeoutExpired):
        return False
    return flag in r.stdout


class EbpfAll(EbpfAgent):
    name = "ebpf-all"
    label = "eBPF agent --slow-ns 0 (every call to user space)"
    slow_ns = 0


def ebpf_tail(path: Path | None) -> dict:
    out: dict = {}
    if path is None or not path.exists():
        return out
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 16384))
        for line in f.read().splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("type") == "lost":
                out["ebpf_lost"] = obj.get("count", 0)
            if isinstance(obj, dict) and obj.get("type") == "end":
                out["ebpf_events"] = obj.get("events", 0)
                out["ebpf_calls"] = obj.get("calls", 0)
                out["ebpf_requests"] = obj.get("requests")
        f.seek(0)
        try:
            head = json.loads(f.readline())
            out["ebpf_requests_on"] = head.get("requests")
        except ValueError:
            pass
    return out


class DiagAttach(Mode):
    """`diag attach PID --collectors X`: runs until SIGINT (Ctrl-C), then writes the capture and
    analyses it exactly as a user's run would; the run ends when diag exits."""

    stop_timeout_s = 180.0

    def __init__(self, collectors: str) -> None:
        self.collectors = collectors
        self.name = f"attach-{collectors}"
        self.label = f"diag attach --collectors {collectors}" + (" (default)" if collectors == "auto" else "")
        self.python_only = collectors == "py-spy"

    def command(self, target, out):
        return DIAG + ["attach", str(target.pid), "--duration", "600", "--collectors", self.collectors, "--out",
                       str(out), "--json", str(out) + ".json", "--quiet"]

    def stop_signal_value(self):
        return signal.SIGINT

    def ready(self, run, target):
        try:
            m = json.loads((run.out / "manifest.json").read_text())
        except (OSError, ValueError):
            return False
        return bool(m.get("clock", {}).get("collectors_started_monotonic_ns"))

    def stop(self, run):
        info = super().stop(run)
        try:
            m = json.loads((run.out / "manifest.json").read_text())
            info["collectors"] = {k: {kk: v.get(kk) for kk in ("status", "events", "lost", "calls", "requests", "lost_requests", "reason")}
                                  for k, v in m.get("collectors", {}).items()}
            info["capture_bytes"] = sum(p.stat().st_size for p in run.out.rglob("*") if p.is_file())
        except (OSError, ValueError):
            info["collectors"] = {}
        return info


_NOREQ: bool | None = None


def all_modes() -> list[Mode]:
    global _NOREQ
    if _NOREQ is None:
        _NOREQ = agent_supports("--no-requests")
    return [Mode(), StraceAll(), StraceFiltered(), PyspyBlocking(), PyspyNonblocking(), PerfRecord(), EbpfAgent(),
            *([EbpfNoRequests()] if _NOREQ else []), EbpfAll(), DiagAttach("auto"), DiagAttach("ebpf"), DiagAttach("strace"), DiagAttach("perf"),
            DiagAttach("py-spy"), DiagAttach("process")]


class EbpfNoStack(EbpfAgent):
    """Extra experiment: the shipped probe with the kernel stack walk at switch-out removed
    (a patched copy of probes/syscall_latency.c written next to the run's output)."""
    name = "ebpf-nostack"
    label = "eBPF agent --no-requests, probe without get_stackid at sched_switch (experiment)"
    patch = ("            int sid = stacks.get_stackid(args, 0);", "            int sid = -1;")

    def command(self, target, out):
        src = (REPO / "probes" / "syscall_latency.c").read_text()
        if self.patch[0] not in src:
            raise RuntimeError(f"{self.name}: the probe changed; patch does not apply")
        probe = out.parent / f"{self.name}.c"
        if isinstance(target.pid, int):
            probe.write_text(src.replace(*self.patch))
            shutil.copy(REPO / "probes" / "diag_events.h", out.parent / "diag_events.h")
        return super().command(target, out) + ["--no-requests", "--probe", str(probe)]


class EbpfNoSwitch(EbpfNoStack):
    name = "ebpf-noswitch"
    label = "eBPF agent --no-requests, probe with an empty sched_switch program (experiment)"
    patch = ("TRACEPOINT_PROBE(sched, sched_switch)\n{", "TRACEPOINT_PROBE(sched, sched_switch)\n{\n    return 0;")


EXTRA_MODES = (EbpfSyscallTracepoints, EbpfNoStack, EbpfNoSwitch)


def modes_by_name() -> dict[str, Mode]:
    return {m.name: m for m in all_modes() + [c() for c in EXTRA_MODES]}
