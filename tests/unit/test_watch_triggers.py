"""Triggers over sliding windows of the agent's cumulative histograms (diag/watch/hist.py, triggers.py)."""
from __future__ import annotations

import pytest

from diag.errors import DiagError
from diag.watch import triggers
from diag.watch.hist import Hist, History

MS = 1_000_000
SUB = 2


def req_slot(ns: int) -> int:
    """The probe's log-linear slot of a latency (req_slot() in probes/diag_probe.c)."""
    per = 1 << SUB
    if ns < 2 * per:
        return ns
    lg = ns.bit_length()                       # floor(log2) + 1
    sub = (ns >> (lg - 1 - SUB)) & (per - 1)
    return (lg - SUB) * per + sub


def snap(t_s: float, latencies_ns: list[int], fsync_ns: list[int] = (), pid: int = 100) -> dict:
    """A cumulative stats snapshot as the agent writes it."""
    server: dict[int, int] = {}
    for v in latencies_ns:
        server[req_slot(v)] = server.get(req_slot(v), 0) + 1
    hist: dict[int, int] = {}
    for v in fsync_ns:
        lo = 1 << (v.bit_length() - 1)
        hist[lo] = hist.get(lo, 0) + 1
    return {"ts_ns": int(t_s * 1e9), "agent_pid": pid,
            "requests": {"sub_bits": SUB, "server": sorted([s, n] for s, n in server.items())},
            "syscalls": {"fsync": {"count": len(fsync_ns), "total_ns": sum(fsync_ns),
                                   "hist": sorted([lo, n] for lo, n in hist.items())}} if fsync_ns else {}}


class Feed:
    """Seconds of traffic appended to a cumulative record, one snapshot per second."""

    def __init__(self) -> None:
        self.lat: list[int] = []
        self.fsync: list[int] = []
        self.t = 0.0
        self.hist = History(keep_s=30)

    def second(self, lat: list[int], fsync: list[int] = ()) -> None:
        self.t += 1
        self.lat += lat
        self.fsync += list(fsync)
        self.hist.add(snap(self.t, self.lat, self.fsync))


def test_quantiles_and_counts_above_are_interpolated_inside_slots():
    h = Hist(((0, 10, 50), (10, 20, 50)))
    assert h.count == 100
    assert h.quantile(0.5) == pytest.approx(10)
    assert h.quantile(0.99) == pytest.approx(19.8)
    assert h.above(15) == pytest.approx(25)
    assert Hist(()).quantile(0.99) is None


def test_a_sustained_slow_p99_fires_after_the_hold_time():
    # GIVEN a trigger p99>20ms held 3 s, fed one snapshot per second
    ts = triggers.parse(["p99>20ms"], hold_s=3, min_slow=3)
    t = ts.triggers[0]
    f = Feed()
    fired = []
    # WHEN 10 fine seconds are followed by slow ones
    for s in range(16):
        slow = s >= 10
        f.second([1 * MS] * 90 + ([40 * MS] * 10 if slow else [2 * MS] * 10))
        w = f.hist.window(10)
        if w is not None:
            fired.append(t.tick(w))
    # THEN it fires only once the slow seconds lasted the hold time
    first = fired.index(True)
    assert first >= 10 - 1 + 2            # the third slow evaluation at the earliest
    assert "request p99" in t.last_detail


def test_one_slow_request_never_fires_however_few_requests_there_are():
    ts = triggers.parse(["p99>20ms"], hold_s=1, min_slow=3)
    t = ts.triggers[0]
    f = Feed()
    fired = False
    for s in range(15):
        f.second([1 * MS] * 3 + ([500 * MS] if s == 5 else []))
        w = f.hist.window(10)
        if w is not None:
            fired |= t.tick(w)
    assert not fired
    # while p99 itself was over the limit (with 30 requests in the window, p99 is the slowest)
    assert "p99" in t.last_detail


def test_a_family_trigger_reads_the_calls_of_that_family():
    ts = triggers.parse(["sync.p99>5ms"], hold_s=1, min_slow=1)
    t = ts.triggers[0]
    f = Feed()
    f.second([1 * MS], [1 * MS] * 10)
    f.second([1 * MS], [9 * MS] * 10)
    assert t.tick(f.hist.window(10))
    assert "sync family" in t.last_detail


def test_a_new_agent_run_starts_a_new_history():
    h = History(keep_s=10)
    h.add(snap(1, [MS] * 100, pid=1))
    h.add(snap(2, [MS] * 200, pid=1))
    h.add(snap(3, [MS] * 5, pid=2))       # restarted: its counts start from 0
    assert h.window(10) is None


@pytest.mark.parametrize("expr,why", [("p99>+20%", "baseline"), ("p99<5ms", "use >"), ("p100>1ms", "not a gate")])
def test_bad_triggers_are_one_line_errors_naming_the_flag(expr, why):
    with pytest.raises(DiagError) as e:
        triggers.parse([expr], 1, 1)
    assert str(e.value).startswith(f"--trigger {expr!r}") and why in str(e.value)


def test_slugs_name_files():
    assert triggers.slug("sync.p99>5ms") == "sync.p99-gt-5ms"
    assert triggers.slug("finding:disk-sync") == "finding-disk-sync"
    assert triggers.slug("severity>=warning") == "severity-ge-warning"
    assert "/" not in triggers.slug("../../x")
