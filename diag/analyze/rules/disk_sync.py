"""`disk-sync`: synchronous durability (fsync family) on the path of the work.

The document's worked example: a 118 ms fsync explains a 120 ms P99 spike; the kernel stack at
that moment is in the filesystem/block layer, the profiler is hot in the caller.
"""
from __future__ import annotations

from diag.analyze.context import AnalysisContext
from diag.units import fmt_duration
from diag.analyze.rules import severity_for
from diag.model import Evidence, Finding
from diag.syscalls import family

ID = "disk-sync"
MIN_WORST_NS = 100_000      # without requests: syncs that never take 0.1 ms are not worth a finding
MIN_FALLBACK_SHARE = 0.2    # ... nor syncs that are not a real part of the work syscalls' time


RECOMMENDATION = ("Move fsync off the request path (a background flusher or group commit), or batch "
                  "several writes per sync; if every sync is slow, check the filesystem mount options "
                  "(barrier, data=ordered/journal) and the device's I/O scheduler.")


def check(ctx: AnalysisContext) -> Finding | None:
    if ctx.req is not None and ctx.req.slow:
        return _from_requests(ctx)
    return _from_syscalls(ctx)


def _from_requests(ctx: AnalysisContext) -> Finding | None:
    from diag.analyze.rules.common import time_finding

    def on_loop(ra):
        loops = sorted({s.request.tid for s in ra.slow if s.request.tid in ctx.polling_tids and s.breakdown.get("sync")})
        if loops:
            yield Evidence("syscalls", f"the fsyncs run on event-loop thread(s) {loops}: every connection of "
                                       "the loop waits for each one")

    return time_finding(
        ctx, ID, "sync", "fsync-family calls", "fsync", lambda c: family(c.name) == "sync", "",
        "Python frames of the serving threads",
        "fsync on the request path: {share:.0%} of slow-request time, {per_req} per slow request",
        RECOMMENDATION, extra=on_loop)


def _from_syscalls(ctx: AnalysisContext) -> Finding | None:
    """No request stream: the share of time spent in work syscalls."""
    rows = {k: st for k, st in ctx.by_syscall.items() if family(k[0]) == "sync"}
    if not rows:
        return None
    count = sum(st.count for st in rows.values())
    total = sum(st.total_ns for st in rows.values())
    worst_ns = max(st.max_ns for st in rows.values())
    if worst_ns < MIN_WORST_NS:
        return None
    work = ctx.work_time_ns or total
    share = min(1.0, total / work)
    if share < MIN_FALLBACK_SHARE:
        return None
    names = sorted({k[0] for k in rows})
    p99 = max(st.p99_ns for st in rows.values())
    approx = any(st.approx for st in rows.values())
    syncs = [e for e in ctx.timed_syscalls if family(e.name) == "sync"]
    worst = max(syncs, key=lambda e: e.dur_ns or 0, default=None)
    sources = sorted({e.source for e in syncs}) or ["ebpf"]
    window = (worst.start_ns, worst.end_ns) if worst else None
    where = f" on tid {worst.tid}" if worst else ""
    evidence = [Evidence(
        source="+".join(sources),
        text=(f"{'/'.join(names)}: {count:,} calls, {fmt_duration(total)} in all ({share:.0%} of the time spent "
              f"in work syscalls), p99 {'≈' if approx else ''}{fmt_duration(p99)}, worst {fmt_duration(worst_ns)}{where}"),
        window=window)]
    if worst is not None:
        kernel = [s for s in ctx.samples_in(worst.tid, worst.start_ns, worst.end_ns)
                  if s.source in ("perf", "ebpf") and ctx.io_kernel_path(s)]
        if kernel:
            path = ctx.io_kernel_path(kernel[0])
            evidence.append(Evidence(source=kernel[0].source,
                                     text=f"kernel stack during the worst {worst.name}: {' -> '.join(path[:6])}",
                                     window=window))
        py = ctx.samples_in(worst.tid, worst.start_ns - 5_000_000, worst.end_ns + 5_000_000, "py-spy")
        hot = ctx.hot_frames(py, 2, python_only=True)
        if hot:
            evidence.append(Evidence(source="py-spy",
                                     text="Python frames around the worst call: " + ", ".join(f for f, _ in hot),
                                     window=window))
    return Finding(
        id=ID, severity=severity_for(share, total, worst_ns), share=share,
        summary=f"{'/'.join(names)} on the work path: {count:,} calls take {fmt_duration(total)}, worst {fmt_duration(worst_ns)}",
        evidence=tuple(evidence),
        recommendation=RECOMMENDATION, impact_ns=total)
