"""The HTML report: one self-contained file (inline CSS, JS, data; no network), from the report dict.

Templates live in `reports/templates`, assets in `reports/static`. Every string from the target
reaches the page through Jinja autoescape (markup) or `|tojson` (data read by our script, which
writes it with textContent only). A Content-Security-Policy with the hashes of our own inline
scripts makes the browser refuse any script a hostile name might still smuggle in, and any fetch.
"""
from __future__ import annotations

import base64
import hashlib
import math
from pathlib import Path

from diag.render.access import access_rows
from diag.resources import reports_dir
from diag.units import fmt_count, fmt_duration, fmt_pct

EXTENSION = ".html"
NAME = "html"

MAX_SYSCALL_ROWS = 40
# Request breakdown keys (docs/report-schema.md) that are not syscall families.
BREAKDOWN_COLORS = {"user": "#59a14f", "file": "#ff9da7", "upstream": "#9467bd", "socket": "#4e79a7",
                    "cpu": "#59a14f", "runq": "#d37295"}
MAX_SAMPLE_MARKS = 300
FAMILY_COLORS = {"read": "#4e79a7", "write": "#f28e2b", "sync": "#e15759", "poll": "#9c9c9c", "accept": "#76b7b2",
                 "connect": "#59a14f", "close": "#b07aa1", "futex": "#edc948", "sleep": "#bab0ac",
                 "other": "#7f7f7f"}


# ---------------------------------------------------------------- view model (pure functions)

def verdict(report: dict) -> dict:
    findings = report.get("findings") or []
    bad = [f for f in findings if f.get("severity") in ("warning", "critical")]
    counts = report.get("counts") or {}
    if bad:
        top = bad[0]
        return {"level": top["severity"], "head": f"{top['severity'].upper()}: {top['id']} explains "
                                                  f"{fmt_pct(top.get('share'))} of the time",
                "text": top.get("summary", "")}
    if not counts.get("timed_syscalls") and not counts.get("stack_samples") and not (report.get("requests") or {}).get("count"):
        return {"level": "empty", "head": "Nothing to diagnose",
                "text": "no timed events were captured: check the collector status below"}
    limits = report.get("limits") or []
    blind = f"; these inputs cannot show everything: {limits[0]}" if limits else ""
    if findings:
        top = findings[0]
        return {"level": "info", "head": "No warning or critical finding",
                "text": f"top finding (info): {top['id']} explains {fmt_pct(top.get('share'))}: "
                        f"{top.get('summary', '')}{blind}"}
    if limits:
        return {"level": "info", "head": "No finding in what these inputs show", "text": limits[0]}
    return {"level": "healthy", "head": "Healthy", "text": "no warning or critical finding"}


def _log_axis(values: list[float]) -> tuple[float, float]:
    pos = [v for v in values if v and v > 0]
    if not pos:
        return 1e3, 1e9
    lo = 10 ** math.floor(math.log10(min(pos)))
    hi = 10 ** math.ceil(math.log10(max(pos)))
    return lo, hi if hi > lo else lo * 10


def _x(v: float, lo: float, hi: float) -> float:
    v = min(max(v or lo, lo), hi)
    return round((math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * 1000, 1)


def distributions(report: dict) -> dict:
    """Percentile ladders on one shared log axis: requests (if any) then each syscall family."""
    lat = report.get("latency") or {}
    fams = lat.get("families") or {}
    req = report.get("requests") or {}
    rows = []
    if req.get("count"):
        rows.append({"name": "requests", "kind": "requests", "count": req.get("count"),
                     "approx": False, **{k: (req.get("latency") or {}).get(f"{k}_ns") for k in ("p50", "p90", "p99", "max")}})
    for name, st in sorted(fams.items(), key=lambda kv: -(kv[1].get("total_ns") or 0)):
        rows.append({"name": name, "kind": "family", "count": st.get("count"), "total_ns": st.get("total_ns"),
                     "approx": bool(st.get("approx")), **{k: st.get(f"{k}_ns") for k in ("p50", "p90", "p99", "max")}})
    lo, hi = _log_axis([r[k] for r in rows for k in ("p50", "max")])
    for r in rows:
        r["x"] = {k: _x(r[k], lo, hi) for k in ("p50", "p90", "p99", "max")}
        r["color"] = FAMILY_COLORS.get(r["name"], "#333") if r["kind"] == "family" else "#222"
    ticks = []
    t = lo
    while t <= hi * 1.0001:
        ticks.append({"x": _x(t, lo, hi), "label": fmt_duration(t)})
        t *= 10
    return {"rows": rows, "ticks": ticks}


def request_histogram(report: dict) -> dict | None:
    req = report.get("requests") or {}
    hist = [b for b in (req.get("histogram") or []) if isinstance(b, (list, tuple)) and len(b) == 2]
    if not hist:
        return None
    top = max(c for _, c in hist) or 1
    w = 1000 / len(hist)
    slow = req.get("slow_threshold_ns")
    bars = [{"x": round(i * w, 1), "w": round(w - 2, 1), "h": round(c / top * 140, 1), "count": c,
             "label": fmt_duration(lo), "slow": slow is not None and lo >= slow} for i, (lo, c) in enumerate(hist)]
    return {"bars": bars, "label_every": max(1, len(bars) // 10)}


def breakdown(report: dict) -> list[dict]:
    return _bar((report.get("requests") or {}).get("breakdown") or {})


def _leaf(frames: list[str]) -> str:
    return frames[-1] if frames else "(no frames)"


def _bar(parts: dict, palette_key=None) -> list[dict]:
    """A stacked bar (0..1000) of {name: ns}, largest first."""
    total = sum(v for v in parts.values() if isinstance(v, (int, float)) and v > 0)
    if not total:
        return []
    out, x = [], 0.0
    palette = list(FAMILY_COLORS.values())
    for i, (name, ns) in enumerate(sorted(parts.items(), key=lambda kv: (-(kv[1] or 0), kv[0]))):
        if not isinstance(ns, (int, float)) or ns <= 0:
            continue
        w = ns / total * 1000
        out.append({"name": name, "ns": ns, "share": ns / total, "x": round(x, 1), "w": round(w, 1),
                    "color": BREAKDOWN_COLORS.get(name) or FAMILY_COLORS.get(name) or palette[i % len(palette)]})
        x += w
    return out


class StackTable:
    """Identical stacks stored once (frames as indices into one label list): the timelines of a
    busy capture repeat the same deep stacks hundreds of times."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.stacks: list[list[int]] = []
        self._frame_ix: dict[str, int] = {}
        self._stack_ix: dict[tuple[int, ...], int] = {}

    def add(self, frames) -> int:
        ids = []
        for f in frames or []:
            f = str(f)
            ix = self._frame_ix.get(f)
            if ix is None:
                ix = self._frame_ix[f] = len(self.frames)
                self.frames.append(f)
            ids.append(ix)
        key = tuple(ids)
        if key not in self._stack_ix:
            self._stack_ix[key] = len(self.stacks)
            self.stacks.append(list(key))
        return self._stack_ix[key]


def timeline_view(report: dict, i: int, tl: dict, table: StackTable | None = None) -> dict:
    """One slow request (or syscall spike): lanes on one time axis (request, syscalls, py-spy,
    perf, off-CPU kernel stacks) in SVG units, and the stacks at its worst moment."""
    t0, t1 = tl.get("start_ns") or 0, tl.get("end_ns") or 0
    span = max(t1 - t0, 1)
    W = 1000

    def x(ns):
        return round(min(max((ns - t0) / span * W, 0), W), 2)

    def wd(a, b):
        return round(max(x(b) - x(a), 0.8), 2)

    tid = tl.get("tid")
    req = tl.get("request") if isinstance(tl.get("request"), dict) else None
    calls = tl.get("syscalls") or []
    samples = tl.get("samples") or []
    if req and req.get("start_ns") is not None and req.get("end_ns") is not None:
        inside = [e for e in calls if e.get("dur_ns") and e["start_ns"] < req["end_ns"]
                  and e["start_ns"] + e["dur_ns"] > req["start_ns"]]
        worst = max(inside, key=lambda e: e["dur_ns"], default={})
        focus_window = (req["start_ns"], req["end_ns"])
    else:
        spikes = report.get("spikes") or []
        worst = (spikes[i].get("worst") if i < len(spikes) else None) or {}
        if worst.get("start_ns") is None:
            worst = max((e for e in calls if e.get("dur_ns")), key=lambda e: e["dur_ns"], default={})
        focus_window = ((worst["start_ns"], worst["start_ns"] + (worst.get("dur_ns") or 0))
                        if worst.get("start_ns") is not None else None)
    lanes: list[dict] = []
    reqs = [req] if req else [
        r for r in (report.get("requests") or {}).get("slowest") or []
        if r.get("tid") in (None, tid) and (r.get("end_ns") or 0) >= t0 and (r.get("start_ns") or 0) <= t1]
    reqs = [r for r in reqs if r.get("start_ns") is not None and r.get("end_ns") is not None]
    if reqs:
        lanes.append({"name": "request", "marks": [
            {"x": x(r["start_ns"]), "w": wd(r["start_ns"], r["end_ns"]), "cls": "req",
             "title": f"request {fmt_duration(r.get('latency_ns') or (r['end_ns'] - r['start_ns']))}"
                      + (f" fd {r['fd']}" if r.get("fd") is not None else "")
                      + (f", {r['bytes_in']:,} B in / {r.get('bytes_out') or 0:,} B out"
                         if isinstance(r.get("bytes_in"), int) else "")} for r in reqs]})
    lanes.append({"name": "syscalls", "marks": [
        {"x": x(e["start_ns"]), "w": wd(e["start_ns"], e["start_ns"] + (e.get("dur_ns") or 0)),
         "cls": "sc", "color": FAMILY_COLORS.get(e.get("family"), "#7f7f7f"),
         "title": f"{e.get('name')} {fmt_duration(e.get('dur_ns'))}"
                  + (f" fd {e['fd']} ({e.get('fd_kind')})" if e.get("fd") is not None else "")
                  + (f" {e['bytes']:,} B" if isinstance(e.get("bytes"), int) else "")
                  + (f" {e['errno']}" if e.get("errno") else "")} for e in calls if e.get("start_ns") is not None]})
    by_lane: dict[str, list] = {}
    table = table if table is not None else StackTable()
    for s in samples[:MAX_SAMPLE_MARKS]:
        off = s.get("on_cpu") is False and bool(s.get("dur_ns"))
        lane = f"{s.get('source')} off-CPU (kernel)" if off else f"{s.get('source')} stacks"
        ts = s.get("ts_ns") if s.get("ts_ns") is not None else t0
        idx = table.add(s.get("frames"))
        by_lane.setdefault(lane, []).append(
            {"x": x(ts), "w": wd(ts, ts + s["dur_ns"]) if off else 1.6, "cls": "off" if off else "smp", "i": idx,
             "title": (f"off-CPU {fmt_duration(s['dur_ns'])}: " if off else "") + _leaf(s.get("frames") or [])})
    order = sorted(by_lane, key=lambda n: (0 if "py-spy" in n else 1 if "off-CPU" not in n else 2, n))
    lanes.extend({"name": n, "marks": by_lane[n]} for n in order)
    for k, lane in enumerate(lanes):
        lane["y"] = 20 + k * 30

    # The stacks at the worst moment: the py-spy sample nearest the middle of the worst call (or of
    # the request), and the longest off-CPU kernel stack overlapping that call (or the request).
    focus = []
    if focus_window:
        a, b = (worst["start_ns"], worst["start_ns"] + (worst.get("dur_ns") or 0)) \
            if worst.get("start_ns") is not None else focus_window
        mid = (a + b) // 2
        py = [s for s in samples if s.get("source") == "py-spy" and s.get("ts_ns") is not None]
        if py:
            s = min(py, key=lambda s: abs(s["ts_ns"] - mid))
            focus.append({"what": f"py-spy frames of tid {tid}, {fmt_duration(abs(s['ts_ns'] - mid))} from the middle of "
                                  + (f"the {worst.get('name')}" if worst.get("name") else "the request"),
                          "frames": [str(f) for f in s.get("frames") or []]})
        off = [s for s in samples if s.get("on_cpu") is False and s.get("ts_ns") is not None
               and s["ts_ns"] <= b and s["ts_ns"] + (s.get("dur_ns") or 0) >= a]
        if off:
            s = max(off, key=lambda s: s.get("dur_ns") or 0)
            focus.append({"what": f"off-CPU kernel stack ({s.get('source')}), blocked {fmt_duration(s.get('dur_ns'))}",
                          "frames": [str(f) for f in s.get("frames") or []]})
    ticks = [{"x": round(k * W / 5, 1), "label": f"{k * span / 5 / 1e6:.1f} ms"} for k in range(6)]
    hi = None
    if worst.get("start_ns") is not None:
        hi = {"x": x(worst["start_ns"]), "w": wd(worst["start_ns"], worst["start_ns"] + (worst.get("dur_ns") or 0))}
    return {"n": i + 1, "tid": tid, "start_ns": t0, "end_ns": t1, "lanes": lanes, "ticks": ticks,
            "height": 30 + len(lanes) * 30, "worst": worst, "highlight": hi, "focus": focus,
            "request": req, "breakdown": _bar((req or {}).get("breakdown") or {}),
            "empty": not calls and not samples and not reqs}


def flame_data(flame: dict | None, table: StackTable) -> list[list[int]] | None:
    """Folded stacks as [[stack id, count], ...] in the shared table; the script builds the tree
    d3-flame-graph draws. Stacks the analysis summed into `dropped` stay visible as one block."""
    if not flame or not flame.get("stacks"):
        return None
    out = [[table.add(st.get("frames")), int(st.get("count") or 0)] for st in flame["stacks"]]
    if flame.get("dropped"):
        out.append([table.add(["(other stacks)"]), int(flame["dropped"])])
    return out


def top_leaves(flame: dict | None, n: int = 8) -> list[dict]:
    if not flame or not flame.get("stacks"):
        return []
    from collections import Counter

    c: Counter[str] = Counter()
    for st in flame["stacks"]:
        c[_leaf(st.get("frames") or [])] += int(st.get("count") or 0)
    total = flame.get("total") or sum(c.values()) or 1
    return [{"frame": f, "count": k, "share": k / total} for f, k in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def environment(report: dict) -> list[tuple[str, str]]:
    t = report.get("target") or {}
    h = report.get("host") or {}
    tool = report.get("tool") or {}
    rows = []
    if t.get("cmdline"):
        rows.append(("target command", " ".join(str(a) for a in t["cmdline"])))
    for k in ("comm", "pid"):
        if t.get(k) is not None:
            rows.append((f"target {k}", str(t[k])))
    if t.get("pids"):
        rows.append(("pids", ", ".join(str(p) for p in t["pids"])))
    if t.get("inputs"):
        rows.append(("inputs", ", ".join(str(p) for p in t["inputs"])))
    if h:
        rows.append(("kernel", f"{h.get('os', '')} {h.get('kernel', '?')} {h.get('machine', '')}".strip()))
        rows.append(("host", f"{h.get('hostname', '?')}, {h.get('cpus', '?')} CPUs"))
    rows.append(("diag", f"{tool.get('name', 'diag')} {tool.get('version', '?')}, schema {report.get('schema', '?')}"))
    for name, c in sorted((report.get("collectors") or {}).items()):
        v = c.get("version") or (c.get("settings") or {}).get("version")
        if v:
            rows.append((f"{name} version", str(v)))
    rows += access_rows(report)
    w = report.get("window") or {}
    if w:
        rows.append(("window", f"{w.get('duration_s', 0):.3f} s (CLOCK_MONOTONIC {w.get('start_ns')} .. {w.get('end_ns')})"))
    return rows


def _settings(s) -> str:
    if not isinstance(s, dict):
        return str(s or "")
    return ", ".join(f"{k}={v if not isinstance(v, (list, tuple)) else '+'.join(map(str, v))}" for k, v in sorted(s.items()))


def view(report: dict) -> dict:
    lat = report.get("latency") or {}
    flame = report.get("flame") or {}
    w = report.get("window") or {}
    t = report.get("target") or {}
    label = t.get("comm") or " ".join(t.get("cmdline") or []) or ", ".join(t.get("inputs") or []) or "capture"
    table = StackTable()
    timelines = [timeline_view(report, i, tl, table) for i, tl in enumerate(report.get("timelines") or [])]
    slow_tree = flame_data(flame.get("slow"), table)
    all_tree = flame_data(flame.get("all"), table)
    return {
        "r": report, "label": label, "verdict": verdict(report), "window": w,
        "findings": report.get("findings") or [], "matrix": report.get("matrix") or [],
        "dist": distributions(report), "hist": request_histogram(report), "breakdown": breakdown(report),
        "requests": report.get("requests") or None,
        "syscalls": (lat.get("syscalls") or [])[:MAX_SYSCALL_ROWS],
        "syscalls_more": max(len(lat.get("syscalls") or []) - MAX_SYSCALL_ROWS, 0),
        "timelines": timelines,
        "flames": [f for f in (
            {"id": "flame-slow", "root": "slow requests", "title": "Stacks during slow requests", "flame": flame.get("slow"), "tree": slow_tree,
             "leaves": top_leaves(flame.get("slow"))} if slow_tree else None,
            {"id": "flame-all", "root": "all samples", "title": "Whole capture", "flame": flame.get("all"), "tree": all_tree,
             "leaves": top_leaves(flame.get("all"))} if all_tree else None) if f],
        "collectors": [dict(c, name=n, settings_text=_settings(c.get("settings")))
                       for n, c in sorted((report.get("collectors") or {}).items())],
        "alignment": report.get("alignment") or {},
        "env": environment(report),
        "warnings": report.get("warnings") or [],
        "limits": report.get("limits") or [],
        "colors": FAMILY_COLORS, "stack_table": table,
    }


# ---------------------------------------------------------------- rendering

def _env(directory: Path | None = None):
    import jinja2

    directory = directory or reports_dir()
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(directory / "templates")),
                             autoescape=True, undefined=jinja2.ChainableUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(dur=fmt_duration, pct=fmt_pct, num=fmt_count)
    env.globals.update(dur=fmt_duration, pct=fmt_pct, num=fmt_count)
    return env


def _asset(name: str) -> str:
    return (reports_dir() / "static" / name).read_text(encoding="utf-8")


def _csp_hash(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode() + "'"


def render_template(template: str, context: dict, scripts: list[str]) -> str:
    """Render with our CSS and the given inline scripts; the CSP allows exactly those scripts."""
    for s in scripts:
        if "</script" in s.lower():
            raise ValueError("an inline script may not contain '</script'")
    csp = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src "
           + (" ".join(_csp_hash(s) for s in scripts) or "'none'") + "; base-uri 'none'; form-action 'none'")
    return _env().get_template(template).render(css=_asset("report.css"), scripts=scripts, csp=csp, **context)


def render(report: dict) -> str:
    """The HTML report as one string."""
    v = view(report)
    scripts = [_asset("vendor/d3.min.js"), _asset("vendor/d3-flamegraph.umd.min.js"), _asset("report.js")] \
        if v["flames"] or v["timelines"] else [_asset("report.js")]
    data = {"flames": [{"id": f["id"], "root": f["root"], "stacks": f["tree"]} for f in v["flames"]],
            "frames": v["stack_table"].frames, "stacks": v["stack_table"].stacks}
    return render_template("report.html.j2", {"v": v, "data": data}, scripts)

