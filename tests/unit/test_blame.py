"""The critical-path walker on synthetic wakeup graphs: chains, cycles, depth, interrupt wakers,
clipping, the GIL's holders (diag/analyze/blame.py)."""
from __future__ import annotations

from diag.analyze.blame import (BACKGROUND, CPU, FUTEX, GC, GIL, LOCK, MAX_DEPTH, RUNQ, SERVING, SLEEP, SYNC,
                                CriticalPath, Runtime, SchedIndex, total)
from diag.model import Dataset, GcPause, GilSpan, Request, RunqWait, RuntimeWindow, Wakeup
from diag.runtime_index import RuntimeIndex

MS = 1_000_000
PID = 100


def wake(tid, start, end, waker, call="futex", waker_call="futex", irq=False, arg=0xA0, comm="srv", target=True,
         waker_serving=False):
    return Wakeup(pid=PID, tid=tid, start_ns=start * MS, end_ns=end * MS, call=call, arg=arg,
                  waker_pid=PID if target else 7, waker_tid=waker, waker_comm=comm, waker_call=waker_call,
                  waker_target=target, waker_irq=irq, waker_serving=waker_serving)


def walk(wakeups, runq=(), requests=(), runtime=None, t0=0, t1=100, tid=1):
    data = Dataset(wakeups=list(wakeups), runq_waits=list(runq), requests=list(requests))
    return CriticalPath(SchedIndex(data), runtime).request(PID, tid, t0 * MS, t1 * MS)


def served_by(tid):
    return Request(pid=PID, tid=tid, fd=5, start_ns=0, end_ns=1, bytes_in=1, bytes_out=1, reads=1, writes=1)


def test_lock_held_across_fsync_ends_in_sync():
    # GIVEN T (1) waits on a lock 10-40 ms; the holder (2) is in fsync 5-38, woken by the disk
    blames = walk([wake(1, 10, 40, waker=2),
                   wake(2, 5, 38, waker=0, call="fsync", waker_call=None, irq=True, comm="swapper/1", target=False)])
    # THEN the 30 ms are: 28 ms of fsync (the holder's, clipped to the wait) and 2 ms of its CPU
    assert total(blames, root=SYNC) == 28 * MS and total(blames, root=CPU) == 2 * MS
    assert all(b.via == LOCK for b in blames)
    sync = [b for b in blames if b.root == SYNC][0]
    assert sync.holder == 2 and sync.chain == (1, 2) and "interrupt" in sync.detail


def test_chain_is_followed_through_two_holders():
    # T waits for 2, which waits for 3, which sleeps
    blames = walk([wake(1, 0, 50, waker=2), wake(2, 0, 45, waker=3, arg=0xB0),
                   wake(3, 0, 40, waker=0, call="clock_nanosleep", waker_call=None, irq=True, target=False)])
    assert total(blames, root=SLEEP) == 40 * MS
    assert total(blames, root=CPU) == 10 * MS          # 2 ran 45-50, 3 ran 40-45
    sleeper = [b for b in blames if b.root == SLEEP][0]
    assert sleeper.chain == (1, 2, 3) and sleeper.holder == 3


def test_a_wait_across_several_holders_is_split_at_the_locks_releases():
    # T (1) waits 0-30 ms on lock A; 2 released it at 10 (waking 5), 3 at 30 (waking T): the
    # piece up to 10 is 2's, the rest 3's (a sleep 10-22, then CPU), not all of it 3's
    blames = walk([wake(5, 0, 10, waker=2), wake(1, 0, 30, waker=3),
                   wake(3, 0, 22, waker=0, call="clock_nanosleep", waker_call=None, irq=True, target=False)])
    by = {}
    for b in blames:
        by[b.holder] = by.get(b.holder, 0) + b.ns
    assert by == {2: 10 * MS, 3: 20 * MS}, blames
    assert total(blames, root=SLEEP) == 12 * MS


def test_a_cycle_ends_the_chain():
    # 1 waits for 2 while 2 waits for 1 (a lock-order cycle, or a sampling artifact)
    blames = walk([wake(1, 0, 30, waker=2), wake(2, 0, 30, waker=1)])
    assert sum(b.ns for b in blames) == 30 * MS
    assert any(b.detail == "a wait cycle" for b in blames)


def test_depth_is_bounded():
    chain = [wake(i, 0, 100 - i, waker=i + 1) for i in range(1, MAX_DEPTH + 4)]
    blames = walk(chain)
    assert sum(b.ns for b in blames) == 99 * MS           # 1 waited 0-99: every ns attributed once
    assert max(len(b.chain) for b in blames) <= MAX_DEPTH + 2


def test_a_waker_outside_any_syscall_is_an_interrupt():
    # the "waker" ran user code when the wakee's futex timed out: a timer, not that thread
    blames = walk([wake(1, 0, 5, waker=2, waker_call=None)])
    assert [(b.root, b.holder) for b in blames] == [(FUTEX, None)]


def test_waits_are_clipped_to_the_request():
    blames = walk([wake(1, -20, 30, waker=2)], t0=0, t1=10)
    assert sum(b.ns for b in blames) == 10 * MS


def test_holder_runq_is_cpu_contention_unless_right_after_its_wakeup():
    runq = [RunqWait(PID, 2, 10 * MS, 14 * MS, preempted=True),       # preempted: contention
            RunqWait(PID, 2, 30 * MS, 33 * MS, preempted=False, call="fsync")]   # woken in fsync
    blames = walk([wake(1, 0, 40, waker=2),
                   wake(2, 20, 30, waker=0, call="fsync", waker_call=None, irq=True, target=False)], runq=runq)
    assert total(blames, root=RUNQ) == 4 * MS
    assert total(blames, root=SYNC) == 13 * MS          # the fsync wait and the run delay after it


def test_roles_of_holders():
    blames = walk([wake(1, 0, 10, waker=2), wake(3, 0, 10, waker=4)], requests=[served_by(2)])
    assert {b.role for b in blames} == {SERVING}
    blames = walk([wake(3, 0, 10, waker=4)], requests=[served_by(2)], tid=3)
    assert {b.role for b in blames} == {BACKGROUND}


def runtime(spans, pauses=(), gil=(0x1000, 0x10D0)):
    window = RuntimeWindow(pid=PID, python="3.11", method="test", rate_hz=200, start_ns=0, end_ns=1000 * MS,
                           gil_state=(gil[0], gil[1] - gil[0]))
    idx = RuntimeIndex(list(spans), list(pauses), [window])
    return Runtime(idx, [(PID, gil[0], gil[1])])


def test_a_gil_wait_goes_to_the_threads_that_held_the_gil():
    # T waits on the GIL's futex 0-20 ms; the sampler saw 5 hold it 0-12 and 6 hold it 12-20;
    # the wait was ended by 6 (the thread that dropped it last), but the time is both holders'
    spans = [GilSpan(tid=5, held=True, start_ns=0, end_ns=12 * MS, samples=3, pid=PID),
             GilSpan(tid=6, held=True, start_ns=12 * MS + 1, end_ns=20 * MS, samples=2, pid=PID)]
    blames = walk([wake(1, 0, 20, waker=6, arg=0x1010)], runtime=runtime(spans), requests=[served_by(6)])
    assert total(blames, via=GIL) == 20 * MS
    by = {}
    for b in blames:
        by[b.holder] = by.get(b.holder, 0) + b.ns
    assert set(by) == {5, 6} and abs(by[5] - 12 * MS) <= MS
    assert {b.role for b in blames if b.holder == 5} == {BACKGROUND}
    assert {b.role for b in blames if b.holder == 6} == {SERVING}


def test_a_lock_is_not_the_gil():
    spans = [GilSpan(tid=5, held=True, start_ns=0, end_ns=20 * MS, samples=4, pid=PID)]
    blames = walk([wake(1, 0, 20, waker=2, arg=0x9000)], runtime=runtime(spans))
    assert {b.via for b in blames} == {LOCK} and {b.holder for b in blames} == {2}


def test_a_holder_collecting_garbage_is_gc():
    spans = [GilSpan(tid=5, held=True, start_ns=0, end_ns=30 * MS, samples=6, pid=PID)]
    pauses = [GcPause(start_ns=10 * MS, end_ns=25 * MS, generation=2, samples=3, tid=5, pid=PID)]
    blames = walk([wake(1, 0, 30, waker=5, arg=0x1000)], runtime=runtime(spans, pauses))
    gc = total(blames, root=GC)
    assert 14 * MS <= gc <= 20 * MS and total(blames, root=CPU) + gc == 30 * MS
