"""StraceParser on inline strace output (lines as strace 6.1 prints them) and on the recorded
logs in tests/data/strace/ (see capture.sh there)."""
from __future__ import annotations

import collections
import datetime as dt
import io
import os
import re
import textwrap

import pytest

from diag.errors import ParseError
from diag.model import SyscallEvent
from diag.syscalls import FdKind
from diag.parse import parse_file
from diag.parse.base import ParseContext
from diag.parse.strace import StraceParser

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "strace")
UTC = dt.timezone.utc
SOCKET, FILE, PIPE, OTHER, UNKNOWN = FdKind.SOCKET, FdKind.FILE, FdKind.PIPE, FdKind.OTHER, FdKind.UNKNOWN


def run(text: str, path: str = "trace.txt", **kw) -> tuple[list[SyscallEvent], ParseContext]:
    ctx = ParseContext(path=path, **kw)
    events = list(StraceParser().parse(io.StringIO(text), ctx))
    assert all(type(e) is SyscallEvent for e in events)
    return events, ctx


def lines(s: str) -> str:
    return textwrap.dedent(s).lstrip("\n")


def ns(stamp: str) -> int:
    """An -ttt stamp as int ns, without floats."""
    sec, frac = stamp.split(".")
    return int(sec) * 10**9 + int(frac.ljust(9, "0"))


def tod_ns(date: dt.date, hms: str, tz=UTC) -> int:
    h, m, s = (int(x) for x in hms.split(".")[0].split(":"))
    frac = hms.split(".")[1] if "." in hms else "0"
    base = int(dt.datetime(date.year, date.month, date.day, h, m, s, tzinfo=tz).timestamp())
    return base * 10**9 + int(frac.ljust(9, "0"))


def by_name(events, name):
    return [e for e in events if e.name == name]


# --- one line, every field -------------------------------------------------------------------

def test_complete_lines_of_strace_o_f_ttt_T_give_every_field():
    evs, ctx = run(lines("""
        3947  1795817331.348882 openat(AT_FDCWD, "/lib/x86_64-linux-gnu/libc.so.6", O_RDONLY|O_CLOEXEC) = 3 <0.000036>
        3947  1795817331.348963 read(3, "\\177ELF\\2\\1\\1\\3\\0\\0\\0\\0\\0\\0\\0\\0\\3\\0>\\0\\1\\0\\0\\0\\20t\\2\\0\\0\\0\\0\\0"..., 832) = 832 <0.000035>
        3947  1795817331.349314 mmap(NULL, 1974096, PROT_READ, MAP_PRIVATE|MAP_DENYWRITE, 3, 0) = 0x7f76d964b000 <0.000037>
        3947  1795817331.349735 close(3)        = 0 <0.000034>
        3947  1795817331.350689 exit_group(0)   = ?
        3947  1795817331.350844 +++ exited with 0 +++
        """))
    assert ctx.warnings == []
    assert evs == [
        SyscallEvent(3947, 3947, "openat", ns("1795817331.348882"), 36_000, 3, None, None, UNKNOWN, None),
        SyscallEvent(3947, 3947, "read", ns("1795817331.348963"), 35_000, 832, None, 3, FILE, 832),
        SyscallEvent(3947, 3947, "mmap", ns("1795817331.349314"), 37_000, 0x7f76d964b000, None, None, UNKNOWN, None),
        SyscallEvent(3947, 3947, "close", ns("1795817331.349735"), 34_000, 0, None, 3, FILE, None),
        SyscallEvent(3947, 3947, "exit_group", ns("1795817331.350689"), None, None, None, None, UNKNOWN, None),
    ]
    assert all(e.source == "strace" for e in evs)


def test_offset_ns_is_added_to_every_start():
    text = "3947  1795817331.348882 close(3) = 0 <0.000036>\n"
    (e,), _ = run(text, offset_ns=-1795817000 * 10**9)
    assert e.start_ns == 331_348_882_000 and e.dur_ns == 36_000


# --- who: pid prefixes, -ff file names, thread groups -----------------------------------------

def test_stderr_pid_prefix_and_o_f_prefix_are_both_tids():
    evs, _ = run(lines("""
        [pid  4083] 22:08:54.022302 gettid()          = 4083 <0.000040>
        [pid 25558] 22:08:54.022499 gettid() = 25558 <0.000033>
        4084  22:08:54.072565 gettid()          = 4084 <0.000007>
        1234567 22:08:54.072566 gettid() = 1234567 <0.000007>
        """), date=dt.date(2026, 11, 27), tz=UTC)
    assert [(e.pid, e.tid, e.ret) for e in evs] == [(4083, 4083, 4083), (25558, 25558, 25558),
                                                     (4084, 4084, 4084), (1234567, 1234567, 1234567)]


def test_unprefixed_lines_use_ctx_pid_or_the_ff_file_suffix():
    text = "22:14:11.722749 write(3, \"abc\", 3)      = 3 <0.000053>\n"
    (e,), _ = run(text, date=dt.date(2026, 11, 27), pid=99)
    assert (e.pid, e.tid) == (99, 99)
    # strace -ff -o ff: files ff.PID; the file name wins (ctx.pid can name only one of them)
    (e,), _ = run(text, path="/cap/ff.7663", date=dt.date(2026, 11, 27), pid=99)
    assert (e.pid, e.tid) == (7663, 7663)


def test_unprefixed_lines_without_any_pid_get_pid_0_and_a_warning():
    evs, ctx = run('read(0, "x", 1)                         = 1\nclose(0) = 0\n')
    assert [(e.pid, e.tid) for e in evs] == [(0, 0), (0, 0)]
    assert len(ctx.warnings) == 2
    assert any("pid 0" in w for w in ctx.warnings)
    assert any("no timestamps" in w for w in ctx.warnings)


def test_unprefixed_pid_is_learned_from_set_tid_address_or_the_attach_message():
    evs, ctx = run(lines("""
        1795817331.350054 brk(NULL)       = 0x5575bb24b000 <0.000036>
        1795817331.350131 set_tid_address(0x7f76d9648a10) = 3947 <0.000033>
        1795817331.350240 close(3) = 0 <0.000039>
        """))
    assert [(e.pid, e.tid) for e in evs] == [(3947, 3947)] * 3 and ctx.warnings == []
    # strace -p PID (no -f) to stderr: "attached" comes before any call
    evs, ctx = run(lines("""
        strace: Process 4617 attached
        22:09:45.973367 clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, {tv_sec=234, tv_nsec=83879961}, NULL) = 0 <0.1>
        """), date=dt.date(2026, 11, 27))
    assert [(e.pid, e.tid) for e in evs] == [(4617, 4617)] and ctx.warnings == []


def test_threads_get_the_cloners_pid_and_forks_their_own():
    evs, ctx = run(lines("""
        4082  22:08:54.021533 clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID, child_tid=0x7f889be97990, parent_tid=0x7f889be97990, exit_signal=0, stack=0x7f889b697000, stack_size=0x7fff80, tls=0x7f889be976c0} => {parent_tid=[4083]}, 88) = 4083 <0.000104>
        4083  22:08:54.021655 rseq(0x7f889be97fe0, 0x20, 0, 0x53053053 <unfinished ...>
        4083  22:08:54.021701 <... rseq resumed>) = 0 <0.000041>
        4082  22:08:54.072056 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f889c289310) = 4084 <0.000345>
        4084  22:08:54.072430 set_robust_list(0x7f889c289320, 24) = 0 <0.000007>
        4083  22:08:54.072431 clone(child_stack=NULL, flags=CLONE_VM|CLONE_VFORK|SIGCHLD, child_tidptr=0x7f8) = 4085 <0.000345>
        4085  22:08:54.072432 execve("/bin/true", ["true"], 0x7ffd /* 3 vars */) = 0 <0.000200>
        """), date=dt.date(2026, 11, 27))
    assert [(e.tid, e.pid, e.name) for e in evs] == [
        (4082, 4082, "clone3"), (4083, 4082, "rseq"), (4082, 4082, "clone"), (4084, 4084, "set_robust_list"),
        (4083, 4082, "clone"), (4085, 4085, "execve")]
    assert ctx.warnings == []


def test_child_printed_before_its_clone_returned_is_grouped_by_the_clone_in_flight():
    evs, _ = run(lines("""
        [pid   100] 1795817338.1 clone(child_stack=0x7f, flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM <unfinished ...>
        [pid   101] 1795817338.2 futex(0x55, FUTEX_WAKE_PRIVATE, 1) = 0 <0.000010>
        [pid   100] 1795817338.3 <... clone resumed>, parent_tid=[101], tls=0x7f, child_tidptr=0x7f) = 101 <0.2>
        [pid   100] 1795817338.4 socket(AF_INET, SOCK_STREAM, IPPROTO_TCP) = 5 <0.000010>
        [pid   100] 1795817338.5 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD <unfinished ...>
        [pid   102] 1795817338.6 write(5, "x", 1) = 1 <0.000010>
        [pid   100] 1795817338.7 <... clone resumed>, child_tidptr=0x7f) = 102 <0.3>
        """))
    clone1, futex, _socket, clone2, write = evs[1], evs[0], evs[2], evs[4], evs[3]
    assert (futex.tid, futex.pid) == (101, 100)
    assert (clone1.name, clone1.ret, clone1.start_ns, clone1.dur_ns) == ("clone", 101, ns("1795817338.1"), 200_000_000)
    # the fork child: its own process, born with a copy of the parent's fds
    assert (write.tid, write.pid, write.fd, write.fd_kind, write.nbytes) == (102, 102, 5, SOCKET, 1)
    assert clone2.ret == 102


def test_raw_clone_flags_are_decoded_for_clone_thread():
    evs, _ = run(lines("""
        10  1795817331.1 clone3({flags=0x3d0f00, child_tid=0x7f1, parent_tid=0x7f1, exit_signal=0, stack=0x7f0, stack_size=0x7fff80, tls=0x7f2}, 88) = 11 <0.000080>
        10  1795817331.2 clone(0x3d0f00, 0x7f889b696ef0, 0x7f889b6979d0, 0x7f889b6979d0, 0x7f889b697700) = 0xc <0.000080>
        10  1795817331.3 clone(0x1200011, 0, 0, 0x7f6c81956310, 0) = 0xd <0.000080>
        11  1795817331.4 gettid() = 11 <0.000001>
        12  1795817331.5 gettid() = 12 <0.000001>
        13  1795817331.6 gettid() = 13 <0.000001>
        """))
    assert [e.ret for e in evs[:3]] == [11, 12, 13]
    assert [(e.tid, e.pid) for e in evs[3:]] == [(11, 10), (12, 10), (13, 13)]


def test_ctx_thread_groups_groups_threads_strace_attached_without_a_clone():
    text = lines("""
        26066 22:34:20.902229 read(5<pipe:[76150]>, "pong!", 100) = 5 <0.072231>
        26065 22:34:20.902506 recvfrom(4<socket:[76149]>, "ping", 100, 0, NULL, NULL) = 4 <0.072060>
        26062 22:34:20.902569 clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, {tv_sec=1706, tv_nsec=744801714}, NULL) = 0 <0.071358>
        """)
    evs, _ = run(text, date=dt.date(2026, 11, 27), pid=26062, thread_groups={26065: 26062, 26066: 26062})
    assert [(e.tid, e.pid) for e in evs] == [(26066, 26062), (26065, 26062), (26062, 26062)]
    evs, _ = run(text, date=dt.date(2026, 11, 27))      # unknown: each its own process
    assert [(e.tid, e.pid) for e in evs] == [(26066, 26066), (26065, 26065), (26062, 26062)]


def test_attached_with_threads_message_groups_the_next_unknown_tids():
    evs, _ = run(lines("""
        strace: Process 4617 attached with 3 threads
        [pid  4619] 22:09:45.802200 futex(0xa5b8f8, FUTEX_WAKE_PRIVATE, 1) = 0 <0.000008>
        [pid  4620] 22:09:45.802275 futex(0xa5b8f8, FUTEX_WAKE_PRIVATE, 1) = 0 <0.000008>
        [pid  4617] 22:09:45.802292 futex(0xa5b8f8, FUTEX_WAKE_PRIVATE, 1) = 0 <0.000008>
        """), date=dt.date(2026, 11, 27))
    assert [(e.tid, e.pid) for e in evs] == [(4619, 4617), (4620, 4617), (4617, 4617)]


def test_stderr_trace_unprefixed_lines_follow_the_only_live_tracee():
    # strace -f to stderr prints [pid N] only while several tracees are alive
    evs, ctx = run(lines("""
        execve("/bin/x", ["x"], 0x7ffd /* 3 vars */) = 0 <0.000100>
        clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM, child_tid=0x7f, parent_tid=0x7f, exit_signal=0, stack=0x7f, stack_size=0x7fff80, tls=0x7f} => {parent_tid=[201]}, 88) = 201 <0.000050>
        [pid   201] read(3, "a", 1) = 1 <0.000010>
        [pid   200] write(4, "b", 1) = 1 <0.000010>
        [pid   201] exit(0)                     = ?
        [pid   201] +++ exited with 0 +++
        write(4, "c", 1)                        = 1 <0.000010>
        exit_group(0)                           = ?
        +++ exited with 0 +++
        """))
    assert [(e.name, e.tid, e.pid) for e in evs] == [
        ("execve", 200, 200), ("clone3", 200, 200), ("read", 201, 200), ("write", 200, 200),
        ("exit", 201, 200), ("write", 200, 200), ("exit_group", 200, 200)]
    assert [w for w in ctx.warnings if "timestamps" not in w] == []


# --- when: timestamps ----------------------------------------------------------------------------

D = dt.date(2026, 11, 27)


@pytest.mark.parametrize("stamp", ["22:08:54", "22:08:54.015296", "22:11:25.454091227", "22:11:25.454"])
def test_time_of_day_stamps_use_the_date_and_tz(stamp):
    tz = dt.timezone(dt.timedelta(hours=2))
    (e,), ctx = run(f"123   {stamp} close(3) = 0 <0.000030616>\n", date=D, tz=tz, uncertainty_ns=5)
    assert e.start_ns == tod_ns(D, stamp, tz) and e.dur_ns == 30_616
    assert ctx.warnings == [] and ctx.uncertainty_ns == 5


def test_time_of_day_default_tz_is_local_time():
    (e,), _ = run("123   22:08:54.015296 close(3) = 0\n", date=D)
    assert e.start_ns == int(dt.datetime(2026, 11, 27, 22, 8, 54).timestamp()) * 10**9 + 15_296_000


def test_midnight_wrap_moves_to_the_next_day():
    evs, _ = run(lines("""
        123   23:59:59.900000 read(3, "a", 1) = 1 <0.000010>
        124   23:59:59.950000 read(3, "a", 1) = 1 <0.000010>
        123   00:00:00.100000 read(3, "a", 1) = 1 <0.000010>
        124   23:59:59.999000 read(3, "a", 1) = 1 <0.000010>
        123   00:00:01.000000 read(3, "a", 1) = 1 <0.000010>
        """), date=D, tz=UTC)
    base = tod_ns(D, "23:59:59.900000")
    assert [e.start_ns - base for e in evs] == [0, 50_000_000, 200_000_000, 99_000_000, 1_100_000_000]


def test_time_of_day_without_a_date_is_1970_with_a_warning_and_no_alignment():
    evs, ctx = run("1  00:00:01.5 close(3) = 0\n1  00:00:02.25 close(4) = 0\n", uncertainty_ns=1000)
    assert [e.start_ns for e in evs] == [1_500_000_000, 2_250_000_000]
    assert len(ctx.warnings) == 1 and "no date" in ctx.warnings[0] and "1970-01-01" in ctx.warnings[0]
    assert ctx.uncertainty_ns is None


@pytest.mark.parametrize("stamp", ["1795817331.347468", "1795817338.070241676", "1795817338", "1795817338.070"])
def test_unix_stamps_any_precision(stamp):
    (e,), ctx = run(f"[pid  4151] {stamp} futex(0xa5b8f8, FUTEX_WAKE_PRIVATE, 1) = 0 <0.000026>\n")
    assert e.start_ns == ns(stamp if "." in stamp else stamp + ".0") and e.dur_ns == 26_000
    assert ctx.warnings == []


def test_no_timestamps_start_at_0_with_a_warning_and_no_alignment():
    evs, ctx = run("123   read(3, \"ab\", 2) = 2 <0.000100>\n123   close(3) = 0\n", uncertainty_ns=7)
    assert [(e.start_ns, e.dur_ns, e.nbytes) for e in evs] == [(0, 100_000, 2), (0, None, None)]
    assert len(ctx.warnings) == 1 and "no timestamps" in ctx.warnings[0]
    assert ctx.uncertainty_ns is None


def test_relative_stamps_are_summed():
    evs, ctx = run("     0.000000 close(3)                  = 0\n     0.000894 close(4) = 0\n     0.001106 close(5) = 0\n")
    assert [e.start_ns for e in evs] == [0, 894_000, 2_000_000]
    assert ctx.uncertainty_ns is None and "relative" in ctx.warnings[0]


def test_durations_us_ns_and_missing():
    evs, _ = run(lines("""
        1  1795817331.1 close(3) = 0 <0.000123>
        1  1795817331.2 close(4) = 0 <0.000123456>
        1  1795817331.3 close(5) = 0 <1.5>
        1  1795817331.4 close(6) = 0
        """))
    assert [e.dur_ns for e in evs] == [123_000, 123_456, 1_500_000_000, None]
    assert evs[-1].end_ns == evs[-1].start_ns


# --- fd kinds -------------------------------------------------------------------------------------

@pytest.mark.parametrize("deco,kind", [
    ("3</tmp/f.txt>", FILE),
    ("3<TCP:[127.0.0.1:8080->127.0.0.1:5555]>", SOCKET),
    ("3<TCPv6:[[::1]:8080->[::1]:5555]>", SOCKET),
    ("3<UDP:[127.0.0.1:53->127.0.0.1:4444]>", SOCKET),
    ("3<UNIX:[12345->12346]>", SOCKET),
    ("3<UNIX-STREAM:[7680->7681]>", SOCKET),
    ("3<NETLINK:[ROUTE:1234]>", SOCKET),
    ("3<socket:[12345]>", SOCKET),
    ("3<TCP:[8604]>", SOCKET),
    ("3<pipe:[123]>", PIPE),
    ("3<anon_inode:[eventpoll]>", OTHER),
    ("3<anon_inode:[eventfd]>", OTHER),
    ("3</dev/null<char 1:3>>", OTHER),
    ("3</dev/null>", OTHER),
    ("3</dev/pts/0<char 136:0>>", OTHER),
    ("3</dev/sda1<block 8:1>>", FILE),
    ("3</dev/shm/segment>", FILE),
    ("3</tmp/a>b>", FILE),                 # strace before 6 did not escape '>'
    ("3</tmp/st/a\\76b>", FILE),           # strace 6 does
    ("3</tmp/c, d) = 5>", FILE),
    ("3</memfd:buf (deleted)>", OTHER),
    ("3<net:[4026531840]>", OTHER),
])
def test_fd_decorations_give_the_kind(deco, kind):
    (e,), _ = run(f'4082  1795817331.1 read({deco}, "abc", 3) = 3 <0.000010>\n')
    assert (e.fd, e.fd_kind, e.nbytes, e.ret) == (3, kind, 3, 3)


def test_fd_table_without_y_learns_from_fd_creating_calls():
    evs, ctx = run(lines("""
        9  1700000001.1 socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_IP) = 3 <0.000021>
        9  1700000001.2 accept4(3, {sa_family=AF_INET, sin_port=htons(40788), sin_addr=inet_addr("127.0.0.1")}, [16], SOCK_CLOEXEC) = 4 <0.000010>
        9  1700000001.3 openat(AT_FDCWD, "/var/lib/x.db", O_RDWR|O_CREAT, 0644) = 5 <0.000010>
        9  1700000001.4 openat(AT_FDCWD, "/dev/urandom", O_RDONLY) = 6 <0.000010>
        9  1700000001.5 open("/proc/self/stat", O_RDONLY) = 7 <0.000010>
        9  1700000001.6 pipe2([8, 10], O_CLOEXEC) = 0 <0.000013>
        9  1700000001.7 socketpair(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC, 0, [11, 12]) = 0 <0.000056>
        9  1700000001.8 epoll_create1(EPOLL_CLOEXEC) = 13 <0.000011>
        9  1700000001.9 eventfd2(0, EFD_CLOEXEC) = 14 <0.000009>
        9  1700000002.0 dup2(4, 20) = 20 <0.000009>
        9  1700000002.1 fcntl(5, F_DUPFD_CLOEXEC, 0) = 21 <0.000009>
        9  1700000002.2 dup(8) = 22 <0.000009>
        9  1700000002.3 creat("/tmp/out", 0644) = 23 <0.000009>
        9  1700000002.4 openat(AT_FDCWD, "/dev/shm/seg", O_RDWR) = 24 <0.000010>
        9  1700000003.0 read(4, "a", 1) = 1 <0.000001>
        9  1700000003.0 read(5, "a", 1) = 1 <0.000001>
        9  1700000003.0 read(6, "a", 1) = 1 <0.000001>
        9  1700000003.0 read(7, "a", 1) = 1 <0.000001>
        9  1700000003.0 read(8, "a", 1) = 1 <0.000001>
        9  1700000003.0 write(10, "a", 1) = 1 <0.000001>
        9  1700000003.0 write(12, "a", 1) = 1 <0.000001>
        9  1700000003.0 epoll_wait(13, [], 1024, 0) = 0 <0.000001>
        9  1700000003.0 read(14, "\\1\\0\\0\\0\\0\\0\\0\\0", 8) = 8 <0.000001>
        9  1700000003.0 read(20, "a", 1) = 1 <0.000001>
        9  1700000003.0 read(21, "a", 1) = 1 <0.000001>
        9  1700000003.0 read(22, "a", 1) = 1 <0.000001>
        9  1700000003.0 write(23, "a", 1) = 1 <0.000001>
        9  1700000003.0 write(24, "a", 1) = 1 <0.000001>
        9  1700000003.0 read(99, "a", 1) = 1 <0.000001>
        """))
    got = {e.fd: e.fd_kind for e in evs if e.start_ns == ns("1700000003.0")}
    assert got == {4: SOCKET, 5: FILE, 6: OTHER, 7: FILE, 8: PIPE, 10: PIPE, 12: SOCKET, 13: OTHER, 14: OTHER,
                   20: SOCKET, 21: FILE, 22: PIPE, 23: FILE, 24: FILE, 99: UNKNOWN}
    assert [e.fd for e in evs if e.start_ns < ns("1700000003.0")] == [None, 3, None, None, None, None, None, None,
                                                              None, 4, 5, 8, None, None]


def test_close_forgets_the_fd_and_each_process_has_its_own_table():
    evs, _ = run(lines("""
        9  1700000001.1 socket(AF_INET, SOCK_STREAM, IPPROTO_IP) = 3 <0.000021>
        9  1700000001.2 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f) = 50 <0.0003>
        9  1700000001.3 close(3) = 0 <0.000010>
        9  1700000001.4 openat(AT_FDCWD, "/tmp/f", O_RDONLY) = 3 <0.000010>
        9  1700000001.5 read(3, "a", 1) = 1 <0.000001>
        50 1700000001.6 read(3, "a", 1) = 1 <0.000001>
        9  1700000001.7 close(3) = 0 <0.000010>
        9  1700000001.8 read(3, "a", 1) = -1 EBADF (Bad file descriptor) <0.000001>
        9  1700000001.9 close_range(3, 4294967295, 0) = 0 <0.000001>
        """))
    reads = by_name(evs, "read")
    assert [(e.pid, e.fd_kind) for e in reads] == [(9, FILE), (50, SOCKET), (9, UNKNOWN)]
    assert by_name(evs, "close")[0].fd_kind == SOCKET
    assert (reads[2].ret, reads[2].errno, reads[2].nbytes) == (-1, "EBADF", None)


@pytest.mark.parametrize("line,fd", [
    ('epoll_wait(12<anon_inode:[eventpoll]>, [{events=EPOLLIN, data={u32=8, u64=140222092279816}}], 1023, 100) = 1', 12),
    ('epoll_ctl(12, EPOLL_CTL_ADD, 8, {events=EPOLLIN, data={u32=8, u64=8}}) = 0', 12),
    ('sendfile(5, 6, NULL, 4096) = 4096', 5),
    ('fsync(11</tmp/rec/data.bin>) = 0', 11),
    ('ioctl(1, TCGETS, 0x7ffe21265890) = -1 ENOTTY (Inappropriate ioctl for device)', 1),
    ('lseek(6, 0, SEEK_CUR) = 0', 6),
    ('openat(AT_FDCWD</tmp/st>, "/dev/null", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 11</dev/null<char 1:3>>', None),
    ('mmap(NULL, 36363, PROT_READ, MAP_PRIVATE, 3, 0) = 0x7f76d982d000', None),
    ('newfstatat(3, "", {st_mode=S_IFREG|0644, st_size=36363, ...}, AT_EMPTY_PATH) = 0', None),
    ('poll([{fd=3, events=POLLIN}], 1, 1000) = 1 ([{fd=3, revents=POLLIN}])', None),
])
def test_fd_is_recorded_only_for_calls_whose_first_argument_is_an_fd(line, fd):
    (e,), _ = run(f"7  1795817331.1 {line} <0.000001>\n")
    assert e.fd == fd


def test_nbytes_only_for_the_read_and_write_families_on_success():
    evs, _ = run(lines("""
        7  1700000001.0 writev(3, [{iov_base="ab", iov_len=2}, {iov_base="c", iov_len=1}], 2) = 3 <0.000001>
        7  1700000001.0 pread64(3, "abcd", 4, 64) = 4 <0.000001>
        7  1700000001.0 sendmsg(3, {msg_name=NULL, msg_namelen=0, msg_iov=[{iov_base="hello", iov_len=5}], msg_iovlen=1, msg_controllen=0, msg_flags=0}, 0) = 5 <0.000001>
        7  1700000001.0 sendfile(5, 6, NULL, 4096) = 4096 <0.000001>
        7  1700000001.0 recvmmsg(3, [{msg_hdr={msg_name=NULL, msg_namelen=0, msg_iov=[{iov_base="x", iov_len=1}], msg_iovlen=1, msg_controllen=0, msg_flags=0}, msg_len=1}], 8, 0, NULL) = 1 <0.000001>
        7  1700000001.0 lseek(3, 0, SEEK_END) = 4096 <0.000001>
        7  1700000001.0 read(3, 0x7ffd3, 1024) = -1 EAGAIN (Resource temporarily unavailable) <0.000005>
        7  1700000001.0 read(3, "", 1024) = 0 <0.000005>
        """))
    assert [(e.name, e.nbytes) for e in evs] == [("writev", 3), ("pread64", 4), ("sendmsg", 5), ("sendfile", 4096),
                                                 ("recvmmsg", None), ("lseek", None), ("read", None), ("read", 0)]


# --- results ---------------------------------------------------------------------------------------

def test_return_values_errors_and_annotations():
    evs, ctx = run(lines("""
        7  1700000001.0 access("/etc/ld.so.preload", R_OK) = -1 ENOENT (No such file or directory) <0.000036>
        7  1700000001.0 poll([{fd=3, events=POLLIN}], 1, 100) = 0 (Timeout) <0.100123>
        7  1700000001.0 poll([{fd=3, events=POLLIN}], 1, 1000) = 1 ([{fd=3, revents=POLLIN}]) <0.000012>
        7  1700000001.0 fcntl(3, F_GETFL)       = 0x8002 (flags O_RDWR|O_LARGEFILE) <0.000005>
        7  1700000001.0 openat(AT_FDCWD, "/nonexistent", O_RDONLY) = -1 ENOENT (No such file or directory) (INJECTED) <0.000005>
        7  1700000001.0 write(1, "x) = 5 \\"q\\" <0.1>", 16) = 16 <0.000069>
        7  1700000001.0 wait4(-1, [{WIFEXITED(s) && WEXITSTATUS(s) == 3}], 0, NULL) = 4084 <0.000788>
        7  1700000001.0 syscall_0x1b6(0x1, 0x2, 0x3, 0x4, 0x5, 0x6) = -1 ENOSYS (Function not implemented) <0.000003>
        7  1700000001.0 getpid() = ? <unavailable>
        7  1700000001.0 kill(6973, SIGKILL) = ?
        7  1700000001.0 lseek(3, -1, SEEK_CUR) = -1 EINVAL (Invalid argument) <0.000004>
        """))
    assert [(e.name, e.ret, e.errno, e.dur_ns) for e in evs] == [
        ("access", -1, "ENOENT", 36_000), ("poll", 0, None, 100_123_000), ("poll", 1, None, 12_000),
        ("fcntl", 0x8002, None, 5_000), ("openat", -1, "ENOENT", 5_000), ("write", 16, None, 69_000),
        ("wait4", 4084, None, 788_000), ("syscall_0x1b6", -1, "ENOSYS", 3_000), ("getpid", None, None, None),
        ("kill", None, None, None), ("lseek", -1, "EINVAL", 4_000)]
    assert evs[5].nbytes == 16 and evs[5].fd == 1
    assert ctx.warnings == []


def test_interrupted_calls_keep_their_restart_errno_and_restart_syscall_is_named_after_the_call():
    evs, ctx = run(lines("""
        [pid  4151] 1795817338.070316929 read(3,  <unfinished ...>
        [pid  4152] 1795817338.120279652 kill(4151, SIGUSR1) = 0 <0.000070>
        [pid  4151] 1795817338.120347403 <... read resumed>0x7f6dcf6390a0, 1) = ? ERESTARTSYS (To be restarted if SA_RESTART is set) <0.050013>
        [pid  4151] 1795817338.120389106 --- SIGUSR1 {si_signo=SIGUSR1, si_code=SI_USER, si_pid=4151, si_uid=0} ---
        [pid  4151] 1795817338.120483357 read(3, "q", 1) = 1 <0.050274>
        [pid  4152] 1795818847.273256420 clock_nanosleep(CLOCK_REALTIME, 0, {tv_sec=0, tv_nsec=600000000}, {tv_sec=0, tv_nsec=382775293}) = ? ERESTART_RESTARTBLOCK (Interrupted by signal) <0.217300>
        [pid  4152] 1795818847.490636105 --- SIGSTOP {si_signo=SIGSTOP, si_code=SI_USER, si_pid=25798, si_uid=0} ---
        [pid  4152] 1795818847.491239160 --- stopped by SIGSTOP ---
        [pid  4152] 1795818847.593213208 --- SIGCONT {si_signo=SIGCONT, si_code=SI_USER, si_pid=25798, si_uid=0} ---
        [pid  4152] 1795818847.594365838 restart_syscall(<... resuming interrupted clock_nanosleep ...>) = 0 <0.279027>
        [pid  4151] 1795818847.6 read(5, 0x7ffc, 10) = ? ERESTART_RESTARTBLOCK (Interrupted by signal) <0.100000>
        [pid  4151] 1795818847.7 restart_syscall(<... resuming interrupted read ...>) = 10 <0.200000>
        """))
    assert [(e.tid, e.name, e.ret, e.errno, e.dur_ns, e.fd, e.nbytes) for e in evs] == [
        (4152, "kill", 0, None, 70_000, None, None),
        (4151, "read", None, "ERESTARTSYS", 50_013_000, 3, None),
        (4151, "read", 1, None, 50_274_000, 3, 1),
        (4152, "clock_nanosleep", None, "ERESTART_RESTARTBLOCK", 217_300_000, None, None),
        (4152, "clock_nanosleep", 0, None, 279_027_000, None, None),
        (4151, "read", None, "ERESTART_RESTARTBLOCK", 100_000_000, 5, None),
        (4151, "read", 10, None, 200_000_000, 5, 10)]
    assert evs[1].start_ns == ns("1795817338.070316929")
    assert ctx.warnings == []


# --- unfinished / resumed --------------------------------------------------------------------------

def test_unfinished_and_resumed_make_one_call_started_at_the_unfinished_line():
    evs, ctx = run(lines("""
        4083  22:08:54.022700 recvfrom(4<UNIX-STREAM:[7681->7680]>,  <unfinished ...>
        4082  22:08:54.022737 sendto(3<UNIX-STREAM:[7680->7681]>, "xxxxxxxxxx", 10, 0, NULL, 0) = 10 <0.000029>
        4083  22:08:54.022801 <... recvfrom resumed>"xxxxxxxxxx", 100, 0, NULL, NULL) = 10 <0.000073>
        4082  22:08:54.071759 pipe2( <unfinished ...>
        4082  22:08:54.071770 <... pipe2 resumed>[8, 9], O_CLOEXEC) = 0 <0.000013>
        4082  22:08:54.071802 write(9, "ab", 2) = 2 <0.000008>
        """), date=D, tz=UTC)
    assert [(e.tid, e.name, e.start_ns, e.dur_ns, e.fd, e.fd_kind, e.nbytes) for e in evs] == [
        (4082, "sendto", tod_ns(D, "22:08:54.022737"), 29_000, 3, SOCKET, 10),
        (4083, "recvfrom", tod_ns(D, "22:08:54.022700"), 73_000, 4, SOCKET, 10),
        (4082, "pipe2", tod_ns(D, "22:08:54.071759"), 13_000, None, UNKNOWN, None),
        (4082, "write", tod_ns(D, "22:08:54.071802"), 8_000, 9, PIPE, 2)]
    assert ctx.warnings == []


def test_resumed_without_T_takes_the_stamp_difference():
    evs, _ = run("5  1795817338.1 read(3,  <unfinished ...>\n6  1795817338.15 close(4) = 0\n"
                 "5  1795817338.35 <... read resumed>\"q\", 1) = 1\n")
    assert [(e.name, e.start_ns, e.dur_ns) for e in evs] == [
        ("close", ns("1795817338.15"), None), ("read", ns("1795817338.1"), 250_000_000)]


def test_resumed_without_its_start_is_placed_by_its_duration():
    # strace -p attached while the call was in flight
    (e,), _ = run("[pid  4620] 22:09:45.814296 <... clock_nanosleep resumed>NULL) = 0 <0.012001>\n", date=D, tz=UTC)
    assert (e.tid, e.name, e.start_ns, e.dur_ns) == (4620, "clock_nanosleep", tod_ns(D, "22:09:45.802295"), 12_001_000)


def test_calls_cut_by_exit_kill_detach_or_the_end_have_no_duration():
    evs, ctx = run(lines("""
        6974  22:12:51.600000 recvfrom(4, <unfinished ...>
        6975  22:12:51.600001 exit(0 <unfinished ...>
        6976  22:12:51.600002 futex(0x55, FUTEX_WAIT_PRIVATE, 2, NULL <unfinished ...>
        6977  22:12:51.600003 read(0,  <unfinished ...>
        6973  22:12:51.687021 kill(6973, SIGKILL) = ?
        6974  22:12:51.687085 <... recvfrom resumed> <unfinished ...>) = ?
        6975  22:12:51.687086 +++ exited with 0 +++
        6976  22:12:51.687087 +++ killed by SIGKILL +++
        6973  22:12:51.687943 +++ killed by SIGKILL +++
        6978  22:12:51.995120 clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, {tv_sec=419, tv_nsec=474690348},  <detached ...>
        """), date=D, tz=UTC)
    got = {e.name: (e.tid, e.start_ns, e.dur_ns, e.ret) for e in evs}
    assert got == {
        "kill": (6973, tod_ns(D, "22:12:51.687021"), None, None),
        "recvfrom": (6974, tod_ns(D, "22:12:51.600000"), None, None),
        "exit": (6975, tod_ns(D, "22:12:51.600001"), None, None),
        "futex": (6976, tod_ns(D, "22:12:51.600002"), None, None),
        "read": (6977, tod_ns(D, "22:12:51.600003"), None, None),
        "clock_nanosleep": (6978, tod_ns(D, "22:12:51.995120"), None, None)}
    # only the call left open at the end of the trace is worth a warning
    assert len(ctx.warnings) == 1 and "trace.txt:4: 1 call(s) still unfinished" in ctx.warnings[0]


# --- lines that are not calls ----------------------------------------------------------------------

def test_signals_exits_messages_stack_frames_and_summaries_are_skipped_silently():
    evs, ctx = run(lines("""
        strace: Process 123 attached
        123   22:11:25.435767 [   3] [00007fa5ecf8aa07] close(3) = 0 <0.000010>
        123   22:11:25.442426 (+     0.000851) close(4) = 0 <0.000010>
         > /usr/lib/x86_64-linux-gnu/libc.so.6(__close+0x17) [0x1143e7]
         > /usr/bin/python3.11(_start+0x21) [0x25e5d1]
        123   22:11:25.443000 --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED, si_pid=4084, si_uid=0, si_status=3, si_utime=0, si_stime=0} ---
        123   22:11:25.443001 --- stopped by SIGSTOP ---
        123   22:11:25.443002 ???( <unfinished ...>
        123   22:11:25.443003 +++ killed by SIGKILL (core dumped) +++
        124   22:11:25.443004 +++ superseded by execve in pid 123 +++
        [ Process PID=125 runs in 32 bit mode. ]
        strace: Process 123 detached
        strace: Exit of unknown pid 4242 ignored

        % time     seconds  usecs/call     calls    errors syscall
        ------ ----------- ----------- --------- --------- ----------------
         66.75    0.003708           0      3922           read
        100.00    0.005555           0      6607         3 total
        """), date=D, tz=UTC)
    assert [(e.name, e.tid) for e in evs] == [("close", 123), ("close", 123), ("???", 123)]
    assert ctx.warnings == []


def test_lines_torn_by_the_targets_output_or_strace_messages_are_glued_back():
    evs, ctx = run(lines("""
        write(2<pipe:[10704]>, "line1\\nline2", 11line1
        line2) = 11 <0.000057>
        1795817338.181501831 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLDstrace: Process 4153 attached
        , child_tidptr=0x7f6dcf991310) = 4153 <0.000439>
        [pid  4151] 1795817338.182087250 kill(4153, SIGKILL) = 0 <0.000023>
        [pid  4151] 1795817338.182178376 wait4(4153,  <unfinished ...>
        [pid  4153] 1795817338.182367530 +++ killed by SIGKILL +++
        1795817338.182378487 <... wait4 resumed>[{WIFSIGNALED(s) && WTERMSIG(s) == SIGKILL}], 0, NULL) = 4153 <0.000189>
        1795817338.186897118 clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, {tv_sec=234, tv_nsec=83879961}, strace: Process 4151 detached
         <detached ...>
        """), pid=4151)
    assert [(e.name, e.tid, e.pid, e.ret, e.nbytes) for e in evs] == [
        ("write", 4151, 4151, 11, 11), ("clone", 4151, 4151, 4153, None), ("kill", 4151, 4151, 0, None),
        ("wait4", 4151, 4151, 4153, None), ("clock_nanosleep", 4151, 4151, None, None)]
    assert evs[1].start_ns == ns("1795817338.181501831") and evs[1].dur_ns == 439_000
    assert [w for w in ctx.warnings if "timestamps" not in w] == []


def test_several_strace_messages_inside_one_torn_line():
    # strace -f to stderr, bash forking: two attach messages land inside the wait4 line
    evs, ctx = run(lines("""
        22:37:45.142916 rt_sigprocmask(SIG_BLOCK, [CHLD], [CHLD], 8) = 0 <0.000008>
        22:37:45.142998 wait4(-1, strace: Process 30053 attached
        strace: Process 30052 attached
         <unfinished ...>
        [pid 30053] 22:37:45.144601 set_robust_list(0x7fa822523a20, 24 <unfinished ...>
        [pid 30051] 22:37:45.144700 <... wait4 resumed>[{WIFEXITED(s) && WEXITSTATUS(s) == 0}], 0, NULL) = 30052 <0.001702>
        [pid 30053] 22:37:45.144800 <... set_robust_list resumed>) = 0 <0.000199>
        """), date=D, tz=UTC)
    assert [(e.name, e.tid, e.pid, e.start_ns, e.dur_ns) for e in evs] == [
        ("rt_sigprocmask", 30051, 30051, tod_ns(D, "22:37:45.142916"), 8_000),
        ("wait4", 30051, 30051, tod_ns(D, "22:37:45.142998"), 1_702_000),
        ("set_robust_list", 30053, 30053, tod_ns(D, "22:37:45.144601"), 199_000)]
    assert ctx.warnings == []


def test_status_filtered_traces_end_an_unfinished_call_on_a_bare_line():
    # strace -z / -Z / -e status=...: no "<... NAME resumed>" header on the end of the call
    evs, ctx = run(lines("""
        30559 22:37:59.844823 newfstatat(AT_FDCWD, "/root/.pyenv/shims/sleep",  <unfinished ...>
        0x7fff3d890a80, 0)                      = -1 ENOENT (No such file or directory)
        30558 22:37:59.845199 +++ exited with 0 +++
        30590 22:38:00.182387 close(0 <unfinished ...>
        )                                       = 0
        """), date=D, tz=UTC)
    assert [(e.name, e.tid, e.start_ns, e.dur_ns, e.ret, e.errno, e.fd) for e in evs] == [
        ("newfstatat", 30559, tod_ns(D, "22:37:59.844823"), None, -1, "ENOENT", None),
        ("close", 30590, tod_ns(D, "22:38:00.182387"), None, 0, None, 0)]
    assert ctx.warnings == []


def test_unprefixed_lines_stay_with_the_parent_until_its_new_child_shows_up():
    # `clone() = N` unprefixed: strace has not attached N yet, the parent goes on unprefixed
    evs, ctx = run(lines("""
        [pid 30303] 22:37:58.280000 read(3, "a", 1) = 1 <0.000009>
        [pid 30304] 22:37:58.280001 exit(0) = ?
        [pid 30304] 22:37:58.280002 +++ exited with 0 +++
        22:37:58.284007 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f83d5931a10) = 30307 <0.000109>
        22:37:58.284149 rt_sigprocmask(SIG_SETMASK, [], NULL, 8) = 0 <0.000009>
        22:37:58.284312 wait4(-1, strace: Process 30307 attached
         <unfinished ...>
        [pid 30307] 22:37:58.284886 set_robust_list(0x7f83d5931a20, 24) = 0 <0.000032>
        [pid 30307] 22:37:58.284900 exit_group(0) = ?
        [pid 30307] 22:37:58.285000 +++ exited with 0 +++
        22:37:58.290000 <... wait4 resumed>[{WIFEXITED(s) && WEXITSTATUS(s) == 0}], 0, NULL) = 30307 <0.005688>
        """), date=D, tz=UTC)
    assert [(e.name, e.tid, e.pid) for e in evs] == [
        ("read", 30303, 30303), ("exit", 30304, 30304), ("clone", 30303, 30303), ("rt_sigprocmask", 30303, 30303),
        ("set_robust_list", 30307, 30307), ("exit_group", 30307, 30307), ("wait4", 30303, 30303)]
    assert evs[-1].dur_ns == 5_688_000 and evs[-1].start_ns == tod_ns(D, "22:37:58.284312")
    assert ctx.warnings == []


# --- bad input -------------------------------------------------------------------------------------

GOOD = "4082  1795817331.%06d close(3) = 0 <0.000010>\n"


def test_a_few_foreign_lines_are_a_warning_naming_the_first():
    text = "".join(GOOD % i for i in range(20))
    text = text[:len(GOOD % 0) * 5] + "Traceback (most recent call last):\n  oops\nValueError: x\n" + text[len(GOOD % 0) * 5:]
    evs, ctx = run(text)
    assert len(evs) == 20
    assert len(ctx.warnings) == 1
    assert ctx.warnings[0].startswith("trace.txt:6: skipped 3 unparseable line(s)") and "Traceback" in ctx.warnings[0]


def test_many_foreign_lines_are_a_parse_error_with_file_and_line():
    text = "".join(GOOD % i for i in range(20)) + "this is not strace output\n" * 30
    with pytest.raises(ParseError) as err:
        run(text, path="/cap/strace.txt")
    assert err.value.exit_code == 2
    assert str(err.value).startswith("/cap/strace.txt:21: ") and "30 of 50 lines" in str(err.value)


def test_garbage_only_is_a_parse_error():
    with pytest.raises(ParseError) as err:
        run("hello world\nthis is not a trace\n" * 3)
    assert err.value.exit_code == 2 and str(err.value).startswith("trace.txt:1: ")


def test_truncated_last_line_is_skipped_with_a_warning():
    text = "".join(GOOD % i for i in range(3)) + '4082  1795817331.000004 read(3, "abc", 3) = 3'
    evs, ctx = run(text)
    assert [e.name for e in evs] == ["close"] * 3
    assert ctx.warnings == ["trace.txt:4: file is truncated; parsed up to the last complete line"]
    text = "".join(GOOD % i for i in range(3)) + '4082  1795817331.000004 pread64(3, "\\6\\0\\0\\0\\4\\0\\0'
    evs, ctx = run(text)
    assert len(evs) == 3 and ctx.warnings == ["trace.txt:4: file is truncated; parsed up to the last complete line"]


def test_empty_input_yields_nothing():
    evs, ctx = run("")
    assert evs == [] and ctx.warnings == []


# --- sniff -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("head,name", [
    ('3947  1795817331.347468 execve("/bin/true", ["/bin/true"], 0x7ffd0748b778 /* 39 vars */) = 0 <0.000475>\n'
     '3947  1795817331.348071 brk(NULL)       = 0x5575bb24b000 <0.000036>\n', "trace.txt"),
    ('execve("/bin/true", ["/bin/true"], 0x7ffd0748b778 /* 39 vars */) = 0\nbrk(NULL)   = 0x5575bb24b000\n', "out"),
    ("strace: Process 4617 attached with 3 threads\n[pid  4619] 22:09:45.802200 clock_nanosleep(CLOCK_MONOTONIC, "
     "TIMER_ABSTIME, {tv_sec=231, tv_nsec=585129748},  <unfinished ...>\n", "log"),
    ("22:14:11.722749 write(3, \"abc\", 3)      = 3 <0.000053>\n22:14:11.722958 exit_group(0)           = ?\n"
     "22:14:11.723315 +++ exited with 0 +++\n", "ff.7663"),
    ("hello from the program\n1795817338.1 read(3, \"x\", 1) = 1\n1795817338.2 close(3) = 0\n", "stderr.txt"),
])
def test_sniff_accepts_strace_output(head, name):
    assert StraceParser().sniff(head, name)


@pytest.mark.parametrize("head", [
    '{"$schema": "https://www.speedscope.app/file-format-schema.json", "profiles": []}\n',
    '[{"name": "read", "ph": "X", "ts": 1.0}]\n',
    "python3 18204 [001]  1336.507507150: syscalls:sys_enter_fsync: fd: 0x00000003\n"
    "\t           fec20 fsync+0x10 (/usr/lib/x86_64-linux-gnu/libc.so.6)\n\n"
    "python3 18204 [001]  1336.507924496:  syscalls:sys_exit_fsync: 0x0\n",
    "bash 17972  1331.214197:    1001001 cpu-clock: \n\tffffffff815e44d0 set_pte_range+0xc0 ([kernel.kallsyms])\n",
    "     0.000 ( 0.003 ms): true/1234 brk() = 0x55d1c9a8e000\n     0.010 ( 0.002 ms): true/1234 close(fd: 3) = 0\n",
    "<module> (prog.py:16);main (prog.py:14);busy_function (prog.py:5) 1\n",
    "hello world\nthis is not a trace\n" * 20,
    "f(x) = 3 is a function\nand g(y) = 2\n" + "prose line\n" * 10,
    "",
])
def test_sniff_rejects_other_formats(head):
    assert not StraceParser().sniff(head, "x.txt")


# --- recorded logs -----------------------------------------------------------------------------------

def _call_lines(text: str) -> collections.Counter:
    """Syscall names of the lines that start a call (complete or unfinished), from the raw log."""
    return collections.Counter(re.findall(r"^(?:\[pid +\d+\] |\d+ +)?[\d:.]+ (\w+)\(", text, re.M))


def test_recorded_threads_yy_log():
    path = os.path.join(DATA, "threads_yy.log")
    text = open(path).read()
    res = parse_file(path, ParseContext(path=path, date=D, tz=UTC))
    evs, info = res.data.syscalls, res.info
    assert info.format == "strace" and info.warnings == []
    assert collections.Counter(e.name for e in evs) == _call_lines(text)
    assert evs[0].start_ns == tod_ns(D, "22:33:47.886496")
    # the reader thread: its process's pid, three socket reads of exactly 10, 11, 12 bytes
    thread = [e for e in evs if e.tid == 25448]
    assert {e.pid for e in thread} == {25447}
    assert [(e.name, e.fd, e.fd_kind, e.nbytes) for e in thread if e.name == "recvfrom"] == [
        ("recvfrom", 4, SOCKET, 10), ("recvfrom", 4, SOCKET, 11), ("recvfrom", 4, SOCKET, 12)]
    assert [e.dur_ns for e in thread if e.name == "recvfrom"] == [33_000, 14_497_000, 10_223_000]
    # the forked child: its own process, writing to the inherited pipe
    child = [e for e in evs if e.tid == 25451]
    assert [(e.pid, e.name, e.fd_kind, e.nbytes) for e in child] == [(25451, "write", PIPE, 1),
                                                                    (25451, "exit_group", UNKNOWN, None)]
    main = {(e.name, e.fd): e for e in evs if e.tid == 25447 and e.fd is not None}
    assert main[("sendto", 6)].fd_kind == SOCKET and main[("sendto", 6)].nbytes == 5
    assert main[("recvfrom", 7)].nbytes == 5
    assert main[("write", 9)].fd_kind == PIPE
    assert main[("fsync", 11)].fd_kind == FILE and main[("fsync", 11)].dur_ns == 7_425_000
    assert main[("epoll_wait", 11)].fd_kind == OTHER and main[("epoll_wait", 11)].ret == 1
    dev_null = [e for e in evs if e.name == "write" and e.fd == 11 and e.nbytes == 1]
    assert [e.fd_kind for e in dev_null] == [OTHER]
    assert {e.fd_kind for e in evs if e.name == "read" and e.fd == 3} == {FILE}


def test_recorded_stderr_mixed_with_program_output():
    path = os.path.join(DATA, "stderr_mixed.txt")
    text = open(path).read()
    ctx = ParseContext(path=path)
    res = parse_file(path, ctx)
    evs = res.data.syscalls
    # the program's own two stray lines are the only bad lines
    bad_at = text.split("\n").index("two lines") + 1
    assert res.info.warnings == [f"{path}:{bad_at}: skipped 2 unparseable line(s), first: not a strace line: "
                                 "'two lines'"]
    expected = _call_lines(text)
    expected["clock_nanosleep"] += expected.pop("restart_syscall")
    assert collections.Counter(e.name for e in evs) == expected
    # the unprefixed first lines are the main process, learned from the first [pid N] line
    assert {e.pid for e in evs} == {25811} and {e.tid for e in evs} == {25811, 25812}
    assert evs[0].name == "execve" and evs[0].start_ns == 1795818847129469170 and evs[0].dur_ns == 142_000
    restarted = [e for e in evs if e.errno and e.errno.startswith("ERESTART")]
    assert [(e.name, e.errno, e.ret, e.dur_ns) for e in restarted] == [
        ("read", "ERESTARTSYS", None, 50_204_000), ("clock_nanosleep", "ERESTART_RESTARTBLOCK", None, 217_300_000)]
    assert evs[-2].name == "clock_nanosleep" and evs[-2].dur_ns == 279_027_000
    writes = [(e.tid, e.fd, e.nbytes) for e in evs if e.name == "write"]
    assert writes == [(25812, 4, 1), (25811, 2, 19), (25811, 2, 20), (25811, 5, 5)]
    exit_ = by_name(evs, "exit")
    assert [(e.tid, e.dur_ns) for e in exit_] == [(25812, None)]
    assert by_name(evs, "clone")[0].ret == 25815 and not [e for e in evs if e.tid == 25815]


def test_recorded_attach_log_with_detach():
    path = os.path.join(DATA, "attach.log")
    text = open(path).read()
    ctx = ParseContext(path=path, date=D, tz=UTC, pid=26062, thread_groups={26065: 26062, 26066: 26062})
    res = parse_file(path, ctx)
    evs = res.data.syscalls
    assert collections.Counter(e.name for e in evs) == _call_lines(text)
    assert {e.pid for e in evs} == {26062} and {e.tid for e in evs} == {26062, 26065, 26066}
    # the two readers were left in a call by the detach: kept without a duration, and said
    assert len(res.info.warnings) == 1 and "2 call(s) still unfinished" in res.info.warnings[0]
    recv = [e for e in evs if e.name == "recvfrom"]
    assert {(e.fd, e.fd_kind) for e in recv} == {(4, SOCKET)}
    assert [e.nbytes for e in recv] == [4, 4, 4, 4, None]
    reads = [e for e in evs if e.name == "read"]
    assert {(e.fd, e.fd_kind) for e in reads} == {(5, PIPE)} and [e.nbytes for e in reads] == [5, 5, 5, 5, None]
    sends = text.count('sendto(3<socket:[76148]>, "ping", 4')
    assert len([e for e in evs if e.name == "sendto" and e.nbytes == 4]) == sends == 4
    last = evs[-1] if evs[-1].name == "clock_nanosleep" else by_name(evs, "clock_nanosleep")[-1]
    assert last.dur_ns is None and last.start_ns == tod_ns(D, "22:34:21.275754")
