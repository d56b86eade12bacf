"""Format detection and the one entry point that parses a raw file into normalized records."""
from __future__ import annotations

import os
from typing import IO

from diag.errors import DiagError, ParseError
from diag.limits import max_stream_bytes, too_large
from diag.model import (Clock, Dataset, ExportSetting, GcPause, GilSpan, ProbeCounters, ProcessSnapshot, Request,
                        RequestHistogram, RunqWait, RuntimeWindow, StackSample, StreamInfo, SyscallAggregate,
                        SyscallEvent, Wakeup)
from diag.parse.base import ParseContext, ParsedStream, Parser

SNIFF_BYTES = 64 * 1024


def parsers() -> list[Parser]:
    """All known raw formats, most specific first (JSON formats before line formats)."""
    from diag.parse.ebpf import EbpfParser
    from diag.parse.perf import PerfScriptParser
    from diag.parse.perf_trace import PerfTraceParser
    from diag.parse.pprof import PprofParser
    from diag.parse.pyruntime import PyRuntimeParser
    from diag.parse.pyspy import ChrometraceParser, PyspyRawParser, SpeedscopeParser
    from diag.parse.snapshots import SnapshotParser
    from diag.parse.strace import StraceParser

    return [PprofParser(), EbpfParser(), SpeedscopeParser(), ChrometraceParser(), SnapshotParser(), PyRuntimeParser(),
            PerfScriptParser(), PerfTraceParser(), PyspyRawParser(), StraceParser()]


def parser_for(fmt: str) -> Parser:
    for p in parsers():
        if p.format == fmt:
            return p
    known = ", ".join(p.format for p in parsers())
    raise DiagError(f"unknown format {fmt!r}; known formats: {known}")


def _read_raw(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(SNIFF_BYTES)
    except FileNotFoundError:
        raise DiagError(f"{path}: no such file; give a capture directory, a capture archive or a trace file")
    except IsADirectoryError:
        raise DiagError(f"{path}: is a directory without a manifest.json; give a capture or a trace file")
    except PermissionError:
        raise DiagError(f"{path}: permission denied; run as a user who can read it")


def _binary_parser(path: str, raw: bytes) -> Parser | None:
    name = os.path.basename(path)
    for p in parsers():
        if getattr(p, "binary", False) and p.sniff_bytes(raw, name):
            return p
    return None


def _text_head(path: str, raw: bytes) -> str:
    if b"\0" in raw[:4096] or raw[:2] == b"\x1f\x8b":
        raise ParseError(path, None, "binary file, not a text trace (for perf.data, run `perf script --ns -F +pid` "
                                     "on it first, or replay the whole capture; a Go profile should be a "
                                     "profile.proto .pb.gz from net/http/pprof)")
    return raw.decode("utf-8", errors="replace")


def _read_head(path: str) -> str:
    return _text_head(path, _read_raw(path))


def detect(path: str, head: str | None = None) -> Parser:
    """The parser whose `sniff` accepts this file, or a one-line error naming it."""
    if head is None:
        raw = _read_raw(path)
        b = _binary_parser(path, raw)
        if b is not None:
            return b
        if not raw.strip():
            raise ParseError(path, None, "empty file: nothing to replay")
        head = _text_head(path, raw)
    if not head.strip():
        raise ParseError(path, None, "empty file: nothing to replay")
    name = os.path.basename(path)
    for p in parsers():
        if not getattr(p, "binary", False) and p.sniff(head, name):
            return p
    raise ParseError(path, 1, "unrecognized format: expected strace text, `perf script` or `perf trace` text, "
                              "py-spy speedscope/chrometrace/raw output, or a Go pprof profile (use --format "
                              "to force one)")


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


# where each record type goes in a Dataset (lists; RequestHistogram goes by its latency kind)
_LIST_OF = {SyscallEvent: "syscalls", StackSample: "samples", ProcessSnapshot: "snapshots",
            SyscallAggregate: "aggregates", Request: "requests", Wakeup: "wakeups", RunqWait: "runq_waits",
            ExportSetting: "request_export", GilSpan: "gil", GcPause: "gc_pauses", RuntimeWindow: "runtime_windows"}


def _collect(records, data: Dataset) -> int:
    n = 0
    sys_append = data.syscalls.append
    smp_append = data.samples.append
    lists = {t: getattr(data, name).append for t, name in _LIST_OF.items()}
    for r in records:
        n += 1
        t = type(r)
        if t is SyscallEvent:              # the bulk of a large trace: no dict lookup
            sys_append(r)
        elif t is StackSample:
            smp_append(r)
        elif t is RequestHistogram:
            data.request_hists[r.latency] = r
        elif t is ProbeCounters:
            for k, v in r.counts.items():
                data.probe_counters[k] = data.probe_counters.get(k, 0) + v
        else:
            append = lists.get(t)
            if append is None:  # pragma: no cover - a parser bug, not user input
                raise TypeError(f"parser yielded {t.__name__}")
            append(r)
    return n


def parse_stream(stream: IO[str], parser: Parser, ctx: ParseContext, label: str | None = None) -> ParsedStream:
    """Parse an open text stream with a known parser."""
    data = Dataset()
    if parser.format == "strace":
        # yields only SyscallEvents: no per-record sorting by type (1M records: ~0.15 s saved)
        import gc
        enabled = gc.isenabled()
        gc.disable()
        try:
            data.syscalls.extend(parser.parse(stream, ctx))
        finally:
            if enabled:
                gc.enable()
        n = len(data.syscalls)
    else:
        n = collect_records(parser.parse(stream, ctx), data)
    clock = ctx.clock or parser.clock
    if clock is Clock.MONOTONIC:
        uncertainty = ctx.uncertainty_ns if ctx.uncertainty_ns is not None else 0
    else:
        uncertainty = ctx.uncertainty_ns
    info = StreamInfo(name=label or os.path.basename(ctx.path), path=ctx.path, format=parser.format,
                      clock=clock, offset_ns=ctx.offset_ns, uncertainty_ns=uncertainty,
                      records=n, warnings=list(ctx.warnings), meta=dict(ctx.meta))
    data.streams.append(info)
    data.warnings.extend(ctx.warnings)
    return ParsedStream(info=info, data=data)


def parse_file(path: str, ctx: ParseContext | None = None, fmt: str | None = None,
               label: str | None = None) -> ParsedStream:
    """Detect (or force) the format of one raw file and parse it."""
    ctx = ctx or ParseContext(path=path)
    raw = _read_raw(path)
    size, limit = os.stat(path).st_size, max_stream_bytes()
    if size > limit:
        raise too_large(path, size, limit, "trace file")
    if not raw.strip():
        raise ParseError(path, None, "empty file: nothing to replay")
    parser = parser_for(fmt) if fmt else (_binary_parser(path, raw) or detect(path, _text_head(path, raw)))
    if getattr(parser, "binary", False):
        with open(path, "rb") as fb:
            return parse_stream(fb, parser, ctx, label)
    _text_head(path, raw)
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        return parse_stream(f, parser, ctx, label)
