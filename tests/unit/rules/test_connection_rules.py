"""accept-backlog, time-wait, small-reads, small-writes, event-loop-blocked, cpu-stall and the
samples-only cpu-bound (synthetic captures; nothing runs)."""
from __future__ import annotations

import pytest
from synth import MS, ctx, request, sample, snapshot, steady

from diag.analyze.rules import (accept_backlog, cpu_bound_samples, cpu_stall, event_loop_blocked, run_rules,
                                small_reads, small_writes, time_wait)


def test_a_backed_up_accept_queue_ranks_by_the_clients_wait():
    # GIVEN connections whose first request waited 25 ms in the queue while the server was idle
    reqs = steady() + [request(100 + i, 2, tid=10, fd=20 + i, seq=0, queued_ms=25) for i in range(10)]
    snaps = [snapshot(0, queue=0, overflows=0, drops=0), snapshot(5000, queue=8, overflows=0, drops=0)]
    f = accept_backlog.check(ctx(reqs, snapshots=snaps))
    assert f is not None and f.id == "accept-backlog" and f.impact_ns > 0 and f.severity in ("warning", "critical")
    assert any("accept queue" in e.text for e in f.evidence)


def test_dropped_syns_cost_a_second_each():
    snaps = [snapshot(0, queue=0, overflows=0, drops=0), snapshot(5000, queue=3, overflows=4, drops=4)]
    c = ctx(steady(), snapshots=snaps, counters={"syn_retrans": 4})
    f = accept_backlog.check(c)
    assert f is not None and f.impact_ns >= 4 * 1_000_000_000


def test_a_queue_never_backed_up_is_no_finding():
    reqs = steady() + [request(100 + i, 2, seq=0, queued_ms=0.05) for i in range(10)]
    assert accept_backlog.check(ctx(reqs, snapshots=[snapshot(0, queue=0, overflows=0), snapshot(10, queue=0,
                                                                                                   overflows=0)])) is None


def test_time_wait_by_count_alone_is_info_and_ranked_after_timed_findings():
    reqs = steady() + [request(100 + i, 30, sync=25) for i in range(10)]
    c = ctx(reqs, snapshots=[snapshot(0, time_wait=500), snapshot(100, time_wait=900)])
    tw = time_wait.check(c)
    assert tw is not None and tw.severity == "info" and tw.impact_ns == 0
    ranked = run_rules(c)
    assert [f.id for f in ranked][-1] == "time-wait" and ranked[0].id == "disk-sync"


def test_time_wait_with_the_set_up_of_one_request_connections():
    # every connection carries one request, its set-up (queue) part of the client's wait
    reqs = [request(i, 2, fd=20 + i, seq=0, queued_ms=6 if i >= 100 else 0.1) for i in range(110)]
    c = ctx(reqs, snapshots=[snapshot(0, time_wait=300), snapshot(100, time_wait=800)])
    f = time_wait.check(c)
    assert f is not None and f.impact_ns > 0 and f.share > 0.5


def test_many_tiny_reads():
    reqs = [request(i, 1, reads=120, bytes_in=120, socket=0.4) for i in range(100)]
    reqs += [request(100 + i, 6, reads=1500, bytes_in=1500, socket=5) for i in range(10)]
    f = small_reads.check(ctx(reqs))
    assert f is not None and f.id == "small-reads" and f.share > 0.5


def test_in_python_the_gil_hand_offs_of_tiny_reads_are_small_reads_time():
    # GIVEN threads reading byte by byte in CPython: their slow requests mostly wait to take the
    # GIL back after each read (short futex waits), the reads themselves cheap
    reqs = [request(i, 1, tid=10 + i % 4, reads=1500, bytes_in=1500, socket=0.4, futex=0.3) for i in range(100)]
    reqs += [request(100 + i, 11, tid=10 + i % 4, reads=1500, bytes_in=1500, socket=0.5, futex=8, user=1.5)
             for i in range(10)]
    # THEN small-reads explains the waits too, and says so; in another runtime only the reads count
    f = small_reads.check(ctx(reqs, python=True))
    assert f is not None and f.share > 0.7 and f.severity in ("warning", "critical")
    assert any("take the GIL back" in e.text for e in f.evidence)
    native = small_reads.check(ctx(reqs, python=False))
    assert native is None or native.share < 0.1


def test_buffered_reads_are_not_small_reads():
    reqs = steady() + [request(100 + i, 6, reads=2, bytes_in=4000, socket=5) for i in range(10)]
    assert small_reads.check(ctx(reqs)) is None


def test_write_write_read_stalls_at_the_delayed_ack():
    # two small writes per response, the next request on the connection 40 ms after each
    reqs = [request(i, 1, fd=5, writes=2, bytes_out=160, gap_ms=41) for i in range(60)]
    f = small_writes.check(ctx(reqs))
    assert f is not None and f.id == "small-writes" and "Nagle" in f.summary and f.impact_ns > 0


def test_one_write_per_response_is_not_small_writes():
    reqs = [request(i, 1, fd=5, writes=1, bytes_out=160, gap_ms=41) for i in range(60)]
    assert small_writes.check(ctx(reqs)) is None


def loop_requests(slow_sleep_ms: float):
    """One thread serving four connections whose requests overlap (an event loop)."""
    out = []
    for i in range(100):
        start = i * 10
        fams = {"sleep": slow_sleep_ms} if i % 10 == 9 else {}
        lat = 0.5 + (slow_sleep_ms if fams else 0)
        r = request(0, lat, tid=10, fd=5 + i % 4, seq=i // 4, **fams)
        out.append(r._replace(start_ns=start * MS, end_ns=start * MS + int(lat * MS), conn_start_ns=1 + i % 4))
    return out


def test_a_sleep_on_the_loop_blocks_it():
    f = event_loop_blocked.check(ctx(loop_requests(30)))
    assert f is not None and f.id == "event-loop-blocked" and f.severity in ("warning", "critical")


def test_a_loop_that_never_blocks_is_no_warning():
    f = event_loop_blocked.check(ctx(loop_requests(0)))         # its own 0.5 ms of work: info at most
    assert f is None or f.severity == "info"


def test_cpu_stall_needs_hardware_counters():
    reqs = steady() + [request(100 + i, 30) for i in range(10)]
    c = ctx(reqs)
    assert cpu_stall.check(c) is None                          # no counters: not measurable, no finding
    c.data.manifest["collectors"] = {"perf": {"counters": {"cycles": 3_000_000, "instructions": 1_000_000}}}
    f = cpu_stall.check(c)
    assert f is not None and f.id == "cpu-stall" and "3.00" in f.summary


@pytest.mark.parametrize("busy", [True, False])
def test_samples_alone_give_a_cpu_diagnosis_when_busy(busy):
    # py-spy samples of one thread, every 10 ms for 2 s; busy: on CPU in all of them
    samples = [sample(10, t * 10, "main", "crunch") for t in range(200)]
    if not busy:
        samples = samples[::20]
    f = cpu_bound_samples.check(ctx(samples=samples))
    if busy:
        assert f is not None and f.id == "cpu-bound" and any("crunch" in e.text for e in f.evidence)
    else:
        assert f is None or f.severity == "info"
