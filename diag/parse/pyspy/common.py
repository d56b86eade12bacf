"""What the three py-spy formats share: thread ids (OS tid or pthread id), py-spy's pseudo frames
(`process ...`, `thread (...)`), frames, the JSON loading and its one-line refusals, and the
pthread id -> OS tid map read from `py-spy dump --json`."""
from __future__ import annotations

import json
import re
from typing import IO, Any

from diag.errors import ParseError
from diag.model import Frame
from diag.parse.base import ParseContext

UNKNOWN_TID = -1
"""tid of folded stacks recorded without --threads (py-spy merged all threads' samples)."""

# Numbers are bounded to what 64 bits print: a longer one is damage (int() of thousands of
# digits raises).
THREAD_FRAME = re.compile(r"^thread \((?P<id>\d{1,20}|0[xX][0-9a-fA-F]{1,16})\)(?:: (?P<name>.*))?$")
PROCESS_FRAME = re.compile(r'^process (?P<pid>\d{1,10}):"(?P<cmd>.*)"$')
SHARED_OBJECT = re.compile(r"(?:\.so(?:\.\d+)*|\.dylib|\.pyd|\.dll)$|^\[vdso\]$")


def parse_id(text: str) -> tuple[int, bool]:
    """A py-spy thread id as printed -> (value, is_os_tid). Hex is a pthread id."""
    if text[:2] in ("0x", "0X"):
        return int(text, 16), False
    return int(text), True


class Tids:
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


def make_frame(name: str, filename: str | None, line: int | None, cache: dict) -> Frame:
    key = (name, filename, line)
    f = cache.get(key)
    if f is None:
        if filename and not line and SHARED_OBJECT.search(filename):
            f = Frame(function=name, module=filename)
        else:
            f = Frame(function=name, file=filename or None, line=line or None)
        cache[key] = f
    return f


def split_pseudo(names: list[str]) -> tuple[int, int | None, bool, str | None, int | None]:
    """Leading py-spy pseudo frames (process ..., thread (...)) of a root-first stack.

    Returns (how many leading frames are pseudo, thread id, is_os_tid, thread name, pid).
    """
    n = 0
    tid: int | None = None
    is_os = True
    tname: str | None = None
    pid: int | None = None
    for name in names:
        m = PROCESS_FRAME.match(name)
        if m:
            pid = int(m.group("pid"))
            n += 1
            continue
        m = THREAD_FRAME.match(name)
        if m and tid is None:
            tid, is_os = parse_id(m.group("id"))
            tname = m.group("name") or None
            n += 1
            continue
        break
    return n, tid, is_os, tname, pid


def load_json(stream: IO[str], ctx: ParseContext, what: str) -> Any:
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


def shape_error(ctx: ParseContext, what: str, detail: str) -> ParseError:
    return ParseError(ctx.path, None, f"not {what} output: {detail}")


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
