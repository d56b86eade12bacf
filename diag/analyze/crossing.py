"""Crossing the streams: where the wall time of each slow request went.

For every slow request (slower than `--slow`, else the capture's p99), its wall time is split
into time inside each syscall family on the serving thread (from the per-call events, or from the
eBPF probe's in-kernel per-request sums), and the rest: user-space time (on CPU, or runnable and
waiting for a CPU or the GIL), which the Python frames py-spy sampled on that thread in that
window, or perf's native frames, explain.
"""
from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from diag.analyze.requests import RequestSet, family_of, rebuild
from diag.analyze.stats import slots_percentile, weighted_percentile
from diag.model import Dataset, Request, StackSample, SyscallEvent
from diag.syscalls import family

# Keys of a breakdown. "runq": runnable but waiting for a CPU (eBPF sched_switch, outside
# syscalls). "user" is what neither explains: on-CPU code (or waiting to run, without eBPF).
BREAKDOWN_KEYS = ("sync", "file", "upstream", "futex", "sleep", "poll", "socket", "connect", "accept", "close",
                  "other", "runq", "user")
_ALIASES = {"sock": "socket", "read": "socket", "write": "socket"}


# A futex wait longer than CPython's GIL switch interval (5 ms, plus slack) is a lock wait.
LONG_WAIT_NS = 6_000_000
# The slow set holds at least this many requests (when the capture has them).
MIN_SLOW = 10
# Futex waits shorter than this are not worth looking behind.
MIN_WAIT_NS = 100_000
# What another thread can be doing while holding the lock a request waits for.
HOLDER_FAMILIES = ("sync", "file", "sleep", "upstream")


@dataclass
class SlowRequest:
    request: Request
    breakdown: dict[str, int]           # ns per BREAKDOWN_KEYS entry, summing to the latency
    calls: list[SyscallEvent]           # calls of the serving thread inside the request
    samples: list[StackSample]          # stack samples of the serving thread inside it
    behind: dict[str, int] = field(default_factory=dict)   # futex-wait time spent behind another
                                                          # thread's blocking call, per its family
    blame: list = field(default_factory=list)             # its lock/GIL waits followed to their cause
                                                          # (diag.analyze.blame), when the probe saw wakeups
    queue_behind: dict[str, int] = field(default_factory=dict)  # its accept-queue wait, by what the
                                                                # servers were busy with meanwhile


@dataclass
class RequestAnalysis:
    requests: list[Request]
    source: str                          # "ebpf" (summarized in kernel) | "events" (rebuilt)
    threshold_ns: int
    threshold_from: str                  # "--slow" | "p99"
    slow: list[SlowRequest]
    upstream_fds: set[tuple[int, int]] = field(default_factory=set)
    inflight: int = 0
    followed: bool = False               # waits followed to their waker (eBPF wakeups), see `blamed`
    client_visible: bool = False         # latencies start at the connection's handshake where measured
    histogram: object | None = None      # the probe's RequestHistogram of every request (exported or not)

    def latency(self, r: Request) -> int:
        """The latency this analysis ranks by: client-visible where the accept-queue wait was
        measured (a connection's first request waited in the queue too), else server-side."""
        return r.client_latency_ns if self.client_visible else r.latency_ns

    @property
    def count(self) -> int:
        """Requests in the capture: every one the probe saw, exported or not."""
        if self.histogram is not None:
            return max(self.histogram.count, len(self.requests))
        return sum(r.weight for r in self.requests)

    def percentile(self, q: float) -> int:
        """Of every request's latency: from the in-kernel histogram when requests were sampled,
        exact from the records above the histogram's resolution (the slow tail is all exported)."""
        exact = sorted((self.latency(r), r.weight) for r in self.requests)
        if self.histogram is None or self.histogram.count <= len(self.requests):
            return weighted_percentile(exact, q)
        tail = sum(w for _, w in exact if _ >= self.threshold_ns)
        if q >= 100 * (1 - tail / self.histogram.count) and exact:
            # the top of the distribution is every exported slow request: exact
            k = max(1, int(-(-(100 - q) * self.histogram.count // 100)))
            return exact[-k][0] if k <= len(exact) else exact[0][0]
        return slots_percentile(self.histogram.slots, q)

    def blamed(self, **kw) -> int:
        """Wait time of the slow requests attributed by the critical path (blame.total filters)."""
        from diag.analyze.blame import total

        return sum(total(s.blame, **kw) for s in self.slow)

    @property
    def slow_total_ns(self) -> int:
        return sum(self.latency(s.request) for s in self.slow)

    def total(self, key: str) -> int:
        """Time of one breakdown key summed over the slow requests."""
        return sum(s.breakdown.get(key, 0) for s in self.slow)

    def behind_total(self, key: str) -> int:
        """Lock-wait time of the slow requests spent behind another thread's `key` call."""
        return sum(s.behind.get(key, 0) for s in self.slow)

    def share(self, key: str, with_behind: bool = False) -> float:
        tot = self.slow_total_ns
        part = self.total(key) + (self.behind_total(key) if with_behind else 0)
        return part / tot if tot else 0.0

    def latencies(self) -> list[int]:
        return sorted(self.latency(r) for r in self.requests)

    @property
    def typical_ns(self) -> int:
        """The median request latency: what "slow" is measured against."""
        return self.percentile(50)

    def typical_without(self, key: str, idx: "ThreadIndex | None" = None) -> int:
        """The median request latency once the time in `key` is taken out of every request.

        When a cause slows every request (an fsync per request), the plain median carries it
        too, and the cause looks small against it. A request's time in `key` is the larger of
        its in-kernel sum (eBPF; credited to the connection the thread served last) and the
        calls of that family its thread made inside it (what an event loop's requests all
        wait for)."""
        if not self.requests:
            return 0
        have_sums = self.requests[0].family_ns is not None
        calls: dict[int, tuple[list[int], list[SyscallEvent]]] = {}
        if idx is not None:
            for tid, evs in idx.events.items():
                mine = [e for e in evs if family_of(e, self.upstream_fds) == key]
                if mine:
                    calls[tid] = ([e.start_ns for e in mine], mine)
        if not have_sums and not calls:
            return self.typical_ns
        names = {key, "sock"} if key == "socket" else {key}
        rest = []
        for r in self.requests:
            own = sum(v for k, v in (r.family_ns or ()) if k in names)
            seen = 0
            if r.tid in calls:
                starts, evs = calls[r.tid]
                for e in evs[bisect.bisect_left(starts, r.start_ns):bisect.bisect_left(starts, r.end_ns)]:
                    seen += max(0, min(e.end_ns, r.end_ns) - e.start_ns)
            rest.append((max(0, r.latency_ns - max(own, seen)), r.weight))
        rest.sort()
        return weighted_percentile(rest, 50)


class ThreadIndex:
    """Syscall events and stack samples per thread, sorted by time, for window queries."""

    def __init__(self, data: Dataset) -> None:
        ev: dict[int, list[SyscallEvent]] = defaultdict(list)
        for e in data.syscalls:
            if e.dur_ns is not None:
                ev[e.tid].append(e)
        self.events = {t: sorted(v, key=lambda e: e.start_ns) for t, v in ev.items()}
        self.starts = {t: [e.start_ns for e in v] for t, v in self.events.items()}
        sm: dict[int, list[StackSample]] = defaultdict(list)
        for s in data.samples:
            if s.ts_ns is not None:
                sm[s.tid].append(s)
        self.samples = {t: sorted(v, key=lambda s: s.ts_ns or 0) for t, v in sm.items()}
        self.sample_ts = {t: [s.ts_ns or 0 for s in v] for t, v in self.samples.items()}

    def calls(self, tid: int, t0: int, t1: int) -> list[SyscallEvent]:
        """Calls of `tid` that started in [t0, t1)."""
        starts = self.starts.get(tid)
        if not starts:
            return []
        return self.events[tid][bisect.bisect_left(starts, t0):bisect.bisect_left(starts, t1)]

    def overlapping(self, tid: int, t0: int, t1: int) -> list[SyscallEvent]:
        """Calls of `tid` that overlap [t0, t1]. A thread makes one syscall at a time, so the only
        call started before t0 that can still run at t0 is the one just before it."""
        starts = self.starts.get(tid)
        if not starts:
            return []
        lo, hi = bisect.bisect_left(starts, t0), bisect.bisect_right(starts, t1)
        evs = self.events[tid]
        out = evs[lo:hi]
        if lo > 0 and evs[lo - 1].start_ns + (evs[lo - 1].dur_ns or 0) > t0:
            out.insert(0, evs[lo - 1])
        return out

    def stacks(self, tid: int, t0: int, t1: int) -> list[StackSample]:
        ts = self.sample_ts.get(tid)
        if not ts:
            return []
        return self.samples[tid][bisect.bisect_left(ts, t0):bisect.bisect_right(ts, t1)]


def _breakdown_from_events(req: Request, calls: list[SyscallEvent], upstream: set[tuple[int, int]]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for e in calls:
        end = min(e.end_ns, req.end_ns)
        d = end - e.start_ns
        if d <= 0:
            continue
        fam = family_of(e, upstream)
        key = fam if fam in BREAKDOWN_KEYS else _ALIASES.get(fam, "other")
        out[key] += d
    return out


def _breakdown_from_sums(req: Request) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for k, v in req.family_ns or ():
        key = k if k in BREAKDOWN_KEYS else _ALIASES.get(k, "other")
        out[key] += v
    return out


def _union_ns(intervals: list[tuple[int, int]]) -> int:
    total, cur_s, cur_e = 0, None, None
    for a, b in sorted(intervals):
        if cur_e is None or a > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = a, b
        else:
            cur_e = max(cur_e, b)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def waits_behind(sr: SlowRequest, idx: ThreadIndex, upstream: set[tuple[int, int]]) -> dict[str, int]:
    """For each futex wait of a slow request, what the other threads of the process were
    blocked in meanwhile: a lock held across an fsync makes every waiter's time fsync time.
    Returns ns of wait time overlapped by other threads' calls, per holder family (each wait's
    overlap capped at its own duration, families in HOLDER_FAMILIES order)."""
    out: dict[str, int] = defaultdict(int)
    me = sr.request.tid
    for w in sr.calls:
        if family(w.name) != "futex" or (w.dur_ns or 0) < MIN_WAIT_NS:
            continue
        t0, t1 = w.start_ns, min(w.end_ns, sr.request.end_ns)
        by_fam: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for tid in idx.events:
            if tid == me:
                continue
            for e in idx.overlapping(tid, t0, t1):
                if e.pid != w.pid:
                    break
                fam = family_of(e, upstream)
                if fam in HOLDER_FAMILIES:
                    by_fam[fam].append((max(e.start_ns, t0), min(e.end_ns, t1)))
        left = t1 - t0
        for fam in HOLDER_FAMILIES:
            if by_fam.get(fam) and left > 0:
                ns = min(left, _union_ns(by_fam[fam]))
                out[fam] += ns
                left -= ns
    return dict(out)


def _breakdown_on_loop(req: Request, calls: list[SyscallEvent], upstream: set[tuple[int, int]]) -> dict[str, int]:
    """An event loop's requests overlap: whatever the loop thread did while a request was open
    delayed it, whichever connection the call was for. So the breakdown is by time window over
    the thread's calls that the stream has individually (every sync/sleep/accept/connect, other
    calls when slow), plus the request's own socket I/O from the in-kernel sums."""
    out = _breakdown_from_events(req, [c for c in calls if c.start_ns >= req.start_ns], upstream)
    own = dict(req.family_ns or ())
    out["socket"] = max(out.get("socket", 0), own.get("sock", 0) + own.get("socket", 0))
    if own.get("runq"):
        out["runq"] = own["runq"]
    return out


def analyze_requests(data: Dataset, idx: ThreadIndex, slow_ns: int | None = None) -> RequestAnalysis | None:
    """Requests of the capture and the breakdown of the slow ones; None when no stream lets us
    rebuild requests (eBPF slow-call events alone are a subset, not a request stream)."""
    if data.requests:
        requests, source, upstream, inflight = sorted(data.requests, key=lambda r: r.start_ns), "ebpf", set(), 0
        upstream = {(e.pid, e.fd) for e in data.syscalls if e.name == "connect" and e.fd is not None}
    else:
        complete = [e for e in data.syscalls if e.source != "ebpf"]
        if not complete:
            return None
        rs: RequestSet = rebuild(complete, source=complete[0].source)
        requests, source, upstream, inflight = rs.requests, "events", rs.upstream_fds, rs.inflight
    ready = ((data.manifest or {}).get("clock") or {}).get("collectors_started_monotonic_ns")
    if ready and any(r.start_ns >= ready for r in requests):
        # The collectors start one after another (the eBPF probe first, py-spy and the runtime
        # sampler last): requests before every one of them ran lack the crossed evidence, so the
        # analysis window opens when the last one had started.
        requests = [r for r in requests if r.start_ns >= ready]
    if not requests:
        return None
    client = any(r.queued_ns is not None for r in requests)
    # the in-kernel histogram of every request counts only when the probe exported a sample of
    # them (it covers the whole capture; exported records, when they are all there, are exact)
    sampled = any(e.threshold_ns or e.mask for e in data.request_export)
    ra = RequestAnalysis(requests, source, 0, "", [], upstream, inflight, client_visible=client,
                         histogram=data.request_hists.get("client" if client else "server") if sampled else None)
    lat = sorted(ra.latency(r) for r in requests)
    if slow_ns is not None:
        threshold, frm = slow_ns, "--slow"
    else:
        # p99, but never fewer than MIN_SLOW requests: the worst one or two of a short capture
        # are as much noise as signal
        ra.threshold_ns = lat[-1] + 1          # nothing counts as the exported tail while computing p99
        threshold, frm = ra.percentile(99), "p99"
        if len(lat) >= MIN_SLOW and lat[-MIN_SLOW] < threshold:
            threshold, frm = lat[-MIN_SLOW], f"p99, at least the {MIN_SLOW} slowest"
    ra.threshold_ns, ra.threshold_from = threshold, frm
    loops = event_loop_threads(requests)
    path = critical_path(data, upstream)
    busy = _ByStart(requests)
    slow = ra.slow
    for r in requests:
        if ra.latency(r) < threshold or ra.latency(r) <= 0:
            continue
        calls = idx.calls(r.tid, r.start_ns, r.end_ns)
        if r.write_tid and r.write_tid != r.tid:
            calls = calls + idx.calls(r.write_tid, r.start_ns, r.end_ns)
        if r.family_ns is not None and r.tid in loops:
            b = _breakdown_on_loop(r, calls, upstream)
        elif r.family_ns is not None:
            b = _breakdown_from_sums(r)
        else:
            b = _breakdown_from_events(r, calls, upstream)
        if b.get("upstream") and b.get("poll"):
            # a worker that polls inside a request that talks to an upstream is waiting for it
            # (clients with timeouts wait in poll before each recv)
            b["upstream"] += b.pop("poll")
        used = sum(b.values())
        b["user"] = max(0, r.latency_ns - used)
        if used > r.latency_ns:          # overlapping calls of two threads: scale into the wall time
            scale = r.latency_ns / used
            b = {k: int(v * scale) if k != "user" else 0 for k, v in b.items()}
        if client and ra.latency(r) > r.latency_ns:
            # before the server read it: the connection's wait in the accept queue, then the
            # server's own set-up of the connection (accept to the request's first read: a thread
            # spawned, a worker woken)
            before = ra.latency(r) - r.latency_ns
            b["queue"] = min(before, r.queued_ns or 0)
            if before > b["queue"]:
                b["setup"] = before - b["queue"]
        sr = SlowRequest(r, dict(b), calls, idx.stacks(r.tid, r.start_ns, r.end_ns))
        if path is not None:
            sr.blame = path.request(r.pid, r.tid, r.start_ns, r.end_ns)
            sr.behind = behind_from_blame(sr.blame)
        else:
            sr.behind = waits_behind(sr, idx, upstream)
        if b.get("queue"):
            for fam, ns in queue_behind(r, b["queue"], busy).items():
                sr.queue_behind[fam] = sr.queue_behind.get(fam, 0) + ns
                if fam in HOLDER_FAMILIES:
                    sr.behind[fam] = sr.behind.get(fam, 0) + ns
        slow.append(sr)
    ra.followed = path is not None
    return ra


class _ByStart:
    """Requests sorted by start, for "which requests were being served during [a, b]"."""

    LONGEST_NS = 60_000_000_000

    def __init__(self, requests: list[Request]) -> None:
        self.reqs = sorted(requests, key=lambda r: r.start_ns)
        self.starts = [r.start_ns for r in self.reqs]

    def overlapping(self, a: int, b: int) -> list[Request]:
        lo = bisect.bisect_left(self.starts, a - self.LONGEST_NS)
        hi = bisect.bisect_left(self.starts, b)
        return [r for r in self.reqs[lo:hi] if r.end_ns > a]


def queue_behind(r: Request, queued: int, busy: _ByStart) -> dict[str, int]:
    """What the servers were busy with while a connection waited in their accept queue: its wait,
    divided in proportion to the time per family of the requests they were serving meanwhile
    (fsync, CPU...). A pre-fork server whose workers fsync makes its clients queue behind the
    fsyncs; a server idle meanwhile (an acceptor that is slow by itself) explains nothing here."""
    b = r.conn_start_ns or r.start_ns
    a = b - queued
    parts: dict[str, float] = defaultdict(float)
    for q in busy.overlapping(a, b):
        if q is r or q.latency_ns <= 0:
            continue
        frac = (min(q.end_ns, b) - max(q.start_ns, a)) / q.latency_ns
        fam = dict(q.family_ns or ())
        own = sum(fam.values())
        for k, v in fam.items():
            parts[_ALIASES.get(k, k)] += v * frac
        parts["user"] += max(0, q.latency_ns - own) * frac
    total = sum(parts.values())
    if not total:
        return {}
    scale = min(1.0, total / (queued or 1)) * queued / total
    return {k: int(v * scale) for k, v in parts.items() if v}


def critical_path(data: Dataset, upstream: set[tuple[int, int]]):
    """The critical-path walker when the capture has wakeup records (eBPF), else None."""
    if not data.wakeups:
        return None
    from diag.analyze.blame import CriticalPath, SchedIndex
    from diag.analyze.runtime import runtime_of

    return CriticalPath(SchedIndex(data, upstream), runtime_of(data))


def behind_from_blame(blame) -> dict[str, int]:
    """Lock waits whose chain ended in another thread's blocking call, per its family: what the
    time rules add to their own (a lock held across an fsync makes every waiter's time fsync time)."""
    from diag.analyze.blame import GIL

    out: dict[str, int] = defaultdict(int)
    for b in blame:
        if b.via != GIL and b.root in HOLDER_FAMILIES:
            out[b.root] += b.ns
    return dict(out)


def hot_python_frames(samples: list[StackSample], n: int = 3) -> list[tuple[str, int]]:
    """Leaf-most Python frames (the code running or blocked) of samples, most frequent first."""
    c: Counter[str] = Counter()
    for s in samples:
        py = [f for f in s.frames if f.file and not f.file.startswith("<")]
        if py and s.source == "py-spy":
            c[py[-1].label()] += s.weight
    return c.most_common(n)


def hot_frames_any(samples: list[StackSample], n: int = 3) -> list[tuple[str, int]]:
    c: Counter[str] = Counter()
    for s in samples:
        if s.frames and s.source in ("py-spy", "perf"):
            c[s.frames[-1].label()] += s.weight
    return c.most_common(n)


def event_loop_threads(requests: list[Request]) -> set[int]:
    """Threads that serve several connections at once: event loops.

    A thread-per-connection worker serves one connection at a time (keep-alive or not); a loop
    thread keeps reading from several connections whose lifetimes overlap. A worker that polls
    (a client with a timeout inside the handler) is not a loop."""
    spans: dict[int, dict[tuple[int, int | None], list[int]]] = defaultdict(dict)
    for r in requests:
        key = (r.fd, r.conn_start_ns)
        sp = spans[r.tid].get(key)
        if sp is None:
            spans[r.tid][key] = [r.start_ns, r.end_ns]
        else:
            sp[0], sp[1] = min(sp[0], r.start_ns), max(sp[1], r.end_ns)
    loops = set()
    for tid, conns in spans.items():
        if len(conns) < 2:
            continue
        ordered = sorted(conns.values())
        if any(b[0] < a[1] for a, b in zip(ordered, ordered[1:])):
            loops.add(tid)
    return loops


__all__ = ["analyze_requests", "RequestAnalysis", "SlowRequest", "ThreadIndex", "hot_python_frames",
           "event_loop_threads", "BREAKDOWN_KEYS"]
