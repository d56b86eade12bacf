"""What the request-time rules share: share of slow-request time, evidence lines, severity."""
from __future__ import annotations

from diag.analyze.blame import BACKGROUND, GC, LOCK
from diag.analyze.context import AnalysisContext
from diag.units import fmt_duration, ladder
from diag.analyze.crossing import SlowRequest, hot_python_frames
from diag.model import Evidence, Finding, SyscallEvent

# A finding must explain at least this share of slow-request time to be reported at all.
MIN_SHARE = 0.10


def slow_window(slow: list[SlowRequest]) -> tuple[int, int] | None:
    if not slow:
        return None
    worst = max(slow, key=lambda s: s.request.end_ns - s.request.client_start_ns)
    return worst.request.start_ns, worst.request.end_ns


def requests_line(ctx: AnalysisContext, key: str, label: str) -> Evidence:
    """'In N slow requests (>= T, p99), X of Y (Z%) was inside LABEL; worst request ...'."""
    ra = ctx.req
    tot, part = ra.slow_total_ns, ra.total(key)
    worst = max(ra.slow, key=lambda s: s.breakdown.get(key, 0))
    r = worst.request
    src = "ebpf (in-kernel request sums)" if ra.source == "ebpf" else "syscalls (requests rebuilt)"
    return Evidence(source=src, text=(
        f"{len(ra.slow)} slow requests (≥ {fmt_duration(ra.threshold_ns)}, {ra.threshold_from}) of {len(ra.requests):,}: "
        f"{fmt_duration(part)} of their {fmt_duration(tot)} ({part / tot:.0%}) inside {label}; worst: "
        f"{fmt_duration(worst.breakdown.get(key, 0))} of a {fmt_duration(r.latency_ns)} request on tid {r.tid} fd {r.fd}"),
        window=(r.start_ns, r.end_ns))


def calls_line(calls: list[SyscallEvent], label: str) -> Evidence | None:
    timed = [c for c in calls if c.dur_ns]
    if not timed:
        return None
    worst = max(timed, key=lambda c: c.dur_ns or 0)
    srcs = "+".join(sorted({c.source for c in timed}))
    names = "/".join(sorted({c.name for c in timed}))
    return Evidence(source=srcs, text=(f"{names}: {len(timed)} calls in slow requests, {fmt_duration(sum(c.dur_ns or 0 for c in timed))} "
                                       f"in all, worst {fmt_duration(worst.dur_ns)} (fd {worst.fd}, {worst.fd_kind.value})"
                                       f"{' — ' + label if label else ''}"),
                    window=(worst.start_ns, worst.end_ns))


def kernel_line(ctx: AnalysisContext, call: SyscallEvent) -> Evidence | None:
    """The off-CPU kernel stack (eBPF) or perf kernel frames while `call` ran."""
    for s in ctx.samples_in(call.tid, call.start_ns - 1_000_000, call.end_ns + 1_000_000):
        if s.source == "ebpf" and s.frames:
            names = [f.function for f in s.frames if not f.function.startswith(("entry_SYSCALL", "do_syscall"))]
            blocked = f", off CPU {fmt_duration(s.dur_ns)}" if s.dur_ns else ""
            return Evidence("ebpf", f"{call.name} {fmt_duration(call.dur_ns)} blocked in "
                                    f"{' -> '.join(names[:7])}{blocked}", (call.start_ns, call.end_ns))
        if s.source == "perf" and ctx.io_kernel_path(s):
            return Evidence("perf", f"kernel stack during {call.name}: {' -> '.join(ctx.io_kernel_path(s)[:7])}",
                            (call.start_ns, call.end_ns))
    return None


def frames_line(slow: list[SlowRequest], what: str = "Python frames in slow requests") -> Evidence | None:
    samples = [s for sr in slow for s in sr.samples]
    hot = hot_python_frames(samples, 3)
    if not hot:
        return None
    total = sum(s.weight for s in samples if s.source == "py-spy") or 1
    text = ", ".join(f"{f} ({n / total:.0%})" for f, n in hot)
    w = slow_window(slow)
    return Evidence("py-spy", f"{what}: {text}", w)


def severity(share: float, per_request_ns: float, typical_ns: int | None = None) -> str:
    """critical: most of the slow time and tens of ms per slow request; warning: a real share and
    at least a few ms per slow request; info otherwise.

    A fast server (a native cache answering in µs) is harmed by less: measured against its
    typical (median) request, a cause adding 50x the median (and ≥ 1 ms) is critical, 10x (and
    ≥ 0.2 ms) a warning.
    """
    t = typical_ns or 0
    if not t:
        return ladder(share, per_request_ns, 2_000_000, 20_000_000)
    return ladder(share, per_request_ns, min(2_000_000, max(10 * t, 200_000)),
                  min(20_000_000, max(50 * t, 1_000_000)))


def holder_frames_line(ctx: AnalysisContext, blames, what: str, n: int = 3) -> Evidence | None:
    """The Python frames (else native) other threads ran while the requests waited for them: the
    samples of each blamed holder inside the interval it was blamed for."""
    samples = []
    for b in blames:
        if b.holder is not None:
            samples.extend(ctx.samples_in(b.holder, b.window[0], b.window[1]))
    hot = hot_python_frames(samples, n)
    if hot:
        total = sum(s.weight for s in samples if s.source == "py-spy") or 1
        text = ", ".join(f"{f} ({c / total:.0%})" for f, c in hot)
    else:
        from diag.analyze.crossing import hot_frames_any

        hot = hot_frames_any(samples, n)
        if not hot:
            return None
        text = ", ".join(f for f, _ in hot)
    tids = sorted({b.holder for b in blames if b.holder is not None})
    window = max(blames, key=lambda b: b.ns).window if blames else None
    return Evidence("py-spy" if any(s.source == "py-spy" for s in samples) else "perf",
                    f"{what} (tid {', '.join(map(str, tids[:5]))}): {text}", window)


def processes_line(ctx: AnalysisContext, slow: list[SlowRequest]) -> Evidence | None:
    """In a capture of several processes (a master and its workers): which of them the slow
    requests behind a finding were served by, against how many served requests at all."""
    serving = {r.pid for r in ctx.req.requests}
    if len(serving) < 2 and len(ctx.members) < 2:
        return None
    seen = sorted({s.request.pid for s in slow})
    roles = {m["pid"]: m.get("role", "process") for m in ctx.members}
    kind = "workers" if any(roles.get(p) == "worker" for p in serving) else "processes"
    return Evidence("requests", f"seen in {len(seen)} of {len(serving)} {kind} serving requests "
                                f"(pid {', '.join(map(str, seen[:8]))})", slow_window(slow))


# A request read in at least MIN_READS reads averaging under SMALL_BYTES: read byte by byte.
MIN_READS = 8
SMALL_BYTES = 128
READ_PATH = ("readinto", "readline", "recv", "recv_into", "_read", "read")


def tiny_reads(r) -> bool:
    return r.reads >= MIN_READS and r.bytes_in / r.reads < SMALL_BYTES


# How many tiny-read requests, at most, lend their samples to the read loop's share.
READ_LOOP_MAX_REQUESTS = 5000


def is_python(ctx: AnalysisContext) -> bool:
    """Whether the target runs CPython (the manifest says so, or py-spy sampled it)."""
    target = (ctx.data.manifest or {}).get("target") or {}
    return bool(target.get("python")) or any(s.source == "py-spy" for s in ctx.data.samples)


def read_loop_share(ctx: AnalysisContext) -> float:
    """The share of py-spy samples inside the read path, over every request read in tiny reads.

    Pooled, not per request: at the default 50 Hz a 10 ms request holds half a sample, so one
    slow request's own samples say nothing; the requests read that way all run the same loop."""
    ra = ctx.req
    if ra is None:
        return 0.0
    inside = total = 0
    for r in [r for r in ra.requests if tiny_reads(r)][:READ_LOOP_MAX_REQUESTS]:
        for smp in ctx.samples_in(r.tid, r.start_ns, r.end_ns, "py-spy"):
            total += smp.weight
            if any(f.function.rsplit(".", 1)[-1] in READ_PATH for f in smp.frames[-3:]):
                inside += smp.weight
    return inside / total if total else 0.0


def read_loop_ns(ctx: AnalysisContext, sr: SlowRequest) -> int:
    """On-CPU time of a request read in tiny reads spent in the loop that makes them: its user
    time times the read path's share of the samples (read_loop_share). What small-reads explains
    (and cpu-bound leaves to it)."""
    if not tiny_reads(sr.request):
        return 0
    return int(sr.breakdown.get("user", 0) * ctx.read_loop_share)


def gil_handoffs_ns(ctx: AnalysisContext, sr: SlowRequest) -> int:
    """A Python request read in tiny reads: its waits for the GIL. CPython releases the GIL around
    every recv, so each tiny read hands it to another thread and waits to take it back: with
    several threads reading so, the waits come with the reads. Its futex time less what the
    critical path blamed elsewhere: a user-space lock, a background thread holding the GIL, the
    garbage collector (short GIL waits are under the probe's wakeup threshold: they are only in
    the breakdown)."""
    if not tiny_reads(sr.request) or not is_python(ctx):
        return 0
    others = sum(b.ns for b in sr.blame if b.via == LOCK or b.role == BACKGROUND or b.root == GC)
    return max(0, sr.breakdown.get("futex", 0) - others)


def calls_of(slow: list[SlowRequest], pred) -> list[SyscallEvent]:
    return [c for sr in slow for c in sr.calls if pred(c)]


def behind_line(ctx: AnalysisContext, key: str, label: str) -> Evidence | None:
    """'Other requests waited X on a lock while its holder was in LABEL' (and 'Y in the accept
    queue while the servers were in LABEL': a busy pre-fork worker's call delays the next client)."""
    ra = ctx.req
    ns = ra.behind_total(key)
    if ns <= 0:
        return None
    queued = sum(s.queue_behind.get(key, 0) for s in ra.slow)
    locked = ns - queued
    n = sum(1 for s in ra.slow if s.behind.get(key, 0) > s.queue_behind.get(key, 0))
    nq = sum(1 for s in ra.slow if s.queue_behind.get(key))
    queue_text = (f"{nq} slow requests waited {fmt_duration(queued)} in the accept queue while the servers were "
                  f"inside {label}: their connections were accepted only once that call returned")
    if locked <= 0:
        return Evidence("ebpf (accept queue)", queue_text, slow_window(ra.slow))
    also = f"; {queue_text}" if queued else ""
    if ra.followed:
        holders = sorted({b.holder for s in ra.slow for b in s.blame if b.root == key and b.holder is not None})
        return Evidence("ebpf (wakeups)", f"{n} slow requests also waited {fmt_duration(locked)} on a lock whose "
                                          f"holder (tid {', '.join(map(str, holders[:4])) or '?'}) was inside "
                                          f"{label}: followed from each wait to the thread that ended it; the lock "
                                          f"spreads that latency to every waiter{also}", slow_window(ra.slow))
    return Evidence("syscalls", f"{n} slow requests also waited {fmt_duration(locked)} on a lock (long futex waits) "
                                f"while another thread of the process was inside {label}: the lock spreads that "
                                f"latency to every waiter{also}", slow_window(ra.slow))


def share_with_behind(ctx: AnalysisContext, key: str) -> tuple[float, int]:
    ra = ctx.req
    part = ra.total(key) + ra.behind_total(key)
    return (part / ra.slow_total_ns if ra.slow_total_ns else 0.0), part


STRACE_NOTE = Evidence("strace", "strace stops every thread on each traced call, which stretches lock and GIL "
                                 "waits: contention measured under strace is capped at info (use the eBPF "
                                 "collector to confirm)")


def strace_inflated(ctx: AnalysisContext) -> bool:
    """Were the slow requests measured through strace (which inflates waits between threads)?"""
    ra = ctx.req
    return ra is not None and ra.source == "events" and any(
        c.source == "strace" for s in ra.slow for c in s.calls)


def time_finding(ctx: AnalysisContext, rule_id: str, key: str, what: str, holder: str, calls_pred,
                 calls_note: str, frames_what: str, summary: str, recommendation: str,
                 extra=(), kernel: bool = True) -> Finding | None:
    """The finding of a rule whose cause is time in one breakdown key (`sync`, `file`,
    `upstream`): the share of slow-request time in it (own calls, and lock waits behind another
    thread's), the calls themselves, the kernel stack of the worst, the frames of the serving
    threads. `summary` is formatted with `share` and `per_req`; `extra(ra)` adds evidence."""
    ra = ctx.req
    if ra is None or not ra.slow:
        return None
    share, part = share_with_behind(ctx, key)
    if share < MIN_SHARE:
        return None
    per_req = part / len(ra.slow)
    evidence = [requests_line(ctx, key, what)]
    b = behind_line(ctx, key, holder)
    if b:
        evidence.append(b)
    calls = calls_of(ra.slow, calls_pred)
    line = calls_line(calls, calls_note)
    if line:
        evidence.append(line)
        k = kernel_line(ctx, max(calls, key=lambda c: c.dur_ns or 0)) if kernel else None
        if k:
            evidence.append(k)
    evidence.extend(e for e in (extra(ra) if extra else ()) if e)
    mine = [s for s in ra.slow if s.breakdown.get(key) or s.behind.get(key)]
    p = processes_line(ctx, mine or ra.slow)
    if p:
        evidence.append(p)
    f = frames_line(ra.slow, frames_what)
    if f:
        evidence.append(f)
    return Finding(rule_id, severity(share, per_req, ra.typical_without(key, ctx.idx)), share,
                   summary.format(share=share, per_req=fmt_duration(per_req)), tuple(evidence),
                   recommendation + (" Never hold a lock across it: other requests queue behind it." if b else ""),
                   part)
