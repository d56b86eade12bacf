"""Small synthetic captures for the rules' unit tests: requests with their time per family, the
calls of their threads, wakeups, snapshots, samples, without any tool or parser."""
from __future__ import annotations

from diag.analyze.context import AnalysisContext
from diag.model import (Dataset, Frame, GcPause, GilSpan, ProcessSnapshot, Request, RuntimeWindow, StackSample,
                        SyscallEvent, Wakeup)
from diag.syscalls import FdKind

MS = 1_000_000
PID = 100


def request(i: int, latency_ms: float, tid: int = 10, fd: int = 5, gap_ms: float = 100, seq: int | None = None,
            reads: int = 1, writes: int = 1, bytes_in: int = 100, bytes_out: int = 200, queued_ms: float | None = None,
            **families_ms: float) -> Request:
    """Request number i of a capture, each `gap_ms` apart; families_ms: time per family (sync=5...)."""
    start = int((i + 1) * gap_ms * MS)
    conn_start = start - MS if queued_ms is not None else None
    return Request(pid=PID, tid=tid, fd=fd, start_ns=start, end_ns=start + int(latency_ms * MS),
                   bytes_in=bytes_in, bytes_out=bytes_out, reads=reads, writes=writes,
                   conn_start_ns=conn_start, seq=i if seq is None else seq,
                   family_ns=tuple(sorted((k, int(v * MS)) for k, v in families_ms.items())), source="ebpf",
                   queued_ns=int(queued_ms * MS) if queued_ms is not None else None)


def call(name: str, start_ms: float, dur_ms: float, tid: int = 10, fd: int | None = 3,
         kind: FdKind = FdKind.FILE, ret: int = 0, source: str = "ebpf") -> SyscallEvent:
    """One call; `source="strace"` for a complete stream that requests are rebuilt from (eBPF
    per-call events are a subset of the calls, never rebuilt into requests)."""
    return SyscallEvent(pid=PID, tid=tid, name=name, start_ns=int(start_ms * MS), dur_ns=int(dur_ms * MS), ret=ret,
                        fd=fd, fd_kind=kind, source=source)


def wake(tid: int, start_ms: float, end_ms: float, waker: int, call_name: str = "futex", arg: int = 0xA0,
         waker_call: str | None = "futex", waker_target: bool = True, comm: str = "srv", irq: bool = False) -> Wakeup:
    return Wakeup(pid=PID, tid=tid, start_ns=int(start_ms * MS), end_ns=int(end_ms * MS), call=call_name, arg=arg,
                  waker_pid=PID if waker_target else 7, waker_tid=waker, waker_comm=comm, waker_call=waker_call,
                  waker_target=waker_target, waker_irq=irq)


def sample(tid: int, t_ms: float, *functions: str, file: str = "app.py") -> StackSample:
    frames = tuple(Frame(function=f, file=file, line=i + 1) for i, f in enumerate(functions))
    return StackSample(tid=tid, ts_ns=int(t_ms * MS), frames=frames, on_cpu=True, source="py-spy", pid=PID)


def snapshot(t_ms: float, cpu_s: float = 0.0, time_wait: int = 0, queue: int | None = None, overflows: int | None = None,
             drops: int | None = None, pid: int = PID) -> ProcessSnapshot:
    states = (("TIME_WAIT", time_wait),) if time_wait else ()
    return ProcessSnapshot(ts_ns=int(t_ms * MS), pid=pid, cpu_user_s=cpu_s, cpu_system_s=0.0, ctx_voluntary=0,
                           ctx_involuntary=0, num_fds=10, num_threads=4, socket_states=states, listen_queue=queue,
                           listen_backlog=128, listen_overflows=overflows, listen_drops=drops)


def runtime(gil_spans=(), gc=(), gil_addr: int = 0x1000) -> dict:
    """Runtime sampler records: GIL holder spans [(tid, start_ms, end_ms)], GC pauses
    [(start_ms, end_ms, generation, tid)]."""
    window = RuntimeWindow(pid=PID, python="3.11", method="test", rate_hz=200, start_ns=0, end_ns=10**12,
                           gil_state=(gil_addr, 208))
    spans = [GilSpan(tid=t, held=True, start_ns=int(a * MS), end_ns=int(b * MS), samples=max(1, int((b - a) / 5)),
                     pid=PID) for t, a, b in gil_spans]
    pauses = [GcPause(start_ns=int(a * MS), end_ns=int(b * MS), generation=g, samples=max(2, int((b - a) / 5)),
                      tid=t, pid=PID) for a, b, g, t in gc]
    return {"gil": spans, "gc_pauses": pauses, "runtime_windows": [window]}


def ctx(requests=(), syscalls=(), wakeups=(), samples=(), snapshots=(), python: bool = False, counters=None,
        **more) -> AnalysisContext:
    manifest = {"target": {"pid": PID, "python": python}, "clock": {}}
    data = Dataset(requests=list(requests), syscalls=list(syscalls), wakeups=list(wakeups), samples=list(samples),
                   snapshots=list(snapshots), manifest=manifest, probe_counters=dict(counters or {}), **more)
    return AnalysisContext(data)


def steady(n: int = 100, latency_ms: float = 1.0, **families_ms) -> list[Request]:
    """n ordinary requests (the rest of a capture around a few slow ones)."""
    return [request(i, latency_ms, tid=10 + i % 4, fd=5 + i % 4, **families_ms) for i in range(n)]


def sock(name: str, start_ms: float, dur_ms: float, ret: int = 0, fd: int = 5, tid: int = 10) -> SyscallEvent:
    """A call on a socket in a complete (strace) stream: reads and writes return their byte count,
    accept the new connection's fd (`fd` is then the listener), connect and close 0."""
    return call(name, start_ms, dur_ms, tid=tid, fd=fd, kind=FdKind.SOCKET, ret=ret, source="strace")
