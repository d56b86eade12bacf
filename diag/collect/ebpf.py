"""The eBPF collector: every call of the target timed in the kernel, requests summarized there,
and who woke each of its blocked threads.

It runs the agent (diag.agent) as a subprocess (PDEATHSIG=SIGTERM: if diag dies, the agent
detaches and finalizes its stream). The agent loads probes/diag_probe.c with BCC, writes
streams/ebpf.jsonl ("ebpf-jsonl") and its binary record files beside it (diag/capture/
ebpf_stream.py), and rewrites logs/ebpf.progress.json every second. With `requests=True` (the
default) the probe also summarizes server-side requests in the kernel.

The agent runs under the first interpreter that can import `bcc`: ours (the venv is built with
--system-site-packages for this), else /usr/bin/python3 with the directory holding the `diag`
package on PYTHONPATH (the repository in a checkout, site-packages in an installed wheel).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from diag.capture.bundle import CaptureWriter
from diag.capture.ebpf_stream import MAIN as STREAM
from diag.collect.base import (DEGRADED, FAILED, OK, CollectorStats, SubprocessCollector, Target, Unavailable,
                               wait_for)
from diag.errors import DiagError
from diag.resources import package_root, probe_dir
SYSTEM_PYTHON = "/usr/bin/python3"
TRACING_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")

_bcc_python_cache: dict[str, bool] = {}


def _can_import_bcc(python: str) -> bool:
    if python not in _bcc_python_cache:
        try:
            r = subprocess.run([python, "-c", "import bcc"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=30)
            _bcc_python_cache[python] = r.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            _bcc_python_cache[python] = False
    return _bcc_python_cache[python]


def bcc_python() -> str | None:
    """An interpreter that imports bcc: ours first, then the system one."""
    for py in (sys.executable, SYSTEM_PYTHON):
        if py and os.path.exists(py) and _can_import_bcc(py):
            return py
    return None


class EbpfCollector(SubprocessCollector):
    name = "ebpf"
    stop_signal = signal.SIGTERM
    stop_timeout_s = 15.0
    ready_timeout_s = 30.0

    def __init__(self, slow_ns: int = 1_000_000, ringbuf_pages: int = 256, probe: str | None = None,
                 extra_args: list[str] | None = None, requests: bool = True, slow_request_ns: int | None = None,
                 export_all: bool = False) -> None:
        super().__init__()
        self.requests = requests
        self.slow_ns = slow_ns
        self.ringbuf_pages = ringbuf_pages
        self.slow_request_ns = slow_request_ns
        self.export_all = export_all
        self.probe = probe
        self.extra_args = list(extra_args or [])
        self.progress_path: Path | None = None
        self.out_path: Path | None = None
        self.header: dict | None = None
        self._final: dict | None = None

    # --- check --------------------------------------------------------------------------------
    def check(self, target: Target) -> str | None:
        if os.geteuid() != 0:
            return "eBPF needs root (CAP_BPF+CAP_PERFMON): run diag with sudo"
        try:
            probe_dir()
        except DiagError as e:
            return str(e)
        if bcc_python() is None:
            return "BCC is not installed: install python3-bpfcc: sudo apt-get install bpfcc-tools python3-bpfcc"
        build = Path("/lib/modules") / os.uname().release / "build"
        if not build.exists():
            return (f"no kernel headers at {build}: run `make setup` as root to link kernel headers for BCC "
                    "(sudo apt-get install linux-headers-$(uname -r) where the distribution has them)")
        if not any(os.path.isdir(f"{d}/events/syscalls") for d in TRACING_DIRS):
            return ("tracefs is not mounted (no /sys/kernel/tracing/events/syscalls): "
                    "sudo mount -t tracefs tracefs /sys/kernel/tracing")
        return None

    # --- start --------------------------------------------------------------------------------
    def argv(self, target: Target, out: Path, progress: Path) -> list[str]:
        py = bcc_python() or SYSTEM_PYTHON
        pythonpath = os.pathsep.join(p for p in (str(package_root()), os.environ.get("PYTHONPATH", "")) if p)
        a = ["/usr/bin/env", f"PYTHONPATH={pythonpath}", py, "-m", "diag.agent",
             "--pid", str(target.pid), "--slow-ns", str(self.slow_ns), "--out", str(out),
             "--progress", str(progress), "--ringbuf-pages", str(self.ringbuf_pages)]
        if target.follow_children:
            a.append("--follow")
        if not self.requests:
            a.append("--no-requests")
        if self.slow_request_ns:
            a += ["--slow-request-ns", str(self.slow_request_ns)]
        if self.export_all:
            a += ["--requests", "all"]
        if self.probe:
            a += ["--probe", str(self.probe)]
        return a + self.extra_args

    def _read_header(self) -> dict | None:
        if self.out_path is None:
            return None
        try:
            with open(self.out_path, encoding="utf-8") as f:
                line = f.readline()
        except OSError:
            return None
        if not line.endswith("\n"):
            return None
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            return None
        return obj if isinstance(obj, dict) else None

    def start(self, target: Target, writer: CaptureWriter) -> None:
        self.writer = writer
        self.out_path = writer.stream_path(STREAM)
        self.progress_path = writer.root / "logs" / "ebpf.progress.json"
        self.progress_path.parent.mkdir(exist_ok=True)
        self.spawn(self.argv(target, self.out_path, self.progress_path), writer)
        # attached = the agent wrote its header line (after compile, load and attach)
        wait_for(lambda: not self.alive() or self._read_header() is not None, self.ready_timeout_s, 0.05)
        self.header = self._read_header()
        if self.header is None:
            alive = self.alive()
            self.terminate()
            reason = self._agent_error() or (
                "the eBPF agent did not attach within %.0f s" % self.ready_timeout_s if alive
                else "the eBPF agent exited before attaching")
            self.status, self.reason = FAILED, reason
            writer.set_collector(self.name, status=FAILED, reason=reason, stream=STREAM, format="ebpf-jsonl")
            raise Unavailable(f"eBPF: {reason}")
        h = self.header
        writer.set_collector(self.name, status=OK, stream=STREAM, format="ebpf-jsonl",
                             started_monotonic_ns=self.started_ns,
                             settings={"slow_ns": self.slow_ns, "wake_min_ns": h.get("wake_min_ns"),
                                       "requests": bool(h.get("requests")), "request_export": h.get("request_export"),
                                       "accept_queue": h.get("accept_queue"),
                                       "buffer_pages": h.get("buffer_pages"), "tracepoints": h.get("tracepoints"),
                                       "missing": h.get("missing"), "compile_ms": h.get("compile_ms"),
                                       "attach_ms": h.get("attach_ms"), "follow": target.follow_children})

    def observer_cost(self) -> dict:
        return _steady(super().observer_cost(), getattr(self, "_attached_cpu", None), getattr(self, "_attached_s", 0.0))

    def _agent_error(self) -> str:
        if not self.stderr_path or not self.stderr_path.exists():
            return ""
        return agent_error_line(self.stderr_path.read_bytes()[-20000:].decode(errors="replace"))

    # --- progress / stop ----------------------------------------------------------------------
    def _progress(self) -> dict:
        if self.progress_path is None:
            return {}
        try:
            return json.loads(self.progress_path.read_text())
        except (OSError, ValueError):
            return {}

    def stats(self) -> CollectorStats:
        if self._final is not None:
            return CollectorStats(events=self._final["events"], lost=self._final["lost"], running=False)
        p = self._progress()
        return CollectorStats(events=int(p.get("events") or 0), lost=int(p.get("lost") or 0), running=self.alive(),
                              note=f"{int(p.get('calls') or 0)} calls timed in the kernel" if p else "")

    def _tail_records(self) -> dict:
        """The lost and end records from the end of the stream."""
        out: dict = {}
        if self.out_path is None:
            return out
        try:
            with open(self.out_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 8192))
                tail = f.read().decode(errors="replace").splitlines()
        except OSError:
            return out
        for line in tail:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("type") in ("lost", "end"):
                out[obj["type"]] = obj
        return out

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.proc is None:
            return
        rc = self.terminate()
        tail = self._tail_records()
        progress = self._progress()
        events = int(tail.get("end", {}).get("events", progress.get("events", 0)) or 0)
        lost = int(tail.get("lost", {}).get("count", progress.get("lost", 0)) or 0)
        lost_requests = int(tail.get("lost", {}).get("lost_requests", progress.get("lost_requests", 0)) or 0)
        self._final = {"events": events, "lost": lost}
        if "end" not in tail:
            status = DEGRADED
            reason = self._agent_error() or f"the eBPF agent ended without its aggregates (exit {rc})"
        elif lost or lost_requests:
            parts = []
            if lost:
                parts.append(f"{lost} slow-call records lost (buffer full); aggregates exact")
            if lost_requests:
                parts.append(f"{lost_requests} request records lost (buffer full)")
            status, reason = DEGRADED, "; ".join(parts)
        else:
            status, reason = OK, None
        self.status, self.reason = status, reason
        self._attached_cpu = (tail.get("end") or {}).get("cpu_s_attached")
        self._attached_s = ((tail.get("end") or {}).get("duration_ns") or 0) / 1e9
        if self.writer is not None:
            fields = {"status": status, "events": events, "lost": lost,
                      "calls": int(tail.get("end", {}).get("calls", 0) or 0), "exit_code": rc}
            if self.requests:
                end = tail.get("end", {})
                fields.update(requests=int(end.get("requests", progress.get("requests", 0)) or 0),
                              lost_requests=lost_requests, inflight=int(end.get("inflight", 0) or 0))
            if reason:
                fields["reason"] = reason
            self.writer.set_collector(self.name, **fields)


def _steady(cost: dict, cpu_s, seconds: float) -> dict:
    """The agent's cost once attached (what a long capture pays), next to the whole run's."""
    if cpu_s is None or not seconds:
        return cost
    return {**cost, "cpu_s_attached": round(cpu_s, 3), "cores": round(cpu_s / seconds, 4),
            "cores_with_compile": cost.get("cores")}


def agent_error_line(stderr: str) -> str:
    """One line out of the agent's stderr: its own "error:" line, plus the compiler's first error."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    own = [line.split("ebpf-agent: error:", 1)[1].strip() for line in lines if "ebpf-agent: error:" in line]
    cc = next((line for line in lines if ": error:" in line and "ebpf-agent" not in line), None)
    if own:
        msg = own[-1]
        if cc and "compile" in msg.lower():
            msg = f"{msg.split('<text>')[0].strip()}: {cc}"
        return msg[:300]
    return (lines[-1] if lines else "")[:300]
