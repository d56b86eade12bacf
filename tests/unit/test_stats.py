"""Latency statistics and the first rule, on hand-made events whose answers are known."""
from __future__ import annotations

from diag.analyze import stats
from diag.analyze.report import build_report
from diag.model import Dataset, SyscallEvent
from diag.syscalls import FdKind


def ev(name, start, dur, tid=1, kind=FdKind.FILE, ret=0):
    return SyscallEvent(pid=1, tid=tid, name=name, start_ns=start, dur_ns=dur, ret=ret, fd=3, fd_kind=kind)


def test_percentiles_are_nearest_rank():
    v = list(range(1, 101))
    assert stats.percentile(v, 50) == 50 and stats.percentile(v, 99) == 99 and stats.percentile(v, 100) == 100
    assert stats.percentile([7], 99) == 7 and stats.percentile([], 50) == 0


def test_per_syscall_splits_by_fd_kind_and_skips_unknown_durations():
    evs = [ev("read", 0, 10, kind=FdKind.FILE), ev("read", 0, 30, kind=FdKind.SOCKET), ev("read", 0, None)]
    s = stats.per_syscall(evs)
    assert s[("read", FdKind.FILE)].count == 1 and s[("read", FdKind.SOCKET)].total_ns == 30
    assert ("read", FdKind.UNKNOWN) not in s


def test_spikes_merge_close_slow_calls_and_ignore_waits():
    evs = [ev("write", i * 1_000_000, 100_000) for i in range(200)]
    evs += [ev("fsync", 50_000_000, 40_000_000), ev("fsync", 95_000_000, 30_000_000)]
    evs += [ev("epoll_wait", 0, 900_000_000, kind=FdKind.OTHER)]
    sp = stats.spikes(evs)
    assert len(sp) == 1 and sp[0].calls == 2 and sp[0].worst.dur_ns == 40_000_000


def test_report_emits_disk_sync_when_fsync_dominates_and_not_for_a_healthy_trace():
    healthy = [ev("write", i * 1_000_000, 50_000, kind=FdKind.SOCKET) for i in range(100)]
    r = build_report(Dataset(syscalls=healthy))
    assert r["findings"] == [] and r["schema"] == "diag.report/1"
    slow = healthy + [ev("fsync", i * 10_000_000, 25_000_000) for i in range(10)]
    r = build_report(Dataset(syscalls=slow))
    top = r["findings"][0]
    assert top["id"] == "disk-sync" and top["rank"] == 1 and top["share"] > 0.9 and top["severity"] == "critical"
    io_row = next(m for m in r["matrix"] if m["id"] == "io-path")
    assert io_row["status"] == "triggered" and io_row["findings"] == ["disk-sync"]


def test_report_of_empty_dataset_renders():
    from io import StringIO

    from rich.console import Console

    from diag.render import terminal
    r = build_report(Dataset())
    buf = StringIO()
    terminal.show(r, Console(file=buf, width=100))
    assert "No timed events" in buf.getvalue()
    assert all(row["status"] == "not-measurable" for row in r["matrix"])
