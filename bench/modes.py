"""Observer modes: what is attached to the target while the load runs.

Each mode starts its tool(s) against the target pid, waits until the tool is really attached
(strace: the target's TracerPid; py-spy: its "Sampling process" line; eBPF agent: its header line;
syscount: its "Tracing" line; diag attach and the collector host: the manifest's
collectors_started_monotonic_ns), lets the load run, then stops the tool the way a user would
(SIGINT / SIGTERM) and waits for it to finish. Standalone tools run with the same flags diag's
collectors use.

A CpuMonitor (bench/cpu.py) polls the tool's process tree every 50 ms and attributes CPU seconds
to tools by command line, over the load window and over the tool's whole life.

The modes in `all` answer the questions of issue 12: the floor (every eBPF program returns at
once), the BCC peer (`syscount-bpfcc -L`), the agent's request export (sampled vs all), diag
attach by default and with the eBPF collector alone, and one diag attach per extra collector
beside eBPF (each collector's own cost). `extra_modes()` are kept for one-off questions
(`--modes NAME`), and `study_modes()` are the collector-defaults study (bench/defaults_study.py).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.cpu import CpuMonitor
from diag.collect.strace import tracer_of

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PYSPY = str(VENV_BIN / "py-spy") if (VENV_BIN / "py-spy").exists() else (shutil.which("py-spy") or "py-spy")
SYSCOUNT = shutil.which("syscount-bpfcc") or "/usr/sbin/syscount-bpfcc"
DIAG = [sys.executable, "-m", "diag"]


def _strace_traced() -> str:
    from diag.collect.strace import TRACED

    return TRACED


def agent_python() -> str:
    """The interpreter the eBPF collector runs its agent with (the first one that imports bcc)."""
    from diag.collect.ebpf import SYSTEM_PYTHON, bcc_python

    return bcc_python() or SYSTEM_PYTHON


def stop_agent(agent: subprocess.Popen, timeout: float = 60) -> None:
    """Ctrl-C to an agent (it detaches its programs and closes its files), SIGKILL past `timeout`."""
    agent.send_signal(signal.SIGINT)
    try:
        agent.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()


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
    log: Path | None = None
    extra: dict = field(default_factory=dict)
    start_wall_s: float = 0.0


class Mode:
    name = "baseline"
    label = "baseline (nothing attached)"
    python_only = False
    stop_timeout_s = 30.0
    stop_signal = signal.SIGTERM

    def applies(self, target) -> bool:
        return target.python or not self.python_only

    def command(self, target, out: Path) -> list[str] | None:
        return None

    def out_path(self, workdir: Path) -> Path:
        return workdir / f"{self.name}.out"

    def ready(self, run: Running, target) -> bool:
        return True

    def env(self) -> dict:
        return {**os.environ, "PYTHONPATH": str(REPO)}

    def start(self, target, workdir: Path) -> Running:
        out = self.out_path(workdir)
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = self.command(target, out)
        if argv is None:
            return Running(None)
        t0 = time.monotonic()
        log_path = workdir / f"{self.name}.log"
        log = open(log_path, "wb")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=str(REPO), env=self.env(), preexec_fn=_default_sigint)
        log.close()
        run = Running(proc, self.stop_signal, out=out, log=log_path)
        run.monitor = CpuMonitor([proc.pid]).start()
        if not _wait(lambda: proc.poll() is not None or self.ready(run, target), 60.0):
            self.stop(run)
            raise RuntimeError(f"{self.name}: tool not ready after 60 s")
        if proc.poll() is not None:
            tail = log_path.read_bytes()[-400:].decode(errors="replace")
            raise RuntimeError(f"{self.name}: tool exited at start (rc {proc.returncode}): {' '.join(tail.split())}")
        run.start_wall_s = time.monotonic() - t0
        return run

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

    def shown(self) -> str:
        """The command as RESULTS.md shows it."""
        cmd = self.command(type("T", (), {"pid": "PID", "python": True})(), Path("OUT"))
        if cmd is None:
            return ""
        s = " ".join(str(c) for c in cmd).replace(sys.executable, "python").replace(str(REPO) + "/", "")
        return s.replace(agent_python(), "python").replace(_strace_traced(), "<TRACED of diag/collect/strace.py>")


def _default_sigint() -> None:
    """In the tool's process, before its exec: SIGINT back to its default. A bench started in the
    background of a non-interactive shell inherits SIGINT ignored, and a Python tool (syscount)
    then never gets its KeyboardInterrupt: the Ctrl-C that stops it would be lost."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _log_has(run: Running, text: bytes) -> bool:
    try:
        return text in run.log.read_bytes()
    except (OSError, TypeError):
        return False


# ---------------------------------------------------------------------------------------------
# standalone tools

class StraceFiltered(Mode):
    name = "strace-filtered"
    label = "strace -f -p, diag's filter (collector flags)"

    def command(self, target, out):
        return ["strace", "-f", "-qq", "--absolute-timestamps=format:unix,precision:ns", "--syscall-times=ns",
                "-s", "0", "-y", "-e", f"trace={_strace_traced()}", "-o", str(out), "-p", str(target.pid)]

    def ready(self, run, target):
        return tracer_of(target.pid) == run.proc.pid


class StraceAll(StraceFiltered):
    name = "strace-all"
    label = "strace -f -p (all syscalls)"

    def command(self, target, out):
        return ["strace", "-f", "-qq", "-ttt", "-T", "-o", str(out), "-p", str(target.pid)]


class Pyspy(Mode):
    """py-spy record with the collector's flags; `rate` and blocking vary."""

    python_only = True
    stop_signal = signal.SIGINT

    def __init__(self, rate: int = 100, nonblocking: bool = True) -> None:
        self.rate, self.nonblocking = rate, nonblocking
        self.name = f"pyspy-{'nonblocking' if nonblocking else 'blocking'}" + ("" if rate == 100 else f"-{rate}")
        self.label = f"py-spy record {rate} Hz" + (" --nonblocking" if nonblocking else " (blocking)")

    def command(self, target, out):
        a = [PYSPY, "record", "--pid", str(target.pid), "--rate", str(self.rate), "--format", "chrometrace",
             "--threads", "--idle", "--output", str(out)]
        return a + (["--nonblocking"] if self.nonblocking else [])

    def ready(self, run, target):
        return _log_has(run, b"Sampling process")

    def stop(self, run):
        info = super().stop(run)
        try:
            text = run.log.read_bytes().decode(errors="replace")
        except OSError:
            return info
        m = re.search(r"Samples: (\d+) Errors: (\d+)", text)
        if m:
            info["pyspy_samples"], info["pyspy_errors"] = int(m.group(1)), int(m.group(2))
        return info


class PerfRecord(Mode):
    name = "perf"
    label = "perf record -a -g -F 99"
    stop_signal = signal.SIGINT

    def command(self, target, out):
        return ["perf", "record", "-a", "-g", "-k", "CLOCK_MONOTONIC", "-F", "99", "-e", "cpu-clock", "-o", str(out),
                "--quiet"]

    def ready(self, run, target):
        # perf record -a has no "ready" line: it records once it has opened its output and its
        # events; give it the same 0.3 s the collector does.
        if "t0" not in run.extra:
            run.extra["t0"] = time.monotonic()
        return time.monotonic() - run.extra["t0"] > 0.3 and run.out.exists()


class Syscount(Mode):
    """The BCC peer: `syscount-bpfcc -L -p PID` (Debian's bpfcc-tools), the same raw_syscalls
    tracepoints, a per-syscall count and latency sum in a hash map, printed at Ctrl-C."""

    name = "syscount"
    label = "syscount-bpfcc -L -p PID (BCC's tool, the peer)"
    stop_signal = signal.SIGINT

    def command(self, target, out):
        return [SYSCOUNT, "-L", "-p", str(target.pid)]

    def env(self):
        return {**super().env(), "PYTHONUNBUFFERED": "1"}     # its "Tracing" line is the ready mark

    def ready(self, run, target):
        return _log_has(run, b"Tracing syscalls")


class EbpfAgent(Mode):
    """diag's eBPF agent alone, as the collector runs it (same interpreter, same flags)."""

    def __init__(self, name: str, label: str, args: list[str] | None = None) -> None:
        self.name, self.label, self.args = name, label, list(args or [])

    def out_path(self, workdir):
        return workdir / self.name / "ebpf.jsonl"        # the binary record files go beside it

    def command(self, target, out):
        return [agent_python(), "-m", "diag.agent", "--pid", str(target.pid), "--slow-ns", "1000000",
                "--out", str(out), *self.args]

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


def ebpf_tail(path: Path | None) -> dict:
    """What the agent's last lines say: records exported and lost, calls timed, its CPU once
    attached (`cpu_s_attached`, compile excluded) and for how long."""
    out: dict = {}
    if path is None or not path.exists():
        return out
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 65536))
        for line in f.read().splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if not isinstance(obj, dict):
                continue
            if obj.get("type") == "lost":
                out["ebpf_lost"] = obj.get("count", 0)
                out["ebpf_lost_requests"] = obj.get("lost_requests")
            if obj.get("type") == "end":
                out["ebpf_events"] = obj.get("events", 0)
                out["ebpf_calls"] = obj.get("calls", 0)
                out["ebpf_requests"] = obj.get("requests")
                out["ebpf_requests_done"] = obj.get("requests_done")
                out["ebpf_cpu_s_attached"] = obj.get("cpu_s_attached")
                out["ebpf_attached_s"] = (obj.get("duration_ns") or 0) / 1e9
        f.seek(0)
        try:
            head = json.loads(f.readline())
            out["ebpf_compile_cpu_s"] = head.get("compile_cpu_s")
        except ValueError:
            pass
    return out


# ---------------------------------------------------------------------------------------------
# diag attach, and the collector host of the study

def _manifest_collectors(capture: Path) -> dict:
    """Per collector: status, counts and the observer cost the capture itself reports."""
    try:
        m = json.loads((capture / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    keys = ("status", "events", "lost", "calls", "requests", "lost_requests", "reason", "observer", "settings")
    return {k: {kk: v.get(kk) for kk in keys} for k, v in m.get("collectors", {}).items()}


def _manifest_ready(capture: Path) -> bool:
    try:
        m = json.loads((capture / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(m.get("clock", {}).get("collectors_started_monotonic_ns"))


class DiagAttach(Mode):
    """`diag attach PID --collectors X`: runs until SIGINT (Ctrl-C), then writes the capture and
    analyses it exactly as a user's run would; the run ends when diag exits."""

    stop_timeout_s = 180.0
    stop_signal = signal.SIGINT

    def __init__(self, collectors: str) -> None:
        self.collectors = collectors
        self.name = f"attach-{collectors}"
        self.label = f"diag attach --collectors {collectors}" + (" (default)" if collectors == "auto" else "")
        # a mode whose point is a Python collector says nothing more than attach-ebpf elsewhere
        self.python_only = collectors != "auto" and bool(set(collectors.split(",")) & {"py-spy", "pyruntime"})

    def command(self, target, out):
        return DIAG + ["attach", str(target.pid), "--duration", "600", "--collectors", self.collectors, "--out",
                       str(out), "--json", str(out) + ".json", "--quiet"]

    def ready(self, run, target):
        return _manifest_ready(run.out)

    def stop(self, run):
        info = super().stop(run)
        info["collectors"] = _manifest_collectors(run.out)
        try:
            info["capture_bytes"] = sum(p.stat().st_size for p in run.out.rglob("*") if p.is_file())
        except OSError:
            pass
        info.update(ebpf_tail(run.out / "streams" / "ebpf.jsonl"))
        return info


class HostMode(DiagAttach):
    """diag's collectors with chosen settings (`bench/collector_host.py`): the capture of diag
    attach without its analysis, for settings the CLI does not expose (rates, perf call graph)."""

    def __init__(self, name: str, label: str, collectors: str, opts: dict | None = None) -> None:
        super().__init__(collectors)
        self.name, self.label, self.opts = name, label, dict(opts or {})

    def command(self, target, out):
        a = [sys.executable, "-m", "bench.collector_host", "--pid", str(target.pid), "--collectors", self.collectors,
             "--out", str(out)]
        for k, v in sorted(self.opts.items()):
            a += [f"--{k.replace('_', '-')}", str(v)]
        return a


class SchedIdle(Mode):
    """Another mode with its tools at SCHED_IDLE (`chrt -i 0`, inherited by every process diag
    starts): they run only on a CPU nothing else wants. An experiment, not a default: it tells
    whether an observer's latency cost is its CPU bursts preempting the target."""

    def __init__(self, inner: Mode) -> None:
        self.inner = inner
        self.name = f"{inner.name}-sched-idle"
        self.label = f"{inner.label}, at SCHED_IDLE (chrt -i 0)"
        self.python_only, self.stop_signal, self.stop_timeout_s = inner.python_only, inner.stop_signal, \
            inner.stop_timeout_s

    def out_path(self, workdir):
        return self.inner.out_path(workdir)

    def command(self, target, out):
        inner = self.inner.command(target, out)
        return None if inner is None else ["chrt", "-i", "0", *inner]

    def ready(self, run, target):
        return self.inner.ready(run, target)

    def stop(self, run):
        return self.inner.stop(run)


# ---------------------------------------------------------------------------------------------

def all_modes() -> list[Mode]:
    """The modes of a full run, in table order."""
    return [
        Mode(),
        EbpfAgent("ebpf-floor", "eBPF agent --floor (every program returns at once: the kernel's floor)",
                  ["--floor"]),
        Syscount(),
        EbpfAgent("ebpf-default", "eBPF agent (default: sampled request export)"),
        EbpfAgent("ebpf-reqall", "eBPF agent --requests all (a record per request)", ["--requests", "all"]),
        DiagAttach("ebpf"),
        DiagAttach("ebpf,process"),
        DiagAttach("ebpf,perf"),
        DiagAttach("ebpf,py-spy"),
        DiagAttach("ebpf,pyruntime"),
        DiagAttach("auto"),
        DiagAttach("strace"),
    ]


def extra_modes() -> list[Mode]:
    """Not in `all`; run them by name (`--modes ebpf-noreq,perf`)."""
    return [
        EbpfAgent("ebpf-noreq", "eBPF agent --no-requests (no request summarizer)", ["--no-requests"]),
        EbpfAgent("ebpf-all-calls", "eBPF agent --slow-ns 0 (a record per call)", ["--slow-ns", "0"]),
        StraceFiltered(), StraceAll(), Pyspy(100, True), Pyspy(100, False), PerfRecord(),
        DiagAttach("perf"), DiagAttach("py-spy"), DiagAttach("process"), DiagAttach("pyruntime"),
        SchedIdle(DiagAttach("auto")),
    ]


def study_modes() -> list[Mode]:
    """The collector-defaults study: each collector at several settings beside the eBPF agent,
    and the eBPF agent alone (its reference), all through the collector host."""
    from diag import collect as D

    def host(name, label, coll, default, **opts):
        return HostMode(f"study-{name}", label + (" (default)" if default else ""), coll, opts)

    modes = [host("ebpf", "eBPF collector alone (the study's reference)", "ebpf", False)]
    for hz in (100, 50, 20):
        modes.append(host(f"pyspy-{hz}", f"eBPF + py-spy {hz} Hz", "ebpf,py-spy", hz == D.PYSPY_RATE_HZ,
                          pyspy_rate=hz))
    for hz in (99, 49):
        modes.append(host(f"perf-{hz}", f"eBPF + perf {hz} Hz, call graph fp", "ebpf,perf",
                          hz == D.PERF_FREQUENCY_HZ, perf_frequency=hz))
    modes.append(host("perf-99-nocg", "eBPF + perf 99 Hz, no call graph", "ebpf,perf", False, perf_frequency=99,
                      perf_callgraph="none"))
    for s in (0.5, 1, 2):
        modes.append(host(f"process-{s:g}", f"eBPF + process sampler every {s:g} s", "ebpf,process",
                          s == D.PROCESS_INTERVAL_S, process_interval=s))
    for hz in (200, 100, 50):
        modes.append(host(f"pyruntime-{hz}", f"eBPF + pyruntime {hz} Hz", "ebpf,pyruntime",
                          hz == D.PYRUNTIME_RATE_HZ, pyruntime_rate=hz))
    return modes


def modes_by_name() -> dict[str, Mode]:
    return {m.name: m for m in all_modes() + extra_modes() + study_modes()}
