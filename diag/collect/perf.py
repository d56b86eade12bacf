"""The perf collector: on-CPU stacks (user and kernel) of the target, and CPI where counters exist.

`perf record -p PID` records nothing on some kernels (the reference VM's 6.18 among them) while
system-wide recording works, and system-wide at 99 Hz costs the machine next to nothing. So the
collector always records system-wide (`-a -g -F 99`, clock CLOCK_MONOTONIC so times line up with
eBPF and the capture's clock) and keeps only the target's samples when it converts perf.data to
text at stop: other processes' stacks never enter the capture.

`perf stat -e cycles,instructions` gives CPI for the decision matrix where the hardware exposes
counters; on VMs that do not ("<not supported>"), the manifest says so and the matrix row is
"not measurable".
"""
from __future__ import annotations

import re
import signal
import subprocess

import psutil

from diag.capture.bundle import CaptureWriter
from diag.collect.base import (DEGRADED, FAILED, OK, CollectorStats, SubprocessCollector, Target, Unavailable,
                               tool_path, wait_for)

SCRIPT_FIELDS = "comm,pid,tid,cpu,time,event,ip,sym,dso"
_HEADER = re.compile(rb"^\S.*?\s(\d+)/(\d+)\s+\[\d+\]\s+\d+\.\d+:")


def perf_blocker() -> str | None:
    if not tool_path("perf"):
        return "perf is not installed: sudo apt-get install linux-perf"
    try:
        paranoid = int(open("/proc/sys/kernel/perf_event_paranoid").read())
    except OSError:
        paranoid = 2
    import os

    if os.geteuid() != 0 and paranoid > 0:
        return (f"kernel.perf_event_paranoid={paranoid} forbids system-wide sampling for non-root: run diag "
                f"with sudo, or `sudo sysctl kernel.perf_event_paranoid=-1`")
    r = subprocess.run([tool_path("perf") or "perf", "version"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"perf does not run: {(r.stderr or r.stdout).strip()[:200]} (install linux-perf for this kernel)"
    return None


def filter_script(src, dst, pids: set[int]) -> int:
    """Copy the sample blocks of `perf script` output whose pid is in `pids`; returns how many."""
    keep = False
    kept = 0
    for line in src:
        if line[:1] not in (b"\t", b" ", b"\n") and line.strip():
            m = _HEADER.match(line)
            keep = bool(m) and int(m.group(1)) in pids
            kept += keep
        if keep:
            dst.write(line)
    return kept


class PerfCollector(SubprocessCollector):
    name = "perf"
    stop_signal = signal.SIGINT      # perf record writes its header and exits on SIGINT
    stop_timeout_s = 20.0

    def __init__(self, frequency: int = 99, counters: bool = True, callgraph: str = "fp") -> None:
        super().__init__()
        self.frequency = frequency
        self.counters = counters
        self.callgraph = callgraph          # "fp" (-g: frame pointers) or "none" (leaf frames only)
        self.stat_proc: subprocess.Popen | None = None
        self.target: Target | None = None
        self.samples = 0

    def check(self, target: Target) -> str | None:
        return perf_blocker()

    def start(self, target: Target, writer: CaptureWriter) -> None:
        self.target = target
        data = str(writer.stream_path("perf.data"))
        argv = [tool_path("perf") or "perf", "record", "-a", *(["-g"] if self.callgraph == "fp" else []),
                "-k", "CLOCK_MONOTONIC", "-F", str(self.frequency), "-e", "cpu-clock", "-o", data, "--quiet"]
        self.spawn(argv, writer)
        if wait_for(lambda: not self.alive(), 0.3):
            raise Unavailable(f"perf record failed: {self.stderr_tail() or 'exited at once'}")
        writer.set_collector(self.name, status=OK, stream="perf.txt", raw_stream="streams/perf.data",
                             format="perf-script", started_monotonic_ns=self.started_ns,
                             settings={"mode": "system-wide, filtered to the target at stop",
                                       "frequency_hz": self.frequency, "event": "cpu-clock",
                                       "clock": "CLOCK_MONOTONIC", "callgraph": self.callgraph})
        if self.counters and not target.launched:
            self.stat_out = writer.root / "logs" / "perf-stat.csv"
            self.stat_proc = subprocess.Popen(
                [tool_path("perf") or "perf", "stat", "-e", "cycles,instructions", "-x,", "-o", str(self.stat_out),
                 "-p", str(target.pid)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, preexec_fn=self._preexec_int())

    @staticmethod
    def _preexec_int():
        from diag.collect.base import pdeathsig_preexec

        return pdeathsig_preexec(signal.SIGINT)

    def stats(self) -> CollectorStats:
        return CollectorStats(events=self.samples, running=self.alive(), note="system-wide, filtered at stop")

    def _counters(self) -> dict:
        if self.stat_proc is None:
            return {"reason": "perf stat not run (launched command: counters come with the record)"}
        if self.stat_proc.poll() is None:
            self.stat_proc.send_signal(signal.SIGINT)
            try:
                self.stat_proc.wait(10)
            except subprocess.TimeoutExpired:
                self.stat_proc.kill()
        values: dict = {}
        try:
            for line in self.stat_out.read_text().splitlines():
                parts = line.split(",")
                if len(parts) >= 3 and parts[2] in ("cycles", "instructions"):
                    if parts[0].startswith("<not"):
                        values["reason"] = f"hardware counter {parts[2]} {parts[0].strip('<>')} on this machine"
                    elif parts[0].strip():
                        values[parts[2]] = int(float(parts[0]))
        except OSError:
            values["reason"] = "perf stat wrote nothing"
        if not values:
            values["reason"] = "perf stat -p counted nothing (some kernels count nothing per process)"
        return values

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.terminate()
        counters = self._counters() if self.counters else {}
        if self.writer is None or self.target is None:
            return
        data = self.writer.stream_path("perf.data")
        pids = self.target.pids()
        try:
            pids |= {c.pid for c in psutil.Process(self.target.pid).children(recursive=True)}
        except psutil.Error:
            pass
        status, reason = OK, None
        try:
            p = subprocess.Popen([tool_path("perf") or "perf", "script", "--ns", "-F", SCRIPT_FIELDS, "-i", str(data)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert p.stdout is not None
            with open(self.writer.stream_path("perf.txt"), "wb") as out:
                self.samples = filter_script(p.stdout, out, pids)
            p.wait()
        except OSError as e:
            status, reason = DEGRADED, f"perf script failed: {e}"
        if self.samples == 0 and status == OK:
            status, reason = DEGRADED, "no on-CPU samples of the target (idle target, or perf saw nothing)"
        self.writer.set_collector(self.name, status=status, reason=reason, events=self.samples,
                                  counters=counters, pids=sorted(pids))


__all__ = ["PerfCollector", "FAILED"]
