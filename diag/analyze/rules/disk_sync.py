"""`disk-sync`: synchronous durability (fsync family) on the path of the work.

The document's worked example: a 118 ms fsync explains a 120 ms P99 spike; the kernel stack at
that moment is in the filesystem/block layer, the profiler is hot in the caller.
"""
from __future__ import annotations

from diag.analyze.context import AnalysisContext, fmt_ms
from diag.analyze.rules import severity_for
from diag.model import Evidence, Finding, family

ID = "disk-sync"
MIN_WORST_NS = 1_000_000    # a sync that never takes a millisecond is not worth a finding


def check(ctx: AnalysisContext) -> Finding | None:
    syncs = [e for e in ctx.timed_syscalls if family(e.name) == "sync"]
    if not syncs:
        return None
    total = sum(e.dur_ns or 0 for e in syncs)
    worst = max(syncs, key=lambda e: e.dur_ns or 0)
    worst_ns = worst.dur_ns or 0
    if worst_ns < MIN_WORST_NS:
        return None
    work = ctx.work_time_ns or total
    share = min(1.0, total / work)
    names = sorted({e.name for e in syncs})
    p99 = max((ctx.by_syscall[k].p99_ns for k in ctx.by_syscall if k[0] in names), default=0)
    sources = sorted({e.source for e in syncs})
    evidence = [Evidence(
        source="+".join(sources),
        text=(f"{'/'.join(names)}: {len(syncs)} calls, {fmt_ms(total)} in all ({share:.0%} of the time spent "
              f"in work syscalls), p99 {fmt_ms(p99)}, worst {fmt_ms(worst_ns)} on tid {worst.tid}"),
        window=(worst.start_ns, worst.end_ns))]
    kernel = [s for s in ctx.samples_in(worst.tid, worst.start_ns, worst.end_ns)
              if s.source in ("perf", "ebpf") and ctx.io_kernel_path(s)]
    if kernel:
        path = ctx.io_kernel_path(kernel[0])
        evidence.append(Evidence(source=kernel[0].source,
                                 text=f"kernel stack during the worst {worst.name}: {' -> '.join(path[:6])}",
                                 window=(worst.start_ns, worst.end_ns)))
    py = ctx.samples_in(worst.tid, worst.start_ns - 5_000_000, worst.end_ns + 5_000_000, "py-spy")
    hot = ctx.hot_frames(py, 2, python_only=True)
    if hot:
        evidence.append(Evidence(source="py-spy",
                                 text="Python frames around the worst call: " + ", ".join(f for f, _ in hot),
                                 window=(worst.start_ns, worst.end_ns)))
    return Finding(
        id=ID, severity=severity_for(share, total, worst_ns), share=share,
        summary=f"{worst.name} on the work path: {len(syncs)} calls take {fmt_ms(total)}, worst {fmt_ms(worst_ns)}",
        evidence=tuple(evidence),
        recommendation=("Move fsync off the request path (a background flusher or group commit), or batch "
                        "several writes per sync; if every sync is slow, check the filesystem mount options "
                        "(barrier, data=ordered/journal) and the device's I/O scheduler."),
        impact_ns=total)
