"""The source document's decision matrix, evaluated on a capture.

Every report shows every row as triggered / not-triggered / not-measurable with the numbers
behind the status, so a reader sees what was checked and what could not be, not only what fired.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from diag.analyze.context import AnalysisContext
from diag.units import fmt_duration
from diag.syscalls import POLL_NAMES, READ_NAMES, SYNC_NAMES, WRITE_NAMES, FdKind

RW_NAMES = READ_NAMES | WRITE_NAMES

TRIGGERED, NOT_TRIGGERED, NOT_MEASURABLE = "triggered", "not-triggered", "not-measurable"

# Frames of runtime garbage collection or scheduling, per runtime. CPython's cyclic collector
# shows in native frames (perf, py-spy --native); gc.collect() calls show in Python frames.
# Go (pprof, perf on a Go binary): the scheduler's entry points (runtime.mcall -> park_m ->
# schedule -> findRunnable), the collector's workers and assists, and the futex/usleep/osyield
# calls that threads spin and park in.
RUNTIME_FRAMES = ("gc_collect_main", "gc_collect_with_callback", "gc_collect_impl", "deduce_unreachable",
                  "move_unreachable", "subtract_refs", "visit_reachable", "_PyGC_Collect", "gc_collect",
                  "runtime.mcall", "runtime.gcBgMarkWorker", "runtime.gcDrain", "runtime.stopTheWorld",
                  "runtime.schedule", "runtime.park_m", "runtime.futex", "runtime.findRunnable",
                  "runtime.findrunnable", "runtime.gcAssistAlloc", "runtime.markroot", "runtime.scanobject",
                  "runtime.gcMarkDone", "runtime.gcStart", "runtime.bgsweep", "runtime.bgscavenge",
                  "runtime.notesleep", "runtime.usleep", "runtime.osyield", "runtime.stopm")
RUNTIME_SHARE_TRIGGER = 0.05
LONG_POLL_NS = 100_000_000
IO_PATH_MIN_NS = 10_000_000
HIGH_CPI = 1.5


@dataclass
class MatrixRow:
    id: str
    observation: str
    look_first: str
    source: str
    status: str
    evidence: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"id": self.id, "observation": self.observation, "look_first": self.look_first,
                "source": self.source, "status": self.status, "evidence": self.evidence,
                "findings": self.findings}


def _poll_row(ctx: AnalysisContext) -> MatrixRow:
    row = MatrixRow("poll-wait-over-100ms", "epoll_wait (or poll/select) over 100 ms",
                    "readiness events piling up, or the worker that should serve them is blocked",
                    "syscalls (strace / eBPF / perf)", NOT_MEASURABLE, findings=["event-loop-blocked"])
    polls = [e for e in ctx.timed_syscalls if e.name in POLL_NAMES]
    if not polls:
        row.evidence.append("no poll-family calls with durations in the inputs (not traced, or not used)")
        return row
    long = [e for e in polls if (e.dur_ns or 0) >= LONG_POLL_NS]
    with_events = [e for e in long if (e.ret or 0) > 0]
    row.status = TRIGGERED if with_events else NOT_TRIGGERED
    worst = max(polls, key=lambda e: e.dur_ns or 0)
    row.evidence.append(f"{len(polls)} poll waits, {len(long)} over 100 ms ({len(with_events)} returned ready "
                        f"events, {len(long) - len(with_events)} timed out idle); longest {fmt_duration(worst.dur_ns)}")
    if with_events:
        row.evidence.append("a long wait that ends with events is normal on an idle server; it matters when "
                            "it overlaps slow requests")
    return row


def _cpi_row(ctx: AnalysisContext) -> MatrixRow:
    row = MatrixRow("high-cpi", "high cycles per instruction",
                    "CPU pipeline stalls (cache misses, branch mispredictions)", "perf stat (hardware counters)",
                    NOT_MEASURABLE, findings=["cpu-stall"])
    counters = perf_counters(ctx)
    cycles, instructions = counters.get("cycles"), counters.get("instructions")
    if not cycles or not instructions:
        reason = counters.get("reason") or "no hardware counters in the inputs"
        row.evidence.append(f"not measurable here: {reason} (many VMs do not expose cycles/instructions)")
        return row
    cpi = cycles / instructions
    row.status = TRIGGERED if cpi >= HIGH_CPI else NOT_TRIGGERED
    row.evidence.append(f"CPI {cpi:.2f} ({cycles:,} cycles / {instructions:,} instructions; trigger ≥ {HIGH_CPI})")
    return row


def perf_counters(ctx: AnalysisContext) -> dict:
    m = ctx.data.manifest or {}
    perf = (m.get("collectors") or {}).get("perf") or {}
    return perf.get("counters") or {}


def _runtime_row(ctx: AnalysisContext) -> MatrixRow:
    row = MatrixRow("runtime-frames", "runtime scheduling / GC frames frequent in the profile",
                    "GC stop-the-world pauses, or excessive context switching", "stack samples (py-spy / perf)",
                    NOT_MEASURABLE, findings=["gc-pause", "gil-contention"])
    # on-CPU samples only: a goroutine, block or mutex profile counts parked stacks, not time
    samples = [s for s in ctx.data.samples if s.on_cpu is not False]
    if not samples:
        row.evidence.append("no on-CPU stack samples in the inputs")
        return row
    total = sum(s.weight for s in samples)
    seen: dict[int, bool] = {}       # id(frame) -> is a runtime frame: parsers share Frame objects

    def in_runtime(s) -> bool:
        for f in s.frames:
            v = seen.get(id(f))
            if v is None:
                v = seen[id(f)] = f.function.startswith(RUNTIME_FRAMES)
            if v:
                return True
        return False

    hits = sum(s.weight for s in samples if in_runtime(s))
    share = hits / total if total else 0.0
    row.status = TRIGGERED if share >= RUNTIME_SHARE_TRIGGER else NOT_TRIGGERED
    row.evidence.append(f"{hits} of {total} samples ({share:.1%}) in runtime GC/scheduler frames "
                        f"(trigger ≥ {RUNTIME_SHARE_TRIGGER:.0%})")
    if all(s.source == "py-spy" for s in samples) and not any(f.module for s in samples for f in s.frames):
        row.evidence.append("Python-only stacks: automatic GC shows only with native frames (perf or py-spy --native)")
    return row


def _io_path_row(ctx: AnalysisContext) -> MatrixRow:
    row = MatrixRow("io-path", "one syscall's duration ≈ the spike, kernel stack in the filesystem/block layer, "
                               "profiler hot in the caller",
                    "the I/O path: mount options, I/O scheduler, sync policy", "syscalls + kernel stacks + profiler",
                    NOT_MEASURABLE, findings=["disk-sync", "file-io"])
    if not ctx.timed_syscalls:
        row.evidence.append("no syscalls with durations in the inputs")
        return row
    io_calls = [e for e in ctx.timed_syscalls
                if e.name in SYNC_NAMES or (e.fd_kind is FdKind.FILE and e.name in RW_NAMES)]
    worst = max(io_calls, key=lambda e: e.dur_ns or 0, default=None)
    if worst is None or (worst.dur_ns or 0) < IO_PATH_MIN_NS:
        row.status = NOT_TRIGGERED
        row.evidence.append(f"slowest file/sync call {fmt_duration(worst.dur_ns) if worst else 'none'} "
                            f"(trigger ≥ {fmt_duration(IO_PATH_MIN_NS)})")
        return row
    row.status = TRIGGERED
    row.evidence.append(f"{worst.name} of {fmt_duration(worst.dur_ns)} on tid {worst.tid}")
    kernel = [s for s in ctx.samples_in(worst.tid, worst.start_ns, worst.end_ns) if ctx.io_kernel_path(s)]
    if kernel:
        row.evidence.append("kernel stack: " + " -> ".join(ctx.io_kernel_path(kernel[0])[:6]))
    else:
        row.evidence.append("kernel stack: not captured in that window")
    hot = ctx.hot_frames(ctx.samples_in(worst.tid, worst.start_ns - 5_000_000, worst.end_ns + 5_000_000),
                         1, python_only=True)
    if hot:
        row.evidence.append(f"profiler at that moment: {hot[0][0]}")
    return row


def evaluate(ctx: AnalysisContext) -> list[MatrixRow]:
    return [_poll_row(ctx), _cpi_row(ctx), _runtime_row(ctx), _io_path_row(ctx)]
