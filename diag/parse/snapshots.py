"""Parser of the process sampler's stream: one JSON object per line (JSON Lines).

Each line is one `ProcessSnapshot` as the sampler wrote it, on CLOCK_MONOTONIC. The first line
may be a header `{"format": "diag.process/1", ...}`. A cut last line is a warning, not an error.
"""
from __future__ import annotations

from typing import IO, Iterator

from diag.model import ProcessSnapshot
from diag.parse.base import BadLines, ParseContext, TaggedJsonLines, json_lines

FORMAT_TAG = "diag.process/1"
_FIELDS = set(ProcessSnapshot.__dataclass_fields__)
# The numeric fields and their types: a line with a list or a string where a count belongs is a
# bad line here, not a TypeError in the analysis later.
_INTS = {"ts_ns", "pid", "ctx_voluntary", "ctx_involuntary", "num_fds", "num_threads", "rss_bytes", "listen_queue",
         "listen_backlog", "listen_overflows", "listen_drops"}
_FLOATS = {"cpu_user_s", "cpu_system_s"}


def _number(name: str, v, kind):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} is not a number")
    v = kind(v)                                  # int(inf) raises OverflowError
    if not -2**63 <= v < 2**63:                  # also false for NaN
        raise ValueError(f"{name} is out of range")
    return v


class SnapshotParser(TaggedJsonLines):
    format = "process-jsonl"
    tag = FORMAT_TAG

    def parse(self, stream: IO[str], ctx: ParseContext) -> Iterator[ProcessSnapshot]:
        bad = BadLines(ctx, "process sampler")
        good = 0
        offset = ctx.offset_ns
        for lineno, line, obj in json_lines(stream, bad):
            if "format" in obj:          # header line
                good += 1
                continue
            try:
                fields = {k: v for k, v in obj.items() if k in _FIELDS}
                for k, v in fields.items():
                    if k in _INTS and v is not None:
                        fields[k] = _number(k, v, int)
                    elif k in _FLOATS:
                        fields[k] = _number(k, v, float)
                fields["ts_ns"] = fields["ts_ns"] + offset
                fields["socket_states"] = tuple((str(state), _number("socket_states", n, int))
                                                for state, n in fields.get("socket_states") or ())
                snap = ProcessSnapshot(**fields)
            except (KeyError, TypeError, ValueError, OverflowError) as e:
                bad.bad(lineno, line, f"missing or invalid field ({e})")
                continue
            good += 1
            yield snap
        bad.finish(good + bad.count, good)
