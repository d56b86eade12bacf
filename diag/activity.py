"""The offset between two streams with no common clock, found from what they share: thread activity.

A sampler (py-spy, perf) sees a thread *running* at time t; a syscall trace (strace, perf trace)
sees the same thread *blocked* inside long calls. At the right offset d between the two clocks,
a thread's samples (t + d) fall outside its blocked calls; at a wrong one, a share of them fall
inside, as many as the thread spends blocked. So d is the offset that leaves the fewest samples
inside blocked calls, searched coarse then fine over every offset where the streams overlap, and
accepted only when it stands out from the others (a thread that never blocks says nothing).

Thread ids: perf and py-spy with `--threads` give OS tids, matched with the trace's tids
directly. py-spy chrometrace without `--threads` gives pthread ids: they are mapped with the
clone calls the trace saw (`tls=` of a thread's clone is its pthread id on x86-64 glibc), else
matched by activity: the offset is found on the whole process (a sample of any thread means the
process was not entirely blocked), then each sampled thread is given the traced thread whose
blocked calls its samples avoid, when exactly one does clearly better than the others.

Pure functions on plain lists; the stages around them (diag/align.py) decide what to align.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# Calls at least this long are "blocked" time (shorter ones may be spent on a CPU in the kernel).
BLOCK_MIN_NS = 2_000_000
# The edges of a blocked call are not trusted: strace stamps a call after its entry, a sampler
# stamps a sample after it read it (py-spy: up to a few ms late, see diag/align.py).
EDGE_NS = 1_000_000
COARSE_STEP_NS = 10_000_000
FINE_STEP_NS = 250_000
COARSE_MAX_SAMPLES = 400
FINE_MAX_SAMPLES = 3000
# A match is kept when at least this many samples are usable, and the conflicts at the chosen
# offset are at most MAX_CONFLICT_SHARE of the samples and under a third of the median elsewhere.
MIN_SAMPLES = 20
MAX_CONFLICT_SHARE = 0.1
MIN_CONTRAST = 3.0


@dataclass
class Blocked:
    """One thread's blocked intervals, sorted and disjoint (a thread makes one call at a time)."""

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)

    def inside(self, t: int) -> bool:
        i = bisect.bisect_right(self.starts, t) - 1
        return i >= 0 and t < self.ends[i]

    @property
    def total_ns(self) -> int:
        return sum(e - s for s, e in zip(self.starts, self.ends))


def blocked_intervals(calls, min_ns: int = BLOCK_MIN_NS, edge_ns: int = EDGE_NS, lag_ns: int = 0) -> dict[int, Blocked]:
    """tid -> Blocked, from (tid, start_ns, dur_ns) of timed calls. `lag_ns`: how late the
    sampler may stamp a sample (py-spy: a few ms); a sample then only conflicts with a call
    when it lies that far inside it, so a call's first `lag_ns` are not counted as blocked."""
    per: dict[int, list[tuple[int, int]]] = {}
    for tid, start, dur in calls:
        if dur is not None and dur >= min_ns and dur > 2 * edge_ns + lag_ns:
            per.setdefault(tid, []).append((start + edge_ns + lag_ns, start + dur - edge_ns))
    out: dict[int, Blocked] = {}
    for tid, iv in per.items():
        iv.sort()
        b = Blocked()
        last = None
        for s, e in iv:
            if last is not None and s < last:
                s = last              # overlapping (a cut-off call): keep them disjoint
            if e > s:
                b.starts.append(s)
                b.ends.append(e)
                last = e
        out[tid] = b
    return out


def process_blocked(blocked: dict[int, Blocked], threads: int | None = None) -> Blocked:
    """The intervals where every traced thread (`threads` of them, blocked or not) is blocked at
    once: the whole process waits."""
    n = max(len(blocked), threads or 0)
    edges: list[tuple[int, int]] = []
    for b in blocked.values():
        edges.extend((s, 1) for s in b.starts)
        edges.extend((e, -1) for e in b.ends)
    edges.sort()
    out = Blocked()
    depth = 0
    for t, step in edges:
        if step == 1:
            depth += 1
            if depth == n:
                out.starts.append(t)
        else:
            if depth == n:
                out.ends.append(t)
            depth -= 1
    return out


def _thin(values: list[int], n: int) -> list[int]:
    if len(values) <= n:
        return values
    step = len(values) / n
    return [values[int(i * step)] for i in range(n)]


def _conflicts(pairs: list[tuple[Blocked, list[int], float]], d: int, span: tuple[int, int]) -> float:
    """Samples inside a blocked call at offset d. A sample that falls outside the trace's time
    span counts as its thread's blocked share (what a random offset would give): offsets that
    push the samples out of the trace win nothing."""
    c = 0.0
    lo, hi = span
    for b, ts, p in pairs:
        starts, ends = b.starts, b.ends
        for t in ts:
            t += d
            if t < lo or t > hi:
                c += p
                continue
            i = bisect.bisect_right(starts, t) - 1
            if i >= 0 and t < ends[i]:
                c += 1
    return c


@dataclass
class OffsetMatch:
    offset_ns: int           # add to the sampled stream's times to put them on the trace's clock
    error_ns: int            # half the width of the offsets that fit as well, plus the edges
    samples: int             # samples compared
    conflicts: int           # of them, inside a blocked call at the chosen offset
    typical_conflicts: float  # median conflicts over the other offsets tried (the contrast)
    threads: int


def find_offset(samples: dict[int, list[int]], blocked: dict[int, Blocked], lo: int, hi: int,
                span: tuple[int, int], prior: int | None = None) -> OffsetMatch | None:
    """The offset in [lo, hi] that puts the fewest samples (tid -> sorted times) inside their
    thread's blocked calls of the trace covering `span`; None when too few samples meet a
    blocked thread, or when no offset stands out."""
    width = max(1, span[1] - span[0])
    pairs = [(blocked[t], ts, min(1.0, blocked[t].total_ns / width)) for t, ts in samples.items()
             if t in blocked and blocked[t].starts and ts]
    n_all = sum(len(ts) for _, ts, _ in pairs)
    if n_all < MIN_SAMPLES or hi < lo:
        return None
    share = COARSE_MAX_SAMPLES / n_all
    coarse = [(b, _thin(ts, max(1, int(len(ts) * share + 0.5))), p) for b, ts, p in pairs]
    n_coarse = sum(len(ts) for _, ts, _ in coarse)
    grid = list(range(lo, hi + 1, COARSE_STEP_NS)) or [lo]
    scores = [_conflicts(coarse, d, span) for d in grid]
    order = sorted(range(len(grid)), key=lambda i: (scores[i], abs(grid[i] - prior) if prior is not None else 0))
    fine = [(b, _thin(ts, max(1, int(len(ts) * min(1.0, FINE_MAX_SAMPLES / n_all) + 0.5))), p) for b, ts, p in pairs]
    n_fine = sum(len(ts) for _, ts, _ in fine)
    best: tuple[float, int] | None = None        # (conflicts, offset)
    curve: list[tuple[int, float]] = []
    for i in order[:3]:
        c0 = grid[i]
        for d in range(c0 - COARSE_STEP_NS, c0 + COARSE_STEP_NS + 1, FINE_STEP_NS):
            c = _conflicts(fine, d, span)
            curve.append((d, c))
            if best is None or c < best[0]:
                best = (c, d)
    assert best is not None
    conflicts, d = best
    # the offsets around d that fit as well (within 1 % of the samples): the error
    tol = conflicts + max(1, n_fine // 100)
    near = sorted(x for x, c in curve if c <= tol and abs(x - d) <= COARSE_STEP_NS * 2)
    lo_ok, hi_ok = (near[0], near[-1]) if near else (d, d)
    typical = sorted(scores)[len(scores) // 2] * (n_fine / max(1, n_coarse))
    if conflicts > MAX_CONFLICT_SHARE * n_fine or (typical < MIN_CONTRAST * max(conflicts, 1)):
        return None
    centre = (lo_ok + hi_ok) // 2
    return OffsetMatch(centre, (hi_ok - lo_ok) // 2 + FINE_STEP_NS + EDGE_NS, n_fine, round(conflicts), typical,
                       len(pairs))


def map_threads(samples: dict[int, list[int]], blocked: dict[int, Blocked], offset: int,
                min_samples: int = 10) -> dict[int, int]:
    """Sampled thread id -> traced tid, by activity at a known offset: each sampled thread gets the
    traced thread whose blocked calls its samples avoid, when that one is clearly better than
    every other (at most 5 % of its samples inside, and under a third of the next best's share);
    each traced thread is given once."""
    cands: list[tuple[float, int, int]] = []
    for p, ts in samples.items():
        if len(ts) < min_samples:
            continue
        rates = []
        for t, b in blocked.items():
            if not b.starts:
                continue
            inside = sum(1 for x in ts if b.inside(x + offset))
            rates.append((inside / len(ts), t))
        rates.sort()
        if not rates:
            continue
        best = rates[0]
        second = rates[1][0] if len(rates) > 1 else 1.0
        if best[0] <= 0.05 and second >= max(3 * best[0], 0.1):
            cands.append((best[0], p, best[1]))
    out: dict[int, int] = {}
    used: set[int] = set()
    for _, p, t in sorted(cands):
        if t not in used and p not in out:
            out[p] = t
            used.add(t)
    return out


JOINT_STEP_NS = 20_000_000
JOINT_SAMPLES = 60


def assign_by_activity(samples: dict[int, list[int]], blocked: dict[int, Blocked], lo: int, hi: int,
                       span: tuple[int, int]) -> dict[int, int]:
    """Sampled threads with unknown ids (pthread ids) -> traced tids, with the offset unknown too:
    for each offset of a coarse grid, every sampled thread takes the traced thread its samples
    conflict with least; the offset where that total is smallest gives the assignment, kept for
    the threads whose best traced thread is clearly better than the next (a third of its
    conflicts or less) and given once. The caller then finds the offset on the mapped threads."""
    width = max(1, span[1] - span[0])
    traced = [(t, b, min(1.0, b.total_ns / width)) for t, b in blocked.items() if b.starts]
    thin = {p: _thin(ts, JOINT_SAMPLES) for p, ts in samples.items() if len(ts) >= MIN_SAMPLES // 2}
    if not traced or not thin or hi < lo:
        return {}
    best: tuple[float, int] | None = None
    for d in range(lo, hi + 1, JOINT_STEP_NS):
        total = 0.0
        for p, ts in thin.items():
            total += min(_conflicts([(b, ts, share)], d, span) for _, b, share in traced)
        if best is None or total < best[0]:
            best = (total, d)
    if best is None:
        return {}
    d = best[1]
    cands = []
    for p, ts in thin.items():
        scores = sorted((_conflicts([(b, ts, share)], d, span), t) for t, b, share in traced)
        second = scores[1][0] if len(scores) > 1 else float(len(ts))
        if scores[0][0] * 3 <= second and second >= 2:
            cands.append((scores[0][0] - second, p, scores[0][1]))
    out: dict[int, int] = {}
    used: set[int] = set()
    for _, p, t in sorted(cands):
        if t not in used:
            out[p] = t
            used.add(t)
    return out
