"""`diag replay` of real strace logs, checked against the log itself (issue: foundation)."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
from servers import diag, load_json, require_tool

FSYNC_LOOP = r'''
import os, sys
f = open(sys.argv[1], "wb")
block = os.urandom(64 * 1024) * 16     # 1 MB per fsync; urandom of 1 MB would be a slow getrandom
for i in range(50):
    f.write(block)
    f.flush()
    os.fsync(f.fileno())
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
    assert fsync_lines == 50 and sum(x["count"] for x in rows) == 50
    assert rows[0]["fd_kind"] == "file"
    durations = [float(d) for d in re.findall(r"\bfsync\(\d+\) += 0 <([\d.]+)>", text)]
    assert rows[0]["max_ns"] == round(max(durations) * 1e9)
    assert rows[0]["total_ns"] == pytest.approx(sum(durations) * 1e9, abs=30)
    # fsync is the syscall the time went to, and the finding says so
    top = max(report["latency"]["syscalls"], key=lambda x: x["total_ns"])
    assert top["name"] == "fsync", top
    assert report["findings"] and report["findings"][0]["id"] == "disk-sync"
    # and the terminal report shows it first
    assert "disk-sync" in r.stdout and r.stdout.index("fsync") < r.stdout.index("write")


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
