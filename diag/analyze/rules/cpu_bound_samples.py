"""`cpu-bound` from stack samples alone: no syscall stream rebuilt requests (perf alone, py-spy
alone, a Go CPU profile), but the samples still say how busy the target was and which code
burned its CPU.

It never runs when requests exist (then `cpu_bound.py` measures the share of slow-request time).
Its share is the target's on-CPU share of the sampled window (the busiest thread's, capped at 1),
or, where the samples carry no times, the hottest code path's share of the samples. It reaches
warning only when the samples show a busy target (at least half a CPU on average over the
window); never critical: without syscalls nothing proves that requests waited for it.
"""
from __future__ import annotations

from diag.analyze.context import AnalysisContext
from diag.analyze.matrix import RUNTIME_FRAMES
from diag.analyze.profile import hottest, hottest_paths, target_profile
from diag.model import Evidence, Finding

ID = "cpu-bound"
MIN_SAMPLES = 20
BUSY_CORES = 0.5


def check(ctx: AnalysisContext) -> Finding | None:
    if ctx.req is not None or ctx.timed_syscalls or ctx.data.requests:
        return None
    pid = ((ctx.data.manifest or {}).get("target") or {}).get("pid") or ctx.data.target_pid
    prof = target_profile(ctx.data.samples, pid, RUNTIME_FRAMES, ctx.data.streams)
    if prof is None or prof.total < MIN_SAMPLES:
        return None
    hot = hottest(prof)
    paths = hottest_paths(prof)
    top_share = prof.share(hot[0][1]) if hot else 0.0
    src = "+".join(prof.sources)
    ev = []
    if prof.cores is not None:
        approx = "≥" if prof.cores_lower_bound else "≈"
        busy = (f"{prof.label} kept {approx}{prof.cores:.2f} CPUs busy over {prof.window_ns / 1e9:.1f} s "
                f"({prof.total:,} samples at ≈{prof.rate_hz:.0f} Hz"
                + (f", {prof.total / prof.all_total:.0%} of all on-CPU samples" if prof.all_total > prof.total else "")
                + ("; py-spy chrometrace keeps only stack changes: a lower bound" if prof.cores_lower_bound else "")
                + ")")
    else:
        busy = (f"{prof.label}: {prof.total:,} samples" +
                (f", {prof.total / prof.all_total:.0%} of all on-CPU samples" if prof.all_total > prof.total else "") +
                " (no timestamps: how busy it was over the window cannot be told)")
    ev.append(Evidence(src, busy + f"; target chosen: {prof.how}"))
    ev.append(Evidence(src, "hottest frames: " + ", ".join(f"{k} ({prof.share(n):.0%})" for k, n in hot)))
    if paths and paths[0][0] != hot[0][0]:
        ev.append(Evidence(src, "hottest code paths (leaf <- callers): " +
                           "; ".join(f"{k} ({prof.share(n):.0%})" for k, n in paths[:2])))
    if len(prof.threads) > 1 or (prof.threads and prof.threads[0][0] != "all threads"):
        ev.append(Evidence(src, "busiest threads: " + ", ".join(f"{k} ({prof.share(n):.0%})" for k, n in prof.threads[:4])))
    if prof.share(prof.runtime) >= 0.01:
        ev.append(Evidence(src, f"runtime GC/scheduler frames in {prof.share(prof.runtime):.0%} of the samples"))
    if prof.cores is not None:
        share = min(1.0, prof.cores)
        busy_enough = prof.cores >= BUSY_CORES
    else:
        share = top_share
        busy_enough = False
    sev = "warning" if busy_enough else "info"
    where = hot[0][0] if hot else "?"
    summary = (f"CPU samples only: {prof.label} " +
               (f"busy on {'≥' if prof.cores_lower_bound else '≈'}{prof.cores:.2f} CPUs, "
                if prof.cores is not None else "") +
               f"{top_share:.0%} of its samples in {where}" +
               (f"; runtime GC/scheduler frames in {prof.share(prof.runtime):.0%} (decision matrix: GC or "
                f"scheduling)" if prof.share(prof.runtime) >= 0.05 else ""))
    return Finding(ID, sev, share, summary, tuple(ev),
                   "Make the hottest code cheaper (algorithm, caching, fewer allocations) or move it off the "
                   "request path; for CPU-heavy Python threads, more worker processes. Trace syscalls too "
                   "(diag attach, or strace -f -ttt -T -yy) to measure how much of request latency it explains.",
                   0)
