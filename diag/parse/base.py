"""What every parser shares: the context it parses in, the bad-line policy, and the result type.

A parser turns one raw stream (as a collector wrote it) into normalized records. It never
guesses clocks: the caller says, through `ParseContext`, how to put the stream's own times on
CLOCK_MONOTONIC (`offset_ns`), and which date to use for time-of-day stamps.
"""
from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from typing import IO, Callable, Iterable, Iterator, Protocol

from diag.errors import ParseError
from diag.model import Clock, Dataset, StreamInfo

# A stream may carry a few lines that are not the tool's output (the target's own stderr mixed
# into strace's, a banner). Past this share of unparseable lines the file is called malformed.
MAX_BAD_LINE_SHARE = 0.01
MAX_BAD_LINES_TOLERATED = 10


@dataclass
class ParseContext:
    """How to read one stream. Filled from the capture manifest, CLI flags, or defaults."""

    path: str
    offset_ns: int = 0                 # added to the stream's times to get CLOCK_MONOTONIC
    uncertainty_ns: int | None = None  # None: the stream is not anchored to the common clock
    date: _dt.date | None = None       # for strace -t/-tt stamps (time of day only)
    tz: _dt.tzinfo | None = None       # timezone of time-of-day stamps (default: local)
    pid: int | None = None             # pid to assume when lines carry none (strace without -f)
    tid_map: dict[int, int] = field(default_factory=dict)   # sampler thread id -> OS tid
    thread_groups: dict[int, int] = field(default_factory=dict)   # OS tid -> tgid, known threads
    stream_start_ns: int | None = None  # CLOCK_MONOTONIC when the collector started (py-spy)
    # What the parser learned of the stream's clock, when it differs from its format's usual
    # one (strace -r or without -t: RELATIVE / NONE; perf with a `# clockid: monotonic` header).
    clock: Clock | None = None
    # pthread id -> OS tid of the threads whose creation a syscall trace showed (strace clone tls=)
    pthread_ids: dict[int, int] = field(default_factory=dict)
    # What a stream says of itself beyond its records (a pprof profile's duration and period)
    meta: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # the bytes of a file the stream names beside itself (the eBPF stream's binary records), or
    # None when it is missing; by default, from the stream's own directory
    read_companion: Callable[[str], bytes | None] | None = None

    def companion(self, name: str) -> bytes | None:
        if "/" in name or "\\" in name or name.startswith("."):
            return None
        if self.read_companion is not None:
            return self.read_companion(name)
        import os

        p = os.path.join(os.path.dirname(self.path), name)
        try:
            with open(p, "rb") as f:
                return f.read()
        except OSError:
            return None

    def warn(self, message: str) -> None:
        self.warnings.append(message)


class Parser(Protocol):
    """One raw format. `sniff` looks at the first few KB; `parse` yields normalized records."""

    format: str
    clock: Clock

    def sniff(self, head: str, name: str) -> bool: ...

    def parse(self, stream: IO[str], ctx: ParseContext) -> Iterator[object]: ...


class BadLines:
    """Counts unparseable lines and decides, at the end, between a warning and an error.

    A truncated last line (no newline at end of file) is always only a warning: captures cut by
    a crash or Ctrl-C must stay replayable up to their last complete record.
    """

    def __init__(self, ctx: ParseContext, what: str) -> None:
        self.ctx = ctx
        self.what = what
        self.count = 0
        self.first: tuple[int, str] | None = None
        self.truncated_at: int | None = None

    def bad(self, lineno: int, line: str, reason: str = "") -> None:
        if not line.endswith("\n"):
            self.truncated_at = lineno
            return
        self.count += 1
        if self.first is None:
            shown = line.strip()
            if len(shown) > 60:
                shown = shown[:57] + "..."
            self.first = (lineno, f"{reason or 'not a ' + self.what + ' line'}: {shown!r}")

    def finish(self, total_lines: int, good: int) -> None:
        ctx = self.ctx
        if self.truncated_at is not None:
            ctx.warn(f"{ctx.path}:{self.truncated_at}: file is truncated; parsed up to the last complete line")
        if self.count == 0:
            return
        assert self.first is not None
        lineno, reason = self.first
        if good == 0 or (self.count > MAX_BAD_LINES_TOLERATED and self.count > MAX_BAD_LINE_SHARE * total_lines):
            raise ParseError(ctx.path, lineno, f"{reason} ({self.count} of {total_lines} lines unparseable; "
                             f"is this {self.what} output?)")
        ctx.warn(f"{ctx.path}:{lineno}: skipped {self.count} unparseable line(s), first: {reason}")


# A 64-bit value prints in at most 19 digits (20 unsigned): a longer number in a JSON record is
# damage, and passed on it overflowed float arithmetic in the analysis.
_HUGE_NUMBER = re.compile(r"\d{20}")


def json_lines(stream: IO[str], bad: "BadLines"):
    """(line number, line, object) for every JSON-object line of a JSON Lines stream; blank lines
    skipped, other lines reported to `bad`. The caller counts the lines it accepts."""
    import json

    for lineno, line in enumerate(stream, 1):
        if not line.strip():
            continue
        if _HUGE_NUMBER.search(line):
            bad.bad(lineno, line, "a number of 20 digits or more (no field of diag's streams has one)")
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):      # JSONDecodeError, a 5000-digit number, deep nesting
            bad.bad(lineno, line, "not a JSON object")
            continue
        if not isinstance(obj, dict):
            bad.bad(lineno, line, "not a JSON object")
            continue
        yield lineno, line, obj


def opt_int(v) -> int | None:
    return None if v is None else int(v)


class TaggedJsonLines:
    """Base of the parsers of diag's own JSON Lines streams, whose first line names their format
    (`{"format": TAG, ...}`) and whose times are CLOCK_MONOTONIC."""

    format = "jsonl"
    tag = ""
    clock = Clock.MONOTONIC

    def sniff(self, head: str, name: str) -> bool:
        return head.lstrip().startswith("{") and self.tag in head.split("\n", 1)[0]


def numbered_lines(stream: IO[str]) -> Iterable[tuple[int, str]]:
    """(1-based line number, line with its newline) for every line of `stream`."""
    return enumerate(stream, 1)


@dataclass
class ParsedStream:
    """A stream's records and its description, as `diag.parse.parse_file` returns them."""

    info: StreamInfo
    data: Dataset


ProgressCallback = Callable[[int], None]
