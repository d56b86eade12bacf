"""`cpu-bound`: request code on CPU dominates slow requests.

The time of a slow request that no syscall of its thread covers is user-space time: running on a
CPU, or runnable and waiting for one. In a threaded Python server the request threads also wait
for the GIL while other request threads run their Python code: with the probe's wakeups and the
runtime sampler those waits are attributed to the holders (diag.analyze.blame), and when the
holders serve requests the time is this finding's too: the handler's own code is what to fix
(or more processes). The sampled frames of the serving threads name the code. Requests served by
an event loop are `event-loop-blocked`'s, not this rule's.
"""
from __future__ import annotations

from diag.analyze.blame import CPU, GIL, RUNQ, SERVING
from diag.analyze.context import AnalysisContext
from diag.units import fmt_duration, ladder
from diag.analyze.crossing import hot_frames_any
from diag.analyze.rules.common import frames_line, holder_frames_line, read_loop_ns, slow_window, tiny_reads
from diag.model import Evidence, Finding

ID = "cpu-bound"
MIN_SHARE = 0.5


def check(ctx: AnalysisContext) -> Finding | None:
    ra = ctx.req
    if ra is None or not ra.slow:
        return None
    slow = [s for s in ra.slow if s.request.tid not in ctx.polling_tids]
    # the request's own time in the garbage collector is gc-pause's, in a byte-by-byte read loop
    # (and its GIL hand-offs) small-reads'
    user = sum(max(0, s.breakdown.get("user", 0) - ctx.own_gc_ns(s) - read_loop_ns(ctx, s)) for s in slow)
    runq = sum(s.breakdown.get("runq", 0) for s in slow)
    # GIL waits behind other request threads running their code: the same code, queued
    gil = [b for s in slow if not tiny_reads(s.request) for b in s.blame
           if b.via == GIL and b.role == SERVING and b.root in (CPU, RUNQ)]
    gil_ns = sum(b.ns for b in gil)
    # CPU as a resource: running, or runnable and waiting for a CPU (measured by eBPF where it
    # ran; without it, waiting is inside "user"). Severity follows the running part.
    share = (user + runq + gil_ns) / ra.slow_total_ns if ra.slow_total_ns else 0.0
    if share < MIN_SHARE:
        return None
    per_req = (user + gil_ns) / len(ra.slow)
    text = (f"{fmt_duration(user + runq)} of {fmt_duration(ra.slow_total_ns)} ({share:.0%}) of slow-request time outside any "
            f"syscall: {fmt_duration(per_req)} of user-space time per slow request")
    if runq:
        text += f"; of that, {fmt_duration(runq)} runnable but waiting for a CPU (eBPF sched_switch)"
    evidence = [Evidence("syscalls+ebpf" if runq else "syscalls", text, slow_window(slow))]
    if gil_ns:
        holders = sorted({b.holder for b in gil if b.holder is not None})
        evidence.append(Evidence("ebpf (wakeups) + runtime", f"{fmt_duration(gil_ns)} more waiting for the GIL while "
                                                             f"{len(holders)} other request thread(s) ran their own "
                                                             f"request code: one core of Python at a time",
                                 slow_window(slow)))
    f = frames_line(slow, "hottest Python frames in slow requests")
    if f:
        evidence.append(f)
    h = holder_frames_line(ctx, gil, "what the GIL holders ran meanwhile") if gil else None
    if h:
        evidence.append(h)
    else:
        hot = hot_frames_any([x for s in slow for x in s.samples])
        if hot:
            evidence.append(Evidence("perf", "hottest frames in slow requests: " + ", ".join(h for h, _ in hot),
                                     slow_window(slow)))
    used = ctx.process_cpu()
    if used:
        cpu, dt, per = used
        who = "target" if len(per) == 1 else f"the {len(per)} processes"
        evidence.append(Evidence("process", f"{who} used {cpu / dt:.0%} of a CPU over the capture "
                                            f"({cpu:.2f} CPU-s in {dt:.1f} s)"))
    # share >= MIN_SHARE (0.5) here: severity follows the on-CPU time per slow request
    return Finding(ID, ladder(share, per_req, 5_000_000, 50_000_000), share,
                   f"on-CPU code dominates slow requests: {share:.0%} of their time, {fmt_duration(per_req)} each",
                   tuple(evidence),
                   "Profile the functions named above and make them cheaper (algorithm, caching, fewer "
                   "allocations), or move the work off the request path; for CPU-heavy Python, consider more "
                   "worker processes.", user + runq + gil_ns)
