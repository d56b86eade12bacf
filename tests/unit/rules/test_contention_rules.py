"""lock-contention, gil-contention, gc-pause: from the waits of slow requests followed to their
wakers (synthetic wakeups and runtime records), and lock-contention's fallback on durations."""
from __future__ import annotations

from synth import PID, call, ctx, request, runtime, sample, steady, wake

from diag.analyze.rules import cpu_bound, gc_pause, gil_contention, lock_contention
from diag.syscalls import FdKind

GIL = 0x1000            # inside the GIL state the runtime records place at 0x1000 (208 bytes)
LOCK = 0x9000


def slow_waiting(n=10, tid_of=lambda i: 10 + i % 3, wait_ms=18, latency_ms=20):
    """n slow requests (2 s apart) of 20 ms, each waiting `wait_ms` on a futex from its start."""
    return [request(100 + i, latency_ms, tid=tid_of(i), gap_ms=100, futex=wait_ms) for i in range(n)]


def starts(reqs):
    return [r.start_ns / 1e6 for r in reqs]


def test_a_lock_whose_holder_works_is_lock_contention():
    # GIVEN slow requests waiting on a lock, each released by thread 50 which ran on CPU meanwhile
    reqs = slow_waiting()
    wakeups = [wake(r.tid, s, s + 18, waker=50, arg=LOCK) for r, s in zip(reqs, starts(reqs))]
    c = ctx(steady() + reqs, wakeups=wakeups, samples=[sample(50, s + 5, "handler", "crunch") for s in starts(reqs)],
            python=True)
    f = lock_contention.check(c)
    assert f is not None and f.id == "lock-contention" and f.severity in ("warning", "critical")
    assert f.share > 0.8
    assert any("crunch" in e.text for e in f.evidence)          # the holder's frames are named


def test_a_lock_held_across_fsync_is_the_fsyncs_and_only_the_mechanism_here():
    reqs = slow_waiting()
    wakeups = []
    for r, s in zip(reqs, starts(reqs)):
        wakeups.append(wake(r.tid, s, s + 18, waker=50, arg=LOCK))
        wakeups.append(wake(50, s - 1, s + 17.5, waker=0, call_name="fsync", waker_call=None, waker_target=False,
                            comm="jbd2/vda-8"))
    c = ctx(steady() + reqs, wakeups=wakeups)
    f = lock_contention.check(c)
    assert f is not None and f.severity == "info" and "mechanism" in f.summary
    sync = sum(s.behind.get("sync", 0) for s in c.req.slow)
    assert sync >= 10 * 17 * 1_000_000                         # disk-sync gets the time behind the lock


def test_without_wakeups_long_futex_waits_are_lock_contention():
    reqs = slow_waiting()
    calls = [call("futex", s, 18, tid=r.tid, fd=None, kind=FdKind.UNKNOWN) for r, s in zip(reqs, starts(reqs))]
    f = lock_contention.check(ctx(steady() + reqs, syscalls=calls))
    assert f is not None and "duration" in f.evidence[0].text


def gil_capture(holder: int, serving: bool):
    reqs = slow_waiting()
    wakeups = [wake(r.tid, s, s + 18, waker=holder, arg=GIL + 8) for r, s in zip(reqs, starts(reqs))]
    spans = [(holder, s, s + 18) for s in starts(reqs)]
    extra = [request(200, 1, tid=holder)] if serving else []        # the holder serves requests itself
    return ctx(steady() + reqs + extra, wakeups=wakeups, python=True,
               samples=[sample(holder, s + 5, "refresh_cache") for s in starts(reqs)], **runtime(spans))


def test_gil_held_by_a_background_thread_is_gil_contention():
    c = gil_capture(holder=77, serving=False)
    f = gil_contention.check(c)
    assert f is not None and f.id == "gil-contention" and f.severity in ("warning", "critical")
    assert "77" in f.summary and any("refresh_cache" in e.text for e in f.evidence)
    assert cpu_bound.check(c) is None


def test_gil_held_by_other_request_threads_is_cpu_bound():
    c = gil_capture(holder=13, serving=True)
    assert gil_contention.check(c) is None
    f = cpu_bound.check(c)
    assert f is not None and f.share > 0.8


def test_not_python_no_gil_contention():
    c = ctx(steady() + slow_waiting(), python=False)
    assert gil_contention.check(c) is None


def test_waits_behind_a_collecting_holder_are_gc_pause():
    reqs = slow_waiting()
    wakeups = [wake(r.tid, s, s + 18, waker=77, arg=GIL) for r, s in zip(reqs, starts(reqs))]
    spans = [(77, s, s + 18) for s in starts(reqs)]
    pauses = [(s, s + 18, 2, 77) for s in starts(reqs)]
    c = ctx(steady() + reqs, wakeups=wakeups, python=True, **runtime(spans, pauses))
    f = gc_pause.check(c)
    assert f is not None and f.id == "gc-pause" and f.severity in ("warning", "critical")
    assert "generation 2" in f.summary and f.share > 0.7


def test_no_collection_no_gc_pause():
    c = ctx(steady() + slow_waiting(), python=True, **runtime())
    assert gc_pause.check(c) is None


def test_gc_from_native_frames_without_the_runtime_sampler():
    reqs = [request(100 + i, 30, tid=10) for i in range(10)]
    samples = [sample(10, r.start_ns / 1e6 + k, "main", "gc_collect_main", file=None) for r in reqs for k in range(5)]
    f = gc_pause.check(ctx(steady() + reqs, samples=samples))
    assert f is not None and f.id == "gc-pause" and PID
