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
                fields["ts_ns"] = int(fields["ts_ns"]) + offset
                fields["socket_states"] = tuple(tuple(x) for x in fields.get("socket_states") or ())
                snap = ProcessSnapshot(**fields)
            except (KeyError, TypeError, ValueError) as e:
                bad.bad(lineno, line, f"missing or invalid field ({e})")
                continue
            good += 1
            yield snap
        bad.finish(good + bad.count, good)
