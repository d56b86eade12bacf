"""Format detection and the one entry point that parses a raw file into normalized records."""
from __future__ import annotations

import os
from typing import IO

from diag.errors import DiagError, ParseError
from diag.limits import max_stream_bytes, too_large
from diag.model import (Clock, Dataset, ProcessSnapshot, Request, StackSample, StreamInfo, SyscallAggregate,
                        SyscallEvent)
from diag.parse.base import ParseContext, ParsedStream, Parser

SNIFF_BYTES = 64 * 1024


def parsers() -> list[Parser]:
    """All known raw formats, most specific first (JSON formats before line formats)."""
    from diag.parse.ebpf import EbpfParser
    from diag.parse.perf import PerfScriptParser
    from diag.parse.pyspy import ChrometraceParser, PyspyRawParser, SpeedscopeParser
    from diag.parse.snapshots import SnapshotParser
    from diag.parse.strace import StraceParser

    return [EbpfParser(), SpeedscopeParser(), ChrometraceParser(), SnapshotParser(), PerfScriptParser(),
            PyspyRawParser(), StraceParser()]


def parser_for(fmt: str) -> Parser:
    for p in parsers():
        if p.format == fmt:
            return p
    known = ", ".join(p.format for p in parsers())
    raise DiagError(f"unknown format {fmt!r}; known formats: {known}")


def _read_head(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(SNIFF_BYTES)
    except FileNotFoundError:
        raise DiagError(f"{path}: no such file; give a capture directory, a capture archive or a trace file")
    except IsADirectoryError:
        raise DiagError(f"{path}: is a directory without a manifest.json; give a capture or a trace file")
    except PermissionError:
        raise DiagError(f"{path}: permission denied; run as a user who can read it")
    if b"\0" in raw[:4096]:
        raise ParseError(path, None, "binary file, not a text trace (for perf.data, run `perf script --ns -F +pid` "
                                     "on it first, or replay the whole capture)")
    return raw.decode("utf-8", errors="replace")


def detect(path: str, head: str | None = None) -> Parser:
    """The parser whose `sniff` accepts this file, or a one-line error naming it."""
    if head is None:
        head = _read_head(path)
    if not head.strip():
        raise ParseError(path, None, "empty file: nothing to replay")
    name = os.path.basename(path)
    for p in parsers():
        if p.sniff(head, name):
            return p
    raise ParseError(path, 1, "unrecognized format: expected strace text, `perf script` text, or py-spy "
                              "speedscope/chrometrace/raw output (use --format to force one)")


def collect_records(records, data: Dataset) -> int:
    """Sort records into the dataset's lists by type; returns how many there were.

    The cyclic garbage collector is paused meanwhile: records hold no cycles, and walking a list
    growing by a million objects cost ~8 % of the parse."""
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        return _collect(records, data)
    finally:
        if enabled:
            gc.enable()


def _collect(records, data: Dataset) -> int:
    n = 0
    sys_append = data.syscalls.append
    smp_append = data.samples.append
    for r in records:
        n += 1
        t = type(r)
        if t is SyscallEvent:
            sys_append(r)
        elif t is StackSample:
            smp_append(r)
        elif t is ProcessSnapshot:
            data.snapshots.append(r)
        elif t is SyscallAggregate:
            data.aggregates.append(r)
        elif t is Request:
            data.requests.append(r)
        else:  # pragma: no cover - a parser bug, not user input
            raise TypeError(f"parser yielded {t.__name__}")
    return n


def parse_stream(stream: IO[str], parser: Parser, ctx: ParseContext, label: str | None = None) -> ParsedStream:
    """Parse an open text stream with a known parser."""
    data = Dataset()
    n = collect_records(parser.parse(stream, ctx), data)
    if parser.clock is Clock.MONOTONIC:
        uncertainty = ctx.uncertainty_ns if ctx.uncertainty_ns is not None else 0
    else:
        uncertainty = ctx.uncertainty_ns
    info = StreamInfo(name=label or os.path.basename(ctx.path), path=ctx.path, format=parser.format,
                      clock=parser.clock, offset_ns=ctx.offset_ns, uncertainty_ns=uncertainty,
                      records=n, warnings=list(ctx.warnings))
    data.streams.append(info)
    data.warnings.extend(ctx.warnings)
    return ParsedStream(info=info, data=data)


def parse_file(path: str, ctx: ParseContext | None = None, fmt: str | None = None,
               label: str | None = None) -> ParsedStream:
    """Detect (or force) the format of one raw file and parse it."""
    ctx = ctx or ParseContext(path=path)
    head = _read_head(path)
    size, limit = os.stat(path).st_size, max_stream_bytes()
    if size > limit:
        raise too_large(path, size, limit, "trace file")
    parser = parser_for(fmt) if fmt else detect(path, head)
    if not head.strip():
        raise ParseError(path, None, "empty file: nothing to replay")
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        return parse_stream(f, parser, ctx, label)
