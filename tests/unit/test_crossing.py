"""Crossing the streams (diag/analyze/crossing.py) on small synthetic captures: which requests are
slow, where their wall time went (from per-call events or from the probe's in-kernel sums), lock
waits behind other threads' blocking calls, accept-queue waits behind busy servers, event loops,
and the window queries of ThreadIndex."""
from __future__ import annotations

import os
import sys

from diag.analyze.crossing import (MIN_SLOW, ThreadIndex, analyze_requests, event_loop_threads, hot_python_frames,
                                   waits_behind)
from diag.model import Dataset, Frame, StackSample
from diag.syscalls import FdKind

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "rules"))
from synth import MS, call, request, sample, sock, steady  # noqa: E402

LISTENER = 3


def analyze(requests=(), syscalls=(), samples=(), slow_ms: float | None = None, manifest=None):
    data = Dataset(requests=list(requests), syscalls=list(syscalls), samples=list(samples), manifest=manifest)
    return analyze_requests(data, ThreadIndex(data), None if slow_ms is None else int(slow_ms * MS))


def by_fd(ra, fd: int):
    [sr] = [s for s in ra.slow if s.request.fd == fd]
    return sr


# ---- which requests are slow -----------------------------------------------------------------

def test_slow_threshold_given_selects_the_requests_at_or_above_it():
    # GIVEN 50 requests of 1 ms, one of 10 ms and one of 30 ms
    reqs = steady(50) + [request(50, 10), request(51, 30)]
    # WHEN analysed with --slow 10ms
    ra = analyze(reqs, slow_ms=10)
    # THEN exactly the two, and the threshold says where it came from
    assert sorted(s.request.latency_ns for s in ra.slow) == [10 * MS, 30 * MS]
    assert (ra.threshold_ns, ra.threshold_from) == (10 * MS, "--slow")
    assert ra.source == "ebpf" and ra.count == 52


def test_without_a_threshold_the_slow_set_is_p99_but_never_fewer_than_the_ten_slowest():
    # GIVEN 200 requests of 1, 2, ... 200 ms: their p99 would leave only two or three slow
    reqs = [request(i, i + 1, tid=10 + i % 4, fd=5 + i % 4, gap_ms=1000) for i in range(200)]
    ra = analyze(reqs)
    # THEN the MIN_SLOW (10) slowest are analysed
    assert ra.threshold_from == f"p99, at least the {MIN_SLOW} slowest"
    assert ra.threshold_ns == (201 - MIN_SLOW) * MS
    assert sorted(s.request.latency_ns // MS for s in ra.slow) == list(range(201 - MIN_SLOW, 201))


def test_no_request_stream_means_no_request_analysis():
    # eBPF per-call events alone are a subset of the calls: no requests are rebuilt from them
    assert analyze(syscalls=[call("fsync", 1, 5), sock("read", 2, 1, ret=100)._replace(source="ebpf")]) is None


# ---- where a slow request's time went --------------------------------------------------------

def test_breakdown_from_events_splits_the_wall_time_by_family_and_leaves_the_rest_to_user():
    # GIVEN a strace stream: a request read at 3 ms, during which its thread writes a file (2 ms),
    # fsyncs it (5 ms), waits on a futex (1 ms), then writes the response (1 ms, ends at 15 ms)
    events = [sock("accept4", 0, 1, ret=5, fd=LISTENER), sock("read", 2, 1, ret=100),
              call("pwrite64", 4, 2, fd=9, ret=4096, source="strace"),
              call("fsync", 6, 5, fd=9, source="strace"),
              call("futex", 12, 1, fd=None, kind=FdKind.UNKNOWN, source="strace"),
              sock("write", 14, 1, ret=200)]
    # WHEN analysed
    ra = analyze(syscalls=events, slow_ms=1)
    # THEN the request was rebuilt from the events and its 12 ms are accounted for exactly
    assert ra.source == "events"
    [sr] = ra.slow
    assert sr.breakdown == {"file": 2 * MS, "sync": 5 * MS, "futex": 1 * MS, "socket": 1 * MS, "user": 3 * MS}
    assert sum(sr.breakdown.values()) == sr.request.latency_ns == 12 * MS
    assert [c.name for c in sr.calls] == ["pwrite64", "fsync", "futex", "write"]


def test_breakdown_from_in_kernel_sums_takes_the_probe_families_as_they_are():
    # GIVEN a probe request of 30 ms (100-130) with 20 ms of fsync and 3 ms on its own socket
    # ("sock"), a per-call event of its thread inside it that the sums already count, and stack
    # samples of its thread and of another one
    r = request(0, 30, sync=20, sock=3)
    extra = call("pwrite64", 105, 5, tid=r.tid)
    samples = [sample(r.tid, 110, "main", "save"), sample(11, 110, "main", "other"), sample(r.tid, 140, "main")]
    # WHEN analysed
    ra = analyze([r], [extra], samples, slow_ms=10)
    # THEN the breakdown is the sums (the probe's "sock" named "socket"), the rest user time,
    # and the request keeps the samples of its thread inside its window
    [sr] = ra.slow
    assert sr.breakdown == {"sync": 20 * MS, "socket": 3 * MS, "user": 7 * MS}
    assert hot_python_frames(sr.samples) == [("save (app.py:2)", 1)]


def test_polling_inside_a_request_that_calls_an_upstream_is_upstream_time():
    # GIVEN a worker that connects to an upstream, waits for it in poll (10 ms), then reads it
    events = [sock("accept4", 0, 1, ret=5, fd=LISTENER), sock("read", 2, 1, ret=100),
              sock("connect", 3, 1, fd=7), sock("sendto", 4, 1, ret=64, fd=7),
              call("poll", 5, 10, fd=None, kind=FdKind.UNKNOWN, source="strace"),
              sock("recvfrom", 15, 2, ret=512, fd=7),
              sock("write", 18, 1, ret=200)]
    [sr] = analyze(syscalls=events, slow_ms=1).slow
    # THEN the poll counts as upstream: connect 1 + send 1 + poll 10 + recv 2 ms
    assert sr.breakdown["upstream"] == 14 * MS
    assert "poll" not in sr.breakdown
    assert sr.breakdown["socket"] == 1 * MS


def test_a_client_on_the_fd_number_of_a_closed_upstream_is_not_upstream_time():
    # GIVEN a first request that calls an upstream on fd 7 and closes it; fd 7 is then reused by
    # accept for another client, whose response takes 20 ms to write (a slow client)
    events = [sock("accept4", 0, 1, ret=5, fd=LISTENER), sock("read", 2, 1, ret=100),
              sock("connect", 4, 1, fd=7), sock("write", 5, 1, ret=10, fd=7), sock("read", 6, 2, ret=10, fd=7),
              sock("close", 9, 0.1, fd=7), sock("write", 10, 1, ret=100),
              sock("accept4", 20, 1, ret=7, fd=LISTENER, tid=11), sock("read", 22, 1, ret=100, fd=7, tid=11),
              sock("write", 25, 20, ret=100, fd=7, tid=11)]
    ra = analyze(syscalls=events, slow_ms=1)
    # THEN the first request's calls on fd 7 are upstream time, the second's own write is not
    assert by_fd(ra, 5).breakdown["upstream"] == 4 * MS
    assert by_fd(ra, 7).breakdown == {"socket": 20 * MS, "user": 2 * MS}


# ---- waits behind other threads --------------------------------------------------------------

def test_a_lock_wait_is_attributed_to_what_other_threads_were_blocked_in_meanwhile():
    # GIVEN a slow request (100-130 ms) whose thread waits 20 ms on a futex (104-124 ms), while
    # thread 11 fsyncs (105-115), thread 12 fdatasyncs (110-118) and thread 13 writes a file
    # (102-130)
    r = request(0, 30, futex=20)
    others = [call("futex", 104, 20, tid=10, fd=None, kind=FdKind.UNKNOWN),
              call("fsync", 105, 10, tid=11), call("fdatasync", 110, 8, tid=12),
              call("pwrite64", 102, 28, tid=13)]
    # WHEN analysed (no wakeup records: the overlap of the other threads' calls is used)
    [sr] = analyze([r], others, slow_ms=10).slow
    # THEN the sync calls cover 13 ms of the wait (their union, not their 18 ms sum); file I/O
    # explains only what is left of the 20 ms
    assert sr.behind == {"sync": 13 * MS, "file": 7 * MS}
    assert sr.breakdown["futex"] == 20 * MS


def test_short_futex_waits_are_not_looked_behind():
    r = request(0, 30)
    evs = [call("futex", 104, 0.05, tid=10, fd=None, kind=FdKind.UNKNOWN), call("fsync", 100, 20, tid=11)]
    data = Dataset(requests=[r], syscalls=evs)
    idx = ThreadIndex(data)
    [sr] = analyze_requests(data, idx, 10 * MS).slow
    assert waits_behind(sr, idx, set()) == {}


def test_an_accept_queue_wait_is_attributed_to_what_the_busy_servers_did_meanwhile():
    # GIVEN a connection that waited 10 ms in the accept queue (90-100 ms), accepted at 100 ms,
    # its request read at 101 ms and answered at 121 ms; meanwhile another worker served a
    # request (85-105 ms) that spent 16 of its 20 ms in fsync
    waiting = request(0, 20, gap_ms=101, seq=0, queued_ms=10, tid=10, fd=5)
    busy = request(0, 20, gap_ms=85, tid=11, fd=6, sync=16)
    # WHEN analysed with a threshold only the waiting one's client-visible latency (31 ms) passes
    ra = analyze([waiting, busy], slow_ms=25)
    # THEN latencies are client-visible, and its queue wait splits like the busy request's time
    # over the window (half of it: 8 ms fsync, 2 ms user); the fsync part is time behind fsync
    assert ra.client_visible
    [sr] = ra.slow
    assert sr.request.fd == 5
    assert sr.breakdown["queue"] == 10 * MS and sr.breakdown["setup"] == 1 * MS
    assert sr.queue_behind == {"sync": 8 * MS, "user": 2 * MS}
    assert sr.behind == {"sync": 8 * MS}


def test_an_accept_queue_wait_while_the_servers_were_idle_explains_nothing_behind():
    waiting = request(0, 20, gap_ms=101, seq=0, queued_ms=10)
    [sr] = analyze([waiting], slow_ms=25).slow
    assert sr.breakdown["queue"] == 10 * MS
    assert sr.queue_behind == {} and sr.behind == {}


# ---- event loops -----------------------------------------------------------------------------

def test_a_thread_serving_overlapping_connections_is_an_event_loop_and_a_sequential_worker_is_not():
    loop = [request(0, 50, tid=10, fd=5), request(0, 5, tid=10, fd=6, gap_ms=110)]            # 100-150, 110-115
    worker = [request(0, 10, tid=11, fd=7), request(1, 10, tid=11, fd=8)]                     # 100-110, 200-210
    keep_alive = [request(i, 10, tid=12, fd=9) for i in range(3)]                             # one connection
    assert event_loop_threads(loop + worker + keep_alive) == {10}


def test_a_request_on_an_event_loop_is_delayed_by_whatever_the_loop_did_meanwhile():
    # GIVEN a loop thread serving two connections at once; during the slow request (100-150 ms)
    # it fsyncs for 15 ms, which the probe credited to the other connection
    slow = request(0, 50, tid=10, fd=5, sock=2)
    other = request(0, 5, tid=10, fd=6, gap_ms=110, sync=15)
    fsync = call("fsync", 120, 15, tid=10)
    # WHEN analysed
    [sr] = analyze([slow, other], [fsync], slow_ms=40).slow
    # THEN the loop's fsync is part of the slow request's time, with its own socket I/O
    assert sr.breakdown == {"sync": 15 * MS, "socket": 2 * MS, "user": 33 * MS}


# ---- window queries --------------------------------------------------------------------------

def test_thread_index_answers_window_queries_per_thread():
    evs = [call("read", 0, 10, tid=10), call("write", 12, 1, tid=10), call("fsync", 20, 2, tid=10),
           call("write", 12, 1, tid=11),
           call("read", 5, 1, tid=10)._replace(dur_ns=None)]          # no duration: not in the index
    smp = [sample(10, 12, "handler"), sample(10, 22, "handler"),
           StackSample(tid=10, ts_ns=None, frames=(Frame("f"),))]   # no time: not in the index
    idx = ThreadIndex(Dataset(syscalls=evs, samples=smp))
    # calls that started in [t0, t1)
    assert [e.name for e in idx.calls(10, 5 * MS, 20 * MS)] == ["write"]
    # calls that overlap [t0, t1]: the read started before t0 is still running at 5 ms
    assert [e.name for e in idx.overlapping(10, 5 * MS, 20 * MS)] == ["read", "write", "fsync"]
    assert idx.calls(99, 0, 100 * MS) == [] and idx.overlapping(99, 0, 100 * MS) == []
    # samples within [t0, t1], ends included
    assert [s.ts_ns for s in idx.stacks(10, 12 * MS, 22 * MS)] == [12 * MS, 22 * MS]


def test_hot_python_frames_count_the_leaf_most_python_frame_of_py_spy_samples():
    native_leaf = StackSample(tid=10, ts_ns=1, frames=(Frame("main", "app.py", 1), Frame("query", "db.py", 40),
                                                       Frame("memcpy", module="libc.so.6")), weight=3)
    frozen_leaf = StackSample(tid=10, ts_ns=2, frames=(Frame("main", "app.py", 1),
                                                       Frame("_find", "<frozen importlib._bootstrap>", 9)))
    perf = StackSample(tid=10, ts_ns=3, frames=(Frame("render", "tpl.py", 7),), source="perf")
    samples = [native_leaf, frozen_leaf, perf, sample(10, 4, "main", "render"), sample(10, 5, "main", "render")]
    assert hot_python_frames(samples) == [("query (db.py:40)", 3), ("render (app.py:2)", 2), ("main (app.py:1)", 1)]
    assert hot_python_frames(samples, n=1) == [("query (db.py:40)", 3)]


def test_requests_before_every_collector_ran_are_left_out():
    # GIVEN the last collector started at 250 ms: requests before it lack the crossed evidence
    reqs = [request(i, 5) for i in range(5)]                                   # start at 100..500 ms
    ra = analyze(reqs, manifest={"clock": {"collectors_started_monotonic_ns": 250 * MS}})
    assert [r.start_ns for r in ra.requests] == [300 * MS, 400 * MS, 500 * MS]
