"""`diag replay` of real strace logs, checked against the log itself (issue: foundation)."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
from diag_run import diag, load_json
from toolbox import require_tool

FSYNC_LOOP = r'''
import mmap, os, sys
# The data reaches the file through a shared mapping, not write(): on a fast virtual disk a
# 1 MB write() into the page cache costs about as much as the fsync that flushes it, so which
# of the two "took the time" would depend on the disk. Here fsync is the only call that moves
# data, whatever the device.
size = 1 << 20
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, size)
m = mmap.mmap(fd, size)
block = os.urandom(64 * 1024) * 16     # urandom of 1 MB at once would be a slow getrandom
for i in range(100):
    m[:] = block
    os.fsync(fd)
'''


def test_replay_of_strace_fsync_loop_reports_fsync_and_disk_sync(tmp_path):
    # GIVEN a real `strace -f -ttt -T` log of a program that fsyncs a file in a loop
    strace = require_tool("strace")
    prog = tmp_path / "loop.py"
    prog.write_text(FSYNC_LOOP)
    log = tmp_path / "trace.txt"
    # data on disk (tmp_path may be tmpfs, where fsync costs nothing)
    target = "/var/tmp/diag-test-fsync-loop.bin"
    r = subprocess.run([strace, "-f", "-ttt", "-T", "-o", str(log), sys.executable, str(prog), target])
    assert r.returncode == 0
    # WHEN it is replayed
    out = tmp_path / "r.json"
    r = diag("replay", str(log), "--json", str(out))
    assert r.returncode == 0, r.stderr
    report = load_json(out)
    # THEN the counts are the log's own
    text = log.read_text()
    fsync_lines = len(re.findall(r"\bfsync\(\d+\) += 0 <", text))
    rows = [x for x in report["latency"]["syscalls"] if x["name"] == "fsync"]
    assert fsync_lines == 100 and sum(x["count"] for x in rows) == 100
    assert rows[0]["fd_kind"] == "file"
    durations = [float(d) for d in re.findall(r"\bfsync\(\d+\) += 0 <([\d.]+)>", text)]
    assert rows[0]["max_ns"] == round(max(durations) * 1e9)
    assert rows[0]["total_ns"] == pytest.approx(sum(durations) * 1e9, abs=30)
    # fsync is the syscall the time went to, and the finding says so
    top = max(report["latency"]["syscalls"], key=lambda x: x["total_ns"])
    assert top["name"] == "fsync", top
    assert report["findings"] and report["findings"][0]["id"] == "disk-sync"
    # and the terminal report leads with it
    assert "disk-sync" in r.stdout
    others = [r.stdout.index(f["id"]) for f in report["findings"][1:] if f["id"] in r.stdout]
    assert all(r.stdout.index("disk-sync") < i for i in others)


def test_replay_of_garbage_is_one_line_exit_2(tmp_path):
    p = tmp_path / "garbage.txt"
    p.write_text("hello world\nthis is not a trace\n" * 50)
    r = diag("replay", str(p))
    assert r.returncode == 2
    assert str(p) in r.stderr and "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_replay_of_empty_file_is_one_line_exit_2(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("")
    r = diag("replay", str(p))
    assert r.returncode == 2 and "empty" in r.stderr and r.stderr.count("\n") == 1
