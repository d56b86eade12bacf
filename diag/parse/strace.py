"""strace text output -> `SyscallEvent`s (format "strace", clock REALTIME).

Owns: recognising strace output (`StraceParser.sniff`) and turning every system call it shows
into one `SyscallEvent`, whatever mix of options produced it: -f (`[pid  N] ` to stderr,
`N  ` with -o), -ff per-pid files, -t/-tt/-ttt and --absolute-timestamps (s..ns precision),
-r, -T (us or ns), -y/-yy fd decorations, -n/-i, -k stack lines, -X raw/abbrev/verbose,
-e raw=, -s N, -e trace=..., unfinished/resumed pairs, signals, exits, attach/detach
messages, and the target's own stderr interleaved with strace's.

Rules chosen (what a reader of the records may rely on):

* pid/tid. strace's "pid" is a thread id: it becomes `tid`. `pid` is the thread group id
  (tgid): a thread created by clone/clone3 with CLONE_THREAD (flag names or, with -X raw,
  flag bits) gets its creator's tgid; every other new task is its own process (tgid = tid)
  and starts with a copy of its parent's fd table. A task that appears before its parent's
  clone returned (strace prints it whenever it likes) is attributed to the one clone then in
  flight; `strace -p N -f` "attached with K threads" makes the next K-1 unknown tids threads
  of N; ctx.thread_groups (tid -> tgid of the threads the capture saw, which `strace -p -f`
  attaches without any clone in the trace) is used first. Tids are forgotten on
  `+++ exited/killed +++`, so reused tids start fresh.
* Lines without a pid prefix. In a file whose name ends in `.PID` (strace -ff -o NAME writes
  NAME.PID) they belong to PID: the file name wins over ctx.pid, which can only name one of
  the -ff files. Else they belong to ctx.pid. Without either, the pid is learned from the
  trace (the `strace: Process N attached` message of -p, a `set_tid_address`/`gettid`
  return, or the first prefixed tid that is neither a child nor announced as attached) and
  the events are held back until it is known; if it never is, pid and tid are 0, with a
  warning. strace to stderr drops the prefix whenever a single tracee is left: such lines go
  to the only live tid, else to the tid of the previous line if it is alive (the parent right
  after an unprefixed `clone() = N`, before strace attached N), else to it with a warning.
* Timestamps -> `start_ns` (int ns since the epoch, plus ctx.offset_ns). Time-of-day stamps
  (-t/-tt) use ctx.date in ctx.tz (default: local time); a stamp more than 12 h earlier than
  the previous one is on the next day (one more than 12 h later, on the day before).
  Without ctx.date they are put on 1970-01-01 UTC with a warning: times are then only
  relative within the trace. No timestamps at all: start_ns is 0 for every call (durations
  only), with a warning. -r (relative) stamps are summed from 0, with a warning. In these
  three cases ctx.uncertainty_ns is set to None: the stream is not on the common clock.
* `dur_ns` from -T; for an unfinished/resumed pair the start is the unfinished line's stamp
  and the duration the resumed line's -T (or the stamp difference without -T). A call still
  pending when its task exits, when strace detaches (`<detached ...>`), or at the end of the
  trace (warned, with a count) is emitted with dur_ns None; so are calls that never returned
  (`= ?` without an errno: `exit_group(0) = ?`, a call cut by the task's death).
* `ret` is the return value (hex decoded, -1 on error); `= ?` gives None. `errno` is the
  error name, including ERESTARTSYS / ERESTART_RESTARTBLOCK etc. for interrupted calls.
  `restart_syscall(<... resuming interrupted NAME ...>)` is emitted under NAME.
* `fd`/`fd_kind` only for calls whose first argument is an fd (read, write, fsync, close,
  sendto, ioctl, epoll_wait (the epoll fd), ...; see `diag.syscalls.FD_FIRST`). The kind comes from the -y
  decoration when present (TCP:/UDP:/UNIX:/NETLINK:/socket: -> SOCKET, pipe: -> PIPE,
  /dev/* character devices, anon_inode:, memfd -> OTHER, other paths and block devices ->
  FILE), else from a per-process fd table learned from socket/accept, open*/creat (/dev/*
  but /dev/shm -> OTHER, anything else, /proc included, -> FILE), pipe*/socketpair,
  epoll/eventfd/timerfd/signalfd/inotify/memfd/..., dup*/fcntl(F_DUPFD*) and close/close_range.
  Fds the trace never showed being created (inherited, passed over a socket, CLOEXEC after
  exec is not tracked, opened before `strace -p` attached) are UNKNOWN, unless a call that
  only exists on sockets (recvfrom, sendto, recvmsg, sendmsg, accept*, connect, shutdown,
  setsockopt...: `diag.syscalls.SOCKET_ONLY`) uses them: then they are SOCKET from that call on.
* `strace -f -p PID -o FILE` (an attach: a task's first line resumes a call begun before the
  trace) writes its "attached with K threads" message to stderr, not FILE: the tids the first
  HEAD_LINES lines show and no clone there created are grouped into one process (the smallest
  tid, the main thread's, or ctx.pid).
* ctx.pthread_ids (pthread id -> tid) learns each thread clone's `tls=`: on x86-64 glibc that is
  the thread's pthread id, what py-spy chrometrace without --threads names threads by.
* `nbytes` is the return value of the read/write families (`diag.syscalls.BYTE_COUNT`) when it is >= 0.
* Lines that are not strace's (the target's stderr) go to `BadLines`: a few are a warning, many
  an error naming the first one. A strace line torn by the target's output or by `strace:
  Process N attached/detached` messages is first glued back together with the next line(s)
  (up to MAX_JOIN). With -z/-Z/-e status=, strace ends an unfinished call on a bare
  `...) = ret` line: that is taken as its resumption. A last line without its newline is a
  truncated capture: it is skipped with a warning.

Known gaps: a thread whose creation the trace does not show (a -ff file of a thread: its clone
is in another file) is its own process unless ctx.thread_groups names it; two processes attached
with `-p A -p B -o FILE` are grouped as one; fds inherited from outside the trace are UNKNOWN (use -y);
without -yy every /dev/* path but /dev/shm is OTHER, block devices included; `clone3` under
`-e raw=clone3` hides its flags (treated as a process); a rotated log named `x.log.1` reads
as pid 1 for its unprefixed lines; `-c` summaries and -k stack frames are skipped.

Speed: the lines of an `strace -f -ttt -T -o FILE` log (a complete call returning a number,
the unfinished half of a call, its resumption), told apart by their ending, each go through a
lean regex (_PLAIN*); other shapes through one precompiled regex for the three common lines
(_FAST) with the first argument's fd; everything else through a slow path. The loop keeps its
state in locals and builds events as named tuples. About 0.35-0.45M lines/s on real logs
(CPython 3.11; bench/RESULTS.md).
"""
from __future__ import annotations

import datetime as _dt
import itertools
import os
import re
import sys
from typing import IO, Iterator

from diag.model import Clock, SyscallEvent
from diag.syscalls import BYTE_COUNT, CLONES, FD_FIRST, NEW_OTHER, NEW_SOCKET, OPENS, SOCKET_ONLY, FdKind
from diag.parse.base import BadLines, ParseContext

_SOCKET, _FILE, _PIPE, _OTHER, _UNKNOWN = FdKind.SOCKET, FdKind.FILE, FdKind.PIPE, FdKind.OTHER, FdKind.UNKNOWN

# --- line grammar -------------------------------------------------------------------------
# [pid  N] (stderr, several tracees) or "N  " (-o FILE with -f / several -p); pids are < 2^22,
# so at most 7 digits (a 10-digit number is a unix-seconds stamp).
# Stamps: HH:MM:SS[.frac] (-t/-tt, --absolute-timestamps=format:time), secs[.frac]
# (-ttt, format:unix, any precision), "   0.000123" (-r). Then -t -r's "(+ 0.000123) ",
# -n's "[ 0] " and -i's "[00007f..] ".
_PFX = (r"(?:\[pid +(\d{1,10})\] |(\d{1,7}) +)?"
        r"(?:(?:(\d\d:\d\d:\d\d)| *(\d{1,12}))(?:\.(\d{1,9}))? )?"
        r"(?:\(\+ *\d+\.\d+\) )?(?:\[[^\]\n]*\] )*")
# Numbers have at most the digits a 64-bit value prints (a pid, fd or timestamp far fewer): a line
# with a longer one is not strace output, and int() of thousands of digits raises (and is slow).
_RET = r"(-?\d{1,20}|0x[0-9a-fA-F]{1,16}|\?)"
# After the value: an fd decoration (-y: "= 3</path>", a path of at most PATH_MAX escaped: the
# bound keeps the lazy search for its ">" from stacking one backtrack state per character of a
# long line, 280 bytes each: a 20 MB line took 6 GB), then errno / annotations:
# " EAGAIN (Resource ...)", " (Timeout)", " (flags O_RDONLY)", " (INJECTED)", " <unavailable>".
_TAIL = r'((?:<(?:[^"\\\n]|\\.){0,16384}?>)?(?: (?:E[A-Z0-9_]+ )?\(.*?\)| <unavailable>)*)'
_DUR = r"(?: <(\d{1,12})(?:\.(\d{1,9}))?>)?"
# The fast path, one regex for the three common lines: a complete call, an unfinished one
# ("read(3,  <unfinished ...>") and its resumption ("<... read resumed>"..., 1) = 1 <0.1>").
# The greedy args make the LAST ") = " that leaves a valid tail the split point, so ") = "
# inside a string argument does no harm.
# The lookahead after "NAME(" captures a decimal first argument and whether a -y decoration
# follows it, so that fd calls need no second match.
_FAST = re.compile(_PFX + r"(?:(\w+)\((?:(?=(\d{1,10})(?:(<)|[,) ]))|)(.*)(?:\) +=\ " + _RET + _TAIL + _DUR +
                   r"| ?<unfinished \.\.\.>)"
                   r"|<\.\.\. (\w+) resumed>(.*)\) +=\ " + _RET + _TAIL + _DUR + r")\n")
# The fastest path: the line most traces are made of (strace -f -ttt -T -o FILE, a complete call
# returning a number, maybe an errno): 0.8 µs a match against 1.45 µs for _FAST on real redis lines.
_PLAIN_PFX = r"(\d{1,7}) +(\d{9,12})\.(\d{1,9}) "
_PLAIN_END = r"\) += (-?\d{1,20})(?: (E[A-Z0-9_]+) \([^()\n]*\))? <(\d{1,12})\.(\d{1,9})>\n"
_PLAIN_ARG0 = r"(?=(\d{1,10})(?:(<)|[,) ])|)"       # a decimal first argument (the fd), as in _FAST
_PLAIN = re.compile(_PLAIN_PFX + r"(\w+)\(" + _PLAIN_ARG0 + r"(.*)" + _PLAIN_END)
# ... and the two halves of a call another thread's line interrupted (most lines of a busy
# threaded server's log): "NAME(args <unfinished ...>" and "<... NAME resumed>rest) = RET <DUR>"
_PLAIN_UNFINISHED = re.compile(_PLAIN_PFX + r"(\w+)\(" + _PLAIN_ARG0 + r"(.*?) ?<unfinished \.\.\.>\n")
_PLAIN_RESUMED = re.compile(_PLAIN_PFX + r"<\.\.\. (\w+) resumed>(.*)" + _PLAIN_END)
_PFX_BODY = re.compile(_PFX + r"(.*)\n")
_B_FULL = re.compile(r"(\w+|\?\?\?)\((.*)\) +=\ " + _RET + _TAIL + _DUR + r"\Z")
_B_UNFIN = re.compile(r"(\w+|\?\?\?)\((.*?) ?<unfinished \.\.\.>\Z")
_B_RESUMED = re.compile(r"<\.\.\. (\w+|\?\?\?) resumed>(.*)\Z")
_B_DETACHED = re.compile(r"(\w+|\?\?\?)\((.*?) *<detached \.\.\.>\Z")
_R_REST = re.compile(r"(.*)\) +=\ " + _RET + _TAIL + _DUR + r"\Z")
_R_DETACHED = re.compile(r"(.*?) *<detached \.\.\.>\Z")
_SIGNAL = re.compile(r"--- .* ---\Z")
_EXIT = re.compile(r"\+\+\+ (?:exited with|killed by|superseded by) .*\+\+\+\Z")
_MSG_PROC = re.compile(r"strace: Process (\d{1,10}) (attached|detached)(?: with (\d{1,10}) threads)?")
_EMBEDDED_MSG = re.compile(r"(\s*\S.*?)(strace: Process (\d{1,10}) (?:attached|detached)[^\n]*)\n")
_STARTS_CALL = re.compile(r"(?:\w+|\?\?\?)\(|<\.\.\. \w+ resumed>")
_ERRNO = re.compile(r" (E[A-Z0-9_]+) \(")
_ARG0 = re.compile(r"(?:0x([0-9a-fA-F]{1,16})|(-?\d{1,20}))(<)?")
_PAIR = re.compile(r"\[(\d{1,10})(?:<.*?>)?, (\d{1,10})")
_QUOTED = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"')     # "unrolled": no backtrack state per character
_RESUMING = re.compile(r"<\.\.\. resuming interrupted (\w+) \.\.\.>")
_HEX = re.compile(r"0x([0-9a-fA-F]+)")
_TLS = re.compile(r"\btls=0x([0-9a-fA-F]+)")
_NAME_PID = re.compile(r".\.(\d{1,7})\Z")
_HEAD_PFX = re.compile(r"(?:\[pid +(\d{1,10})\] |(\d{1,7}) +)")
_HEAD_CLONE = re.compile(r"(?:clone3?|v?fork)(?:\(.*\)| resumed>.*\)) += (\d{1,10})")
HEAD_LINES = 5000    # lines read ahead to find the threads `strace -p -f` attached

# --- syscall tables ----------------------------------------------------------------------
_PAIRS = {"pipe": _PIPE, "pipe2": _PIPE, "socketpair": _SOCKET}
_SPECIAL = (OPENS | NEW_SOCKET | NEW_OTHER | frozenset(_PAIRS) | CLONES | frozenset((
    "dup", "dup2", "dup3", "fcntl", "fcntl64", "close", "close_range", "exit", "exit_group",
    "set_tid_address", "gettid", "restart_syscall")))
A_FD, A_NBYTES, A_SPECIAL, A_CLONE, A_SOCK = 1, 2, 4, 8, 16
_ACT: dict[str, int] = {}
for _n in FD_FIRST | BYTE_COUNT | _SPECIAL:
    _ACT[_n] = (A_FD if _n in FD_FIRST else 0) | (A_NBYTES if _n in BYTE_COUNT else 0) | \
        (A_SPECIAL if _n in _SPECIAL else 0) | (A_CLONE if _n in CLONES else 0) | \
        (A_SOCK if _n in SOCKET_ONLY else 0)
CLONE_THREAD = 0x00010000
F_DUPFD_RAW = ("0", "1030", "0x406")
CLOSE_RANGE_CLOEXEC = 4

_SCALE = tuple(10 ** (9 - i) for i in range(10))   # by digits after the point (regexes allow <= 9)
_NS = 1_000_000_000
UNRES = -1          # placeholder tid of the unprefixed tracee while its pid is not known
MAX_JOIN = 4        # continuation lines a torn strace line may be glued from


def _frac_ns(frac: str) -> int:
    return int(frac) * _SCALE[len(frac)]


def decoration_kind(text: str, pos: int = 0) -> FdKind:
    """FdKind of a -y/-yy fd decoration starting at text[pos] (just after the '<')."""
    if text.startswith("/", pos):
        if text.startswith("/dev/", pos):
            if text.startswith("/dev/shm/", pos):
                return _FILE
            # -yy: "/dev/null<char 1:3>", "/dev/sda<block 8:0>"
            lt = text.find("<", pos)
            gt = text.find(">", pos)
            if 0 <= lt < gt:
                return _FILE if text.startswith("<block ", lt) else _OTHER
            return _OTHER
        if text.startswith("/memfd:", pos):
            return _OTHER
        return _FILE
    if text.startswith("pipe:", pos):
        return _PIPE
    if text.startswith("socket:", pos):
        return _SOCKET
    if text.startswith("anon_inode:", pos):
        return _OTHER
    # Protocol-named sockets: TCP:[..], TCPv6:[..], UDP:, UNIX-STREAM:, NETLINK:, UDPLITE:...
    colon = text.find(":[", pos, pos + 24)
    if colon > pos and text[pos].isupper():
        return _SOCKET
    return _OTHER


def path_kind(path: str) -> FdKind:
    """FdKind of a file opened by path without -y: /dev/* is a device (OTHER) but /dev/shm."""
    if path.startswith("/dev/") and not path.startswith("/dev/shm/"):
        return _OTHER
    return _FILE


class StraceParser:
    """strace text output (any of -f/-ff, -t..-ttt, -T, -y/-yy, -X ...) -> SyscallEvent."""

    format = "strace"
    clock = Clock.REALTIME

    _SNIFF = re.compile(
        _PFX + r"(?:(?:\w+|\?\?\?)\(.*\) +=\ (?:-?\d+|0x[0-9a-fA-F]+|\?)"
        r"|(?:\w+|\?\?\?)\(.* <(?:unfinished|detached) \.\.\.>\Z"
        r"|<\.\.\. \w+ resumed>"
        r"|--- (?:SIG[A-Z0-9+]+|stopped by) "
        r"|\+\+\+ (?:exited with -?\d+|killed by SIG\w+)"
        r"|strace: Process \d+ attached)")

    def sniff(self, head: str, name: str) -> bool:
        stripped = head.lstrip()
        if not stripped or stripped[0] in "{":
            return False
        lines = head.split("\n")
        if not head.endswith("\n") and len(lines) > 1:
            lines.pop()                 # the head may end mid-line
        seen = hits = 0
        for line in lines:
            if not line.strip():
                continue
            seen += 1
            if self._SNIFF.match(line):
                hits += 1
            if seen >= 50:
                break
        return hits > 0 and hits * 3 >= seen

    def parse(self, stream: IO[str], ctx: ParseContext) -> Iterator[SyscallEvent]:
        return _Run(ctx).run(stream)


def pid_from_name(path: str) -> int | None:
    """The pid strace -ff appends to its output file names (`NAME.PID`), if any."""
    m = _NAME_PID.search(os.path.basename(path))
    return int(m.group(1)) if m else None


class _Run:
    """The state of parsing one stream (tid->tgid map, fd tables, calls in flight...)."""

    def __init__(self, ctx: ParseContext) -> None:
        self.ctx = ctx
        self.off = ctx.offset_ns
        self.bad = BadLines(ctx, "strace")
        fpid = pid_from_name(ctx.path)
        base = fpid if fpid is not None else ctx.pid
        self.unres = base is None            # unprefixed tracee's pid not known yet
        self.unres_used = False
        self.base_tid = UNRES if base is None else base
        self.any_prefixed = False
        self.seen_call = False               # a syscall line was seen (for attach messages)
        self.tgid_of: dict[int, int] = {}
        self.fdtab: dict[int, dict[int, FdKind]] = {}
        # tid -> (name, start_ns, args so far, lineno, first argument if decimal, "<" if decorated)
        self.pending: dict[int, tuple] = {}
        self.pclone: dict[int, bool] = {}    # tid -> is_thread, for clones in flight
        self.live: dict[int, None] = {}      # ordered set of live tids
        self.announced: set[int] = set()     # tids from "strace: Process N attached" mid-trace
        self.attach_threads: list[list[int]] = []  # [[tgid, threads left]] from -p -f
        # tid -> tgid of threads the capture knew (strace -p attaches them without a clone)
        self.known_groups: dict[int, int] = dict(getattr(ctx, "thread_groups", None) or {})
        self.last_restart: dict[int, tuple] = {}
        self.last_tid = 0
        self.buf: list[tuple] = []           # held-back events while the pid is unknown
        self.out: list[SyscallEvent] = []
        # time
        self.tod_cache: dict[str, int] = {}
        self.day = 0
        self.last_sod: int | None = None
        self.date: _dt.date | None = None
        self.tz = ctx.tz
        self.rel_ns = 0
        self.warned: set[str] = set()
        # a torn line: (first lineno, its text so far, [(lineno, line) of its pieces], last lineno)
        self.torn: tuple[int, str, list, int] | None = None
        self.in_summary = False
        self.names: dict[str, tuple[str, int]] = {}
        self.ambiguous = 0
        self.attach_grouped = 0
        self.regrouped = 0
        self.blank = 0

    # --- the loop ----------------------------------------------------------------------
    def run(self, stream: IO[str]) -> Iterator[SyscallEvent]:
        stream = self._attached_threads(stream)
        fast = _FAST.match
        names = self.names                   # name -> (interned name, action bits)
        names_get = names.get
        out = self.out
        tgid_get = self.tgid_of.get
        pending = self.pending
        fdtab = self.fdtab
        tod_cache = self.tod_cache
        off = self.off
        arg0 = _ARG0.match
        errno_search = _ERRNO.search
        NS = _NS
        SCALE = _SCALE
        Ev = SyscallEvent
        UNKNOWN = _UNKNOWN
        FILE = _FILE
        SOCKET = _SOCKET
        deco_cache: dict[str, FdKind] = {}    # first 8 chars of a non-path decoration -> kind

        def deco_kind(args: str, e: int) -> FdKind:
            """The kind of an fd from its -y decoration at args[e]: a path is a file (but /dev/
            and memfd:), the rest (socket:[...], pipe:[...], anon_inode:...) by its first 8 chars."""
            c = args[e]
            if c == "/" and not args.startswith("/dev/", e) and not args.startswith("/memfd:", e):
                return FILE
            kind = deco_cache.get(args[e:e + 8]) if c != "/" else None
            if kind is None:
                kind = decoration_kind(args, e)
                if c != "/":
                    deco_cache[args[e:e + 8]] = kind
            return kind
        tids: dict[str, int] = {}
        tids_get = tids.get
        lineno = 0
        anyp = self.any_prefixed
        unres = self.unres
        last_tid = self.last_tid
        plain = _PLAIN.match
        plain_unf = _PLAIN_UNFINISHED.match
        plain_res = _PLAIN_RESUMED.match
        tgid_of = self.tgid_of
        errnos: dict[str, str] = {}
        untimed = 0                          # complete calls printed without -T's duration
        for lineno, line in enumerate(stream, 1):
            if anyp and not unres:
                # the three commonest lines of an `strace -f -ttt -T -o FILE` log, by their ending
                m = None
                if line.endswith("<unfinished ...>\n"):
                    m = plain_unf(line)
                    if m is not None:
                        p2, num, frac, name, fdn, fdd, args = m.groups()
                        tid = tids_get(p2)
                        if tid is None:
                            tid = tids[p2] = int(p2)
                        na = names_get(name)
                        if na is None:
                            na = names[name] = (sys.intern(name), _ACT.get(name, 0))
                        if tid in tgid_of and tid not in pending and not na[1] & A_CLONE:
                            last_tid = tid
                            pending[tid] = (na[0], int(num + frac) * SCALE[len(frac)] + off, args, lineno, fdn, fdd)
                            continue
                        m = None
                elif line.find("<... ", 0, 48) >= 0:
                    m = plain_res(line)
                    if m is not None:
                        p2, num, frac, name, more, ret, errno, ds, df = m.groups()
                        tid = tids_get(p2)
                        if tid is None:
                            tid = tids[p2] = int(p2)
                        p = pending.get(tid)
                        na = names_get(name)
                        if na is None:
                            na = names[name] = (sys.intern(name), _ACT.get(name, 0))
                        if p is not None and p[0] == name and tid in tgid_of and not na[1] & A_SPECIAL:
                            del pending[tid]
                            start, args, fdn, fdd = p[1], p[2], p[4], p[5]
                        else:
                            m = None
                else:
                    m = plain(line)
                    if m is not None:
                        p2, num, frac, name, fdn, fdd, args, ret, errno, ds, df = m.groups()
                        tid = tids_get(p2)
                        if tid is None:
                            tid = tids[p2] = int(p2)
                        na = names_get(name)
                        if na is None:
                            na = names[name] = (sys.intern(name), _ACT.get(name, 0))
                        if tid in tgid_of and not na[1] & A_SPECIAL:
                            start = int(num + frac) * SCALE[len(frac)] + off
                        else:
                            m = None
                if m is not None:
                    tgid = tgid_of[tid]
                    a = na[1]
                    last_tid = tid
                    reti = int(ret)
                    fd = None
                    kind = UNKNOWN
                    nbytes = None
                    if a:
                        if a & A_FD and fdn is not None:
                            fd = int(fdn)
                            if fdd is not None:
                                kind = deco_kind(args, len(fdn) + 1)
                            else:
                                t = fdtab.get(tgid)
                                if t is not None:
                                    kind = t.get(fd, UNKNOWN)
                                if kind is UNKNOWN and a & A_SOCK:
                                    kind = SOCKET
                                    if t is None:
                                        t = fdtab[tgid] = {}
                                    t[fd] = SOCKET
                        if a & A_NBYTES and reti >= 0:
                            nbytes = reti
                    if errno is not None:
                        errno = errnos.setdefault(errno, errno)
                    yield Ev(tgid, tid, na[0], start, int(ds + df) * SCALE[len(df)], reti, errno, fd, kind, nbytes)
                    continue
            m = fast(line)
            if m is None:
                self.last_tid = last_tid
                self._slow(lineno, line)
                last_tid, anyp, unres = self.last_tid, self.any_prefixed, self.unres
                if out:
                    yield from out
                    out.clear()
                continue
            (p1, p2, tod, num, frac, name, fdn, fdd, args, ret, tail, ds, df,
             rname, rargs, rret, rtail, rds, rdf) = m.groups()
            # who
            if p2 is not None:
                tid = tids_get(p2)
                if tid is None:
                    tid = tids[p2] = int(p2)
            elif p1 is not None:
                tid = tids_get(p1)
                if tid is None:
                    tid = tids[p1] = int(p1)
            elif anyp:
                self.last_tid = last_tid
                tid = self._unprefixed_tid()
            else:
                tid = self.base_tid
                if tid == UNRES:
                    self.unres_used = True
            if not anyp and (p1 is not None or p2 is not None):
                anyp = self.any_prefixed = True
            tgid = tgid_get(tid)
            if tgid is None:
                tgid = self._new_tid(tid, rname is not None and rname in CLONES)
                unres = self.unres
                if out:                              # events held back until the pid was known
                    yield from out
                    out.clear()
            last_tid = tid
            # when
            if tod is not None:
                start = tod_cache.get(tod)
                if start is None:
                    try:
                        start = self._tod_base(tod)
                    except _BadStamp:
                        self.bad.bad(lineno, line, "impossible time of day")
                        continue
                if frac is not None:
                    start += int(frac) * SCALE[len(frac)]
            elif num is not None and len(num) >= 9:
                start = (int(num + frac) * SCALE[len(frac)] if frac is not None else int(num) * NS) + off
            else:
                start = self._odd_stamp(num, frac)
            if name is None:
                # <... NAME resumed>: the end of a call whose start is pending
                name, ret, tail = rname, rret, rtail
                if rds is not None:
                    dur = int(rds + rdf) * SCALE[len(rdf)] if rdf is not None else int(rds) * NS
                else:
                    dur = None
                p = pending.pop(tid, None)
                if p is not None and p[0] == name:
                    if dur is None and (tod is not None or num is not None) and (ret != "?" or tail):
                        dur = start - p[1]           # no -T: the stamps' difference
                    start = p[1]
                    args = p[2]                      # the arguments are args + more
                    more = rargs
                    fdn = p[4]
                    fdd = p[5]
                else:
                    if p is not None:
                        self._cut(tid, p)
                        if out:
                            yield from out
                            out.clear()
                    if dur is not None:
                        start -= dur
                    args = more = ""             # its first argument was before the trace began
            elif ret is None:
                # NAME(args <unfinished ...>
                na = names_get(name)
                if na is None:
                    na = names[name] = (sys.intern(name), _ACT.get(name, 0))
                name = na[0]
                old = pending.pop(tid, None)
                if old is not None:
                    self._cut(tid, old)
                    if out:
                        yield from out
                        out.clear()
                pending[tid] = (name, start, args, lineno, fdn, fdd)
                if na[1] & A_CLONE:
                    self.pclone[tid] = _is_thread(name, args)
                continue
            else:
                more = ""
                if ds is not None:
                    dur = int(ds + df) * SCALE[len(df)] if df is not None else int(ds) * NS
                else:
                    dur = None
                    untimed += 1
            # result
            c = ret[0]
            if c == "?":
                reti = None
                errno = None
                if tail:
                    em = errno_search(tail)
                    if em is not None:
                        errno = em.group(1)
                        if errno.startswith("ERESTART"):
                            self.last_restart[tid] = (name, args)
            elif c == "-" and ret == "-1":
                reti = -1
                errno = None
                if tail:
                    em = errno_search(tail)
                    if em is not None:
                        errno = em.group(1)
            else:
                reti = int(ret, 16) if "x" in ret else int(ret)
                errno = None
            na = names_get(name)
            if na is None:
                na = names[name] = (sys.intern(name), _ACT.get(name, 0))
            name, a = na
            fd = None
            kind = UNKNOWN
            nbytes = None
            if a:
                if a & A_FD:
                    if fdn is not None:
                        fd = int(fdn)
                        e = len(fdn) + 1 if fdd is not None else 0
                    else:
                        fm = arg0(args)          # "0x3" (-e raw), -1, or a resumed call's args
                        if fm is not None:
                            h, d, deco = fm.groups()
                            fd = int(d) if d is not None else int(h, 16)
                            e = fm.end() if deco is not None else 0
                    if fd is not None:
                        if e:
                            kind = deco_kind(args, e)
                        else:
                            t = fdtab.get(tgid)
                            if t is not None:
                                kind = t.get(fd, UNKNOWN)
                            if kind is UNKNOWN and a & A_SOCK and fd >= 0:
                                # recvfrom, sendto, accept...: only sockets have them (an fd
                                # opened before the trace began, strace without -y)
                                kind = SOCKET
                                if t is None:
                                    t = fdtab[tgid] = {}
                                t[fd] = SOCKET
                if a & A_NBYTES and reti is not None and reti >= 0:
                    nbytes = reti
                if a & A_SPECIAL:
                    name, fd, kind, nbytes = self._special(name, tid, tgid, args + more, reti, tail, fd, kind,
                                                           nbytes)
                    unres = self.unres
                    if tid == UNRES and not unres:   # set_tid_address/gettid named the tracee
                        tid = last_tid = self.base_tid
                    tgid = tgid_get(tid, tgid)
                    if out:
                        yield from out
                        out.clear()
            if unres:
                self._emit(tgid, tid, name, start, dur, reti, errno, fd, kind, nbytes)
            else:
                yield Ev(tgid, tid, name, start, dur, reti, errno, fd, kind, nbytes)
        self.last_tid = last_tid
        self.ctx.meta["complete_calls_without_duration"] = untimed
        self._finish(lineno)
        if out:
            yield from out
            out.clear()

    # --- who -------------------------------------------------------------------------
    def _attached_threads(self, stream: IO[str]):
        """`strace -f -p PID -o FILE` attaches every thread of PID, but its "attached with K
        threads" message goes to stderr, not FILE: the threads print calls with no clone creating
        them. Read ahead: when a task's first line resumes a call begun before the trace (the
        mark of an attach), the tids of the first HEAD_LINES lines that no clone/fork there
        returned are taken as threads of one process, the smallest tid (the main thread's, which is the
        pid) or ctx.pid. Not done for launch traces (the first call is execve: every other task
        comes from a clone), -ff files, or when the capture named the threads."""
        if self.known_groups or pid_from_name(self.ctx.path) is not None:
            return stream
        head: list[str] = []
        for line in stream:
            head.append(line)
            if len(head) >= HEAD_LINES:
                break
        seen: dict[int, None] = {}
        created: set[int] = set()
        first_call = True
        midway = False           # a thread was inside a call when strace attached
        for line in head:
            m = _HEAD_PFX.match(line)
            if m is None:
                if "strace: Process " in line or _STARTS_CALL.search(line[:40]):
                    # stderr output: its attach messages and unprefixed lines say who is who
                    return itertools.chain(head, stream)
                continue
            tid = int(m.group(1) or m.group(2))
            body = line[m.end():]
            if first_call and (body.startswith("execve(") or " execve(" in body[:40]):
                return itertools.chain(head, stream)
            first_call = False
            if tid not in seen:
                seen[tid] = None
                if "<... resuming interrupted" in body or ("resumed>" in body and "<... " in body[:40]):
                    midway = True
            c = _HEAD_CLONE.search(body)
            if c is not None:
                created.add(int(c.group(1)))
        orphans = [t for t in seen if t not in created]
        if midway and len(orphans) >= 2:
            tgid = self.ctx.pid if self.ctx.pid in orphans else min(orphans)
            self.known_groups = {t: tgid for t in orphans}
            self.attach_grouped = len(orphans)
        return itertools.chain(head, stream)

    def _unprefixed_tid(self) -> int:
        """The tid of an unprefixed line in a trace that also has prefixed ones (strace to
        stderr omits the prefix while a single tracee is left)."""
        live = self.live
        if len(live) == 1:
            for t in live:
                return t
        last = self.last_tid
        if not live or last in live:
            # no one else printed since (e.g. the parent right after `clone() = N`, before
            # strace attached N), or "+++ exited" after exit_group(0) = ?
            return last
        self.ambiguous += 1
        return last

    def _new_tid(self, tid: int, clone_resume: bool) -> int:
        """First sight of `tid`: decide its thread group. Returns the tgid."""
        self.seen_call = True
        if tid == UNRES:
            self.tgid_of[UNRES] = UNRES
            self.live[UNRES] = None
            return UNRES
        if self.unres and tid != self.base_tid:
            if not self.unres_used:
                self.unres = False           # every line so far was prefixed: no placeholder
            elif clone_resume and UNRES in self.pclone:
                self._resolve(tid)           # the placeholder's clone returning: that's it
                return self.tgid_of[tid]
            elif UNRES not in self.pclone and tid not in self.announced:
                self._resolve(tid)           # a new tid nobody created: the placeholder
                return self.tgid_of[tid]
        tgid = tid
        parent = None
        pc = self.pclone
        known = self.known_groups.pop(tid, None) if self.known_groups else None
        if known is not None:
            tgid = known
        elif pc:
            # Created by a clone still in flight (strace may print the child first).
            groups = {(self.tgid_of.get(p, p) if th else None) for p, th in pc.items()}
            if len(groups) == 1:
                g = next(iter(groups))
                if g is not None:
                    tgid = g
                elif len(pc) == 1:
                    parent = next(iter(pc))
            else:
                self.ambiguous += 1
        elif self.attach_threads:
            # strace -p N -f: "Process N attached with K threads"
            if len(self.attach_threads) == 1:
                rec = self.attach_threads[0]
                if tid != rec[0] and rec[1] > 0:
                    tgid = rec[0]
                    rec[1] -= 1
                    if rec[1] <= 0:
                        self.attach_threads.clear()
        self.tgid_of[tid] = tgid
        self.live[tid] = None
        if tgid == tid:
            if parent is not None:
                self.fdtab[tid] = dict(self.fdtab.get(self.tgid_of.get(parent, parent), ()))
            else:
                self.fdtab.pop(tid, None)    # a reused pid starts without the old fds
        return tgid

    def _register_child(self, parent: int, ptgid: int, child: int, is_thread: bool) -> None:
        """A clone/fork returned `child` in `parent`."""
        prev = self.tgid_of.get(child)
        new = ptgid if is_thread else child
        if prev is not None and prev != new:
            self.regrouped += 1             # the early guess was wrong; fixed from here on
        self.tgid_of[child] = new
        self.live[child] = None
        if not is_thread and prev != child:
            self.fdtab[child] = dict(self.fdtab.get(ptgid, ()))

    def _resolve(self, tid: int) -> None:
        """The placeholder tracee turned out to be `tid`: rename it and release held events."""
        self.unres = False
        self.base_tid = tid
        for d in (self.tgid_of, self.pending, self.pclone, self.live, self.last_restart, self.fdtab):
            if UNRES in d:
                v = d.pop(UNRES)
                if d is self.fdtab and tid in d:
                    v.update(d[tid])
                d[tid] = v
        for t, g in self.tgid_of.items():
            if g == UNRES:
                self.tgid_of[t] = tid
        if self.tgid_of.get(tid) == UNRES or tid not in self.tgid_of:
            self.tgid_of[tid] = tid
        if self.last_tid == UNRES:
            self.last_tid = tid
        buf, self.buf = self.buf, []
        out = self.out
        for (pid, t, *rest) in buf:
            out.append(SyscallEvent(tid if pid == UNRES else pid, tid if t == UNRES else t, *rest))

    def _emit(self, pid, tid, name, start, dur, ret, errno, fd, kind, nbytes) -> None:
        if self.unres:
            self.buf.append((pid, tid, name, start, dur, ret, errno, fd, kind, nbytes))
        else:
            self.out.append(SyscallEvent(pid, tid, name, start, dur, ret, errno, fd, kind, nbytes))

    # --- when ------------------------------------------------------------------------
    def _warn_once(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            self.ctx.warn(message)

    def _tod_base(self, tod: str) -> int:
        """ns since the epoch (+ offset) of HH:MM:SS on the trace's current day."""
        if self.date is None:
            if self.ctx.date is not None:
                self.date = self.ctx.date
            else:
                self.date = _dt.date(1970, 1, 1)
                if self.tz is None:
                    self.tz = _dt.timezone.utc
                self.ctx.uncertainty_ns = None
                self.ctx.clock = Clock.RELATIVE
                self._warn_once("date", f"{self.ctx.path}: time-of-day timestamps (strace -t/-tt) but no date "
                                        "given; using 1970-01-01 UTC, so times are only relative within this "
                                        "trace and not aligned with other streams (give the capture date)")
        h, mi, s = int(tod[0:2]), int(tod[3:5]), int(tod[6:8])
        if h > 23 or mi > 59 or s > 60:
            raise _BadStamp(tod)
        sod = h * 3600 + mi * 60 + s
        day = self.day
        cache = True
        if self.last_sod is not None:
            if sod < self.last_sod - 43200:
                day = self.day = self.day + 1    # time went back > 12 h: past midnight
                self.tod_cache.clear()
            elif sod > self.last_sod + 43200 and day > 0:
                day -= 1                         # a late line from just before midnight
                cache = False
        if cache:
            self.last_sod = sod
        extra = 0
        if s >= 60:                              # leap second
            s, extra = 59, s - 59
        d = self.date + _dt.timedelta(days=day)
        epoch = int(_dt.datetime(d.year, d.month, d.day, h, mi, s, tzinfo=self.tz).timestamp()) + extra
        ns = epoch * _NS + self.off
        if cache:
            self.tod_cache[tod] = ns
        return ns

    def _odd_stamp(self, num: str | None, frac: str | None) -> int:
        """No stamp at all, or a -r relative one."""
        ctx = self.ctx
        if num is None:
            self._warn_once("nostamp", f"{ctx.path}: the trace has no timestamps (strace without -t/-tt/-ttt): "
                                       "every call starts at 0, only durations are usable")
            ctx.uncertainty_ns = None
            ctx.clock = Clock.NONE
            return 0
        self._warn_once("relative", f"{ctx.path}: relative timestamps (strace -r): times are summed from the "
                                    "first line and not aligned with other streams")
        ctx.uncertainty_ns = None
        ctx.clock = Clock.RELATIVE
        self.rel_ns += int(num) * _NS + (_frac_ns(frac) if frac else 0)
        return self.rel_ns

    def _stamp(self, tod, num, frac) -> int:
        if num is not None and len(num) >= 9:
            return int(num) * _NS + (_frac_ns(frac) if frac else 0) + self.off
        if tod is not None:
            base = self.tod_cache.get(tod)
            if base is None:
                base = self._tod_base(tod)
            return base + (_frac_ns(frac) if frac else 0)
        return self._odd_stamp(num, frac)

    # --- fd tables and process bookkeeping ------------------------------------------------
    def _table(self, tgid: int) -> dict[int, FdKind]:
        t = self.fdtab.get(tgid)
        if t is None:
            t = self.fdtab[tgid] = {}
        return t

    def _special(self, name, tid, tgid, args, ret, tail, fd, kind, nbytes):
        """Calls that change the fd table or the process tree. Returns (name, fd, kind, nbytes)."""
        ok = ret is not None and ret >= 0
        if name in CLONES:
            pending_thread = self.pclone.pop(tid, None)
            if ok and ret > 0:
                is_thread = _is_thread(name, args) or bool(pending_thread)
                self._register_child(tid, tgid, ret, is_thread)
                if is_thread:
                    m = _TLS.search(args)
                    if m is not None:
                        # x86-64 glibc: a thread's TLS block is its struct pthread, whose address
                        # is its pthread id (what py-spy chrometrace names threads by)
                        self.ctx.pthread_ids[int(m.group(1), 16)] = ret
        elif name in OPENS:
            if ok:
                if tail.startswith("<"):
                    k = decoration_kind(tail, 1)
                else:
                    q = _QUOTED.search(args)
                    k = path_kind(q.group(1)) if q else _FILE
                self._table(tgid)[ret] = k
        elif name in NEW_SOCKET:
            if ok:
                self._table(tgid)[ret] = _SOCKET
        elif name in NEW_OTHER:
            if ok:
                self._table(tgid)[ret] = _OTHER
        elif name in _PAIRS:
            if ret == 0:
                m = _PAIR.search(args)
                if m:
                    t = self._table(tgid)
                    k = _PAIRS[name]
                    t[int(m.group(1))] = k
                    t[int(m.group(2))] = k
        elif name in ("dup", "dup2", "dup3"):
            if ok:
                self._table(tgid)[ret] = kind
        elif name in ("fcntl", "fcntl64"):
            if ok:
                second = args.split(", ", 2)[1:2]
                if second and (second[0].startswith("F_DUPFD") or second[0] in F_DUPFD_RAW):
                    self._table(tgid)[ret] = kind
        elif name == "close":
            if fd is not None:
                t = self.fdtab.get(tgid)
                if t:
                    t.pop(fd, None)
        elif name == "close_range":
            if ret == 0:
                parts = [p.strip() for p in args.split(",")]
                try:
                    lo, hi = int(parts[0], 0), int(parts[1], 0)
                    flags = parts[2] if len(parts) > 2 else "0"
                except (ValueError, IndexError):
                    lo = hi = -1
                    flags = ""
                if lo >= 0 and "CLOEXEC" not in flags and not (flags.isdigit() and int(flags) & CLOSE_RANGE_CLOEXEC):
                    t = self.fdtab.get(tgid)
                    if t:
                        for f in [f for f in t if lo <= f <= hi]:
                            del t[f]
        elif name == "exit":
            if ret is None:
                self.live.pop(tid, None)
        elif name == "exit_group":
            if ret is None:
                for t in [t for t in self.live if self.tgid_of.get(t) == tgid]:
                    self.live.pop(t, None)
        elif name in ("set_tid_address", "gettid"):
            if tid == UNRES and self.unres and ok and ret > 0:
                self._resolve(ret)
        elif name == "restart_syscall":
            m = _RESUMING.search(args)
            if m:
                name = sys.intern(m.group(1))
                prev = self.last_restart.pop(tid, None)
                a = _ACT.get(name, 0)
                if prev is not None and prev[0] == name and a & A_FD:
                    fm = _ARG0.match(prev[1])
                    if fm is not None:
                        h, d, deco = fm.groups()
                        fd = int(d) if d is not None else int(h, 16)
                        if deco is not None:
                            kind = decoration_kind(prev[1], fm.end())
                        else:
                            kind = self.fdtab.get(tgid, {}).get(fd, _UNKNOWN)
                            if kind is _UNKNOWN and a & A_SOCK and fd >= 0:
                                kind = self._table(tgid)[fd] = _SOCKET
                if a & A_NBYTES and ok:
                    nbytes = ret
        return name, fd, kind, nbytes

    def _task_gone(self, tid: int) -> None:
        """+++ exited/killed +++ for tid: its call in flight ends unfinished."""
        p = self.pending.pop(tid, None)
        if p is not None:
            self._cut(tid, p)
        self.live.pop(tid, None)
        self.pclone.pop(tid, None)
        self.last_restart.pop(tid, None)
        self.tgid_of.pop(tid, None)

    def _cut(self, tid: int, p: tuple) -> None:
        """Emit a pending call whose end the trace does not show."""
        name, start, args = p[0], p[1], p[2]
        tgid = self.tgid_of.get(tid, tid)
        fd, kind = self._fd_of(name, tgid, args)
        self._emit(tgid, tid, name, start, None, None, None, fd, kind, None)

    def _fd_of(self, name: str, tgid: int, args: str) -> tuple[int | None, FdKind]:
        if not _ACT.get(name, 0) & A_FD:
            return None, _UNKNOWN
        fm = _ARG0.match(args)
        if fm is None:
            return None, _UNKNOWN
        h, d, deco = fm.groups()
        fd = int(d) if d is not None else int(h, 16)
        if deco is not None:
            return fd, decoration_kind(args, fm.end())
        kind = self.fdtab.get(tgid, {}).get(fd, _UNKNOWN)
        if kind is _UNKNOWN and name in SOCKET_ONLY and fd >= 0:
            kind = self._table(tgid)[fd] = _SOCKET
        return fd, kind

    # --- everything but a complete call --------------------------------------------------
    def _slow(self, lineno: int, line: str) -> None:
        # A torn line is (first lineno, its text so far, [(lineno, line) of its pieces], last lineno).
        torn = self.torn
        if torn is not None and torn[3] != lineno - 1:
            self._torn_bad()                 # the line after the torn one was fine on its own
            torn = None
        if not line.endswith("\n"):
            # The last line of a capture cut mid-write: skipped, reported as truncation.
            if torn is not None:
                if self._line(torn[0], torn[1] + line + "\n"):
                    self.torn = None
                    return
                self._torn_bad()
            self.bad.bad(lineno, line)
            return
        if line == "\n" or line.isspace():
            self.blank += 1
            return
        if torn is not None and line.startswith("strace: "):
            self._message(line[:-1])         # "strace: Process N attached" inside a torn line
            self.torn = (torn[0], torn[1], torn[2], lineno)
            return
        if self._line(lineno, line):
            if torn is not None:
                self._torn_bad()
            return
        if torn is None and self.pending:
            # strace -z/-Z/-e status=...: the end of the call just left unfinished comes as a
            # bare "...) = ret" line, without "<... NAME resumed>"
            m = _R_REST.match(line[:-1])
            if m is not None:
                for tid, p in self.pending.items():
                    if p[3] == lineno - 1:
                        del self.pending[tid]
                        self._finish_pending(tid, p, None, m)
                        return
        if torn is not None:
            # Glue: the target's output or a strace message tore the previous line.
            joined = torn[1] + line
            group = torn[2] + [(lineno, line)]
            if self._line(torn[0], joined):
                self.torn = None
                return
            if len(group) <= MAX_JOIN:
                self.torn = (torn[0], joined[:-1], group, lineno)
                return
            self._torn_bad()
        m = _EMBEDDED_MSG.match(line)
        if m is not None:
            self._message(m.group(2))
            self.torn = (lineno, m.group(1), [(lineno, line)], lineno)
            return
        if self.in_summary:
            return
        pm = _PFX_BODY.match(line)
        if pm is not None and _STARTS_CALL.match(pm.group(6)):
            self.torn = (lineno, line[:-1], [(lineno, line)], lineno)
            return
        self.bad.bad(lineno, line)

    def _torn_bad(self) -> None:
        torn = self.torn
        self.torn = None
        if torn is not None:
            for ln, text in torn[2]:
                self.bad.bad(ln, text, "incomplete strace line")

    def _message(self, msg: str) -> None:
        m = _MSG_PROC.match(msg)
        if m is None:
            return
        pid = int(m.group(1))
        if m.group(2) == "detached":
            if pid in self.live or pid == self.base_tid:
                self.live.pop(pid, None)
            return
        if not self.seen_call:
            # strace -p N: the tracee of the unprefixed lines
            if self.unres and not self.any_prefixed and self.base_tid == UNRES:
                self._resolve(pid)
            if m.group(3):
                self.attach_threads.append([pid, int(m.group(3)) - 1])
            self.live[pid] = None
        else:
            self.announced.add(pid)

    def _line(self, lineno: int, text: str) -> bool:
        try:
            return self._parse_line(lineno, text)
        except _BadStamp:
            return False                     # an impossible time of day: not strace's line

    def _parse_line(self, lineno: int, text: str) -> bool:
        """Parse one (possibly glued) line that the fast path did not take. True if it is
        strace output (a call, a signal, an exit, a message...)."""
        pm = _PFX_BODY.match(text)
        if pm is None:
            return False
        p1, p2, tod, num, frac, body = pm.groups()
        c = body[:1]
        if c == "s" and body.startswith("strace: "):
            self._message(body)
            return True
        if c == "-" and _SIGNAL.match(body):
            return True
        if c == "[" and body.startswith("[ Process PID="):
            return True
        if c == " " and body.startswith(" > "):
            return True                      # -k stack frame
        if c == "%" and body.startswith("% time"):
            self.in_summary = True           # -c/-C summary table
            return True
        if c == "+":
            if not _EXIT.match(body):
                return False
            tid = self._tid_of(p1, p2)
            self._task_gone(tid)
            return True
        if c == "<":
            m = _B_RESUMED.match(body)
            if m is None:
                return False
            self._resumed(p1, p2, tod, num, frac, m.group(1), m.group(2))
            return True
        m = _B_UNFIN.match(body)
        if m is not None:
            self.seen_call = True
            tid = self._tid_of(p1, p2)
            if tid not in self.tgid_of:
                self._new_tid(tid, False)
            self.last_tid = tid
            name = sys.intern(m.group(1))
            start = self._stamp(tod, num, frac)
            old = self.pending.pop(tid, None)
            if old is not None:
                self._cut(tid, old)
            self.pending[tid] = (name, start, m.group(2), lineno, None, None)
            if name in CLONES:
                self.pclone[tid] = _is_thread(name, m.group(2))
            return True
        m = _B_FULL.match(body)
        if m is not None:
            self.seen_call = True
            name, args, ret, tail, ds, df = m.groups()
            tid = self._tid_of(p1, p2)
            tgid = self.tgid_of.get(tid)
            if tgid is None:
                tgid = self._new_tid(tid, False)
            self.last_tid = tid
            self._complete(tid, tgid, sys.intern(name), self._stamp(tod, num, frac), args, ret, tail,
                           _dur(ds, df))
            return True
        # the "<detached ...>" patterns backtrack through a run of blanks once per character
        # before it (quadratic time, and memory: a 20 MB line took 6 GB): tried only when the
        # marker is there
        m = _B_DETACHED.match(body) if "<detached" in body else None
        if m is not None:
            self.seen_call = True
            tid = self._tid_of(p1, p2)
            tgid = self.tgid_of.get(tid)
            if tgid is None:
                tgid = self._new_tid(tid, False)
            self._cut(tid, (sys.intern(m.group(1)), self._stamp(tod, num, frac), m.group(2), lineno, None, None))
            return True
        return False

    def _tid_of(self, p1, p2) -> int:
        if p1 is not None or p2 is not None:
            self.any_prefixed = True
            return int(p1 or p2)
        if self.any_prefixed:
            return self._unprefixed_tid()
        if self.base_tid == UNRES:
            self.unres_used = True
        return self.base_tid

    def _resumed(self, p1, p2, tod, num, frac, name, rest) -> None:
        self.seen_call = True
        tid = self._tid_of(p1, p2)
        name = sys.intern(name)
        if tid not in self.tgid_of:
            self._new_tid(tid, name in CLONES)
        self.last_tid = tid
        end = self._stamp(tod, num, frac)
        p = self.pending.pop(tid, None)
        if p is not None and p[0] != name:
            self._cut(tid, p)
            p = None
        m = _R_REST.match(rest)
        if m is None:
            if p is not None and "<detached" in rest and _R_DETACHED.match(rest):
                self._cut(tid, p)
            return
        if p is None:
            # its start was before the trace began: placed by its duration, first argument unknown
            more, ret, tail, ds, df = m.groups()
            dur = _dur(ds, df)
            start = end - dur if dur is not None else end
            self._complete(tid, self.tgid_of.get(tid, tid), name, start, "", ret, tail, dur)
            return
        self._finish_pending(tid, p, end if (tod is not None or num is not None) else None, m)

    def _finish_pending(self, tid: int, p: tuple, end: int | None, m: re.Match) -> None:
        """The end (`_R_REST` match `m`, at stamp `end` if any) of the pending call `p`."""
        name, start, args = p[0], p[1], p[2]
        more, ret, tail, ds, df = m.groups()
        dur = _dur(ds, df)
        if dur is None and end is not None and (ret != "?" or tail):
            dur = end - start                # no -T: the stamps' difference
        self._complete(tid, self.tgid_of.get(tid, tid), name, start, args + more, ret, tail, dur)

    def _complete(self, tid, tgid, name, start, args, ret, tail, dur) -> None:
        """One finished call from the slow path (same rules as the fast path)."""
        c = ret[0]
        errno = None
        if c == "?":
            reti = None
        else:
            reti = int(ret, 16) if ret[1:2] in ("x", "X") else int(ret)
        if (reti is None or reti == -1) and tail:
            em = _ERRNO.search(tail)
            if em is not None:
                errno = em.group(1)
                if reti is None and errno.startswith("ERESTART"):
                    self.last_restart[tid] = (name, args)
        a = _ACT.get(name, 0)
        fd, kind = self._fd_of(name, tgid, args) if a & A_FD else (None, _UNKNOWN)
        nbytes = reti if a & A_NBYTES and reti is not None and reti >= 0 else None
        if a & A_SPECIAL:
            name, fd, kind, nbytes = self._special(name, tid, tgid, args, reti, tail, fd, kind, nbytes)
            if tid == UNRES and not self.unres:
                tid = self.last_tid = self.base_tid
            tgid = self.tgid_of.get(tid, tgid)
        self._emit(tgid, tid, name, start, dur, reti, errno, fd, kind, nbytes)

    # --- the end ---------------------------------------------------------------------
    def _finish(self, total: int) -> None:
        ctx = self.ctx
        if self.torn is not None:
            self._torn_bad()
        if self.pending:
            n = len(self.pending)
            first = min(p[3] for p in self.pending.values())
            for tid, p in list(self.pending.items()):
                self._cut(tid, p)
            self.pending.clear()
            ctx.warn(f"{ctx.path}:{first}: {n} call(s) still unfinished at the end of the trace; "
                     "kept without a duration")
        if self.unres and self.buf:
            self._resolve(0)
            ctx.warn(f"{ctx.path}: lines without a pid prefix and no pid given or found in the trace: "
                     "their calls are attributed to pid 0 (give the traced pid)")
        if self.ambiguous:
            ctx.warn(f"{ctx.path}: {self.ambiguous} line(s) could not be attributed to a thread for sure "
                     "(no pid prefix with several tracees alive); used the last one seen")
        if self.regrouped:
            ctx.warn(f"{ctx.path}: {self.regrouped} thread(s) printed calls before their creating clone "
                     "returned and were first put in the wrong process")
        good = total - self.bad.count - self.blank
        self.bad.finish(total, good)


class _BadStamp(ValueError):
    """A time of day no clock shows (25:61:00): the line is damaged, not strace's."""


def _dur(ds: str | None, df: str | None) -> int | None:
    if ds is None:
        return None
    return int(ds) * _NS + (int(df) * _SCALE[len(df)] if df else 0)


def _is_thread(name: str, args: str) -> bool:
    """Does this clone/clone3 create a thread (CLONE_THREAD) rather than a process?"""
    if name not in ("clone", "clone2", "clone3"):
        return False
    if "CLONE_THREAD" in args:
        return True
    i = args.find("flags=")
    if i >= 0:
        m = _HEX.match(args, i + 6)          # -X raw: flags=0x3d0f00
    elif name != "clone3":
        m = _HEX.match(args)                 # -e raw=clone: the flags are the first argument
    else:
        return False                         # -e raw=clone3: only a pointer to the flags
    return m is not None and bool(int(m.group(1), 16) & CLONE_THREAD)
