"""`gc-pause`: the runtime's garbage collector stops the request path.

CPython's cyclic collector runs on whichever thread triggered it, holding the GIL: that thread's
request stalls, and every other thread waiting for the GIL stalls behind it. The runtime sampler
reads the interpreter's `collecting` flag from outside (diag/pyruntime/); the critical path
attributes GIL waits spent behind a collecting holder to GC (diag.analyze.blame), and a request
whose own thread collected pays the overlap itself. Without the sampler, stack samples inside the
collector (native frames from perf on an interpreter with symbols, or a gc.collect() frame) are
the evidence.
"""
from __future__ import annotations

from diag.analyze.blame import GC
from diag.analyze.context import AnalysisContext
from diag.analyze.matrix import RUNTIME_FRAMES
from diag.analyze.rules.common import MIN_SHARE, severity, slow_window
from diag.model import Evidence, Finding
from diag.units import fmt_duration

ID = "gc-pause"
GC_FRAMES = tuple(f for f in RUNTIME_FRAMES if "gc" in f.lower() or "unreachable" in f or "refs" in f) + ("collect",)
RECOMMENDATION = ("Allocate fewer container objects per request; raise the GC thresholds (gc.set_threshold) or "
                  "gc.freeze() long-lived objects after start-up so full collections scan less; in CPython 3.12+ "
                  "check gc.get_stats() for how often generation 2 runs.")


def _is_gc(frame) -> bool:
    return frame.function.startswith(GC_FRAMES[:-1]) or (frame.function == "collect" and (frame.file or "") in ("", "gc"))


def check(ctx: AnalysisContext) -> Finding | None:
    ra = ctx.req
    if ra is None or not ra.slow:
        return None
    if ctx.data.gc_pauses or ctx.data.runtime_windows:
        return _from_runtime(ctx)
    return _from_stacks(ctx)


def _from_runtime(ctx: AnalysisContext) -> Finding | None:
    ra = ctx.req
    tot = ra.slow_total_ns
    behind = ra.blamed(root=GC)
    own = sum(ctx.own_gc_ns(sr) for sr in ra.slow)
    ns = behind + own
    share = ns / tot if tot else 0.0
    if share < MIN_SHARE:
        return None
    w0, w1 = slow_window(ra.slow) or (0, 0)
    pauses = ctx.data.runtime().gc_pauses_in(min(sr.request.start_ns for sr in ra.slow),
                                             max(sr.request.end_ns for sr in ra.slow))
    method = "; ".join(sorted({w.method for w in ctx.data.runtime_windows})) or "runtime sampler"
    period = max((w.period_ns for w in ctx.data.runtime_windows), default=5_000_000)
    # collections seen in one sample only lasted less than a sampling period: counted, not timed
    long = [p for p in pauses if p.samples > 1]
    pauses = long or pauses
    durs = sorted(p.end_ns - p.start_ns + period for p in pauses)
    gens = sorted({p.generation for p in pauses if p.generation is not None})
    evidence = [Evidence("ebpf (wakeups) + runtime",
                         f"{fmt_duration(ns)} of {fmt_duration(tot)} ({share:.0%}) of slow-request time stopped by "
                         f"the cyclic garbage collector: {fmt_duration(behind)} waiting for the GIL while another "
                         f"thread collected, {fmt_duration(own)} collecting on the request's own thread",
                         (w0, w1) if w1 else None)]
    if durs:
        evidence.append(Evidence("runtime", f"{len(durs)} collections lasting more than a sampling period over the slow requests, "
                                            f"{fmt_duration(durs[len(durs) // 2])} median, {fmt_duration(durs[-1])} "
                                            f"the longest (±{fmt_duration(period)}); generation "
                                            f"{', '.join(map(str, gens)) if gens else 'unknown'}",
                                 (pauses[-1].start_ns, pauses[-1].end_ns)))
    evidence.append(Evidence("runtime", f"read from outside the interpreter: {method}"))
    per_req = ns / len(ra.slow)
    return Finding(ID, severity(share, per_req), share,
                   f"garbage collection stops requests: {share:.0%} of slow-request time, {fmt_duration(per_req)} "
                   f"per slow request" + (f", generation {max(gens)} collections" if gens else ""),
                   tuple(evidence), RECOMMENDATION, ns)


def _from_stacks(ctx: AnalysisContext) -> Finding | None:
    ra = ctx.req
    samples = [s for sr in ra.slow for s in sr.samples if s.source in ("perf", "py-spy")]
    total = sum(s.weight for s in samples)
    if not total:
        return None
    gc = sum(s.weight for s in samples if any(_is_gc(f) for f in s.frames))
    share = gc / total
    if share < 0.1:
        return None
    sev = "warning" if share >= 0.25 else "info"
    return Finding(ID, sev, share, f"garbage collection in {share:.0%} of the stacks sampled during slow requests",
                   (Evidence("+".join(sorted({s.source for s in samples})),
                             f"{gc} of {total} samples in slow requests inside the collector (stack frames; no "
                             f"runtime sampler in this capture)", slow_window(ra.slow)),),
                   RECOMMENDATION, 0)
