"""Inputs to a Dataset: captures (directory or archive) and raw trace files, parsed and aligned.

This is the first stage of `diag replay` and of the analysis that ends `attach` and `run`: both
go through `load_inputs`, so a live run and its replay see exactly the same records.
"""
from __future__ import annotations

import datetime as _dt
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from diag.align import context_for
from diag.capture.bundle import Capture, is_capture, open_capture
from diag.errors import DiagError, ParseError
from diag.model import Dataset
from diag.parse import detect, parse_file, parse_stream, parser_for
from diag.parse.base import ParseContext


@dataclass
class LoadOptions:
    """What the user told us about raw files (no manifest to tell us)."""

    fmt: str | None = None              # force a format for raw files
    date: _dt.date | None = None        # date of strace -t/-tt stamps
    pid: int | None = None              # pid of a strace log without pid prefixes
    offsets: dict[str, int] = field(default_factory=dict)   # file -> ns to add (manual alignment)


def _perf_script_from_data(perf_data: str, into: str) -> str | None:
    """Run `perf script` on a perf.data file kept in a capture, when the text form is missing."""
    perf = shutil.which("perf")
    if not perf:
        return None
    with open(into, "w") as out:
        r = subprocess.run([perf, "script", "--ns", "-F", "comm,pid,tid,time,event,ip,sym,dso,trace",
                            "-i", perf_data], stdout=out, stderr=subprocess.DEVNULL)
    return into if r.returncode == 0 else None


def _parse_perf_data(perf_data: str, fmt: str, entry: dict, start, end, target: dict, name: str) -> Dataset | None:
    """The perf stream rebuilt from the perf.data a capture kept (its text form is missing), or
    None when perf cannot; the temporary text is removed whatever happens."""
    fd, tmp = tempfile.mkstemp(suffix=".perf.txt")
    os.close(fd)
    try:
        if not _perf_script_from_data(perf_data, tmp):
            return None
        return parse_file(tmp, context_for(tmp, fmt, entry, start, end, target), fmt, label=name).data
    finally:
        os.unlink(tmp)


def load_capture(path: str) -> Dataset:
    cap: Capture = open_capture(path)
    data = Dataset(manifest=cap.manifest)
    data.warnings.extend(cap.warnings)
    start, end = cap.start, cap.end
    target = cap.manifest.get("target") or {}
    try:
        for name, entry in sorted(cap.collectors().items()):
            rel, fmt = entry.get("stream"), entry.get("format")
            if not rel or not fmt:
                continue
            why = cap.problem(rel)
            if why is not None:
                raw = entry.get("raw_stream")
                local_raw = cap.local_file(raw) if raw else None
                if fmt == "perf-script" and local_raw:
                    parsed = _parse_perf_data(local_raw, fmt, entry, start, end, target, name)
                    if parsed is not None:
                        data.extend(parsed)
                        continue
                if why != "missing":
                    data.warnings.append(f"{cap.member_path(rel)}: stream of collector {name} is {why}; skipped")
                elif entry.get("status") in ("ok", "degraded"):
                    data.warnings.append(f"{cap.member_path(rel)}: stream of collector {name} is missing")
                continue
            display = cap.member_path(rel)
            ctx = context_for(display, fmt, entry, start, end, target)
            head = cap.read_head(rel, 4096)
            if head == "":
                if entry.get("status") in ("ok", "degraded") and entry.get("events"):
                    data.warnings.append(f"{display}: stream is empty")
                continue
            if "\0" in head:
                # a collector writes text; NULs are a damaged or planted file (a run of zeros
                # would otherwise be read as one line as long as the file)
                raise ParseError(display, None, f"stream holds binary data (NUL bytes), not {fmt} text: the "
                                                "capture is damaged")
            with cap.open_text(rel) as f:
                data.extend(parse_stream(f, parser_for(fmt), ctx, label=name).data)
    finally:
        cap.close()
    return data


def _expand(paths: list[str]) -> list[str]:
    out = []
    for p in paths:
        if os.path.isdir(p) and not is_capture(p):
            files = sorted(str(f) for f in Path(p).iterdir() if f.is_file() and not f.name.startswith("."))
            if not files:
                raise DiagError(f"{p}: directory is empty and has no manifest.json; nothing to replay")
            out.extend(files)
        else:
            out.append(p)
    return out


def load_inputs(paths: list[str], opts: LoadOptions | None = None) -> Dataset:
    """Parse every input (captures and raw files) into one Dataset."""
    opts = opts or LoadOptions()
    if not paths:
        raise DiagError("no input given; pass a capture directory/archive or trace files")
    data = Dataset()
    for p in _expand(paths):
        if not os.path.exists(p):
            raise DiagError(f"{p}: no such file or directory")
        if is_capture(p):
            d = load_capture(p)
            if data.manifest is None:
                data.manifest = d.manifest
            data.extend(d)
            continue
        ctx = ParseContext(path=p, offset_ns=opts.offsets.get(p, 0), date=opts.date, pid=opts.pid)
        if p in opts.offsets:
            ctx.uncertainty_ns = 0
        data.extend(parse_file(p, ctx, opts.fmt).data)
    return data


__all__ = ["LoadOptions", "load_inputs", "load_capture", "detect"]
