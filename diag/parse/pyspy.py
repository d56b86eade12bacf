"""py-spy output (`py-spy record -f speedscope | chrometrace | raw`) -> StackSample records.

What py-spy writes (verified on py-spy 0.4.3, Linux, and its source, src/{speedscope,chrometrace,
flamegraph,main,stack_trace}.rs):

Thread ids. py-spy knows two ids per thread: `thread_id`, the pthread id (what Python's
`threading.get_ident()` returns, e.g. 140279111079616) and `os_thread_id`, the kernel tid (what
`threading.get_native_id()` / strace / perf show). `StackTrace.format_threadid()` prints the OS
tid in decimal when py-spy could resolve it (the normal case on Linux), else the pthread id as
`0x7F95F4A40640` (Rust `{:#X}`).
- speedscope: one profile per (pid, thread), named `Thread 5152 "busy-worker"` (or
  `Process 5110 Thread 5152 "..."` with --subprocesses): format_threadid(), so the **OS tid**.
  The name is the one seen at the thread's first sample: it can be empty (`Thread 5218 ""`)
  when the first sample came before `threading` named the thread.
- raw (folded): no thread id at all unless `--threads`; then every stack starts with a pseudo
  frame `thread (5152): busy-worker` (`thread (5567)` when the name is unknown): the **OS tid**.
  With --subprocesses, `process 5110:"python3 prog.py"` pseudo frames come first (root-most is
  the top parent).
- chrometrace: the event `tid` is always the **pthread id** (`trace.thread_id`); `pid` is the OS
  pid. With `--threads`, the same `thread (OSTID): name` pseudo frame is the root frame of every
  stack, which gives the OS tid (used here when present). Otherwise `ctx.tid_map` (pthread id ->
  OS tid, from `py-spy dump --json`, see `pthread_to_tid_map_from_dump`) is applied, and the
  raw pthread id is kept (with one warning) when it has no entry.
  The `py-spy dump` text output prints the OS tid only (`Thread 5152 (active+gil): "name"`);
  `py-spy dump --json` prints both (`thread_id`, `os_thread_id`).

Timestamps. speedscope and raw carry none (speedscope `weights` are 1/rate seconds per sample,
whatever the real spacing was). chrometrace `ts` is integer microseconds since py-spy created its
Chrometrace recorder (`Instant::now()`, i.e. CLOCK_MONOTONIC on Linux), which happens in
`record_samples` *after* py-spy spawned the target (when it launches it) and *before* it attached
(Sampler::new, which waits for the interpreter). Each trace is stamped when py-spy's main thread
*processes* it (`Chrometrace::increment`), not when the sampling thread read it: the stamp lags
the sample by the channel hand-off, and the threads of one sample get stamps a few µs apart.

Chrometrace events. For each thread and sample py-spy compares the stack with that thread's
previous one and emits, at the sample's stamp, `E` for the frames that ended (leaf first) then
`B` for the new frames (root first). A sample whose stack did not change emits **nothing**, so
the file holds stack *changes*, not samples. Threads not sampled (idle threads without
`--idle`, non-GIL holders with `--gil`) emit nothing either: their last stack stays open across
the idle time. At the end py-spy closes every open frame with `E` events stamped at write time.
The parser replays this: after all events of one (thread, ts) are applied, the stack at that
time is one StackSample; a state without any Python frame (the final all-closing one, or a
thread with no Python frames, e.g. finalizing) is not a sample. So a
chrometrace StackSample means "from ts on, until the thread's next sample, py-spy saw this stack"
(weight 1, dur_ns None). `X` (complete) events, which py-spy does not write, are read as B+E.

Samples that caught no frame at all (interpreter starting or finalizing; py-spy writes them as
` 1` in raw, `thread (N): name 1` with --threads, or an empty stack) are skipped in all formats.

Idle. No format marks idle vs active stacks (`--idle` just adds idle threads' stacks), nor GIL
ownership: on_cpu is None everywhere.

Frames: Python frames become Frame(function, file, line) (line None when recorded with
--nolineno). With `--native`, native frames carry the shared object as their file and line 0
(`deflate (libz.so.1.2.13)`, `0x7f6d7143c24a (libc.so.6)`): they become Frame(function,
module=that file); native frames with debug info (`zlib_compress_impl (zlibmodule.c:374)`) keep
file and line.
"""
from __future__ import annotations

import json
import re
from typing import IO, Any, Iterator

from diag.errors import ParseError
from diag.model import Clock, Frame, StackSample
from diag.parse.base import BadLines, ParseContext, numbered_lines

UNKNOWN_TID = -1
"""tid of folded stacks recorded without --threads (py-spy merged all threads' samples)."""

# Numbers are bounded to what 64 bits print: a longer one is damage (int() of thousands of
# digits raises).
_THREAD = re.compile(r"^thread \((?P<id>\d{1,20}|0[xX][0-9a-fA-F]{1,16})\)(?:: (?P<name>.*))?$")
_PROCESS = re.compile(r'^process (?P<pid>\d{1,10}):"(?P<cmd>.*)"$')
_PROFILE_NAME = re.compile(r'^(?:Process (?P<pid>\d{1,10}) )?Thread (?P<id>\d{1,20}|0[xX][0-9a-fA-F]{1,16}) '
                           r'"(?P<name>.*)"$', re.S)
_SHARED_OBJECT = re.compile(r"(?:\.so(?:\.\d+)*|\.dylib|\.pyd|\.dll)$|^\[vdso\]$")
# A folded line: frames joined by ';', a blank, the sample count.
_TS_MAX = 2**63 // 1000           # µs stamps that still fit 64-bit ns (also false for NaN)
_FOLDED = re.compile(r"^(?P<stack>\S.*?) (?P<count>\d{1,18})$")
_EMPTY_STACK = re.compile(r"^ \d+$")
# One py-spy folded frame: `name (file:line)`, `name (file)` or a bare name.
_RAW_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d{1,10}))?\)$")
_STRACE_LIKE = re.compile(r"\w\(.*\)\s+=\s+\S|^\d+\s+\d+\.\d+\s|<\.\.\. ")


def _parse_id(text: str) -> tuple[int, bool]:
    """A py-spy thread id as printed -> (value, is_os_tid). Hex is a pthread id."""
    if text[:2] in ("0x", "0X"):
        return int(text, 16), False
    return int(text), True


class _Tids:
    """Turns py-spy thread ids into OS tids, warning once when it cannot."""

    def __init__(self, ctx: ParseContext, what: str) -> None:
        self.ctx = ctx
        self.what = what
        self.unmapped: set[int] = set()

    def os_tid(self, value: int, is_os_tid: bool) -> int:
        if is_os_tid:
            return value
        mapped = self.ctx.tid_map.get(value)
        if mapped is not None:
            return mapped
        if not self.unmapped:
            self.ctx.warn(f"{self.ctx.path}: {self.what} thread ids are pthread ids (e.g. {value:#x}), not OS "
                          "tids, and no tid map was given: these threads cannot be matched with strace/perf "
                          "threads (record py-spy with --threads, or map them with `py-spy dump --json`)")
        self.unmapped.add(value)
        return value


def _frame(name: str, filename: str | None, line: int | None, cache: dict) -> Frame:
    key = (name, filename, line)
    f = cache.get(key)
    if f is None:
        if filename and not line and _SHARED_OBJECT.search(filename):
            f = Frame(function=name, module=filename)
        else:
            f = Frame(function=name, file=filename or None, line=line or None)
        cache[key] = f
    return f


def _split_pseudo(names: list[str]) -> tuple[int, int | None, bool, str | None, int | None]:
    """Leading py-spy pseudo frames (process ..., thread (...)) of a root-first stack.

    Returns (how many leading frames are pseudo, thread id, is_os_tid, thread name, pid).
    """
    n = 0
    tid: int | None = None
    is_os = True
    tname: str | None = None
    pid: int | None = None
    for name in names:
        m = _PROCESS.match(name)
        if m:
            pid = int(m.group("pid"))
            n += 1
            continue
        m = _THREAD.match(name)
        if m and tid is None:
            tid, is_os = _parse_id(m.group("id"))
            tname = m.group("name") or None
            n += 1
            continue
        break
    return n, tid, is_os, tname, pid


def _load_json(stream: IO[str], ctx: ParseContext, what: str) -> Any:
    text = stream.read()
    if not text.strip():
        raise ParseError(ctx.path, None, f"empty file: no {what} data")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        stripped = len(text.rstrip())
        if e.pos >= stripped - 1 or e.msg.startswith("Unterminated string"):
            raise ParseError(ctx.path, e.lineno, f"truncated JSON: the file ends before the {what} document "
                                                 f"does ({e.msg}); was py-spy killed while writing it?") from None
        raise ParseError(ctx.path, e.lineno, f"invalid JSON ({e.msg} at column {e.colno}): not {what} "
                                             "output") from None
    except (ValueError, RecursionError) as e:     # a 5000-digit number, arrays nested 10^5 deep
        raise ParseError(ctx.path, None, f"invalid JSON ({' '.join(str(e).split())[:80]}): not {what} "
                                         "output") from None


def _shape_error(ctx: ParseContext, what: str, detail: str) -> ParseError:
    return ParseError(ctx.path, None, f"not {what} output: {detail}")


# ---- speedscope ----------------------------------------------------------------------------------


class SpeedscopeParser:
    """`py-spy record -f speedscope`: one sampled profile per thread, no timestamps.

    Identical stacks of a thread are merged into one StackSample whose weight is their count
    (each py-spy sample weighs 1/rate s; a profile's smallest weight counts as one sample).
    """

    format = "pyspy-speedscope"
    clock = Clock.NONE

    def sniff(self, head: str, name: str) -> bool:
        s = head.lstrip()
        if not s.startswith("{"):
            return False
        if "speedscope.app/file-format-schema" in s[:4096]:
            return True
        return re.search(r'"profiles"\s*:\s*\[', s) is not None and '"shared"' in s and '"frames"' in s

    def parse(self, stream: IO[str], ctx: ParseContext) -> Iterator[object]:
        what = "py-spy speedscope"
        doc = _load_json(stream, ctx, what)
        if not isinstance(doc, dict) or not isinstance(doc.get("profiles"), list):
            raise _shape_error(ctx, what, "no 'profiles' list at the top level")
        shared = doc.get("shared")
        frames_json = shared.get("frames") if isinstance(shared, dict) else None
        if not isinstance(frames_json, list):
            raise _shape_error(ctx, what, "no 'shared.frames' list")
        cache: dict = {}
        frames: list[Frame] = []
        names: list[str] = []
        for i, fj in enumerate(frames_json):
            if not isinstance(fj, dict) or not isinstance(fj.get("name"), str):
                raise _shape_error(ctx, what, f"shared.frames[{i}] has no name")
            line = fj.get("line")
            if line is not None and not isinstance(line, int):
                raise _shape_error(ctx, what, f"shared.frames[{i}].line is not an integer")
            file = fj.get("file")
            frames.append(_frame(fj["name"], file if isinstance(file, str) else None, line, cache))
            names.append(fj["name"])
        tids = _Tids(ctx, "speedscope")
        unnamed: set[int] = set()
        skipped = 0
        for pi, prof in enumerate(doc["profiles"]):
            if not isinstance(prof, dict):
                raise _shape_error(ctx, what, f"profiles[{pi}] is not an object")
            if prof.get("type") != "sampled":
                skipped += 1
                continue
            samples, weights = prof.get("samples"), prof.get("weights")
            if not isinstance(samples, list) or not isinstance(weights, list) or len(samples) != len(weights):
                raise _shape_error(ctx, what, f"profiles[{pi}] needs 'samples' and 'weights' lists of equal length")
            pname = prof.get("name") if isinstance(prof.get("name"), str) else ""
            m = _PROFILE_NAME.match(pname)
            prof_tid: int | None = None
            prof_is_os = True
            prof_tname = prof_pid = None
            if m:
                prof_tid, prof_is_os = _parse_id(m.group("id"))
                prof_tname = m.group("name") or None
                prof_pid = int(m.group("pid")) if m.group("pid") else None
            try:
                positive = [float(w) for w in weights if float(w) > 0]
            except (TypeError, ValueError):
                raise _shape_error(ctx, what, f"profiles[{pi}].weights holds a non-number") from None
            unit = min(positive) if positive else 1.0
            counts: dict[tuple[int, ...], int] = {}
            for si, (stack, w) in enumerate(zip(samples, weights)):
                if not isinstance(stack, list) or not all(isinstance(x, int) and 0 <= x < len(frames) for x in stack):
                    raise _shape_error(ctx, what, f"profiles[{pi}].samples[{si}] is not a list of frame indexes")
                n = max(1, round(float(w) / unit)) if float(w) > 0 else 0
                if n:
                    key = tuple(stack)
                    counts[key] = counts.get(key, 0) + n
            for stack, count in counts.items():
                npseudo, ptid, p_is_os, ptname, ppid = _split_pseudo([names[i] for i in stack[:4]])
                if npseudo == len(stack):
                    continue        # a sample that caught no Python frame: nothing to attribute
                tid_raw, is_os = (ptid, p_is_os) if ptid is not None else (prof_tid, prof_is_os)
                if tid_raw is None:
                    if pi not in unnamed:
                        unnamed.add(pi)
                        ctx.warn(f"{ctx.path}: profile {pname!r} names no thread id; its samples get tid "
                                 f"{UNKNOWN_TID}")
                    tid = UNKNOWN_TID
                else:
                    tid = tids.os_tid(tid_raw, is_os)
                pid = ppid if ppid is not None else prof_pid if prof_pid is not None else ctx.pid
                yield StackSample(tid=tid, ts_ns=None, frames=tuple(frames[i] for i in stack[npseudo:]),
                                  on_cpu=None, source="py-spy", weight=count, pid=pid,
                                  thread_name=ptname or prof_tname)
        if skipped:
            ctx.warn(f"{ctx.path}: skipped {skipped} non-sampled (evented) profile(s): py-spy writes sampled ones only")


# ---- chrometrace ---------------------------------------------------------------------------------


class _ThreadState:
    __slots__ = ("pid", "stack", "ts", "dirty")

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.stack: list[tuple[str, str | None, int | None]] = []
        self.ts: float | None = None
        self.dirty = False


class ChrometraceParser:
    """`py-spy record -f chrometrace`: B/E events per thread, µs from py-spy's start."""

    format = "pyspy-chrometrace"
    clock = Clock.RELATIVE

    def sniff(self, head: str, name: str) -> bool:
        s = head.lstrip()
        start = s[:4096]
        if s.startswith("["):
            return (re.match(r"\[\s*\{", s) is not None and re.search(r'"ph"\s*:\s*"[BEX]"', start) is not None
                    and re.search(r'"ts"\s*:', start) is not None)
        if s.startswith("{"):
            return re.match(r'\{\s*"traceEvents"\s*:', s) is not None
        return False

    def parse(self, stream: IO[str], ctx: ParseContext) -> Iterator[object]:
        what = "py-spy chrometrace"
        doc = _load_json(stream, ctx, what)
        events = doc.get("traceEvents") if isinstance(doc, dict) else doc
        if not isinstance(events, list):
            raise _shape_error(ctx, what, "expected a JSON list of trace events")
        cooked: list[tuple[float, int, str, int, int | None, tuple[str, str | None, int | None]]] = []
        has_x = False
        for i, ev in enumerate(events):
            if not isinstance(ev, dict):
                raise _shape_error(ctx, what, f"event {i} is not an object")
            ph = ev.get("ph")
            if ph not in ("B", "E", "X"):
                continue                # metadata (M), instant (i), counters (C): not stacks
            ts, tid, name = ev.get("ts"), ev.get("tid"), ev.get("name")
            if isinstance(ts, bool) or not isinstance(ts, (int, float)) or isinstance(tid, bool) \
                    or not isinstance(tid, int) or not isinstance(name, str) \
                    or not -_TS_MAX < ts < _TS_MAX or not -2**63 <= tid < 2**63:     # NaN, Infinity, 1e400
                raise _shape_error(ctx, what, f"event {i} lacks a numeric 'ts', an integer 'tid' or a 'name'")
            args = ev.get("args") if isinstance(ev.get("args"), dict) else {}
            fn = args.get("filename") if isinstance(args.get("filename"), str) else None
            line = args.get("line") if isinstance(args.get("line"), int) else None
            pid = ev.get("pid") if isinstance(ev.get("pid"), int) else None
            key = (name, fn, line)
            if ph == "X":
                dur = ev.get("dur")
                if not isinstance(dur, (int, float)) or not -_TS_MAX < dur < _TS_MAX:
                    raise _shape_error(ctx, what, f"event {i} is a complete (X) event without 'dur'")
                has_x = True
                cooked.append((ts, i, "B", tid, pid, key))
                cooked.append((ts + dur, i, "E", tid, pid, key))
            else:
                cooked.append((ts, i, ph, tid, pid, key))
        if has_x:
            cooked.sort(key=lambda e: (e[0], e[1]))
        yield from self._replay(cooked, ctx)

    def _replay(self, cooked, ctx: ParseContext) -> Iterator[StackSample]:
        offset = ctx.offset_ns
        cache: dict = {}
        states: dict[int, _ThreadState] = {}
        tids = _Tids(ctx, "chrometrace")
        pthread_to_os: dict[int, tuple[int, str | None]] = {}   # from `thread (N): name` pseudo frames
        mismatched = 0
        backwards = 0

        def emit(ptid: int, st: _ThreadState) -> StackSample | None:
            st.dirty = False
            if not st.stack:
                return None
            names = [k[0] for k in st.stack[:4]]
            npseudo, otid, is_os, tname, ppid = _split_pseudo(names)
            if otid is not None:
                tid = tids.os_tid(otid, is_os)
                pthread_to_os[ptid] = (tid, tname)
            elif ptid in pthread_to_os:
                tid, tname = pthread_to_os[ptid]
            else:
                tid, tname = tids.os_tid(ptid, False), None
            if npseudo == len(st.stack):
                return None         # no Python frame (thread starting or finalizing): nothing to attribute
            frames = tuple(_frame(n, f, ln, cache) for n, f, ln in st.stack[npseudo:])
            assert st.ts is not None
            return StackSample(tid=tid, ts_ns=round(st.ts * 1000) + offset, frames=frames, on_cpu=None,
                               source="py-spy", pid=ppid if ppid is not None else st.pid, thread_name=tname)

        # A thread whose first events carry the pseudo frame only later (none do in practice) would
        # get its pthread id: look ahead for `thread (N)` frames so every sample maps the same way.
        for _ts, _i, ph, tid, _pid, key in cooked:
            if ph == "B" and tid not in pthread_to_os:
                m = _THREAD.match(key[0])
                if m:
                    v, is_os = _parse_id(m.group("id"))
                    if is_os:
                        pthread_to_os[tid] = (v, m.group("name") or None)

        for ts, _i, ph, tid, pid, key in cooked:
            st = states.get(tid)
            if st is None:
                st = states[tid] = _ThreadState(pid)
            if st.ts is not None and ts != st.ts:
                if ts < st.ts:
                    backwards += 1
                if st.dirty:
                    s = emit(tid, st)
                    if s is not None:
                        yield s
            st.ts = ts
            st.dirty = True
            if ph == "B":
                st.stack.append(key)
            elif st.stack and st.stack[-1][:2] == key[:2]:
                st.stack.pop()
            else:
                # not the innermost open frame: close the innermost matching one, if any
                for j in range(len(st.stack) - 1, -1, -1):
                    if st.stack[j][:2] == key[:2]:
                        del st.stack[j:]
                        break
                mismatched += 1
        for tid, st in states.items():
            if st.dirty:
                s = emit(tid, st)
                if s is not None:
                    yield s
        if mismatched:
            ctx.warn(f"{ctx.path}: {mismatched} end (E) event(s) did not close the innermost open frame; "
                     "stacks around them may be wrong")
        if backwards:
            ctx.warn(f"{ctx.path}: {backwards} event(s) go back in time within their thread")


# ---- raw (folded) ----------------------------------------------------------------------------------


class PyspyRawParser:
    """`py-spy record -f raw`: folded stacks `frame;frame;... COUNT`, no timestamps.

    Also reads other folded stacks (stackcollapse output): every line must end with a blank and
    an integer, and the file must look folded (`;`-joined frames or py-spy `name (file:line)`).
    """

    format = "pyspy-raw"
    clock = Clock.NONE

    def sniff(self, head: str, name: str) -> bool:
        lines = head.split("\n")
        if not head.endswith("\n"):
            lines = lines[:-1]
        lines = [ln.rstrip("\r") for ln in lines if ln.strip()]
        if not lines:
            return False
        folded_signal = False
        for ln in lines[:2000]:
            if _EMPTY_STACK.match(ln):      # py-spy writes ` 1` for samples without any frame
                continue
            m = _FOLDED.match(ln)
            if not m or ln.startswith(("#", "\t", " ")):
                return False
            stack = m.group("stack")
            if stack.endswith(("=", ":")) or _STRACE_LIKE.search(ln):
                return False
            if ";" in stack or _RAW_FRAME.match(stack.split(";")[-1]) or _THREAD.match(stack.split(";")[0]):
                folded_signal = True
        return folded_signal

    def parse(self, stream: IO[str], ctx: ParseContext) -> Iterator[object]:
        bad = BadLines(ctx, "folded-stack (py-spy raw)")
        tids = _Tids(ctx, "raw")
        cache: dict = {}
        total = good = 0
        warned_no_tid = False
        for lineno, line in numbered_lines(stream):
            total += 1
            text = line.rstrip("\r\n")
            if not text.strip() or (_EMPTY_STACK.match(text) and line.endswith("\n")):
                good += 1           # blank, or samples that caught no frame at all
                continue
            m = _FOLDED.match(text)
            if not m or not line.endswith("\n"):     # a cut last line may have lost count digits
                bad.bad(lineno, line)
                continue
            good += 1
            count = int(m.group("count"))
            parts = m.group("stack").split(";")
            npseudo, tid_raw, is_os, tname, pid = _split_pseudo(parts[:4])
            if tid_raw is None:
                tid = UNKNOWN_TID
                if not warned_no_tid:
                    warned_no_tid = True
                    ctx.warn(f"{ctx.path}: stacks carry no thread id (py-spy recorded without --threads): "
                             f"all threads' samples are merged under tid {UNKNOWN_TID}")
            else:
                tid = tids.os_tid(tid_raw, is_os)
            frames = []
            for part in parts[npseudo:]:
                fm = _RAW_FRAME.match(part)
                if fm:
                    ln = fm.group("line")
                    frames.append(_frame(fm.group("name"), fm.group("file"), int(ln) if ln else None, cache))
                else:
                    frames.append(_frame(part, None, None, cache))
            if count and frames:
                yield StackSample(tid=tid, ts_ns=None, frames=tuple(frames), on_cpu=None, source="py-spy",
                                  weight=count, pid=pid if pid is not None else ctx.pid, thread_name=tname)
        bad.finish(total, good)


# ---- thread id maps ----------------------------------------------------------------------------------


def pthread_to_tid_map_from_dump(text: str) -> dict[int, int]:
    """pthread id -> OS tid, from `py-spy dump --json --pid PID` output.

    `py-spy dump --json` lists every thread with `thread_id` (pthread id) and `os_thread_id`; the
    text form of `py-spy dump` prints only the OS tid (`Thread 5152 (idle): "name"`), which
    cannot map anything: it gives {}. Threads whose OS tid py-spy could not resolve are left out.
    A concatenation of several JSON dumps (one per process or per call) is accepted.
    """
    out: dict[int, int] = {}
    dec = json.JSONDecoder()
    pos, n = 0, len(text)
    while pos < n:
        while pos < n and text[pos].isspace():
            pos += 1
        if pos >= n:
            break
        if text[pos] not in "[{":
            return out          # text dump (or trailing noise): no pthread ids in it
        try:
            doc, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError:
            return out
        for t in doc if isinstance(doc, list) else [doc]:
            if not isinstance(t, dict):
                continue
            pt, os_tid = t.get("thread_id"), t.get("os_thread_id")
            if isinstance(pt, int) and isinstance(os_tid, int) and not isinstance(os_tid, bool):
                out[pt] = os_tid
    return out
