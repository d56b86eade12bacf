"""Retention of the watcher's dumps: by count, by disk use, oldest first, never anything else."""
from __future__ import annotations

import json

from diag.watch import retention


def make_dump(out, name, size, mode="watch"):
    d = out / name
    (d / "streams").mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"schema": "diag.capture/1", "mode": mode}))
    (d / "streams" / "ebpf.calls.bin").write_bytes(b"x" * size)
    return d


def test_keep_removes_the_oldest_first(tmp_path):
    ds = [make_dump(tmp_path, f"2026120{i}T000000Z-p99-gt-20ms", 10) for i in range(1, 5)]
    removed = retention.enforce(tmp_path, retention.Policy(keep=2, max_disk=0))
    assert removed == ds[:2]
    assert retention.dumps(tmp_path) == ds[2:]


def test_max_disk_counts_every_dump_and_keeps_room_for_the_next(tmp_path):
    ds = [make_dump(tmp_path, f"2026120{i}T000000Z-x", 4000) for i in range(1, 4)]
    removed = retention.enforce(tmp_path, retention.Policy(keep=0, max_disk=10_000), reserve=3000)
    assert removed == ds[:2]


def test_nothing_but_watch_dumps_is_ever_deleted(tmp_path):
    other = make_dump(tmp_path, "00-attach-capture", 10, mode="attach")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / ".ring").mkdir()
    make_dump(tmp_path, "20261201T000000Z-x", 10)
    make_dump(tmp_path, "20261202T000000Z-x", 10)
    retention.enforce(tmp_path, retention.Policy(keep=1, max_disk=0))
    assert other.exists() and (tmp_path / "notes.txt").exists() and (tmp_path / ".ring").exists()
    assert [d.name for d in retention.dumps(tmp_path)] == ["20261202T000000Z-x"]


def test_the_dump_just_written_is_protected(tmp_path):
    a = make_dump(tmp_path, "20261201T000000Z-x", 50_000)
    removed = retention.enforce(tmp_path, retention.Policy(keep=0, max_disk=1000), protect=a)
    assert removed == [] and a.exists()


def test_no_dump_when_the_filesystem_would_fill(tmp_path):
    why = retention.room_for_dump(tmp_path, retention.Policy(min_free=0.999999), need=1 << 20)
    assert why and "free" in why
    assert retention.room_for_dump(tmp_path, retention.Policy(min_free=0.0, max_disk=0), need=1) is None
