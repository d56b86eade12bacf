"""`perf trace` text -> SyscallEvent. The data files are lines of real `perf trace -o FILE -- CMD`
output (perf 6.1): a Python program that fsyncs a file and makes a socketpair and a thread, and
the Go test server (tests/integration/goserver) accepting, reading and writing, journaling."""
from __future__ import annotations

import os

import pytest

from diag.errors import ParseError
from diag.parse import detect, parse_file
from diag.parse.base import ParseContext

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "perf_trace")


def events(name: str, **kw):
    path = os.path.join(DATA, name)
    ctx = ParseContext(path=path, **kw)
    return parse_file(path, ctx).data.syscalls, ctx


def test_detected_as_perf_trace():
    for name in os.listdir(DATA):
        assert detect(os.path.join(DATA, name)).format == "perf-trace", name


def test_calls_durations_fds_and_errors():
    evs, ctx = events("python_fsync_socketpair.txt")
    by = {(e.name, e.start_ns): e for e in evs}
    fsync = next(e for e in evs if e.name == "fsync")
    # GIVEN "640.399 ( 2.010 ms): python3/21341 fsync(fd: 4</var/tmp/rx-pt.bin>) = 0"
    assert (fsync.tid, fsync.pid, fsync.start_ns, fsync.dur_ns, fsync.fd, fsync.fd_kind.value, fsync.ret) == \
        (21341, 21341, 640_399_000, 2_010_000, 4, "file", 0)
    w = next(e for e in evs if e.name == "write")
    assert (w.nbytes, w.fd_kind.value) == (4096, "file")
    enoent = next(e for e in evs if e.name == "access")
    assert (enoent.ret, enoent.errno) == (-1, "ENOENT")
    gs = [e for e in evs if e.name == "getsockname"]
    assert gs and all(e.fd == 4 and e.fd_kind.value == "socket" for e in gs)
    # an unfinished call and its continuation are one call with the whole duration
    fx = [e for e in evs if e.name == "futex"]
    assert len(fx) == 1 and fx[0].start_ns == 643_611_000 and fx[0].dur_ns == 3_379_000
    # "? (  ): ... [continued]: clone3()) = 0" began before the trace: no start, left out
    assert not any(e.tid == 21390 for e in evs)
    assert ctx.meta["perf_trace_time"] == "relative"
    assert by


def test_go_server_sockets_and_thread_groups():
    evs, _ = events("go_accept_read_write.txt")
    reads = [e for e in evs if e.name == "read"]
    assert reads and all(e.fd_kind.value == "socket" and e.errno == "EAGAIN" for e in reads)
    writes = [e for e in evs if e.name == "write" and e.fd_kind.value == "socket"]
    assert [e.nbytes for e in writes] == [121, 121]
    # every thread the trace never saw created belongs to the first process seen
    assert {e.pid for e in evs} == {23146}


def test_garbage_is_one_line_error(tmp_path):
    p = tmp_path / "t.txt"
    lines = open(os.path.join(DATA, "python_fsync_socketpair.txt")).read().splitlines(keepends=True)
    p.write_text("".join(lines[:3]) + "not perf trace at all\n" * 40)
    with pytest.raises(ParseError) as e:
        parse_file(str(p), ParseContext(path=str(p)), fmt="perf-trace")
    assert str(p) in str(e.value) and "\n" not in str(e.value)
