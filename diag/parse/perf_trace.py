"""`perf trace` text output -> SyscallEvent (format "perf-trace").

What `perf trace` (perf 6.x, `-o FILE` or its stderr) prints, one call per line:

    640.399 ( 2.010 ms): python3/21341 fsync(fd: 4</var/tmp/x.bin>)            = 0
    657.375 (         ): python3/21341 futex(uaddr: 0x7f.., op: WAIT|PRIVATE_FLAG, val: 2) ...
    657.375 ( 1.166 ms): python3/21341  ... [continued]: futex())             = 0
          ? (         ): python3/21390  ... [continued]: clone3())            = 0
    633.665 ( 0.021 ms): python3/21341 openat(dfd: CWD, filename: 0xe33e5e80, flags: RDONLY) = 4
    635.001 ( 0.017 ms): python3/21341 access(filename: 0x4a3202a0, mode: R) = -1 ENOENT (No such file or directory)

- Time: ms since the first event (the default: a clock of its own, RELATIVE), or, with
  `-T/--time`, perf's clock in ms (absolute: the "perf" domain). Told apart by the first stamp:
  relative traces start near 0. Durations are in ms with µs digits.
- `COMM/TID`: no pid. A thread made by a traced clone joins its parent's process until it
  execs; threads the trace never saw created (`perf trace -p PID`) belong to the first
  process seen, or to --pid.
- A call that blocks is printed twice: `NAME(args) ...` when it starts, then
  `... [continued]: NAME())  = RET` with the start stamp and the whole duration; `?` for a call
  begun before the trace.
- Arguments are named; perf leaves out those that are zero (`read(buf: .., count: 4)` is a
  read of fd 0). `fd: 4</path>`, `<socket:[N]>`, `<pipe:[N]>`, `<anon_inode:..>` say what an fd
  is (read as strace's -y decorations); without them, an fd table learned from the trace
  (socket/accept, open, epoll/eventfd..., dup, close) and the calls that only exist on sockets.
- Errors: `= -1 ENOENT (...)` (strace's convention); `= ?` for calls that never returned.
- Lines that are not calls (`LOST N events!`, -S summaries, --call-graph frames) are skipped;
  a truncated last line is a warning, many unknown lines an error (diag.parse.base.BadLines).
"""
from __future__ import annotations

import re
import sys
from typing import IO, Iterator

from diag.model import Clock, SyscallEvent
from diag.parse.base import BadLines, ParseContext
from diag.parse.strace import decoration_kind
from diag.syscalls import (BYTE_COUNT, CLONES, DUPS, FD_FIRST, NEW_OTHER, NEW_SOCKET, OPENS, SOCKET_ONLY,
                           FdKind)

# Numbers are bounded to what 64 bits print (as in diag/parse/perf.py): a longer one is damage,
# and int() of thousands of digits raises.
_LINE = re.compile(
    r"^\s*(?:(?P<ts>\d{1,15}\.\d{1,9})|\?) \(\s*(?:(?P<dur>\d{1,15}\.\d{1,9}) ms)?\s*\): "
    r"(?P<comm>\S.*?)/(?P<tid>\d{1,10}) +"
    r"(?:\.\.\. \[continued\]: (?P<cname>\w+)\(\)\)|(?P<name>\w+)\((?P<args>.*?)\))"
    r"\s*(?:= ?(?P<ret>-?\d{1,20}|0x[0-9a-f]{1,16}|\?)?(?: (?P<errno>E[A-Z0-9_]+))?.*|(?P<unf>\.\.\.))\s*$")
_FD_ARG = re.compile(r"(?:fd|epfd|ufd|fd_in|oldfd): (?P<fd>-?\d{1,10})(?:<(?P<deco>[^>]*)>)?")
_SKIP = re.compile(r"^\s*(?:LOST \d+ events!|Summary of events:|\S+ \(\d+\), \d+ events|syscall +calls|-{5,}|"
                   r"\w+ +\d+ +\d+ |\[|[0-9a-f]{6,} |\s{8,}\S)")
# A first stamp above this (ms) is perf's clock (-T), not the time since the first event.
ABSOLUTE_MIN_MS = 60_000.0


class PerfTraceParser:
    format = "perf-trace"
    clock = Clock.RELATIVE

    def sniff(self, head: str, name: str) -> bool:
        lines = [ln for ln in head.split("\n")[:-1] if ln.strip()][:50]
        if not lines:
            return False
        hits = sum(1 for ln in lines if _LINE.match(ln))
        return hits > 0 and hits * 3 >= len(lines)

    def parse(self, stream: IO[str], ctx: ParseContext) -> Iterator[object]:
        bad = BadLines(ctx, "perf trace")
        tgid_of: dict[int, int] = {}
        fdtab: dict[int, dict[int, FdKind]] = {}
        pending: dict[int, tuple[str, str]] = {}       # tid -> (name, args) of a call left open
        first_pid = ctx.pid
        base: float | None = None
        total = good = 0
        off = ctx.offset_ns
        for lineno, line in enumerate(stream, 1):
            total += 1
            if not line.strip():
                good += 1
                continue
            m = _LINE.match(line)
            if m is None or not line.endswith("\n"):
                if line.endswith("\n") and _SKIP.match(line):
                    good += 1
                else:
                    bad.bad(lineno, line)
                continue
            good += 1
            g = m.group
            tid = int(g("tid"))
            tgid = tgid_of.get(tid)
            if tgid is None:
                if first_pid is None:
                    first_pid = tid
                tgid = tgid_of[tid] = first_pid
            ts = g("ts")
            if ts is not None and base is None:
                base = float(ts)
                ctx.meta["perf_trace_time"] = "absolute" if base >= ABSOLUTE_MIN_MS else "relative"
            if g("unf") is not None:
                pending[tid] = (sys.intern(g("name")), g("args"))
                continue
            if g("cname") is not None:
                name = sys.intern(g("cname"))
                p = pending.pop(tid, None)
                args = p[1] if p is not None and p[0] == name else None
            else:
                name = sys.intern(g("name"))
                args = g("args")
            if ts is None:
                start = None
            else:
                start = _ms_ns(ts) + off
            dur = _ms_ns(g("dur")) if g("dur") is not None else None
            ret_s = g("ret")
            if ret_s is None or ret_s == "?":
                ret = None
            else:
                ret = int(ret_s, 16) if ret_s.startswith("0x") else int(ret_s)
            errno = g("errno") if ret == -1 else None
            fd = None
            kind = FdKind.UNKNOWN
            table = fdtab.setdefault(tgid, {})
            if name in FD_FIRST and args is not None:
                fm = _FD_ARG.match(args)
                if fm is not None:
                    fd = int(fm.group("fd"))
                    if fm.group("deco"):
                        kind = decoration_kind(fm.group("deco"))
                        table[fd] = kind
                elif not args.startswith(("fd:", "epfd:")) and "fd:" not in args.split(",")[0]:
                    fd = 0                              # perf leaves zero arguments out
                if fd is not None and kind is FdKind.UNKNOWN:
                    kind = table.get(fd, FdKind.UNKNOWN)
                    if kind is FdKind.UNKNOWN and name in SOCKET_ONLY and fd >= 0:
                        kind = table[fd] = FdKind.SOCKET
            ok = ret is not None and ret >= 0
            if ok:
                if name in OPENS:
                    table[ret] = FdKind.FILE
                elif name in NEW_SOCKET:
                    table[ret] = FdKind.SOCKET
                elif name in NEW_OTHER:
                    table[ret] = FdKind.OTHER
                elif name in DUPS and fd is not None:
                    table[ret] = kind
                elif name in CLONES and ret > 0:
                    tgid_of[ret] = tgid                 # a thread, until it execs
                elif name == "close" and fd is not None:
                    table.pop(fd, None)
                elif name in ("execve", "execveat") and tgid != tid:
                    tgid_of[tid] = tid
                    fdtab[tid] = dict(table)
            if start is None:
                continue           # a call begun before the trace: its start is unknown
            nbytes = ret if ok and name in BYTE_COUNT else None
            yield SyscallEvent(tgid, tid, name, start, dur, ret, errno, fd, kind, nbytes, "perf-trace")
        bad.finish(total, good)
        if pending:
            ctx.warn(f"{ctx.path}: {len(pending)} call(s) still unfinished at the end of the trace; left out")
        if ctx.meta.get("perf_trace_time") == "absolute":
            ctx.clock = Clock.MONOTONIC       # perf's clock (-T): absolute; diag.align names the domain


def _ms_ns(text: str) -> int:
    whole, _, frac = text.partition(".")
    frac = (frac + "000000")[:6]
    return int(whole) * 1_000_000 + int(frac)
