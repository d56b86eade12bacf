"""The analysis entry point: a Dataset in, the report (schema `diag.report/1`) out, as plain data.

Renderers (terminal, JSON, HTML) only read this dict; nothing downstream looks at raw records.
"""
from __future__ import annotations

from diag import __version__
from diag.align import alignment_summary, stream_time_range
from diag.analyze import coverage, matrix, stats
from diag.analyze.context import AnalysisContext
from diag.analyze.rules import run_rules
from diag.model import Dataset, Finding
from diag.syscalls import WAIT_NAMES, family
from diag.redact import redact_target, redact_text

SCHEMA = "diag.report/1"


def _collectors(data: Dataset) -> dict:
    """Per collector: status, events, lost, reason. From the manifest, else from the streams."""
    out: dict[str, dict] = {}
    m = data.manifest or {}
    for name, c in sorted((m.get("collectors") or {}).items()):
        out[name] = {"status": c.get("status", "unknown"), "events": int(c.get("events") or 0),
                     "lost": int(c.get("lost") or 0), "reason": c.get("reason"),
                     "format": c.get("format"), "settings": c.get("settings") or {},
                     "observer": c.get("observer") or {}}
    for s in data.streams:
        entry = out.setdefault(s.name, {"status": "ok", "events": 0, "lost": 0, "reason": None,
                                        "format": s.format, "settings": {}})
        entry["records"] = entry.get("records", 0) + s.records
        if s.warnings and entry["status"] == "ok":
            entry["status"] = "degraded"
            entry["reason"] = s.warnings[0]
    return out


def _target(data: Dataset, redact: bool) -> dict:
    m = data.manifest or {}
    t = dict(m.get("target") or {})
    if not t:
        pids = sorted({e.pid for e in data.syscalls} | {s.pid for s in data.samples if s.pid})
        t = {"pid": pids[0] if len(pids) == 1 else None, "pids": pids[:50], "inputs": [s.path for s in data.streams]}
    elif redact:
        # a capture made with --no-redact, or by an older diag: redacted again when reported
        t = redact_target(t)
    return t


def access_section(data: Dataset, redact: bool) -> dict | None:
    """Who captured, how the capture's files are protected, whether secrets were redacted."""
    m = data.manifest
    if m is None:
        return None
    a = dict(m.get("access") or {})
    target = m.get("target") or {}
    return {"attached_by": a.get("attached_by"), "file_modes": a.get("file_modes"),
            "target_user": target.get("user"), "target_uid": target.get("uid"),
            "redacted_in_capture": a.get("redacted"), "redacted_in_report": redact}


def observer_section(ctx: AnalysisContext) -> dict:
    """What measuring cost: each collector's CPU, against the target's own CPU meanwhile."""
    m = ctx.data.manifest or {}
    tools = {n: c.get("observer") for n, c in (m.get("collectors") or {}).items() if c.get("observer")}
    target = None
    used = ctx.process_cpu()
    if used:
        cpu, secs, per = used
        target = {"cpu_s": round(cpu, 3), "seconds": round(secs, 3), "cores": round(cpu / secs, 4) if secs else None,
                  "processes": len(per)}
    return {"collectors": tools, "tools_cpu_s": round(sum(t.get("cpu_s_capture", 0) for t in tools.values()), 3),
            "target": target}


def _finding_json(rank: int, f: Finding) -> dict:
    return {"id": f.id, "rank": rank, "severity": f.severity, "share": round(f.share, 4), "summary": f.summary,
            "impact_ns": f.impact_ns,
            "evidence": [{"source": e.source, "text": e.text,
                          "window": {"start_ns": e.window[0], "end_ns": e.window[1]} if e.window else None}
                         for e in f.evidence],
            "recommendation": f.recommendation}


def _event_json(e) -> dict:
    return {"name": e.name, "family": family(e.name), "pid": e.pid, "tid": e.tid, "start_ns": e.start_ns,
            "dur_ns": e.dur_ns, "fd": e.fd, "fd_kind": e.fd_kind.value, "bytes": e.nbytes, "ret": e.ret,
            "errno": e.errno, "source": e.source}


MAX_FLAME_STACKS = 400
TIMELINE_PAD_NS = 20_000_000


def _stack_labels(frames) -> list[str]:
    return [f.label() for f in frames]


def flame(samples, limit: int = MAX_FLAME_STACKS) -> dict:
    """Folded stacks (root first) with sample counts, the heaviest `limit` kept; the rest summed
    into `dropped` so totals stay true."""
    from collections import Counter

    c: Counter[tuple[str, ...]] = Counter()
    for s in samples:
        if s.frames:
            c[tuple(_stack_labels(s.frames))] += s.weight
    top = c.most_common(limit)
    kept = sum(n for _, n in top)
    return {"total": sum(c.values()), "dropped": sum(c.values()) - kept,
            "stacks": [{"frames": list(k), "count": n} for k, n in top]}


def timeline(ctx: AnalysisContext, start_ns: int, end_ns: int, tid: int, max_events: int = 300) -> dict:
    """Everything the streams saw on thread `tid` in a window: syscalls, stack samples (py-spy,
    perf), off-CPU kernel stacks (eBPF). The HTML report draws them on one axis."""
    t0, t1 = start_ns - TIMELINE_PAD_NS, end_ns + TIMELINE_PAD_NS
    calls = ctx.idx.overlapping(tid, t0, t1)      # per-thread index: no scan of every call
    samples = ctx.samples_in(tid, t0, t1)
    return {
        "tid": tid, "start_ns": t0, "end_ns": t1,
        "syscalls": [_event_json(e) for e in calls[:max_events]],
        "samples": [{"ts_ns": s.ts_ns, "source": s.source, "on_cpu": s.on_cpu, "dur_ns": s.dur_ns,
                     "frames": _stack_labels(s.frames)} for s in samples[:max_events]],
    }


def _request_json(r, breakdown: dict | None = None) -> dict:
    d = {"start_ns": r.start_ns, "end_ns": r.end_ns, "latency_ns": r.latency_ns, "pid": r.pid, "tid": r.tid,
         "fd": r.fd, "bytes_in": r.bytes_in, "bytes_out": r.bytes_out, "reads": r.reads, "writes": r.writes,
         "write_tid": r.write_tid, "seq": r.seq, "source": r.source}
    if breakdown is not None:
        d["breakdown"] = {k: v for k, v in sorted(breakdown.items()) if v}
    return d


def by_process(ctx: AnalysisContext) -> list[dict]:
    """A tree's requests per process (a pre-fork master's workers), with each member's role: which
    worker served the slow ones, and whether one lags the others. Empty for one process."""
    ra = ctx.req
    pids = {r.pid for r in ra.requests}
    members = {m["pid"]: m for m in ctx.members}
    if len(pids | set(members)) < 2:
        return []
    slow = {}
    for s in ra.slow:
        slow[s.request.pid] = slow.get(s.request.pid, 0) + 1
    rows = []
    for pid in sorted(pids | set(members)):
        lat = sorted((ra.latency(r), r.weight) for r in ra.requests if r.pid == pid)
        m = members.get(pid, {})
        rows.append({"pid": pid, "ns_pid": m.get("ns_pid"), "role": m.get("role"),
                     "requests": sum(w for _, w in lat), "slow": slow.get(pid, 0),
                     "p50_ns": stats.weighted_percentile(lat, 50) if lat else None,
                     "p99_ns": stats.weighted_percentile(lat, 99) if lat else None})
    return rows


def requests_section(ctx: AnalysisContext) -> dict | None:
    ra = ctx.req
    if ra is None:
        return None
    hist: dict[int, int] = {}
    if ra.histogram is not None and ra.histogram.count > len(ra.requests):
        for lo, _hi, n in ra.histogram.slots:          # every request, exported or not
            b = stats.log2_bucket(lo)
            hist[b] = hist.get(b, 0) + n
    else:
        for r in ra.requests:
            b = stats.log2_bucket(ra.latency(r))
            hist[b] = hist.get(b, 0) + r.weight
    breakdown: dict[str, int] = {}
    for sr in ra.slow:
        for k, v in sr.breakdown.items():
            breakdown[k] = breakdown.get(k, 0) + v
    worst = sorted(ra.slow, key=lambda s: ra.latency(s.request), reverse=True)[:10]
    out = {
        "count": ra.count, "exported": len(ra.requests), "source": ra.source, "inflight": ra.inflight,
        "slow_threshold_ns": ra.threshold_ns, "slow_threshold_from": ra.threshold_from,
        "slow_count": len(ra.slow), "slow_total_ns": ra.slow_total_ns,
        "latency_kind": "client-visible" if ra.client_visible else "server-side",
        "latency": {"p50_ns": ra.percentile(50), "p90_ns": ra.percentile(90), "p99_ns": ra.percentile(99),
                    "max_ns": max((ra.latency(r) for r in ra.requests), default=0)},
        "histogram": sorted([lo, n] for lo, n in hist.items()),
        "breakdown": {k: v for k, v in sorted(breakdown.items()) if v},
        "slowest": [_request_json(s.request, s.breakdown) for s in worst],
        "connections": len({(r.pid, r.fd, r.conn_start_ns) for r in ra.requests}),
        "by_process": by_process(ctx),
    }
    if ra.client_visible:
        server = ctx.data.request_hists.get("server") if ra.histogram is not None else None
        if server is not None:
            out["server_latency"] = {f"p{q}_ns": stats.slots_percentile(server.slots, q) for q in (50, 90, 99)}
        else:
            lat = sorted((r.latency_ns, r.weight) for r in ra.requests)
            out["server_latency"] = {f"p{q}_ns": stats.weighted_percentile(lat, q) for q in (50, 90, 99)}
        out["server_latency"]["max_ns"] = max((r.latency_ns for r in ra.requests), default=0)
        queued = [r.queued_ns for r in ra.requests if r.queued_ns is not None]
        out["accept_queue"] = {"connections": len(queued), "max_ns": max(queued, default=0),
                               "total_ns": sum(queued)}
    return out


def _timelines(ctx: AnalysisContext, spikes) -> list[dict]:
    """The windows the HTML draws: the worst slow requests, else the worst syscall spikes."""
    if ctx.req is not None and ctx.req.slow:
        worst = sorted(ctx.req.slow, key=lambda s: ctx.req.latency(s.request), reverse=True)[:3]
        out = []
        for s in worst:
            t = timeline(ctx, s.request.start_ns, s.request.end_ns, s.request.tid)
            t["request"] = _request_json(s.request, s.breakdown)
            out.append(t)
        return out
    return [timeline(ctx, s.worst.start_ns, s.worst.end_ns, s.worst.tid) for s in spikes[:3]]


def build_report(data: Dataset, slow_ns: int | None = None, redact: bool = True) -> dict:
    """The report. `redact`: secrets in the target's command line and in warnings that quote
    input lines are replaced (diag.redact), whatever the capture holds."""
    ctx = AnalysisContext(data, slow_ns=slow_ns)
    window = stream_time_range(data)
    m = data.manifest or {}
    if m.get("clock", {}).get("start"):
        start = m["clock"]["start"]["monotonic_ns"]
        end = (m["clock"].get("end") or {}).get("monotonic_ns") or (window[1] if window else start)
    elif window:
        start, end = window
    else:
        start = end = 0
    findings = run_rules(ctx)
    rows = matrix.evaluate(ctx)
    fired = {f.id for f in findings}
    by_syscall = sorted(ctx.by_syscall.items(), key=lambda kv: kv[1].total_ns, reverse=True)
    spikes = stats.spikes(data.syscalls)
    return {
        "schema": SCHEMA,
        "tool": {"name": "diag", "version": __version__},
        "target": _target(data, redact),
        "access": access_section(data, redact),
        "host": m.get("host"),
        "window": {"start_ns": start, "end_ns": end, "duration_s": round((end - start) / 1e9, 6)},
        "collectors": _collectors(data),
        "observer": observer_section(ctx),
        "alignment": alignment_summary(data),
        "counts": {"syscalls": len(data.syscalls), "timed_syscalls": len(ctx.timed_syscalls),
                   "stack_samples": sum(s.weight for s in data.samples), "snapshots": len(data.snapshots),
                   "threads": len({e.tid for e in data.syscalls} | {s.tid for s in data.samples})},
        "latency": {
            "syscalls": [{"name": name, "fd_kind": kind.value, "family": family(name), **st.to_json()}
                         for (name, kind), st in by_syscall],
            "families": {fam: st.to_json() for fam, st in sorted(ctx.by_family.items())},
        },
        "slowest": [_event_json(e) for e in stats.slowest(data.syscalls, 10)],
        "slowest_waits": [_event_json(e) for e in stats.slowest(
            [e for e in data.syscalls if e.name in WAIT_NAMES], 5, include_waits=True)],
        "spikes": [{"start_ns": s.start_ns, "end_ns": s.end_ns, "calls": s.calls, "total_ns": s.total_ns,
                    "worst": _event_json(s.worst)} for s in spikes],
        "requests": requests_section(ctx),
        "timelines": _timelines(ctx, spikes),
        "flame": {"all": flame(data.samples),
                  **({"slow": flame([x for s in ctx.req.slow for x in s.samples])} if ctx.req and ctx.req.slow else {})},
        "matrix": [dict(r.to_json(), findings=[f for f in r.findings if f in fired]) for r in rows],
        "findings": [_finding_json(i, f) for i, f in enumerate(findings, 1)],
        "limits": coverage.limits(data, ctx.req is not None),
        "warnings": list(dict.fromkeys(redact_text(w) if redact else w for w in data.warnings)),
    }
