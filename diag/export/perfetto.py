"""Chrome trace-event JSON (the "JSON trace" ui.perfetto.dev and chrome://tracing open).

A track per thread: syscalls as complete slices ('X'), stack samples as thread-scoped instant
events ('i', the stack in args), requests as async slices ('b'/'e', their own track: a request
begins inside the read that brought it, so it cannot nest with the syscall slices), findings as
global markers ('i', scope 'g'), process snapshots as counters ('C'). Times are CLOCK_MONOTONIC
microseconds, so the trace lines up with `perf` traces of the same host.
"""
from __future__ import annotations

import json

from diag.syscalls import family


def _us(ns: int) -> float:
    return round(ns / 1000, 3)


def _stack(frames) -> list[str]:
    return [f.label() for f in frames]


def _syscall_slices(data) -> tuple[list[dict], int]:
    """Complete events per thread, properly nested: a call overlapping its predecessor (two
    sources of the same call, or clock jitter) is clipped to it, never left half-overlapping."""
    out, clipped = [], 0
    by_tid: dict[tuple[int, int], list] = {}
    for e in data.syscalls:
        if e.dur_ns is not None:
            by_tid.setdefault((e.pid, e.tid), []).append(e)
    for (pid, tid), calls in sorted(by_tid.items()):
        calls.sort(key=lambda e: (e.start_ns, -(e.dur_ns or 0)))
        open_ends: list[int] = []
        for e in calls:
            start, end = e.start_ns, e.start_ns + e.dur_ns
            while open_ends and open_ends[-1] <= start:
                open_ends.pop()
            if open_ends and end > open_ends[-1]:
                end = open_ends[-1]
                clipped += 1
            open_ends.append(end)
            args = {"fd": e.fd, "fd_kind": e.fd_kind.value, "bytes": e.nbytes, "ret": e.ret, "errno": e.errno,
                    "source": e.source, "dur_ns": e.dur_ns}
            out.append({"name": e.name, "cat": f"syscall,{family(e.name)}", "ph": "X", "ts": _us(start),
                        "dur": _us(end - start), "pid": pid, "tid": tid,
                        "args": {k: v for k, v in args.items() if v is not None}})
    return out, clipped


def _requests(data, report: dict, pid_of: dict[int, int]) -> list[dict]:
    reqs = []
    for r in getattr(data, "requests", None) or []:
        reqs.append({"pid": r.pid, "tid": r.tid, "start_ns": r.start_ns, "end_ns": r.end_ns, "fd": r.fd,
                     "bytes_in": r.bytes_in, "bytes_out": r.bytes_out})
    if not reqs:
        for r in (report.get("requests") or {}).get("slowest") or []:
            if r.get("start_ns") is not None and r.get("end_ns") is not None:
                reqs.append(dict(r))
    out = []
    for i, r in enumerate(sorted(reqs, key=lambda r: (r["start_ns"], r.get("tid") or 0))):
        tid = int(r.get("tid") or 0)
        pid = int(r.get("pid") or pid_of.get(tid) or 0)
        args = {k: v for k, v in r.items() if k not in ("pid", "tid", "start_ns", "end_ns") and
                isinstance(v, (int, float, str, bool))}
        args["latency_ms"] = round((r["end_ns"] - r["start_ns"]) / 1e6, 3)
        base = {"name": "request", "cat": "request", "id": i + 1, "pid": pid, "tid": tid}
        out.append(dict(base, ph="b", ts=_us(r["start_ns"]), args=args))
        out.append(dict(base, ph="e", ts=_us(r["end_ns"])))
    return out


def trace(data, report: dict) -> dict:
    pid_of: dict[int, int] = {}
    for e in data.syscalls:
        pid_of.setdefault(e.tid, e.pid)
    for s in data.samples:
        if s.pid:
            pid_of.setdefault(s.tid, s.pid)
    target = report.get("target") or {}
    main_pid = target.get("pid") or (next(iter(sorted(set(pid_of.values()))), 0) if pid_of else 0)
    events: list[dict] = []
    slices, clipped = _syscall_slices(data)
    events.extend(slices)
    for s in data.samples:
        if s.ts_ns is None or not s.frames:
            continue
        pid = int(s.pid or pid_of.get(s.tid) or main_pid or 0)
        leaf = s.frames[-1].label()
        args = {"stack": _stack(s.frames), "source": s.source}
        if s.on_cpu is not None:
            args["on_cpu"] = s.on_cpu
        if s.dur_ns is not None:
            args["off_cpu_ms"] = round(s.dur_ns / 1e6, 3)
        if s.weight != 1:
            args["weight"] = s.weight
        kind = "off-CPU" if s.on_cpu is False else "sample"
        events.append({"name": f"{kind}: {leaf}", "cat": f"stack,{s.source}", "ph": "i", "s": "t",
                       "ts": _us(s.ts_ns), "pid": pid, "tid": int(s.tid), "args": args})
    events.extend(_requests(data, report, pid_of))
    for f in report.get("findings") or []:
        windows = [e["window"] for e in f.get("evidence") or [] if e.get("window")]
        ts = min((w["start_ns"] for w in windows), default=(report.get("window") or {}).get("start_ns") or 0)
        events.append({"name": f"finding: {f['id']} ({f.get('severity')}, {f.get('share', 0):.0%})",
                       "cat": "finding", "ph": "i", "s": "g", "ts": _us(ts), "pid": int(main_pid or 0), "tid": 0,
                       "args": {"summary": f.get("summary"), "recommendation": f.get("recommendation"),
                                "evidence": [e.get("text") for e in f.get("evidence") or []]}})
    for snap in data.snapshots:
        events.append({"name": "process", "cat": "snapshot", "ph": "C", "ts": _us(snap.ts_ns), "pid": int(snap.pid),
                       "tid": 0, "args": {"rss_mb": round(snap.rss_bytes / 2**20, 2), "threads": snap.num_threads,
                                          "fds": snap.num_fds}})
    # Metadata: name the process and thread tracks.
    label = target.get("comm") or " ".join(target.get("cmdline") or []) or "target"
    threads: dict[tuple[int, int], str | None] = {}
    for ev in events:
        if ev["tid"]:
            threads.setdefault((ev["pid"], ev["tid"]), None)
    for s in data.samples:
        if s.thread_name:
            threads[(int(s.pid or pid_of.get(s.tid) or main_pid or 0), s.tid)] = s.thread_name
    meta = [{"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": f"{label} ({pid})"}}
            for pid in sorted({p for p, _ in threads} | ({int(main_pid)} if main_pid else set()))]
    meta += [{"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
              "args": {"name": f"{name or 'tid'} {tid}" if name else f"tid {tid}"}}
             for (pid, tid), name in sorted(threads.items())]
    events.sort(key=lambda e: (e["ts"], e["pid"], e["tid"], 0 if e["ph"] == "X" else 1, -e.get("dur", 0)))
    return {"traceEvents": meta + events, "displayTimeUnit": "ms",
            "metadata": {"exporter": "diag", "schema": report.get("schema"), "clock": "CLOCK_MONOTONIC",
                         "clipped_syscalls": clipped, "target": label}}


def dumps(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n"
