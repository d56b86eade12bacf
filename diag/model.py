"""The normalized records every stream is parsed into, on one time base (CLOCK_MONOTONIC ns).

Parsers produce these; analysis and renderers read only these, never a raw format. Threads are
keyed by OS thread id (tid) everywhere. Records are frozen and slotted: a 1M-line strace log
becomes 1M of them, so they must be small.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from diag.runtime_index import RuntimeIndex

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
    queued_ns: int | None = None         # its connection's wait in the accept queue, when measured
    weight: int = 1                      # requests this record stands for (an exemplar of many)

    @property
    def latency_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def client_start_ns(self) -> int:
        """When the client's wait began: for a connection's first request whose accept-queue
        wait was measured, its handshake; else the request's own start."""
        if self.seq == 0 and self.queued_ns is not None and self.conn_start_ns is not None:
            return min(self.start_ns, self.conn_start_ns - self.queued_ns)
        return self.start_ns

    @property
    def client_latency_ns(self) -> int:
        return self.end_ns - self.client_start_ns


@dataclass(frozen=True, slots=True)
class Wakeup:
    """A target thread that had blocked for a while was woken (eBPF sched:sched_waking, which
    runs in the waker's context): the edge the critical path follows from a wait to its cause.

    `call`/`arg`: the traced call the wakee blocked in (None: not in one) and its futex address
    or fd (with the fd's kind and, for sockets, which side the target is on). The waker: a thread of a target process (`waker_target`) with the traced call it was
    in (`waker_call`, entered at `waker_call_start_ns`) and whether it served a request; or the
    kernel (`waker_irq`: the waking ran on an interrupt stack, `waker_idle`: from an idle CPU); or
    another process (`waker_comm` names it: kernel threads such as jbd2/ or kworker/).
    """

    pid: int
    tid: int
    start_ns: int                # when the wakee blocked
    end_ns: int                  # when it was woken
    call: str | None
    arg: int
    waker_pid: int
    waker_tid: int
    waker_comm: str
    waker_call: str | None = None
    waker_call_start_ns: int | None = None
    waker_target: bool = False
    waker_irq: bool = False
    waker_idle: bool = False
    waker_serving: bool = False
    wakee_serving: bool = False
    fd_kind: FdKind = FdKind.UNKNOWN     # of the fd the wakee's call waited on
    fd_role: str | None = None           # "server" (a client's connection), "out" (an upstream), None


@dataclass(frozen=True, slots=True)
class RunqWait:
    """A target thread runnable but waiting for a CPU (eBPF sched_switch): after being preempted
    (`preempted`) or woken; `call` is the traced call it was inside, if any."""

    pid: int
    tid: int
    start_ns: int
    end_ns: int
    preempted: bool
    call: str | None = None
    serving: bool = False


@dataclass(frozen=True)
class RequestHistogram:
    """Every request the probe saw, exported or not: a log-linear latency histogram per kind of
    latency ("server", "client") and how the probe chose which requests to export."""

    latency: str
    count: int
    slots: tuple[tuple[int, int, int], ...]      # (lower ns, upper ns, count)


@dataclass(frozen=True)
class ProbeCounters:
    """The eBPF probe's own counters at the end of a capture (its `counters` array, by name):
    requests completed, SYNs retransmitted towards the target's listeners, connections accepted..."""

    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class ExportSetting:
    """From `ts_ns` on, the probe exported every request at least `threshold_ns` slow and 1 in
    (`mask` + 1) of the others (threshold 0, mask 0: every request); `rate`: requests per second
    in the second it was decided on."""

    ts_ns: int
    threshold_ns: int
    mask: int
    rate: int


@dataclass(frozen=True, slots=True)
class GilSpan:
    """A run of consecutive samples of the CPython runtime that saw the same GIL state.

    `held` with `tid` the holder's OS thread id (None: held by a thread the sampler could not
    identify), or not `held` (the GIL was free). The samples were read within [start_ns, end_ns];
    the state began at most one sampling period before and ended at most one period after.
    `switches` is how many times the interpreter handed the GIL over inside the span (its own
    counter): above 0 on a held span, other threads held it between samples, unseen.
    """

    tid: int | None
    held: bool
    start_ns: int
    end_ns: int
    samples: int
    switches: int | None = None
    pid: int | None = None


@dataclass(frozen=True, slots=True)
class GcPause:
    """A cyclic-GC collection seen running (`collecting` set) in `samples` consecutive samples,
    read within [start_ns, end_ns] (the collection itself is longer by up to a period per side).

    `generation` is the oldest generation collected (2: a full collection), None when it could not
    be told; `collections` how many collections the interpreter's stats counted over the window
    (more than 1: several ran back to back and were seen as one); `tid` the thread that held the
    GIL while it ran (the thread paying for it).
    """

    start_ns: int
    end_ns: int
    generation: int | None
    samples: int
    collections: int | None = None
    tid: int | None = None
    pid: int | None = None


@dataclass(frozen=True, slots=True)
class RuntimeWindow:
    """When and how a CPython runtime sampler watched one process: the span its GilSpan and GcPause
    records cover. `samples`/`read_errors`/`gc_collections` come from the stream's end line
    (None when the capture was cut before it); `gc_collections` counts every collection per
    generation that completed in the window, seen or not (short gen-0 ones mostly are not)."""

    pid: int
    python: str
    method: str
    rate_hz: int
    start_ns: int
    end_ns: int
    samples: int | None = None
    read_errors: int | None = None
    gc_collections: tuple[int, int, int] | None = None
    gil_switches: int | None = None
    unknown: tuple[str, ...] = ()
    gil_state: tuple[int, int] | None = None   # (address, size) of the GIL's state in the process

    @property
    def period_ns(self) -> int:
        return 1_000_000_000 // max(1, self.rate_hz)


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
    wakeups: list[Wakeup] = field(default_factory=list)
    runq_waits: list[RunqWait] = field(default_factory=list)
    request_hists: dict[str, RequestHistogram] = field(default_factory=dict)
    request_export: list[ExportSetting] = field(default_factory=list)
    probe_counters: dict[str, int] = field(default_factory=dict)
    gil: list[GilSpan] = field(default_factory=list)           # CPython runtime sampler
    gc_pauses: list[GcPause] = field(default_factory=list)
    runtime_windows: list[RuntimeWindow] = field(default_factory=list)
    streams: list[StreamInfo] = field(default_factory=list)
    manifest: dict | None = None
    warnings: list[str] = field(default_factory=list)
    target_pid: int | None = None        # the process the user named (replay --pid), if any
    _runtime_index: "RuntimeIndex | None" = field(default=None, init=False, repr=False, compare=False)

    def extend(self, other: "Dataset") -> None:
        self.syscalls.extend(other.syscalls)
        self.samples.extend(other.samples)
        self.snapshots.extend(other.snapshots)
        self.aggregates.extend(other.aggregates)
        self.requests.extend(other.requests)
        self.wakeups.extend(other.wakeups)
        self.runq_waits.extend(other.runq_waits)
        self.request_hists.update(other.request_hists)
        self.request_export.extend(other.request_export)
        for k, v in other.probe_counters.items():
            self.probe_counters[k] = self.probe_counters.get(k, 0) + v
        self.gil.extend(other.gil)
        self.gc_pauses.extend(other.gc_pauses)
        self.runtime_windows.extend(other.runtime_windows)
        self.streams.extend(other.streams)
        self.warnings.extend(other.warnings)

    def runtime(self) -> "RuntimeIndex":
        """Queries over the CPython runtime records (who held the GIL, was the GC running):
        diag.runtime_index.RuntimeIndex, built on first use and again once records were added."""
        from diag.runtime_index import RuntimeIndex

        cached = self._runtime_index
        if cached is None or cached.source_sizes != (len(self.gil), len(self.gc_pauses), len(self.runtime_windows)):
            cached = RuntimeIndex(self.gil, self.gc_pauses, self.runtime_windows)
            self._runtime_index = cached
        return cached


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
