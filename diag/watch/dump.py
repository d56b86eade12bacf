"""One dump: what the ring holds of the last `--before` seconds, the full collectors for `--after`
seconds, the analysis, the report; all in one ordinary capture directory.

Order: the full collectors (perf, py-spy on Python targets, the process sampler) start at once,
so the seconds right after the trigger are seen with stacks; when `--after` has passed they are
stopped, the agent is asked to close its segment (so the ring holds everything up to now), and
the segments from `trigger - before` to now are merged into streams/ebpf.jsonl
(diag/watch/ringdump.py). The capture then loads and replays like any other (`diag replay DIR`).
The manifest says why and when (`watch`), and the window the ring really covered.
"""
from __future__ import annotations

import datetime as _dt
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from diag.capture.bundle import CaptureWriter
from diag.capture.clock import ClockPair, monotonic_ns, read_pair
from diag.capture.ebpf_stream import MAIN as EBPF_STREAM
from diag.collect import make
from diag.collect.base import DEGRADED, OK, Target
from diag.collect.session import start_collectors, stop_all
from diag.agent.segments import PIN, read_state
from diag.watch import ringdump


def pin(ring_dir: Path, from_ns: int, seconds: float) -> None:
    """Ask the agent to keep the segments from `from_ns` on (for at most `seconds`)."""
    import json
    import os

    now = monotonic_ns()
    tmp = ring_dir / (PIN + ".tmp")
    tmp.write_text(json.dumps({"from_ns": from_ns, "to_ns": now + int(1e12), "expires_ns": now + int(seconds * 1e9)}))
    os.replace(tmp, ring_dir / PIN)


def unpin(ring_dir: Path) -> None:
    try:
        (ring_dir / PIN).unlink()
    except OSError:
        pass


@dataclass
class DumpRequest:
    reason: str                  # the trigger's expression, "SIGUSR1" or "--dump"
    slug: str                    # for the directory name
    detail: str                  # what was measured
    trigger_ns: int              # CLOCK_MONOTONIC
    trigger_wall: _dt.datetime


@dataclass
class DumpResult:
    capture: Path
    report: dict | None = None
    json_path: Path | None = None
    html_path: Path | None = None
    covered_s: float = 0.0
    asked_s: float = 0.0
    error: str | None = None
    collectors: dict = field(default_factory=dict)


def dump_name(req: DumpRequest) -> str:
    return f"{req.trigger_wall.strftime('%Y%m%dT%H%M%SZ')}-{req.slug}"


def pair_at(monotonic: int) -> ClockPair:
    """A clock pair for a past CLOCK_MONOTONIC instant (the window's start, from the ring)."""
    now = read_pair()
    return ClockPair(now.realtime_ns - (now.monotonic_ns - monotonic), monotonic, now.gap_ns)


def after_collectors(target: Target) -> list:
    names = ["process", "perf"] + (["py-spy"] if target.is_python else [])
    return [make(n, perf_frequency=99, pyspy_rate=100, process_interval=0.5) for n in names]


def run_dump(req: DumpRequest, out: Path, ring_dir: Path, agent, target: Target, before_s: float, after_s: float,
             stop: threading.Event, settle_s: float) -> DumpResult:
    cap = out / dump_name(req)
    n = 1
    while cap.exists():
        n += 1
        cap = out / f"{dump_name(req)}-{n}"
    writer = CaptureWriter(cap, target.to_json(), "watch")
    writer.manifest["watch"] = {"trigger": req.reason, "detail": req.detail, "trigger_monotonic_ns": req.trigger_ns,
                                "trigger_time": req.trigger_wall.isoformat(), "before_s": before_s, "after_s": after_s}
    writer.save()
    res = DumpResult(cap, asked_s=before_s + after_s)
    # the ring keeps the window from now on (a flood would otherwise push it out before it is copied)
    pin(ring_dir, req.trigger_ns - int(before_s * 1e9), after_s + settle_s + 120)
    started: list = []
    try:
        if after_s > 0:
            started, skipped = start_collectors(after_collectors(target), target, writer)
            res.collectors.update({k: f"unavailable: {v}" for k, v in skipped.items()})
            stop.wait(after_s)
    finally:
        stop_all(started, writer)
    end_ns = monotonic_ns()
    # the segment being written ends now: ask the agent to close it, wait until it has
    agent.cut()
    deadline = time.monotonic() + settle_s
    cov = ringdump.select(ring_dir, req.trigger_ns - int(before_s * 1e9), end_ns)
    while time.monotonic() < deadline and (not cov.segments or cov.end_ns < end_ns):
        time.sleep(0.1)
        cov = ringdump.select(ring_dir, req.trigger_ns - int(before_s * 1e9), end_ns)
    start_ns = req.trigger_ns - int(before_s * 1e9)
    if cov.segments:
        try:
            totals = ringdump.merge(ring_dir, cov, writer.stream_path(EBPF_STREAM))
        finally:
            unpin(ring_dir)
        cov.dropped = dict((read_state(ring_dir) or {}).get("dropped") or cov.dropped)
        status = OK
        notes = []
        if cov.start_ns > start_ns + 1_000_000_000:
            notes.append(f"the ring covered {(req.trigger_ns - cov.start_ns) / 1e9:.1f} s before the trigger of "
                         f"{before_s:g} s asked (older segments were dropped to keep it under its bound)")
        if int(cov.dropped.get("records") or 0):
            notes.append(f"{cov.dropped['records']} records dropped by the ring while it was full (kept for this dump)")
        if totals["lost"] or totals["lost_requests"]:
            notes.append(f"{totals['lost']} slow-call and {totals['lost_requests']} request records lost in the "
                         "kernel (buffer full)")
        if notes:
            status = DEGRADED
        h = totals["header"]
        writer.set_collector("ebpf", status=status, stream=EBPF_STREAM, format="ebpf-jsonl",
                             events=totals["events"], lost=totals["lost"], requests=totals["requests"],
                             lost_requests=totals["lost_requests"], **({"reason": "; ".join(notes)} if notes else {}),
                             settings={"slow_ns": h.get("slow_ns"), "requests": bool(h.get("requests")),
                                       "request_export": h.get("request_export"), "follow": h.get("follow"),
                                       "tracepoints": h.get("tracepoints"), "source": "watch ring"},
                             ring={"segments": [s["name"] for s in cov.segments], "start_ns": cov.start_ns,
                                   "end_ns": cov.end_ns, "covered_s": round(cov.seconds, 3),
                                   "before_trigger_s": round((req.trigger_ns - cov.start_ns) / 1e9, 3),
                                   "dropped": cov.dropped, "older_run_segments_left_out": cov.left_out,
                                   "segments_cut": totals["segments_cut"]})
        res.covered_s = cov.seconds
        writer.manifest["clock"]["start"] = pair_at(min(cov.start_ns, writer.manifest["clock"]["start"]["monotonic_ns"])).to_json()
    else:
        unpin(ring_dir)
        writer.set_collector("ebpf", status="failed", reason="the ring held no closed segment for this window")
    writer.manifest["end_reason"] = "dump"
    writer.finish("complete")
    return res


def analyse(res: DumpResult) -> DumpResult:
    """The report of a dump, written beside it as report.json and report.html."""
    from diag.analyze.report import build_report
    from diag.load import load_capture
    from diag import render
    from diag.render import html, json_report

    try:
        res.report = build_report(load_capture(str(res.capture)))
        res.json_path = res.capture / "report.json"
        render.write(res.report, str(res.json_path), json_report)
        res.html_path = res.capture / "report.html"
        render.write(res.report, str(res.html_path), html)
    except Exception as e:         # the capture is kept whatever the analysis does
        res.error = f"analysis failed: {type(e).__name__}: {e}"
    return res


def light_report(out: Path, ring_dir: Path, agent, target: Target, window_s: float) -> dict | None:
    """The report of the ring's last `window_s` seconds, eBPF only, for finding triggers: a
    capture in OUT/.analysis that is replaced at each run (never kept)."""
    import shutil

    from diag.analyze.report import build_report
    from diag.load import load_capture

    end_ns = monotonic_ns()
    pin(ring_dir, end_ns - int(window_s * 1e9), 30)
    agent.cut()
    deadline = time.monotonic() + 3.0
    cov = ringdump.select(ring_dir, end_ns - int(window_s * 1e9), end_ns)
    while time.monotonic() < deadline and (not cov.segments or cov.end_ns < end_ns):
        time.sleep(0.1)
        cov = ringdump.select(ring_dir, end_ns - int(window_s * 1e9), end_ns)
    if not cov.segments:
        unpin(ring_dir)
        return None
    work = out / ".analysis"
    shutil.rmtree(work, ignore_errors=True)
    writer = CaptureWriter(work, target.to_json(), "watch-analysis")
    try:
        ringdump.merge(ring_dir, cov, writer.stream_path(EBPF_STREAM))
    finally:
        unpin(ring_dir)
    writer.set_collector("ebpf", status=OK, stream=EBPF_STREAM, format="ebpf-jsonl")
    writer.manifest["clock"]["start"] = pair_at(cov.start_ns).to_json()
    writer.finish("complete")
    try:
        return build_report(load_capture(str(work)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
