"""`py-spy record -f chrometrace`: stack changes per thread as B/E events, stamped in µs since py-spy
started (see the package docstring for what a sample means here)."""
from __future__ import annotations

import re
from typing import IO, Iterator

from diag.model import Clock, StackSample
from diag.parse.base import ParseContext
from diag.parse.pyspy.common import THREAD_FRAME, Tids, load_json, make_frame, parse_id, shape_error, split_pseudo

_TS_MAX = 2**63 // 1000           # µs stamps that still fit 64-bit ns (also false for NaN)


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
        doc = load_json(stream, ctx, what)
        events = doc.get("traceEvents") if isinstance(doc, dict) else doc
        if not isinstance(events, list):
            raise shape_error(ctx, what, "expected a JSON list of trace events")
        cooked: list[tuple[float, int, str, int, int | None, tuple[str, str | None, int | None]]] = []
        has_x = False
        for i, ev in enumerate(events):
            if not isinstance(ev, dict):
                raise shape_error(ctx, what, f"event {i} is not an object")
            ph = ev.get("ph")
            if ph not in ("B", "E", "X"):
                continue                # metadata (M), instant (i), counters (C): not stacks
            ts, tid, name = ev.get("ts"), ev.get("tid"), ev.get("name")
            if isinstance(ts, bool) or not isinstance(ts, (int, float)) or isinstance(tid, bool) \
                    or not isinstance(tid, int) or not isinstance(name, str) \
                    or not -_TS_MAX < ts < _TS_MAX or not -2**63 <= tid < 2**63:     # NaN, Infinity, 1e400
                raise shape_error(ctx, what, f"event {i} lacks a numeric 'ts', an integer 'tid' or a 'name'")
            args = ev.get("args") if isinstance(ev.get("args"), dict) else {}
            fn = args.get("filename") if isinstance(args.get("filename"), str) else None
            line = args.get("line") if isinstance(args.get("line"), int) else None
            pid = ev.get("pid") if isinstance(ev.get("pid"), int) else None
            key = (name, fn, line)
            if ph == "X":
                dur = ev.get("dur")
                if not isinstance(dur, (int, float)) or not -_TS_MAX < dur < _TS_MAX:
                    raise shape_error(ctx, what, f"event {i} is a complete (X) event without 'dur'")
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
        tids = Tids(ctx, "chrometrace")
        pthread_to_os: dict[int, tuple[int, str | None]] = {}   # from `thread (N): name` pseudo frames
        mismatched = 0
        backwards = 0

        def emit(ptid: int, st: _ThreadState) -> StackSample | None:
            st.dirty = False
            if not st.stack:
                return None
            names = [k[0] for k in st.stack[:4]]
            npseudo, otid, is_os, tname, ppid = split_pseudo(names)
            if otid is not None:
                tid = tids.os_tid(otid, is_os)
                pthread_to_os[ptid] = (tid, tname)
            elif ptid in pthread_to_os:
                tid, tname = pthread_to_os[ptid]
            else:
                tid, tname = tids.os_tid(ptid, False), None
            if npseudo == len(st.stack):
                return None         # no Python frame (thread starting or finalizing): nothing to attribute
            frames = tuple(make_frame(n, f, ln, cache) for n, f, ln in st.stack[npseudo:])
            assert st.ts is not None
            return StackSample(tid=tid, ts_ns=round(st.ts * 1000) + offset, frames=frames, on_cpu=None,
                               source="py-spy", pid=ppid if ppid is not None else st.pid, thread_name=tname)

        # A thread whose first events carry the pseudo frame only later (none do in practice) would
        # get its pthread id: look ahead for `thread (N)` frames so every sample maps the same way.
        for _ts, _i, ph, tid, _pid, key in cooked:
            if ph == "B" and tid not in pthread_to_os:
                m = THREAD_FRAME.match(key[0])
                if m:
                    v, is_os = parse_id(m.group("id"))
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
