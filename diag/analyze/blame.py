"""Who made a request wait: each wait followed to the thread that ended it, and what that thread did.

A slow request's own thread mostly waits; the cause is what another thread did meanwhile. This
is the critical path of Perfetto's thread-state analysis and Trace Compass's critical path, on
the probe's data: for every wait of a request's thread (a wakeup record: blocked from t0, woken
at t1 by thread W), the interval [t0, t1] is attributed to what W did over it:

- W blocked itself (its own wakeup records inside the interval): followed, recursively, to W's
  own waker (bounded depth, a thread already on the path ends the chain);
- W runnable but not running (its runq records): "runq", waiting for a CPU;
- the rest of the interval W was on CPU: "cpu" (or "gc" where the runtime says the cyclic
  collector ran), attributed to W, a thread that serves requests or a background one.

A chain ends at a wakeup that came from the kernel (an interrupt, an idle CPU, a kernel thread,
another process): the wait is then what the call itself says (fsync: "sync", a read on an
upstream socket: "upstream", a sleep: "sleep", ...). A wait for the CPython GIL (a futex inside
the interpreter's GIL state, known from the runtime sampler) is attributed to the threads that
held the GIL over it, whoever happened to wake the waiter.

Limits: waits shorter than the probe's wakeup threshold (100 µs by default) and runnable waits
shorter than its runq threshold are not recorded: they stay in the family the call belongs to
("futex" for a lock). A waker's on-CPU time is everything its recorded waits do not cover, short
syscalls included. See docs/critical-path.md.
"""
from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass

from diag.model import Dataset, RunqWait, Wakeup
from diag.syscalls import FdKind, family

MAX_DEPTH = 4

# roots: what the time was in the end
SYNC, FILE, UPSTREAM, SOCKET, POLL, SLEEP, ACCEPT, FUTEX, RUNQ, CPU, GC, OTHER = (
    "sync", "file", "upstream", "socket", "poll", "sleep", "accept", "futex", "runq", "cpu", "gc", "other")
# mechanisms: how the request's thread came to wait for it
GIL, LOCK, IPC = "gil", "lock", "ipc"
# roles of the thread the time is blamed on
SERVING, BACKGROUND = "serving", "background"


@dataclass(frozen=True)
class Blame:
    """One piece of a slow request's wait, attributed."""

    root: str                    # SYNC, FILE, ..., CPU, GC
    via: str                     # GIL, LOCK or IPC: how the request's thread came to wait
    ns: int
    holder: int | None           # the thread whose activity is the root (None: the kernel / outside)
    role: str | None             # SERVING / BACKGROUND for a holder on CPU
    chain: tuple[int, ...]       # waiter, ..., holder
    window: tuple[int, int]
    detail: str = ""             # what ended the chain: "jbd2/vda-8", "interrupt", "fsync", ...


class Runtime:
    """What the Python runtime sampler told about the target: where each process's GIL state
    lives, who held the GIL and when the cyclic GC ran (a diag.runtime_index.RuntimeIndex)."""

    def __init__(self, index=None, gil_ranges: list[tuple[int, int, int]] | None = None) -> None:
        self.index = index
        self.gil_ranges = gil_ranges or []          # (pid, lo, hi)

    def watched(self, pid: int, t0: int, t1: int) -> bool:
        """Whether the sampler watched this process's GIL over [t0, t1]."""
        return self.index is not None and pid in self.index.pids() and self.index.sampled(t0, t1, pid)

    def is_gil(self, pid: int, uaddr: int) -> bool:
        return any(p == pid and lo <= uaddr < hi for p, lo, hi in self.gil_ranges)

    def gil_holders(self, pid: int, t0: int, t1: int) -> list[tuple[int, int, int]]:
        """(tid, start, end) of the identified GIL holders over [t0, t1]."""
        if self.index is None:
            return []
        return [(span.tid, s, e) for span, s, e in self.index.gil_pieces(t0, t1, pid)
                if span.held and span.tid is not None]

    def gil_free_ns(self, pid: int, t0: int, t1: int) -> int:
        if self.index is None:
            return 0
        return self.index.gil_window(t0, t1, pid).free_ns

    def gc_overlap(self, pid: int, t0: int, t1: int) -> list[tuple[int, int]]:
        if self.index is None:
            return []
        return [(s, e) for _, s, e in self.index.gc_pieces(t0, t1, pid)]


class SchedIndex:
    """Wakeups and runq waits per thread, sorted, for interval queries."""

    def __init__(self, data: Dataset, upstream_fds: set[tuple[int, int]] | None = None) -> None:
        wk: dict[int, list[Wakeup]] = defaultdict(list)
        for w in data.wakeups:
            wk[w.tid].append(w)
        self.wakeups = {t: sorted(v, key=lambda w: w.start_ns) for t, v in wk.items()}
        self.wake_starts = {t: [w.start_ns for w in v] for t, v in self.wakeups.items()}
        rq: dict[int, list[RunqWait]] = defaultdict(list)
        for r in data.runq_waits:
            rq[r.tid].append(r)
        self.runq = {t: sorted(v, key=lambda r: r.start_ns) for t, v in rq.items()}
        self.runq_starts = {t: [r.start_ns for r in v] for t, v in self.runq.items()}
        self.upstream_fds = upstream_fds or set()
        self.pid_of: dict[int, int] = {}
        for w in data.wakeups:
            self.pid_of[w.tid] = w.pid
            if w.waker_target:
                self.pid_of.setdefault(w.waker_tid, w.waker_pid)
        for r in data.runq_waits:
            self.pid_of.setdefault(r.tid, r.pid)
        # threads that serve requests (any request read or written by them)
        self.serving_tids = {r.tid for r in data.requests} | {r.write_tid for r in data.requests if r.write_tid}
        # a lock's releases: each wakeup of a futex waiter by a thread inside its own futex call
        # is that thread handing the lock on; under contention, the thread that released it at
        # time t held it since the release before
        rel: dict[tuple[int, int], list[tuple[int, int, bool]]] = defaultdict(list)
        for w in data.wakeups:
            if (w.call and family(w.call) == "futex" and w.waker_target and not w.waker_irq
                    and w.waker_call and family(w.waker_call) == "futex"):
                rel[(w.pid, w.arg)].append((w.end_ns, w.waker_tid, w.waker_serving))
        self.releases = {k: sorted(v) for k, v in rel.items()}

    def holders(self, pid: int, uaddr: int, a: int, b: int) -> list[tuple[int, int, int, bool]]:
        """(start, end, tid, serving) of the successive holders of the lock at `uaddr` over [a, b],
        from its releases: the piece before each release is its releaser's."""
        rel = self.releases.get((pid, uaddr))
        if not rel:
            return []
        times = [r[0] for r in rel]
        lo, hi = bisect.bisect_right(times, a), bisect.bisect_right(times, b)
        out, start = [], a
        for t, tid, serving in rel[lo:hi]:
            if t > start:
                out.append((start, t, tid, serving))
            start = t
        return out

    @property
    def empty(self) -> bool:
        return not self.wakeups

    def waits(self, tid: int, t0: int, t1: int) -> list[Wakeup]:
        """Blocked intervals of `tid` overlapping [t0, t1]."""
        starts = self.wake_starts.get(tid)
        if not starts:
            return []
        evs = self.wakeups[tid]
        hi = bisect.bisect_left(starts, t1)
        lo = hi
        while lo > 0 and evs[lo - 1].end_ns > t0:
            lo -= 1
            if t0 - evs[lo].start_ns > 60_000_000_000:    # waits are never that long: stop scanning
                break
        return [w for w in evs[lo:hi] if w.end_ns > t0]

    def runq_waits(self, tid: int, t0: int, t1: int) -> list[RunqWait]:
        starts = self.runq_starts.get(tid)
        if not starts:
            return []
        evs = self.runq[tid]
        hi = bisect.bisect_left(starts, t1)
        lo = max(0, bisect.bisect_left(starts, t0) - 1)
        return [r for r in evs[lo:hi] if r.end_ns > t0]

    def role(self, tid: int, hint: bool | None = None) -> str:
        return SERVING if hint or tid in self.serving_tids else BACKGROUND


def _kernel_root(w: Wakeup, upstream_fds: set[tuple[int, int]]) -> str:
    """What a wait ended by the kernel (or another process) was: the family of the call."""
    fam = family(w.call) if w.call else OTHER
    if fam in ("read", "write", "connect"):
        if fam == "connect" or w.fd_role == "out" or (w.pid, w.arg) in upstream_fds:
            return UPSTREAM
        if w.fd_kind is FdKind.FILE:
            return FILE
        return SOCKET
    if fam in (SYNC, SLEEP, POLL, ACCEPT, FUTEX):
        return fam
    return OTHER


def _call_root(call: str) -> str:
    fam = family(call)
    return fam if fam in (SYNC, SLEEP) else RUNQ


def _waker_label(w: Wakeup) -> str:
    if w.waker_idle:
        return "an interrupt on an idle CPU"
    if w.waker_irq:
        return "an interrupt"
    if not w.waker_target:
        return w.waker_comm or f"pid {w.waker_pid}"
    return f"tid {w.waker_tid}"


class CriticalPath:
    """Follows the waits of slow requests (see the module docstring)."""

    def __init__(self, idx: SchedIndex, runtime: Runtime | None = None) -> None:
        self.idx = idx
        self.rt = runtime or Runtime()

    def request(self, pid: int, tid: int, t0: int, t1: int, calls: tuple[str, ...] = ("futex",)) -> list[Blame]:
        """The waits of `tid` in [t0, t1] whose call is one of `calls` (the waits the request's own
        breakdown cannot explain: a lock, the GIL), attributed."""
        out: list[Blame] = []
        for w in self.idx.waits(tid, t0, t1):
            if w.call not in calls:
                continue
            a, b = max(w.start_ns, t0), min(w.end_ns, t1)
            if b > a:
                out.extend(self._wait(w, a, b, 1, (tid,)))
        return out

    # --- one wait ---------------------------------------------------------------------------
    def _wait(self, w: Wakeup, a: int, b: int, depth: int, path: tuple[int, ...]) -> list[Blame]:
        via = self._via(w)
        if via == GIL and self.rt.watched(w.pid, a, b):
            out = self._behind_gil(w.pid, a, b, depth, path)
            if out or depth == 1:
                return out
            # inside a holder's interval the sampler saw no other holder (its resolution is a
            # few ms): follow this wait's own waker instead
        # a thread wakes another only from inside a syscall (futex wake, write, close...): a target
        # thread seen waking from user space was interrupted there by the real waker (a timer, the
        # network), whose code ran on that thread's stack (interrupts from user mode do)
        from_kernel = not w.waker_target or w.waker_irq or w.waker_idle or w.waker_call is None
        if via == LOCK and not from_kernel and depth <= MAX_DEPTH:
            # a wait may span several holders (another waiter got the lock first): each piece is
            # its own holder's, the last the waker's
            pieces = self.idx.holders(w.pid, w.arg, a, b)
            if len(pieces) > 1:
                out = []
                for s, e, tid, serving in pieces:
                    if tid in path:
                        out.append(Blame(FUTEX, via, e - s, None, None, path, (s, e), "a wait cycle"))
                    else:
                        out.extend(self._activity(tid, w.pid, s, e, depth, (*path, tid), via, serving))
                return out
        root = _kernel_root(w, self.idx.upstream_fds)
        if root == SLEEP or from_kernel or w.waker_tid in path or depth > MAX_DEPTH:
            detail = _waker_label(w) if from_kernel else ("a wait cycle" if w.waker_tid in path else "depth")
            holder = path[-1] if depth > 1 else None
            return [Blame(root, via, b - a, holder, None, path, (a, b), detail)]
        return self._activity(w.waker_tid, w.waker_pid, a, b, depth, (*path, w.waker_tid), via, w.waker_serving)

    def _via(self, w: Wakeup) -> str:
        if w.call and family(w.call) == "futex":
            return GIL if self.rt.is_gil(w.pid, w.arg) else LOCK
        return IPC

    def _behind_gil(self, pid: int, a: int, b: int, depth: int, path: tuple[int, ...]) -> list[Blame]:
        """A GIL wait: the threads that held the GIL over it. The sampler sees the holder every few
        ms, so the edges of a wait may show the waiter itself holding it, or nobody: that part is
        shared among the other holders seen; with none seen, the GIL was free while the waiter
        waited for a CPU to take it (runq), or nothing was sampled."""
        out: list[Blame] = []
        held: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for tid, s, e in self.rt.gil_holders(pid, a, b):
            if tid not in path:
                held[tid].append((s, e))
        covered = sum(e - s for iv in held.values() for s, e in iv)
        rest = b - a - covered
        if not held:
            if depth > 1:
                return []
            free = self.rt.gil_free_ns(pid, a, b)
            if free:
                out.append(Blame(RUNQ, GIL, min(free, b - a), None, None, path, (a, b), "GIL free, waiting to take it"))
            if b - a - free > 0:
                out.append(Blame(FUTEX, GIL, b - a - free, None, None, path, (a, b), "GIL holder not sampled"))
            return out
        shares = {tid: rest * sum(e - s for s, e in ivs) // covered for tid, ivs in held.items()}
        top = max(held, key=lambda t: sum(e - s for s, e in held[t]))
        shares[top] += rest - sum(shares.values())        # the rounding, to the main holder
        for tid, ivs in held.items():
            extra = shares[tid]
            for i, (s, e) in enumerate(ivs):
                pieces = self._activity(tid, pid, s, e, depth, (*path, tid), GIL, None)
                if i == 0 and extra:
                    pieces = _scaled(pieces, (e - s + extra) / (e - s))
                out.extend(pieces)
        return out

    # --- what a thread did over an interval -------------------------------------------------
    def _activity(self, tid: int, pid: int, a: int, b: int, depth: int, path: tuple[int, ...], via: str,
                  serving_hint: bool | None) -> list[Blame]:
        out: list[Blame] = []
        busy: list[tuple[int, int]] = []
        runq = self.idx.runq_waits(tid, a, b)
        woken_at = {r.start_ns: r for r in runq if not r.preempted}
        for w in self.idx.waits(tid, a, b):
            # the wait for a CPU right after the wakeup is part of this wait's latency (the
            # kernel's wake-to-run delay): it counts with the wait's root, not as CPU contention
            after = woken_at.pop(w.end_ns, None)
            end = after.end_ns if after is not None else w.end_ns
            s, e = max(w.start_ns, a), min(end, b)
            if e <= s:
                continue
            busy.append((s, e))
            for bl in self._wait(w, s, e, depth + 1, path):
                # the holder's own waits are reached through the lock/GIL the request waited on
                out.append(Blame(bl.root, via, bl.ns, bl.holder if bl.holder is not None else tid, bl.role,
                                 bl.chain, bl.window, bl.detail))
        for r in runq:
            if not r.preempted and r.start_ns not in woken_at:
                continue                              # merged into its wait above
            s, e = max(r.start_ns, a), min(r.end_ns, b)
            if e > s:
                busy.append((s, e))
                # woken inside a blocking call (a short sleep in fsync, below the wakeup threshold)
                # and waiting to run again: that call's latency
                root = _call_root(r.call) if (r.call and not r.preempted) else RUNQ
                out.append(Blame(root, via, e - s, tid, self.idx.role(tid, serving_hint), path, (s, e),
                                 "runnable inside the call" if root != RUNQ else ""))
        on_cpu = _subtract((a, b), busy)
        role = self.idx.role(tid, serving_hint)
        for s, e in on_cpu:
            gc = sum(min(ge, e) - max(gs, s) for gs, ge in _clip_all(self.rt.gc_overlap(pid, s, e), s, e))
            if gc:
                out.append(Blame(GC, via, gc, tid, role, path, (s, e), "cyclic GC"))
            if e - s - gc > 0:
                out.append(Blame(CPU, via, e - s - gc, tid, role, path, (s, e)))
        return out


def _scaled(pieces: list[Blame], factor: float) -> list[Blame]:
    return [Blame(p.root, p.via, int(p.ns * factor), p.holder, p.role, p.chain, p.window, p.detail) for p in pieces]


def _clip_all(iv: list[tuple[int, int]], a: int, b: int) -> list[tuple[int, int]]:
    return [(max(s, a), min(e, b)) for s, e in iv if min(e, b) > max(s, a)]


def _subtract(span: tuple[int, int], cuts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """span minus the union of cuts."""
    a, b = span
    out = []
    cur = a
    for s, e in sorted(cuts):
        if s > cur:
            out.append((cur, min(s, b)))
        cur = max(cur, e)
        if cur >= b:
            break
    if cur < b:
        out.append((cur, b))
    return [(s, e) for s, e in out if e > s]


def total(blames: list[Blame], root: str | None = None, via: str | None = None, role: str | None = None,
          roots: tuple[str, ...] | None = None) -> int:
    return sum(b.ns for b in blames if (root is None or b.root == root) and (via is None or b.via == via)
               and (role is None or b.role == role) and (roots is None or b.root in roots))


__all__ = ["Blame", "CriticalPath", "Runtime", "SchedIndex", "total", "SERVING", "BACKGROUND", "GIL", "LOCK", "IPC"]
