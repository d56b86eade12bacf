"""`accept-backlog`: clients wait before the server ever sees their connection: in a full accept
queue, or dropped there and retried.

Time, in the unit every finding ranks by (a share of slow-request time, client-visible): the
probe measures each connection's wait from its handshake to the accept that returned it
(sock:inet_sock_set_state -> accept), which is the "queue" part of a connection's first
request. SYNs dropped on a full queue are not seen by the server at all; each costs its client
at least the kernel's initial SYN retransmit timeout (1 s): counted from the probe's SYN
retransmits towards the target's ports (clients on this host) or the namespace's ListenDrops, and
added as that many seconds of client wait. Without either measure, a backed-up queue is reported
by its figures only, at info.
"""
from __future__ import annotations

from diag.analyze.context import AnalysisContext
from diag.analyze.rules.common import MIN_SHARE, processes_line, slow_window
from diag.model import Evidence, Finding
from diag.units import NS_PER_S, fmt_duration

ID = "accept-backlog"
MIN_LOST = 3
BACKED_UP_NS = 1_000_000        # a connection that waited this long in the queue: the acceptor lags
SYN_RTO_NS = NS_PER_S          # the kernel's initial SYN retransmit timeout (TCP_TIMEOUT_INIT)
RECOMMENDATION = ("Accept faster (more acceptor threads/processes, non-blocking accept driven by epoll), and "
                  "raise the backlog: listen(backlog) in the server and net.core.somaxconn / "
                  "net.ipv4.tcp_max_syn_backlog in the kernel.")


def accepted(ctx: AnalysisContext) -> int:
    rows = [st.count for (name, _), st in ctx.by_syscall.items() if name in ("accept", "accept4")]
    return sum(rows)


def listen_figures(ctx: AnalysisContext) -> tuple[int, int, int, tuple[int, int] | None]:
    """(overflows, drops, peak accept-queue length, window) from the process sampler."""
    snaps = [s for s in ctx.data.snapshots if s.listen_overflows is not None]
    if len(snaps) < 2:
        return 0, 0, 0, None
    snaps.sort(key=lambda s: s.ts_ns)
    overflows = snaps[-1].listen_overflows - snaps[0].listen_overflows
    drops = (snaps[-1].listen_drops or 0) - (snaps[0].listen_drops or 0)
    queue = max((s.listen_queue or 0) for s in snaps)
    return overflows, drops, queue, (snaps[0].ts_ns, snaps[-1].ts_ns)


def check(ctx: AnalysisContext) -> Finding | None:
    overflows, drops, queue, w = listen_figures(ctx)
    syn_retrans = ctx.data.probe_counters.get("syn_retrans", 0)
    # The netstat counters are per network namespace, not per listener: overflows may be another
    # process's. Call them the target's only when its own accept queue was seen backed up.
    lost = max(syn_retrans, max(overflows, drops) if queue else 0)
    ra = ctx.req
    queued = ra.total("queue") if ra is not None and ra.slow else 0
    longest = max((r.queued_ns or 0 for r in ra.requests), default=0) if ra is not None else 0
    if not (lost or queue or longest >= BACKED_UP_NS):
        queued = 0           # connections accepted as they came: set-up, not a backlog (time-wait's)
    if lost < MIN_LOST and not queued:
        return None
    ev = []
    if queued:
        worst = max(ra.slow, key=lambda s: s.breakdown.get("queue", 0))
        ev.append(Evidence("ebpf (accept queue)", f"{len(ra.slow)} slow requests waited {fmt_duration(queued)} in the "
                                                  f"accept queue before the server accepted their connection (from "
                                                  f"the handshake to accept); worst {fmt_duration(worst.breakdown['queue'])}",
                           slow_window(ra.slow)))
    if lost:
        ev.append(Evidence("ebpf+process", f"{lost} connection attempts dropped at the listen queue (SYN retransmits "
                                           f"towards the target's ports {syn_retrans}, ListenOverflows +{overflows}, "
                                           f"ListenDrops +{drops}): each costs its client ≥ 1 s (the SYN retransmit "
                                           f"timeout), {fmt_duration(lost * SYN_RTO_NS)} of waiting the server never "
                                           f"sees", w))
    if queue:
        ev.append(Evidence("process", f"accept queue of the target's listeners peaked at {queue} waiting connections", w))
    n = accepted(ctx)
    if n:
        ev.append(Evidence("syscalls", f"{n:,} connections accepted in the capture"))
    if ra is not None and ra.slow:
        p = processes_line(ctx, [s for s in ra.slow if s.breakdown.get("queue")] or ra.slow)
        if p:
            ev.append(p)
    # the part of the queue wait the servers spent busy with requests is that work's (fsync...):
    # the queue is then only how it reached the clients
    behind = sum(sum(s.queue_behind.values()) for s in ra.slow) if ra is not None and queued else 0
    if behind:
        top = max(((k, sum(s.queue_behind.get(k, 0) for s in ra.slow)) for k in
                   {k for s in ra.slow for k in s.queue_behind}), key=lambda kv: kv[1])
        ev.append(Evidence("requests", f"meanwhile the server was busy serving requests: {fmt_duration(behind)} of "
                                       f"the wait was behind their work (mostly {top[0]}, "
                                       f"{fmt_duration(top[1])}), counted under that cause",
                           slow_window(ra.slow)))
    dropped_ns = lost * SYN_RTO_NS
    total_ns = (ra.slow_total_ns if ra is not None else 0) + dropped_ns
    time_ns = max(0, queued - behind) + dropped_ns
    share = time_ns / total_ns if total_ns else 0.0
    if queued and behind and share < MIN_SHARE:
        qshare = queued / total_ns
        return Finding(ID, "info", qshare, f"clients waited {fmt_duration(queued)} in the listen queue behind busy "
                                           f"servers: {qshare:.0%} of client-visible slow-request time, ranked "
                                           f"under what kept them busy", tuple(ev), RECOMMENDATION, queued)
    if time_ns and share >= MIN_SHARE:
        per = time_ns / max(1, len(ra.slow) if ra is not None and ra.slow else 1)
        sev = "critical" if share >= 0.5 and per >= 20_000_000 else "warning" if share >= 0.2 and per >= 2_000_000 \
            else "info"
        summary = (f"clients wait in the listen queue: {share:.0%} of client-visible slow-request time"
                   + (f", {lost} connections dropped (≥ 1 s each)" if lost else ""))
        return Finding(ID, sev, share, summary, tuple(ev), RECOMMENDATION, time_ns)
    # no time measured: its own figures, at info, ranked after every time-based finding
    return Finding(ID, "info", 0.0, f"listen queue backed up: {lost} connections dropped, queue peak {queue} "
                                     f"(no client wait measured)", tuple(ev), RECOMMENDATION, 0)
