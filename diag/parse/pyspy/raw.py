"""`py-spy record -f raw`: folded stacks with counts; thread ids only with --threads."""
from __future__ import annotations

import re
from typing import IO, Iterator

from diag.model import Clock, StackSample
from diag.parse.base import BadLines, ParseContext, numbered_lines
from diag.parse.pyspy.common import THREAD_FRAME, UNKNOWN_TID, Tids, make_frame, split_pseudo

# A folded line: frames joined by ';', a blank, the sample count.
_FOLDED = re.compile(r"^(?P<stack>\S.*?) (?P<count>\d{1,18})$")
_EMPTY_STACK = re.compile(r"^ \d+$")
# One py-spy folded frame: `name (file:line)`, `name (file)` or a bare name.
_RAW_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d{1,10}))?\)$")
_STRACE_LIKE = re.compile(r"\w\(.*\)\s+=\s+\S|^\d+\s+\d+\.\d+\s|<\.\.\. ")


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
            if ";" in stack or _RAW_FRAME.match(stack.split(";")[-1]) or THREAD_FRAME.match(stack.split(";")[0]):
                folded_signal = True
        return folded_signal

    def parse(self, stream: IO[str], ctx: ParseContext) -> Iterator[object]:
        bad = BadLines(ctx, "folded-stack (py-spy raw)")
        tids = Tids(ctx, "raw")
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
            npseudo, tid_raw, is_os, tname, pid = split_pseudo(parts[:4])
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
                    frames.append(make_frame(fm.group("name"), fm.group("file"), int(ln) if ln else None, cache))
                else:
                    frames.append(make_frame(part, None, None, cache))
            if count and frames:
                yield StackSample(tid=tid, ts_ns=None, frames=tuple(frames), on_cpu=None, source="py-spy",
                                  weight=count, pid=pid if pid is not None else ctx.pid, thread_name=tname)
        bad.finish(total, good)


# ---- thread id maps ----------------------------------------------------------------------------------
