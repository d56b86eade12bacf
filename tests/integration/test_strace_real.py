"""StraceParser on the output of a real strace run over small real programs, checked against
what the programs did and against the raw log itself."""
from __future__ import annotations

import collections
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time

import pytest

from diag.syscalls import FdKind
from diag.parse import detect, parse_file
from diag.parse.base import ParseContext
from diag.parse.strace import StraceParser
from toolbox import require_tool

PY = sys.executable
_usable: dict[str, str] = {}


@pytest.fixture
def strace(tmp_path) -> str:
    """strace's path; skips when it is missing or ptrace is not allowed here."""
    path = require_tool("strace")
    if path not in _usable:
        r = subprocess.run([path, "-o", os.devnull, "/bin/true"], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            pytest.skip(f"strace cannot trace here (ptrace not permitted?): {r.stderr.strip()[:200]}")
        _usable[path] = path
    return path


def trace(argv: list[str], cwd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, timeout=120, **kw)
    assert r.returncode == 0, r
    return r


def parse(path, **kw):
    ctx = ParseContext(path=str(path), **kw)
    res = parse_file(str(path), ctx)
    assert res.info.format == "strace"
    return res.data.syscalls, res.info.warnings


FSYNC_LOOP = r'''
import os, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
for i in range(20):
    os.write(fd, b"x" * 4096)
    os.fsync(fd)
os.close(fd)
'''


def test_fsync_loop_under_f_ttt_T_counts_every_fsync(strace, tmp_path):
    prog = tmp_path / "loop.py"
    prog.write_text(FSYNC_LOOP)
    log = tmp_path / "trace.txt"
    t0 = time.time_ns()
    trace([strace, "-f", "-ttt", "-T", "-o", str(log), PY, str(prog), str(tmp_path / "data.bin")], tmp_path)
    t1 = time.time_ns()
    text = log.read_text()
    evs, warnings = parse(log)
    assert warnings == []
    fsyncs = [e for e in evs if e.name == "fsync"]
    # as many as the program made, and as the log shows
    assert len(fsyncs) == 20 == len(re.findall(r"\bfsync\(", text))
    opened = [e for e in evs if e.name == "openat" and e.ret is not None and e.ret >= 0 and e.pid == fsyncs[0].pid]
    data_fd = {e.fd for e in fsyncs}
    assert len(data_fd) == 1 and data_fd <= {e.ret for e in opened}
    assert {e.fd_kind for e in fsyncs} == {FdKind.FILE}
    assert [e.nbytes for e in evs if e.name == "write" and e.fd in data_fd] == [4096] * 20
    # durations and stamps are the log's own, to the microsecond
    logged = [(int(s.replace(".", "")) * 1000, int(d.replace(".", "")) * 1000)
              for s, d in re.findall(r"(\d+\.\d+) fsync\(\d+\) += 0 <(\d+\.\d+)>", text)]
    assert [(e.start_ns, e.dur_ns) for e in fsyncs] == logged
    assert all(t0 - 10**9 <= e.start_ns <= t1 for e in evs)
    pid = fsyncs[0].pid
    assert {(e.pid, e.tid) for e in evs} == {(pid, pid)}


THREADS = r'''
import json, os, socket, sys, threading
SIZES = {"r1": [100, 2000, 7], "r2": [1, 65536, 300], "tcp": [5, 1500, 4096]}
ids = {"pid": os.getpid(), "main": threading.get_native_id()}
def reader(name, sock):
    ids[name] = threading.get_native_id()
    for n in SIZES[name]:
        got = sock.recv(n, socket.MSG_WAITALL)
        assert len(got) == n, (name, n, len(got))
pairs = {n: socket.socketpair() for n in ("r1", "r2")}
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
cli = socket.create_connection(srv.getsockname()); conn, _ = srv.accept()
threads = [threading.Thread(target=reader, args=(n, pairs[n][1])) for n in ("r1", "r2")]
threads.append(threading.Thread(target=reader, args=("tcp", conn)))
for t in threads: t.start()
for n in ("r1", "r2"):
    pairs[n][0].sendall(b"".join(b"x" * k for k in SIZES[n]))
cli.sendall(b"".join(b"y" * k for k in SIZES["tcp"]))
for t in threads: t.join()
json.dump(ids, open(sys.argv[1], "w"))
'''


@pytest.mark.parametrize("decode", ["-y", "-yy"])
def test_threads_reading_sockets_under_f_tt_T_y(strace, tmp_path, decode):
    prog = tmp_path / "threads.py"
    prog.write_text(THREADS)
    log, ids_file = tmp_path / "trace.txt", tmp_path / "ids.json"
    day = dt.date.today()
    t0 = time.time_ns()
    trace([strace, "-f", "-tt", "-T", decode, "-o", str(log), PY, str(prog), str(ids_file)], tmp_path)
    t1 = time.time_ns()
    ids = json.loads(ids_file.read_text())
    evs, warnings = parse(log, date=day)
    assert warnings == []
    sizes = {"r1": [100, 2000, 7], "r2": [1, 65536, 300], "tcp": [5, 1500, 4096]}
    for name, want in sizes.items():
        recvs = [e for e in evs if e.tid == ids[name] and e.name == "recvfrom"]
        assert [e.nbytes for e in recvs] == want, name
        assert {e.fd_kind for e in recvs} == {FdKind.SOCKET}, name
    # one process, four distinct threads, every event on the real (local) clock
    assert len({ids["main"], ids["r1"], ids["r2"], ids["tcp"]}) == 4
    assert {e.pid for e in evs} == {ids["pid"]}
    assert {e.tid for e in evs} >= {ids["main"], ids["r1"], ids["r2"], ids["tcp"]}
    assert ids["main"] == ids["pid"]
    assert all(t0 - 2 * 10**9 <= e.start_ns <= t1 + 10**9 for e in evs)
    sends = [e for e in evs if e.name == "sendto" and e.tid == ids["main"]]
    assert sum(e.nbytes for e in sends) == sum(map(sum, sizes.values()))
    assert {e.fd_kind for e in sends} == {FdKind.SOCKET}


FORKS = r'''
import json, os, sys
kids = {}
for i, count in enumerate((3, 5)):
    pid = os.fork()
    if pid == 0:
        fd = os.open("out%d.bin" % i, os.O_CREAT | os.O_WRONLY, 0o644)
        for k in range(count):
            os.write(fd, b"z" * (10 + k))
        os._exit(0)
    kids[pid] = count
    os.waitpid(pid, 0)
json.dump({"pid": os.getpid(), "kids": kids}, open(sys.argv[1], "w"))
'''


def test_ff_writes_one_file_per_process_each_parsed_with_its_own_pid(strace, tmp_path):
    prog = tmp_path / "forks.py"
    prog.write_text(FORKS)
    ids_file = tmp_path / "ids.json"
    trace([strace, "-ff", "-tt", "-T", "-o", str(tmp_path / "ff"), PY, str(prog), str(ids_file)], tmp_path)
    ids = json.loads(ids_file.read_text())
    kids = {int(k): v for k, v in ids["kids"].items()}
    files = {int(p.name.split(".")[1]): p for p in tmp_path.glob("ff.*")}
    assert set(files) == {ids["pid"], *kids}
    day = dt.date.today()
    for pid, path in files.items():
        assert detect(str(path)).format == "strace"
        # the capture's ctx.pid names the parent; the file name wins
        evs, warnings = parse(path, date=day, pid=ids["pid"])
        assert warnings == [] and evs
        assert {(e.pid, e.tid) for e in evs} == {(pid, pid)}
        text = path.read_text()
        assert len(evs) == len(re.findall(r"^[\d:.]+ \w+\(", text, re.M))
        if pid in kids:
            writes = [e for e in evs if e.name == "write"]
            assert [e.nbytes for e in writes] == [10 + k for k in range(kids[pid])]
            assert {e.fd_kind for e in writes} == {FdKind.FILE}
        else:
            clones = [e.ret for e in evs if e.name in ("clone", "clone3", "fork", "vfork")]
            assert set(clones) == set(kids)


NS_PROG = r'''
import os, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o644)
for i in range(10):
    os.write(fd, b"n" * (i + 1))
os.close(fd)
'''


def test_ns_unix_timestamps_and_ns_durations(strace, tmp_path):
    prog = tmp_path / "ns.py"
    prog.write_text(NS_PROG)
    log = tmp_path / "trace.txt"
    t0 = time.time_ns()
    trace([strace, "-f", "-T", "--syscall-times=ns", "--absolute-timestamps=format:unix,precision:ns",
           "-o", str(log), PY, str(prog), str(tmp_path / "o.bin")], tmp_path)
    t1 = time.time_ns()
    text = log.read_text()
    evs, warnings = parse(log, offset_ns=-t0)
    assert warnings == []
    logged = re.findall(r"(\d{10}\.\d{9}) write\(3, \"n+\", (\d+)\) += \d+ <(\d+\.\d{9})>", text)
    assert len(logged) == 10
    writes = [e for e in evs if e.name == "write" and e.fd == 3]
    assert [(e.start_ns, e.dur_ns, e.nbytes) for e in writes] == [
        (int(s.replace(".", "")) - t0, int(d.replace(".", "")), int(n)) for s, n, d in logged]
    # offset applied: starts are relative to t0 now, inside the run
    assert all(-10**9 <= e.start_ns <= t1 - t0 for e in evs)
    assert len({e.start_ns % 1000 for e in evs}) > 1      # really ns, not us padded with zeros


QUIET_WRITER = r'''
import os, sys
open(sys.argv[2], "w").write(str(os.getpid()))
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o644)
for i in range(5):
    if i in (1, 3):
        sys.stderr.write("program line %d\n" % i); sys.stderr.flush()
    os.write(fd, b"q")
    os.fsync(fd)
sys.stderr.write("last words\n"); sys.stderr.flush()
'''


def test_stderr_shared_with_the_program_parses_with_a_warning(strace, tmp_path):
    # strace without -o writes to stderr, where the program writes too; the program's write()s
    # are not traced, so its lines land between strace's
    prog = tmp_path / "quiet.py"
    prog.write_text(QUIET_WRITER)
    err, pid_file = tmp_path / "stderr.txt", tmp_path / "pid"
    with open(err, "w") as f:
        trace([strace, "-f", "-tt", "-T", "-e", "trace=openat,fsync,close", PY, str(prog), str(tmp_path / "o.bin"),
               str(pid_file)], tmp_path, stderr=f)
    text = err.read_text()
    assert "program line 1\n" in text
    pid = int(pid_file.read_text())
    evs, warnings = parse(err, date=dt.date.today(), pid=pid)
    assert len([e for e in evs if e.name == "fsync"]) == 5 == text.count("fsync(")
    assert {(e.pid, e.tid) for e in evs} == {(pid, pid)}
    assert {e.fd_kind for e in evs if e.name == "fsync"} == {FdKind.FILE}
    bad_at = text.split("\n").index("program line 1") + 1
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{err}:{bad_at}: skipped 3 unparseable line(s)")
    assert "program line 1" in warnings[0]


CHATTY_THREADS = r'''
import json, os, sys, threading
ids = {"pid": os.getpid()}
def chat():
    ids["thread"] = threading.get_native_id()
    for i in range(3):
        os.write(2, b"thread says %d\n" % i)
for i in range(2):
    os.write(2, b"main says %d\n" % i)
t = threading.Thread(target=chat); t.start(); t.join()
for i in range(4):
    os.write(2, b"main again %d, and a longer line\n" % i)
json.dump(ids, open(sys.argv[1], "w"))
'''


def test_stderr_trace_of_threads_writing_to_the_same_stderr(strace, tmp_path):
    # every write(2) of the program tears the strace line that shows it; the prefix
    # [pid N] comes and goes with the thread
    prog = tmp_path / "chatty.py"
    prog.write_text(CHATTY_THREADS)
    err, ids_file = tmp_path / "stderr.txt", tmp_path / "ids.json"
    with open(err, "w") as f:
        trace([strace, "-f", "-ttt", "-T", PY, str(prog), str(ids_file)], tmp_path, stderr=f)
    ids = json.loads(ids_file.read_text())
    text = err.read_text()
    assert "[pid " in text and "main again 3" in text
    evs, warnings = parse(err)
    writes = [e for e in evs if e.name == "write" and e.fd == 2]
    assert [(e.tid, e.nbytes) for e in writes] == (
        [(ids["pid"], len(b"main says 0\n"))] * 2 + [(ids["thread"], len(b"thread says 0\n"))] * 3
        + [(ids["pid"], len(b"main again 0, and a longer line\n"))] * 4)
    assert {e.pid for e in evs} == {ids["pid"]}
    assert [w for w in warnings if "unparseable" in w and "main" not in w and "thread" not in w] == []


BUSY_THREADS = r'''
import json, os, socket, sys, threading
N = int(sys.argv[2])
a, b = socket.socketpair()
ids = {"main": threading.get_native_id()}
def rd():
    ids["reader"] = threading.get_native_id()
    for i in range(N):
        assert len(b.recv(16, socket.MSG_WAITALL)) == 16      # one recvfrom per message
t = threading.Thread(target=rd); t.start()
for i in range(N):
    a.send(b"x" * 16)
    os.getppid()
t.join()
json.dump(ids, open(sys.argv[1], "w"))
'''


def test_parse_speed_sanity_on_a_real_log(strace, tmp_path):
    """A real threaded log of some 10k lines (two threads interleaving, so calls get split into
    `<unfinished ...>` / `<... resumed>` halves) parses whole: the calls the program made a known
    number of times are all there, exactly, and the parser yields one event per call the log
    starts. The parse speed is printed, not asserted (bench/ measures it)."""
    n = 1500
    prog = tmp_path / "busy.py"
    prog.write_text(BUSY_THREADS)
    log, ids_file = tmp_path / "trace.txt", tmp_path / "ids.json"
    trace([strace, "-f", "-ttt", "-T", "-o", str(log), PY, str(prog), str(ids_file), str(n)], tmp_path)
    ids = json.loads(ids_file.read_text())
    text = log.read_text()
    n_lines = text.count("\n")
    # the calls the log starts: one line each (the complete line, or its `<unfinished ...>` half)
    started = collections.Counter(re.findall(r"^\d+ +\d+\.\d+ (\w+)\(", text, re.M))
    ctx = ParseContext(path=str(log))
    t0 = time.process_time()
    with open(log, newline="") as f:
        evs = list(StraceParser().parse(f, ctx))
    spent = time.process_time() - t0
    print(f"\n{n_lines} lines, {len(evs)} events parsed in {spent:.3f} s CPU "
          f"({n_lines / max(spent, 1e-9):,.0f} lines/s)")
    assert ctx.warnings == []
    names = collections.Counter(e.name for e in evs)
    assert names == started, (names - started, started - names)
    by_thread = collections.Counter((e.tid, e.name) for e in evs)
    assert by_thread[(ids["main"], "getppid")] == n == names["getppid"]
    assert by_thread[(ids["main"], "sendto")] == n == names["sendto"]
    assert by_thread[(ids["reader"], "recvfrom")] == n == names["recvfrom"]
    assert sum(e.nbytes for e in evs if e.name == "recvfrom" and e.tid == ids["reader"]) == 16 * n
    assert n_lines >= 3 * n
