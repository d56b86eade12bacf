"""Parser of the CPython runtime sampler's stream (`diag.pyruntime/1`, JSON Lines).

Line 1 is the header (`"format": "diag.pyruntime/1"`, pid, python, method, rate); then `gil`
and `gc` records, on CLOCK_MONOTONIC; the last line is `end` with the totals. A capture cut
before the end line (SIGKILL) still yields every complete record, and a `RuntimeWindow` ending at
the last record seen, without totals. Unknown record types are skipped (later versions may add
some); unknown fields are ignored.
"""
from __future__ import annotations

from typing import IO, Iterator

from diag.model import GcPause, GilSpan, RuntimeWindow
from diag.parse.base import BadLines, ParseContext, TaggedJsonLines, json_lines, opt_int

FORMAT_TAG = "diag.pyruntime/1"


class PyRuntimeParser(TaggedJsonLines):
    format = "pyruntime-jsonl"
    tag = FORMAT_TAG

    def parse(self, stream: IO[str], ctx: ParseContext) -> Iterator[object]:
        bad = BadLines(ctx, "pyruntime sampler")
        good = 0
        off = ctx.offset_ns
        header: dict | None = None
        end: dict | None = None
        gil_state: tuple[int, int] | None = None
        last_ns: int | None = None
        pid = ctx.pid
        for lineno, line, obj in json_lines(stream, bad):
            kind = obj.get("type")
            try:
                if "format" in obj:
                    if obj["format"] != FORMAT_TAG:
                        bad.bad(lineno, line, f"unsupported stream version {obj['format']!r}")
                        continue
                    header = obj
                    pid = opt_int(obj.get("pid")) or pid
                elif kind == "gil":
                    state = obj["state"]
                    if state not in ("held", "free"):
                        raise ValueError(f"state {state!r}")
                    rec = GilSpan(tid=opt_int(obj.get("tid")), held=state == "held",
                                  start_ns=int(obj["start_ns"]) + off, end_ns=int(obj["end_ns"]) + off,
                                  samples=int(obj["samples"]), switches=opt_int(obj.get("switches")), pid=pid)
                    last_ns = max(last_ns or rec.end_ns, rec.end_ns)
                    yield rec
                elif kind == "gc":
                    gen = opt_int(obj.get("generation"))
                    if gen is not None and not 0 <= gen <= 2:
                        raise ValueError(f"generation {gen}")
                    rec = GcPause(start_ns=int(obj["start_ns"]) + off, end_ns=int(obj["end_ns"]) + off,
                                  generation=gen, samples=int(obj["samples"]),
                                  collections=opt_int(obj.get("collections")), tid=opt_int(obj.get("tid")),
                                  pid=pid)
                    last_ns = max(last_ns or rec.end_ns, rec.end_ns)
                    yield rec
                elif kind == "gil_state":
                    gil_state = (int(obj["addr"]), int(obj["size"]))
                elif kind == "end":
                    end = obj
                    int(obj["end_ns"])
            except (KeyError, TypeError, ValueError) as e:
                bad.bad(lineno, line, f"missing or invalid field ({e})")
                continue
            good += 1
        if header is None:
            if good:
                ctx.warn(f"{ctx.path}: no header line: the sampler's window (pid, rate) is unknown")
        else:
            try:
                yield self._window(header, end, last_ns, off, pid, gil_state)
            except (KeyError, TypeError, ValueError) as e:
                ctx.warn(f"{ctx.path}: header or end line unusable ({e}): the sampler's window is unknown")
        bad.finish(good + bad.count, good)

    @staticmethod
    def _window(header: dict, end: dict | None, last_ns: int | None, off: int, pid: int | None,
                gil_state: tuple[int, int] | None = None) -> RuntimeWindow:
        start = int(header["start_ns"]) + off
        if end is not None:
            stop = int(end["end_ns"]) + off
        else:
            stop = last_ns if last_ns is not None else start
        colls = (end or {}).get("gc_collections")
        return RuntimeWindow(pid=pid or 0, python=str(header.get("python") or "?"),
                             method=str(header.get("method") or "?"), rate_hz=int(header["rate_hz"]),
                             start_ns=start, end_ns=stop,
                             samples=opt_int((end or {}).get("samples")),
                             read_errors=opt_int((end or {}).get("read_errors")),
                             gc_collections=tuple(int(c) for c in colls) if colls else None,
                             gil_switches=opt_int((end or {}).get("gil_switches")), gil_state=gil_state,
                             unknown=tuple(dict.fromkeys(str(u) for u in [*(header.get("unknown") or ()),
                                                                          *((end or {}).get("unknown") or ())])))
