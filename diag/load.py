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

from diag.align import align_raw, clock_domain, clock_kind, context_for
from diag.capture.bundle import Capture, is_capture, open_capture
from diag.errors import DiagError, ParseError
from diag.model import Clock, Dataset
from diag.parse import detect, parse_file, parse_stream, parser_for
from diag.parse.base import ParseContext


@dataclass
class LoadOptions:
    """What the user told us about raw files (no manifest to tell us)."""

    fmt: str | None = None              # force a format for raw files
    date: _dt.date | None = None        # date of strace -t/-tt stamps
    pid: int | None = None              # pid of a strace log without pid prefixes
    # file -> ns (--offset FILE=+S): FILE's times plus S are on the reference stream's clock; a
    # relative clock (py-spy chrometrace, strace -r, perf trace) counts from the reference's start
    offsets: dict[str, int] = field(default_factory=dict)


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
            ctx.read_companion = _companions(cap, rel)
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


def _companions(cap: Capture, rel: str):
    """Files a stream names beside itself, read from the capture (directory or archive)."""
    import posixpath

    base = posixpath.dirname(rel)
    return lambda name: cap.read_bytes(posixpath.join(base, name) if base else name)


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
    """Parse every input (captures and raw files) into one Dataset, on one time base.

    Captures carry their clocks in their manifest. Raw files are parsed one by one, then put on
    one clock by `diag.align.align_raw` (explicit offsets, thread activity, or side by side)."""
    opts = opts or LoadOptions()
    if not paths:
        raise DiagError("no input given; pass a capture directory/archive or trace files")
    data = Dataset()
    anchored: Dataset | None = None
    raw = []
    pthread_ids: dict[int, int] = {}
    expanded = _expand(paths)
    for key in opts.offsets:
        if key not in expanded and not any(os.path.samefile(key, p) for p in expanded if os.path.exists(key)):
            raise DiagError(f"--offset {key}: not one of the inputs ({', '.join(expanded)})")
    for p in expanded:
        if not os.path.exists(p):
            raise DiagError(f"{p}: no such file or directory")
        if is_capture(p):
            d = load_capture(p)
            if data.manifest is None:
                data.manifest = d.manifest
            anchored = anchored or Dataset()
            anchored.extend(d)
            continue
        ctx = ParseContext(path=p, date=opts.date, pid=opts.pid)
        ps = parse_file(p, ctx, opts.fmt)
        ps.info.domain = clock_domain(ps.info.format, ps.info.clock, ctx.clock, p)
        if ps.info.clock is not Clock.NONE and ps.info.domain is not None and ps.info.domain != "monotonic":
            ps.info.uncertainty_ns = None       # until align_raw says how it lines up
        pthread_ids.update(ctx.pthread_ids)
        raw.append(ps)
    offsets = {}
    for key, ns in opts.offsets.items():
        for ps in raw:
            if ps.info.path == key or (os.path.exists(key) and os.path.samefile(key, ps.info.path)):
                offsets[ps.info.path] = ns
    # one clock among the raw files and no capture: nothing to align (and nothing to pay for)
    timed = {ps.info.domain for ps in raw if ps.info.domain is not None and ps.info.records}
    needed = (len(timed) > 1 or (anchored is not None and timed - {"monotonic"}) or offsets
              or (pthread_ids and any(ps.data.samples for ps in raw)))
    notes = align_raw(raw, offsets, pthread_ids, anchored) if raw and needed else []
    if raw and not needed:
        for ps in raw:
            if ps.info.domain is not None:
                ps.info.method = f"its own clock ({clock_kind(ps.info.domain)}); the only one in the inputs"
                ps.info.uncertainty_ns = ps.info.uncertainty_ns if ps.info.uncertainty_ns is not None else 0
            else:
                ps.info.method = "no timestamps: profiles only, never in a time window"
    if anchored is not None:
        data.extend(anchored)
    for ps in raw:
        data.extend(ps.data)
    data.warnings.extend(notes)
    data.target_pid = opts.pid
    return data


__all__ = ["LoadOptions", "load_inputs", "load_capture", "detect"]
