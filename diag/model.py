"""The normalized records every stream is parsed into, on one time base (CLOCK_MONOTONIC ns).

Parsers produce these; analysis and renderers read only these, never a raw format. Threads are
keyed by OS thread id (tid) everywhere. Records are frozen and slotted: a 1M-line strace log
becomes 1M of them, so they must be small.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from diag.syscalls import FdKind


class Clock(str, Enum):
    """The time base a stream's timestamps were recorded on, before alignment."""

    MONOTONIC = "monotonic"   # CLOCK_MONOTONIC ns: the common base
    REALTIME = "realtime"     # wall clock (strace -t/-tt/-ttt)
    RELATIVE = "relative"     # from the collector's own start (py-spy chrometrace)
    NONE = "none"             # no timestamps at all (py-spy raw / speedscope)


class SyscallEvent(NamedTuple):
    """One completed (or cut-off) system call.

    `start_ns` is when the call was entered; `dur_ns` is None when the trace gives no duration
    (strace without -T, or a call still unfinished when the trace ended). `nbytes` is the byte
    count the call transferred (its return value for the read/write families), else None.

    A named tuple rather than a frozen dataclass: a 1M-line trace makes 1M of them, and a frozen
    dataclass's __init__ (one object.__setattr__ per field) cost 0.93 µs each against 0.26 µs;
    same fields, same immutability, `_replace` for `dataclasses.replace`.
    """

    pid: int
    tid: int
    name: str
    start_ns: int
    dur_ns: int | None
    ret: int | None = None
    errno: str | None = None
    fd: int | None = None
    fd_kind: FdKind = FdKind.UNKNOWN
    nbytes: int | None = None
    source: str = "strace"

    @property
    def end_ns(self) -> int:
        return self.start_ns + (self.dur_ns or 0)


@dataclass(frozen=True, slots=True)
class Frame:
    """One stack frame. `file`/`line` are known for Python frames; `module` (dso) for native."""

    function: str
    file: str | None = None
    line: int | None = None
    module: str | None = None

    def label(self) -> str:
        if self.file:
            return f"{self.function} ({self.file}:{self.line})" if self.line else f"{self.function} ({self.file})"
        if self.module:
            return f"{self.function} [{self.module}]"
        return self.function


@dataclass(frozen=True, slots=True)
class StackSample:
    """One sampled stack of one thread, frames root first.

    `ts_ns` is None for formats without per-sample times (py-spy raw/speedscope); such samples
    feed flame graphs but not timelines. `weight` is how many samples this record stands for
    (folded formats merge identical stacks). `on_cpu` is None when the sampler does not say.
    `dur_ns` is set for off-CPU records (time the thread stayed blocked).
    """

    tid: int
    ts_ns: int | None
    frames: tuple[Frame, ...]
    on_cpu: bool | None = None
    source: str = "py-spy"
    weight: int = 1
    pid: int | None = None
    thread_name: str | None = None
    dur_ns: int | None = None


@dataclass(frozen=True, slots=True)
class ProcessSnapshot:
    """Periodic facts about the target process; counters are cumulative since process start."""

    ts_ns: int
    pid: int
    cpu_user_s: float
    cpu_system_s: float
    ctx_voluntary: int
    ctx_involuntary: int
    num_fds: int
    num_threads: int
    rss_bytes: int = 0
    socket_states: tuple[tuple[str, int], ...] = ()   # (TCP state, count), e.g. ("TIME_WAIT", 12)
    listen_queue: int | None = None        # current accept-queue length of its listeners (max)
    listen_backlog: int | None = None      # configured backlog of that listener
    listen_overflows: int | None = None    # /proc/net/netstat TcpExt ListenOverflows (host-wide)
    listen_drops: int | None = None        # /proc/net/netstat TcpExt ListenDrops (host-wide)


@dataclass(frozen=True, slots=True)
class SyscallAggregate:
    """In-kernel aggregate for one (syscall, fd kind): exact counts even when events are lost."""

    name: str
    fd_kind: FdKind
    count: int
    total_ns: int
    log2_hist_ns: tuple[tuple[int, int], ...] = ()   # (bucket lower bound ns, count)
    bytes_total: int = 0
    source: str = "ebpf"
    max_ns: int = 0          # largest call seen (read without locking across CPUs: indicative)


class Request(NamedTuple):
    """One server-side request on one connection, rebuilt from syscalls (diag/analyze/requests.py)
    or summarized in the kernel (eBPF probe): from the end of the read that brought its first
    bytes to the end of the last write of its response. A named tuple, as SyscallEvent: a busy
    server's trace rebuilds hundreds of thousands of them.

    `family_ns` is time the serving thread spent in each syscall family while the request was
    open, when the source summarized it (eBPF); None when analysis derives it from events.
    `upstream_ns` is time in reads/writes/connects on sockets the target opened itself.
    """

    pid: int
    tid: int                     # the thread that read the request
    fd: int
    start_ns: int
    end_ns: int
    bytes_in: int
    bytes_out: int
    reads: int
    writes: int
    first_write_ns: int | None = None    # end of the first response write (time to first byte)
    write_tid: int | None = None         # the thread that wrote the response, if another
    conn_start_ns: int | None = None     # accept time of its connection, when seen
    seq: int = 0                         # index of the request on its connection (0 = first)
    family_ns: tuple[tuple[str, int], ...] | None = None
    source: str = "strace"

    @property
    def latency_ns(self) -> int:
        return self.end_ns - self.start_ns


@dataclass
class StreamInfo:
    """One parsed stream: where it came from, its clock, and how it was put on CLOCK_MONOTONIC."""

    name: str                   # collector or file label ("strace", "py-spy", "trace.txt")
    path: str
    format: str                 # "strace", "perf-script", "pyspy-speedscope", ...
    clock: Clock
    offset_ns: int = 0          # added to the stream's own times to get CLOCK_MONOTONIC
    uncertainty_ns: int | None = None   # None: not anchored to the common clock at all
    records: int = 0
    warnings: list[str] = field(default_factory=list)
    # The clock the stream's times were read on: streams of one domain share it ("realtime",
    # "monotonic", "perf"; "relative:FILE" is a clock of its own; None: no timestamps).
    domain: str | None = None
    method: str = ""            # how it was put on the report's time base (diag/align.py)
    side_by_side: bool = False  # could not be aligned: its times are not crossed with the others
    meta: dict = field(default_factory=dict)   # what the stream says of itself (pprof: duration, period)

    @property
    def aligned(self) -> bool:
        return not self.side_by_side and (self.clock is Clock.MONOTONIC or self.uncertainty_ns is not None)


@dataclass
class Dataset:
    """Everything one diagnosis saw, normalized: the input of analysis."""

    syscalls: list[SyscallEvent] = field(default_factory=list)
    samples: list[StackSample] = field(default_factory=list)
    snapshots: list[ProcessSnapshot] = field(default_factory=list)
    aggregates: list[SyscallAggregate] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)     # summarized at the source (eBPF)
    streams: list[StreamInfo] = field(default_factory=list)
    manifest: dict | None = None
    warnings: list[str] = field(default_factory=list)
    target_pid: int | None = None        # the process the user named (replay --pid), if any

    def extend(self, other: "Dataset") -> None:
        self.syscalls.extend(other.syscalls)
        self.samples.extend(other.samples)
        self.snapshots.extend(other.snapshots)
        self.aggregates.extend(other.aggregates)
        self.requests.extend(other.requests)
        self.streams.extend(other.streams)
        self.warnings.extend(other.warnings)


@dataclass(frozen=True, slots=True)
class Evidence:
    """One fact behind a finding, from one stream, over one time window (CLOCK_MONOTONIC ns)."""

    source: str                  # "strace", "perf", "py-spy", "ebpf", "process"
    text: str
    window: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """A ranked root cause. `id` comes from the fixed taxonomy in docs/report-schema.md."""

    id: str
    severity: str                # info | warning | critical
    share: float                 # fraction of slow-request (or affected) time it explains, 0..1
    summary: str
    evidence: tuple[Evidence, ...]
    recommendation: str
    impact_ns: int = 0           # absolute time it explains
