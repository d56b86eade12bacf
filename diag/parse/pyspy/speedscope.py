"""`py-spy record -f speedscope`: one profile per thread, named with the OS tid; no timestamps."""
from __future__ import annotations

import re
from typing import IO, Iterator

from diag.model import Clock, Frame, StackSample
from diag.parse.base import ParseContext
from diag.parse.pyspy.common import UNKNOWN_TID, Tids, load_json, make_frame, parse_id, shape_error, split_pseudo

_PROFILE_NAME = re.compile(r'^(?:Process (?P<pid>\d{1,10}) )?Thread (?P<id>\d{1,20}|0[xX][0-9a-fA-F]{1,16}) '
                           r'"(?P<name>.*)"$', re.S)


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
        doc = load_json(stream, ctx, what)
        if not isinstance(doc, dict) or not isinstance(doc.get("profiles"), list):
            raise shape_error(ctx, what, "no 'profiles' list at the top level")
        shared = doc.get("shared")
        frames_json = shared.get("frames") if isinstance(shared, dict) else None
        if not isinstance(frames_json, list):
            raise shape_error(ctx, what, "no 'shared.frames' list")
        cache: dict = {}
        frames: list[Frame] = []
        names: list[str] = []
        for i, fj in enumerate(frames_json):
            if not isinstance(fj, dict) or not isinstance(fj.get("name"), str):
                raise shape_error(ctx, what, f"shared.frames[{i}] has no name")
            line = fj.get("line")
            if line is not None and not isinstance(line, int):
                raise shape_error(ctx, what, f"shared.frames[{i}].line is not an integer")
            file = fj.get("file")
            frames.append(make_frame(fj["name"], file if isinstance(file, str) else None, line, cache))
            names.append(fj["name"])
        tids = Tids(ctx, "speedscope")
        unnamed: set[int] = set()
        skipped = 0
        for pi, prof in enumerate(doc["profiles"]):
            if not isinstance(prof, dict):
                raise shape_error(ctx, what, f"profiles[{pi}] is not an object")
            if prof.get("type") != "sampled":
                skipped += 1
                continue
            samples, weights = prof.get("samples"), prof.get("weights")
            if not isinstance(samples, list) or not isinstance(weights, list) or len(samples) != len(weights):
                raise shape_error(ctx, what, f"profiles[{pi}] needs 'samples' and 'weights' lists of equal length")
            pname = prof.get("name") if isinstance(prof.get("name"), str) else ""
            m = _PROFILE_NAME.match(pname)
            prof_tid: int | None = None
            prof_is_os = True
            prof_tname = prof_pid = None
            if m:
                prof_tid, prof_is_os = parse_id(m.group("id"))
                prof_tname = m.group("name") or None
                prof_pid = int(m.group("pid")) if m.group("pid") else None
            try:
                positive = [float(w) for w in weights if float(w) > 0]
            except (TypeError, ValueError):
                raise shape_error(ctx, what, f"profiles[{pi}].weights holds a non-number") from None
            unit = min(positive) if positive else 1.0
            counts: dict[tuple[int, ...], int] = {}
            for si, (stack, w) in enumerate(zip(samples, weights)):
                if not isinstance(stack, list) or not all(isinstance(x, int) and 0 <= x < len(frames) for x in stack):
                    raise shape_error(ctx, what, f"profiles[{pi}].samples[{si}] is not a list of frame indexes")
                n = max(1, round(float(w) / unit)) if float(w) > 0 else 0
                if n:
                    key = tuple(stack)
                    counts[key] = counts.get(key, 0) + n
            for stack, count in counts.items():
                npseudo, ptid, p_is_os, ptname, ppid = split_pseudo([names[i] for i in stack[:4]])
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
