"""`perf script` text output -> StackSample and SyscallEvent records.

What is read (perf 6.x `perf script`, with or without `--ns`, any `-F` field set that keeps `time`):

- Sample header lines, built by perf from the fields it was asked for, in this order:
  `COMM  PID/TID [CPU] SECS.FRAC: [PERIOD] EVENT: [PAYLOAD]`. COMM may hold spaces and digits;
  only one number is printed unless both `pid` and `tid` are selected: perf's default field set
  prints the **tid** there, so a single number is taken as the tid (pid unknown). Use
  `perf script -F +pid` to get both. `[CPU]` appears with `-a`. Without `--ns` perf prints
  microseconds only (`177.438809`); both are read exactly (no float rounding).
- Call chains (`-g` at record time): tab-indented lines `ADDR SYM+0xOFF (DSO)`, leaf first,
  ended by a blank line. `-F` without `sym`/`dso` shortens them to `ADDR [SYM]`. The srcline lines
  `-F +srcline` adds (space-indented, `file.c:123`) are skipped.
- Samples without a call chain: one line, the sampled `ADDR SYM (DSO)` after the event name.
- `syscalls:sys_enter_NAME` / `syscalls:sys_exit_NAME` and `raw_syscalls:sys_enter` /
  `raw_syscalls:sys_exit` tracepoints (payloads `fd: 0x00000003, ...` / `0xfffffffffffffff5` and
  `NR 74 (3, 0, ...)` / `NR 74 = -11`), paired per thread into SyscallEvent. raw_syscalls numbers
  are mapped with the x86_64 table below (other architectures: a warning, names stay `syscall_N`).
  When both kinds are recorded, the same call is reported once (the `syscalls:` one wins).
- `#` comment lines (`perf script --header`), `PERF_RECORD_*` side-band lines
  (`--show-task-events`, `--show-mmap-events`, ...) are skipped. A `# clockid:` header line
  naming another clock than monotonic gives a warning.

What is emitted:

- StackSample(source="perf", tid, pid (None unless the header carries pid/tid), thread_name=comm,
  ts_ns = perf time + ctx.offset_ns, frames root first (perf prints leaf first)).
  `on_cpu=True` for CPU-sampling events (cpu-clock, task-clock, cycles, instructions, ...): those
  samples are emitted even without any frame (they still say "this thread ran at t").
  Any other event (sched:*, page-faults, and the syscall tracepoints) gives a StackSample with
  `on_cpu=None`, and only when it carries a call chain: a tracepoint's single `ADDR SYM` on its
  header line is where the tracepoint fired (`syscall_trace_enter`), not a stack, so it is not one.
- Frames: Frame(function=sym, module=dso) for native/kernel frames (symbol offsets dropped,
  `[unknown]` dso -> module None, no symbol -> function `0xADDR`). Python 3.12+ perf trampolines
  (`python -X perf`, symbols `py::QUALNAME:FILE`) become Frame(function=QUALNAME, file=FILE).
- SyscallEvent(source="perf", start_ns from the enter, dur_ns = exit - enter, ret, errno, fd from
  the first argument of the calls that take an fd, nbytes = ret for the read/write families).
  Failed calls follow strace's convention: ret=-1 and errno="EAGAIN" (perf prints -errno).
  An enter never followed by its exit (trace ended, or an exit was lost) gives dur_ns=None; an
  exit whose enter was not recorded is dropped (counted in one warning).

Not handled: output without the `time` field (a ParseError says to add it); `--reltime` /
`--deltatime` (times are then not perf's clock and nothing in the text says so); `-F period`
without `event` (the period is then read as the sampled address); branch stacks (`brstack`),
`--call-trace`/`--insn-trace`, and `perf script` scripts (`-s`), which print their own formats.
"""
from __future__ import annotations

import re
from typing import IO, Iterator

from diag.model import Clock, Frame, StackSample, SyscallEvent
from diag.syscall_numbers import X86_64, ret_errno
from diag.syscalls import BYTE_COUNT, FD_FIRST
from diag.parse.base import BadLines, ParseContext, numbered_lines

# --- sample lines -------------------------------------------------------------------------------

_HEADER = re.compile(
    r"^\s*(?:(?P<comm>\S.*?)\s+)?"             # comm: may hold spaces and digits; absent with -F
    r"(?P<pid>-?\d{1,10})(?:/(?P<tid>-?\d{1,10}))?\s+"   # pid/tid, or a single number (the tid by default)
    r"(?:\[(?P<cpu>\d{1,6})\]\s+)?"                # [cpu] (-a, or -F cpu)
    r"(?P<sec>\d{1,12})\.(?P<frac>\d{1,9}):"        # time, µs or ns (--ns)
    r"(?:\s+(?P<rest>.*?))?\s*$")
# What follows the time: [period] event: payload. An event name has no blank and ends with ": ".
_REST = re.compile(r"^(?:(?P<period>\d+)\s+)?(?P<event>[^\s:][^\s]*?):(?:\s+|$)(?P<payload>.*)$")
# A header without the time field (perf script -F without time): only to say what is missing.
_NO_TIME = re.compile(r"^\s*(?:\S.*?\s+)?-?\d+(?:/-?\d+)?\s+(?:\[\d+\]\s+)?(?:\d+\s+)?[^\s:]\S*?:(?:\s|$)")
# A call-chain line: tab, padded address, then symbol (+offset) and (dso) when asked for.
_FRAME = re.compile(r"^\t\s*(?P<addr>[0-9a-f]+)(?:\s+(?P<text>.*?))?\s*$")
# The address sampled, on a header line without call chain: `7f9112debb46 sym+0x1 (dso)`.
_INLINE_IP = re.compile(r"^(?P<addr>[0-9a-f]+)(?:\s+(?P<text>.*?))?\s*$")
_SYM_DSO = re.compile(r"^(?P<sym>.*?)(?:\+0x[0-9a-f]+)?(?:\s+\((?P<dso>[^()]*)\))?$")
# `-F +srcline` lines: `  pytime.c:609`, `  [kernel.kallsyms][ffffffff816dfdb6]`.
_SRCLINE = re.compile(r"^ +\S+$")
# perf pads its columns with a few dozen blanks at most. The lazy fields of the patterns above
# backtrack through a run of blanks once per character before it: a line holding a long run took
# quadratic time (64 KB of spaces: over a minute). Such a line is not perf output; it is refused
# before any pattern sees it.
_BLANK_RUN_LEN = 256
_BLANK_RUN = re.compile(r"\s{%d}" % _BLANK_RUN_LEN)

# Events whose samples mean "this thread was running on a CPU right then".
_CPU_EVENTS = frozenset({"cpu-clock", "task-clock", "cycles", "cpu-cycles", "ref-cycles", "instructions",
                         "bus-cycles", "cycles-ct", "cycles-t"})

# --- syscall tracepoints ------------------------------------------------------------------------

_SC_EVENT = re.compile(r"^syscalls:sys_(?P<dir>enter|exit)_(?P<name>\w+)$")
# Numbers are bounded to what 64 bits print: a longer one is damage (int() of thousands of
# digits raises; a 20 MB hex value overflowed float arithmetic later).
_RAW_ENTER = re.compile(r"^NR (?P<nr>-?\d{1,10}) \((?P<args>[^)]*)\)")
_RAW_EXIT = re.compile(r"^NR (?P<nr>-?\d{1,10}) = (?P<ret>-?\d{1,20})(?=\s|$)")
_SC_EXIT = re.compile(r"^(?P<ret>0x[0-9a-f]{1,16}|-?\d{1,20})(?=\s|$)")
_SC_FIELD = re.compile(r"^(?P<field>\w+): (?P<value>0x[0-9a-f]{1,16}|-?\d{1,20})(?=[,\s]|$)")

def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def _base_event(event: str) -> str:
    """`cpu-clock:ppp` -> `cpu-clock`, `cpu/cycles/u` -> `cycles`, `cpu_core/cycles/` -> `cycles`."""
    if "/" in event:
        parts = event.split("/")
        if len(parts) >= 2 and parts[1]:
            event = parts[1].split(",")[0].split("=")[-1] if "=" in parts[1] else parts[1]
    return event.split(":", 1)[0]


class _Sample:
    """A sample being read: its header fields and the call-chain lines seen so far."""

    __slots__ = ("lineno", "comm", "pid", "tid", "ts_ns", "event", "payload", "chain")

    def __init__(self, lineno: int, comm: str | None, pid: int | None, tid: int, ts_ns: int,
                 event: str | None, payload: str) -> None:
        self.lineno = lineno
        self.comm = comm
        self.pid = pid
        self.tid = tid
        self.ts_ns = ts_ns
        self.event = event
        self.payload = payload
        self.chain: list[Frame] = []


class PerfScriptParser:
    """`perf script` text (see the module docstring for what is read and how it maps)."""

    format = "perf-script"
    clock = Clock.MONOTONIC

    # ---- detection ---------------------------------------------------------------------------

    def sniff(self, head: str, name: str) -> bool:
        lines = head.split("\n")
        if not head.endswith("\n"):
            lines = lines[:-1]          # the 64 KB cut may fall inside a line
        headers = junk = 0
        in_sample = False
        for line in lines[:400]:
            line = line.rstrip("\r")
            if len(line) > _BLANK_RUN_LEN and _BLANK_RUN.search(line):
                return False
            if not line.strip():
                in_sample = False
                continue
            if line.startswith("#"):
                continue
            if line.startswith("\t"):
                if in_sample and _FRAME.match(line):
                    continue
                return False
            if _HEADER.match(line):
                headers += 1
                in_sample = True
                if headers >= 3:
                    return True
                continue
            if in_sample and _SRCLINE.match(line):
                continue
            if headers == 0 and junk < 3:   # perf warnings mixed in with 2>&1
                junk += 1
                continue
            return False
        return headers > 0

    # ---- parsing -----------------------------------------------------------------------------

    def parse(self, stream: IO[str], ctx: ParseContext) -> Iterator[object]:
        bad = BadLines(ctx, "`perf script`")
        offset = ctx.offset_ns
        frames_cache: dict[str, Frame] = {}
        syscalls = _SyscallPairer(ctx)
        total = good = 0
        cur: _Sample | None = None
        cur_dropped = False          # the current sample lost a line: do not emit it
        chain_open = False           # a call-chain sample not yet closed by its blank line
        arch_warned = False

        def frame(addr: str, text: str | None) -> Frame:
            key = text or addr
            f = frames_cache.get(key)
            if f is None:
                f = _make_frame(addr, text)
                if len(frames_cache) < 200_000:
                    frames_cache[key] = f
            return f

        def finish(s: _Sample) -> Iterator[object]:
            event = s.event or ""
            m = _SC_EVENT.match(event)
            if m:
                ok = syscalls.tracepoint(s, m.group("dir") == "enter", m.group("name"), raw=False)
            elif event in ("raw_syscalls:sys_enter", "raw_syscalls:sys_exit"):
                ok = syscalls.tracepoint(s, event.endswith("enter"), None, raw=True)
            else:
                ok = None
            if ok is not None:               # a syscall tracepoint
                if not ok:
                    bad.bad(s.lineno, s.payload + "\n", f"unreadable {event} payload {s.payload[:40]!r}")
                yield from syscalls.drain()
                if s.chain:
                    yield StackSample(tid=s.tid, ts_ns=s.ts_ns, frames=tuple(reversed(s.chain)),
                                      on_cpu=None, source="perf", pid=s.pid, thread_name=s.comm)
                return
            if event.startswith("PERF_RECORD_"):
                return
            on_cpu = True if _base_event(event) in _CPU_EVENTS else None
            frames: tuple[Frame, ...]
            if s.chain:
                frames = tuple(reversed(s.chain))
            else:
                frames = ()
                if s.payload:
                    m = _INLINE_IP.match(s.payload)
                    if m:
                        frames = (frame(m.group("addr"), m.group("text")),)
            if frames or on_cpu:
                yield StackSample(tid=s.tid, ts_ns=s.ts_ns, frames=frames, on_cpu=on_cpu, source="perf",
                                  pid=s.pid, thread_name=s.comm)

        for lineno, line in numbered_lines(stream):
            total += 1
            complete = line.endswith("\n")
            text = line.rstrip("\r\n")
            if len(text) > _BLANK_RUN_LEN and _BLANK_RUN.search(text):
                bad.bad(lineno, line, "a run of hundreds of blanks, not `perf script` output")
                continue
            if text.startswith("\t"):
                m = _FRAME.match(text)
                if cur is None or not m or not complete:
                    bad.bad(lineno, line, "call-chain line outside a sample" if cur is None and m else "")
                    if cur is not None:
                        cur_dropped = True
                    continue
                good += 1
                chain_open = True
                cur.chain.append(frame(m.group("addr"), m.group("text")))
                continue
            if not text.strip():
                good += 1
                if cur is not None and not cur_dropped:
                    yield from finish(cur)
                cur, cur_dropped, chain_open = None, False, False
                continue
            if text.startswith("#"):
                good += 1
                if text.startswith("# clockid:") and "monotonic" in text:
                    ctx.clock = Clock.MONOTONIC     # perf's own clock is not: -k CLOCK_MONOTONIC was given
                elif text.startswith("# clockid:"):
                    ctx.warn(f"{ctx.path}:{lineno}: perf recorded with {text[2:].strip()!r}, not "
                             "CLOCK_MONOTONIC (record with -k CLOCK_MONOTONIC); times need an offset")
                elif text.startswith("# arch :") and "x86_64" not in text and not arch_warned:
                    arch_warned = True
                    syscalls.x86_64 = False
                continue
            m = _HEADER.match(text) if complete else None
            if m:
                good += 1
                if cur is not None and not cur_dropped:
                    yield from finish(cur)
                cur, cur_dropped, chain_open = _sample_from(m, lineno, offset), False, False
                continue
            if cur is not None and complete and _SRCLINE.match(text):
                good += 1
                continue
            if complete and _NO_TIME.match(text):
                bad.bad(lineno, line, "`perf script` output without the time field (re-run perf script "
                                      "with --ns and -F including time)")
            else:
                bad.bad(lineno, line)
            if not complete:
                # the last line, cut: whatever it was, the sample before it had all its lines
                if cur is not None and not cur_dropped:
                    yield from finish(cur)
                cur, cur_dropped, chain_open = None, False, False
        if cur is not None and not cur_dropped:
            if chain_open:
                # perf ends every call-chain sample with a blank line: the file was cut.
                ctx.warn(f"{ctx.path}:{cur.lineno}: file ends inside a call chain (truncated?); "
                         "dropped that last sample")
            else:
                yield from finish(cur)
        yield from syscalls.finish()
        bad.finish(total, good)


def _sample_from(m: re.Match, lineno: int, offset: int) -> _Sample:
    pid_s, tid_s = m.group("pid"), m.group("tid")
    if tid_s is not None:
        pid, tid = int(pid_s), int(tid_s)
    else:
        pid, tid = None, int(pid_s)
    frac = m.group("frac")
    ts = int(m.group("sec")) * 1_000_000_000 + int(frac.ljust(9, "0")) + offset
    rest = m.group("rest") or ""
    event: str | None = None
    payload = rest
    r = _REST.match(rest)
    if r:
        event, payload = r.group("event"), r.group("payload")
    return _Sample(lineno, m.group("comm") or None, pid, tid, ts, event, payload.strip())


def _make_frame(addr: str, text: str | None) -> Frame:
    if not text:
        return Frame(function=f"0x{addr}")
    m = _SYM_DSO.match(text)
    sym, dso = (m.group("sym"), m.group("dso")) if m else (text, None)
    sym = sym.strip() or f"0x{addr}"
    if dso == "[unknown]" or dso == "":
        dso = None
    if sym.startswith("py::") and sym.count(":") >= 3:
        # CPython 3.12+ perf trampoline (python -X perf): py::qualname:filename
        qual, _, filename = sym[4:].partition(":")
        return Frame(function=qual, file=filename or None, module=dso)
    return Frame(function=sym, module=dso)


class _SyscallPairer:
    """Pairs sys_enter/sys_exit tracepoint samples per thread into SyscallEvent records."""

    def __init__(self, ctx: ParseContext) -> None:
        self.ctx = ctx
        self.x86_64 = True
        self.pending: dict[tuple[int, bool], tuple[str, int, int | None, int]] = {}
        self.held_raw: dict[int, SyscallEvent] = {}       # tid -> raw event waiting for a dup check
        self.last_sc: dict[int, SyscallEvent] = {}        # tid -> last syscalls:* event
        self.out: list[SyscallEvent] = []
        self.orphan_exits = 0
        self.unknown_nr: set[int] = set()

    def _pid(self, s: _Sample) -> int:
        if s.pid is not None:
            return s.pid
        return self.ctx.pid if self.ctx.pid is not None else s.tid

    def _name(self, nr: int) -> str:
        name = X86_64.get(nr) if self.x86_64 else None
        if name is None:
            self.unknown_nr.add(nr)
            return f"syscall_{nr}"
        return name

    def tracepoint(self, s: _Sample, enter: bool, name: str | None, raw: bool) -> bool:
        """Feed one tracepoint sample; False when its payload is unreadable."""
        payload = s.payload
        key = (s.tid, raw)
        if enter:
            fd: int | None = None
            if raw:
                m = _RAW_ENTER.match(payload)
                if not m:
                    return False
                name = self._name(int(m.group("nr")))
                if name in FD_FIRST:
                    first = m.group("args").split(",")[0].strip()
                    try:
                        fd = _signed(int(first, 16), 32) if len(first) <= 16 else None
                    except ValueError:
                        fd = None
            else:
                assert name is not None
                if name in FD_FIRST:
                    f = _SC_FIELD.match(payload)
                    if f:
                        v = f.group("value")
                        fd = _signed(int(v, 16), 32) if v.startswith("0x") else int(v)
            prev = self.pending.pop(key, None)
            if prev is not None:            # its exit never came (lost, or a call that never returns)
                self._emit(prev, None, None, s, raw)
            self.pending[key] = (name, s.ts_ns, fd, self._pid(s))
            return True
        if raw:
            m = _RAW_EXIT.match(payload)
            if not m:
                return False
            nr = int(m.group("nr"))
            pend = self.pending.get(key)
            # rt_sigreturn's exit reports NR -1 (registers already restored): trust the enter
            name = pend[0] if nr < 0 and pend is not None else self._name(nr)
            ret = int(m.group("ret"))
        else:
            m = _SC_EXIT.match(payload)
            if not m:
                return False
            v = m.group("ret")
            ret = _signed(int(v, 16), 64) if v.startswith("0x") else int(v)
        prev = self.pending.get(key)
        if prev is None or prev[0] != name:
            self.orphan_exits += 1
            return True
        del self.pending[key]
        self._emit(prev, s.ts_ns, ret, s, raw)
        return True

    def _emit(self, pend: tuple[str, int, int | None, int], end_ns: int | None, raw_ret: int | None,
              s: _Sample, raw: bool) -> None:
        name, start, fd, pid = pend
        ret = err = None
        nbytes = None
        if raw_ret is not None:
            ret, err = ret_errno(raw_ret)
            if err is None and name in BYTE_COUNT and ret >= 0:
                nbytes = ret
        ev = SyscallEvent(pid=pid, tid=s.tid, name=name, start_ns=start,
                          dur_ns=None if end_ns is None else end_ns - start, ret=ret, errno=err, fd=fd,
                          nbytes=nbytes, source="perf")
        tid = s.tid
        if raw:
            last = self.last_sc.get(tid)
            if last is not None and _same_call(last, ev):
                return                      # already reported by its syscalls:* tracepoint
            held = self.held_raw.pop(tid, None)
            if held is not None:
                self.out.append(held)
            self.held_raw[tid] = ev
        else:
            held = self.held_raw.get(tid)
            if held is not None and _same_call(held, ev):
                del self.held_raw[tid]
            self.last_sc[tid] = ev
            self.out.append(ev)

    def drain(self) -> Iterator[SyscallEvent]:
        if self.out:
            out, self.out = self.out, []
            yield from out

    def finish(self) -> Iterator[SyscallEvent]:
        for (tid, raw), (name, start, fd, pid) in sorted(self.pending.items(), key=lambda kv: (kv[0][1], kv[1][1])):
            ev = SyscallEvent(pid=pid, tid=tid, name=name, start_ns=start, dur_ns=None, fd=fd, source="perf")
            if raw:
                sc = self.pending.get((tid, False))
                if sc is not None and sc[0] == name:
                    continue
                last = self.last_sc.get(tid)
                if last is not None and _same_call(last, ev):
                    continue
            self.out.append(ev)
        self.pending.clear()
        self.out.extend(self.held_raw.values())
        self.held_raw.clear()
        yield from self.drain()
        if self.orphan_exits:
            self.ctx.warn(f"{self.ctx.path}: {self.orphan_exits} sys_exit tracepoint(s) without their sys_enter "
                          "(calls already running when recording started, or the child side of fork/clone) "
                          "were dropped")
        if self.unknown_nr:
            shown = ", ".join(str(n) for n in sorted(self.unknown_nr)[:8])
            why = "not an x86_64 recording" if not self.x86_64 else "not in the x86_64 table"
            self.ctx.warn(f"{self.ctx.path}: raw_syscalls numbers {shown} left as syscall_N ({why})")


def _same_call(a: SyscallEvent, b: SyscallEvent) -> bool:
    """Two reports (raw_syscalls and syscalls:*) of one call: same thread and name, overlapping."""
    if a.tid != b.tid or a.name != b.name:
        return False
    a_end = a.start_ns + a.dur_ns if a.dur_ns is not None else a.start_ns
    b_end = b.start_ns + b.dur_ns if b.dur_ns is not None else b.start_ns
    return a.start_ns <= b_end + 1000 and b.start_ns <= a_end + 1000
