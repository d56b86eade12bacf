"""The process sampler: CPU, context switches, fds, threads and socket states of the target, and of
every process of its tree (each snapshot names its pid; a member that exits just stops appearing).

Runs as a thread inside diag (psutil and /proc reads, no ptrace, nothing stops the target) and
appends one JSON line per interval to `streams/process.jsonl` (format diag.process/1).
Socket facts come from the target's own network namespace (/proc/PID/net/...): TIME_WAIT sockets
have no owner, so they are counted on the local ports the target listens on; the accept queue of
each listener is the `rx_queue` column of its LISTEN line; listen overflows/drops are the
host-wide TcpExt counters of /proc/net/netstat.
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

from diag.capture.bundle import CaptureWriter
from diag.capture.clock import monotonic_ns
from diag.collect.base import FAILED, NOT_APPLICABLE, OK, CollectorStats, Target, Unavailable

TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
              "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN",
              "0B": "CLOSING"}


def read_tcp_table(pid: int) -> list[tuple[int, str, int, int]]:
    """(local port, state, rx_queue, socket inode) for every TCP socket in the target's netns."""
    rows = []
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10:
                continue
            local, state, queues, inode = parts[1], parts[3], parts[4], parts[9]
            port = int(local.rsplit(":", 1)[1], 16)
            rx = int(queues.split(":")[1], 16)
            rows.append((port, TCP_STATES.get(state, state), rx, int(inode)))
    return rows


def read_listen_counters(pid: int) -> tuple[int | None, int | None]:
    """(ListenOverflows, ListenDrops) from /proc/PID/net/netstat."""
    try:
        lines = Path(f"/proc/{pid}/net/netstat").read_text().splitlines()
    except OSError:
        return None, None
    for head, vals in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            d = dict(zip(head.split()[1:], vals.split()[1:]))
            return int(d.get("ListenOverflows", 0)), int(d.get("ListenDrops", 0))
    return None, None


def socket_inodes(pid: int) -> set[int]:
    out = set()
    try:
        fds = Path(f"/proc/{pid}/fd")
        for fd in fds.iterdir():
            try:
                link = fd.readlink() if hasattr(fd, "readlink") else Path(fd.resolve())
            except OSError:
                continue
            s = str(link)
            if s.startswith("socket:["):
                out.add(int(s[8:-1]))
    except OSError:
        pass
    return out


def snapshot(proc: psutil.Process) -> dict:
    """One sample of the target, as a dict of ProcessSnapshot fields."""
    pid = proc.pid
    with proc.oneshot():
        cpu = proc.cpu_times()
        ctx = proc.num_ctx_switches()
        snap = {"ts_ns": monotonic_ns(), "pid": pid, "cpu_user_s": cpu.user, "cpu_system_s": cpu.system,
                "ctx_voluntary": ctx.voluntary, "ctx_involuntary": ctx.involuntary,
                "num_fds": proc.num_fds(), "num_threads": proc.num_threads(), "rss_bytes": proc.memory_info().rss}
    table = read_tcp_table(pid)
    mine = socket_inodes(pid)
    listen_ports = {port for port, state, _, inode in table if state == "LISTEN" and inode in mine}
    states: Counter[str] = Counter()
    queue = None
    for port, state, rx, inode in table:
        if inode in mine:
            states[state] += 1
            if state == "LISTEN":
                queue = max(queue or 0, rx)
        elif state == "TIME_WAIT" and port in listen_ports:
            states["TIME_WAIT"] += 1     # server-side active closes on our listening ports
        elif state == "TIME_WAIT" and inode == 0:
            states["TIME_WAIT_OTHER"] += 1   # client-side, or another process's; shown apart
    snap["socket_states"] = sorted(states.items())
    snap["listen_queue"] = queue
    snap["listen_overflows"], snap["listen_drops"] = read_listen_counters(pid)
    return snap


class ProcessSampler:
    """Samples the target every `interval_s` from a thread of diag itself."""

    name = "process"

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.events = 0
        self.error: str | None = None
        self.writer: CaptureWriter | None = None
        self.cpu_s: float | None = None

    def observer_cost(self) -> dict:
        return {"cpu_s_capture": round(self.cpu_s, 3)} if self.cpu_s is not None else {}

    def check(self, target: Target) -> str | None:
        if not psutil.pid_exists(target.pid):
            return f"pid {target.pid} does not exist"
        try:
            psutil.Process(target.pid).num_fds()
        except psutil.AccessDenied:
            return f"cannot read /proc/{target.pid}/fd: run diag as the target's user or as root"
        except psutil.NoSuchProcess:
            return f"pid {target.pid} exited"
        return None

    def start(self, target: Target, writer: CaptureWriter) -> None:
        self.writer = writer
        self.target = target
        try:
            self.proc = psutil.Process(target.pid)
        except psutil.NoSuchProcess:
            raise Unavailable(f"pid {target.pid} exited")
        self.procs: dict[int, psutil.Process] = {target.pid: self.proc}
        path = writer.stream_path("process.jsonl")
        self._out = open(path, "w", buffering=1)
        self._out.write(json.dumps({"format": "diag.process/1", "interval_s": self.interval_s,
                                    "pid": target.pid}) + "\n")
        writer.set_collector(self.name, status=OK, stream="process.jsonl", format="process-jsonl",
                             settings={"interval_s": self.interval_s}, started_monotonic_ns=monotonic_ns())
        self._thread = threading.Thread(target=self._run, name="diag-process-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self.cpu_s = time.thread_time()

    def _members(self) -> list[psutil.Process]:
        """The target and the members of its tree alive now (psutil objects kept, so that CPU
        times stay per process)."""
        for pid in sorted(self.target.pids()):
            if pid not in self.procs:
                try:
                    self.procs[pid] = psutil.Process(pid)
                except psutil.NoSuchProcess:
                    self.procs[pid] = None
        return [p for p in self.procs.values() if p is not None]

    def _loop(self) -> None:
        while True:
            sampled = 0
            for proc in self._members():
                try:
                    self._out.write(json.dumps(snapshot(proc)) + "\n")
                    self.events += 1
                    sampled += 1
                except (psutil.NoSuchProcess, ProcessLookupError):
                    self.procs[proc.pid] = None       # exited (a recycled worker): not again
                except Exception as e:  # a sampler error degrades, never kills, the capture
                    self.error = f"{type(e).__name__}: {e}"
                    return
            if not sampled and not self.procs.get(self.target.pid):
                return
            if self._stop.wait(self.interval_s):
                return

    def stats(self) -> CollectorStats:
        return CollectorStats(events=self.events, running=bool(self._thread and self._thread.is_alive()),
                              note=self.error or "")

    def begin_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        if hasattr(self, "_out") and not self._out.closed:
            self._out.close()
        if self.writer:
            self.writer.set_collector(self.name, events=self.events,
                                      status=FAILED if self.error and not self.events else OK,
                                      reason=self.error)


__all__ = ["ProcessSampler", "NOT_APPLICABLE"]
