"""The terminal report: what an engineer reads first, fitting 100 columns, with rich.

Strings from the target (comm, paths, frames) are printed with markup disabled so a hostile
name cannot restyle or hide parts of the report.
"""
from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from diag.render.access import access_line
from diag.units import fmt_duration

BREAKDOWN_LABEL = {"user": "on CPU (user space)", "runq": "waiting for a CPU", "sync": "fsync",
                   "file": "file I/O", "upstream": "upstream calls", "futex": "lock/GIL waits", "sleep": "sleeping",
                   "poll": "polling", "socket": "own socket I/O"}
NAME = "terminal"
EXTENSION = ".txt"

SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
STATUS_STYLE = {"triggered": "bold red", "not-triggered": "green", "not-measurable": "dim"}
COLLECTOR_STYLE = {"ok": "green", "degraded": "yellow", "unavailable": "dim", "failed": "red",
                   "not-applicable": "dim"}


def _rel(report: dict, ns: int | None) -> str:
    if ns is None:
        return "?"
    return f"+{(ns - report['window']['start_ns']) / 1e9:.3f}s"


def verdict(report: dict) -> Text:
    bad = [f for f in report["findings"] if f["severity"] in ("warning", "critical")]
    if not bad:
        if not report["counts"]["timed_syscalls"] and not report["counts"]["stack_samples"]:
            return Text("No timed events: nothing to diagnose (check the collectors below)", style="yellow")
        if report["findings"]:
            top = report["findings"][0]
            t = Text("No warning or critical finding; ", style="bold")
            t.append(f"top finding (info): {top['id']} explains {top['share']:.0%} — ")
            t.append(top["summary"])
            return t
        if report.get("limits"):
            return Text("No finding in what these inputs show (see what they cannot show below)", style="bold")
        return Text("Healthy: no warning or critical finding", style="bold green")
    top = bad[0]
    t = Text(f"{top['severity'].upper()}: ", style=SEVERITY_STYLE[top["severity"]])
    t.append(f"{top['id']} explains {top['share']:.0%} — ")
    t.append(top["summary"])
    return t


def render(report: dict) -> str:
    """The terminal report as plain text (a log file, `--report report.txt`)."""
    import io

    buf = io.StringIO()
    show(report, Console(file=buf, width=120, color_system=None, force_terminal=False))
    return buf.getvalue()


def show(report: dict, console: Console | None = None, top: int = 12) -> None:
    """Print the report on a console (the terminal by default)."""
    # Not a terminal (CI logs, files): a fixed 120 columns rather than rich's 80 fallback.
    c = console or Console(width=None if Console().is_terminal else 120)
    w = report["window"]
    target = report.get("target") or {}
    label = target.get("comm") or " ".join(target.get("cmdline") or []) or ", ".join(target.get("inputs") or [])
    c.print(Text.assemble(("diag report", "bold"), f"  {w['duration_s']:.2f} s window  ", Text(label or "", style="dim")))
    c.print(verdict(report))
    if report.get("limits"):
        c.print(Text("What these inputs cannot show:", style="bold"))
        for lim in report["limits"]:
            c.print(Text("  · ") + Text(lim))
    c.print()

    if report["findings"]:
        t = Table(title="Findings (ranked by share of time explained)", title_justify="left", expand=False)
        for col in ("#", "id", "severity", "share", "summary"):
            t.add_column(col, overflow="fold")
        for f in report["findings"]:
            t.add_row(str(f["rank"]), f["id"], Text(f["severity"], style=SEVERITY_STYLE[f["severity"]]),
                      f"{f['share']:.0%}", Text(f["summary"]))
        c.print(t)
        for f in report["findings"]:
            c.print(Text(f"[{f['id']}] evidence:", style="bold"))
            for e in f["evidence"]:
                win = f" @ {_rel(report, e['window']['start_ns'])}" if e.get("window") else ""
                c.print(Text(f"  · {e['source']}{win}: ") + Text(e["text"]))
            c.print(Text("  → ", style="bold") + Text(f["recommendation"]))
        c.print()

    req = report.get("requests")
    if req:
        lat_r = req["latency"]
        c.print(Text.assemble(("Requests ", "bold"), f"{req['count']:,} on {req['connections']:,} connections "
                              f"({'summarized in the kernel' if req['source'] == 'ebpf' else 'rebuilt from syscalls'}): "
                              f"p50 {fmt_duration(lat_r['p50_ns'])}, p90 {fmt_duration(lat_r['p90_ns'])}, "
                              f"p99 {fmt_duration(lat_r['p99_ns'])}, max {fmt_duration(lat_r['max_ns'])}"))
        total = req["slow_total_ns"] or 1
        parts = sorted(req["breakdown"].items(), key=lambda kv: -kv[1])
        c.print(Text(f"  {req['slow_count']} slow requests (≥ {fmt_duration(req['slow_threshold_ns'])}, "
                     f"{req['slow_threshold_from']}) spent their time: " +
                     ", ".join(f"{BREAKDOWN_LABEL.get(k, k)} {v / total:.0%}" for k, v in parts if v / total >= 0.01)))
        for p in req.get("by_process") or ():
            ns = f" (pid {p['ns_pid']} in its namespace)" if p.get("ns_pid") not in (None, p["pid"]) else ""
            lat = (f": p50 {fmt_duration(p['p50_ns'])}, p99 {fmt_duration(p['p99_ns'])}, {p['slow']} slow"
                   if p["requests"] else "")
            c.print(Text(f"  pid {p['pid']}{ns} {p.get('role') or 'process'}: {p['requests']:,} requests{lat}"))
        c.print()

    lat = report["latency"]["syscalls"]
    if lat:
        t = Table(title="Syscall latency by fd kind (by total time)", title_justify="left")
        for col in ("syscall", "fd", "count", "total", "p50", "p90", "p99", "max", "err"):
            t.add_column(col, justify="left" if col in ("syscall", "fd") else "right")
        for row in lat[:top]:
            q = "≈" if row.get("approx") else ""
            t.add_row(row["name"], row["fd_kind"], f"{row['count']:,}", fmt_duration(row["total_ns"]),
                      q + fmt_duration(row["p50_ns"]), q + fmt_duration(row["p90_ns"]), q + fmt_duration(row["p99_ns"]),
                      fmt_duration(row["max_ns"]), str(row["errors"] or ""))
        if any(row.get("approx") for row in lat):
            t.caption = "≈: from in-kernel log2 histograms (exact counts and totals)"
        if len(lat) > top:
            t.caption = ((t.caption or "") + f"  {len(lat) - top} more rows in --json").strip()
        c.print(t)

    if report["slowest"]:
        t = Table(title="Slowest work calls (waits in poll/accept/futex/sleep left out)", title_justify="left")
        for col in ("when", "tid", "syscall", "fd", "duration", "result"):
            t.add_column(col)
        for e in report["slowest"][:8]:
            res = e["errno"] or (f"{e['bytes']} B" if e["bytes"] is not None else str(e["ret"]))
            fd = f"{e['fd']} {e['fd_kind']}" if e["fd"] is not None else ""
            t.add_row(_rel(report, e["start_ns"]), str(e["tid"]), e["name"], fd, fmt_duration(e["dur_ns"]), res)
        c.print(t)

    if report["spikes"]:
        t = Table(title="Latency spikes (windows of slow work calls)", title_justify="left")
        for col in ("window", "calls", "time in slow calls", "worst"):
            t.add_column(col)
        for s in report["spikes"][:5]:
            wst = s["worst"]
            t.add_row(f"{_rel(report, s['start_ns'])} .. {_rel(report, s['end_ns'])}", str(s["calls"]),
                      fmt_duration(s["total_ns"]), f"{wst['name']} {fmt_duration(wst['dur_ns'])} tid {wst['tid']}")
        c.print(t)

    t = Table(title="Decision matrix (source document)", title_justify="left")
    for col in ("observation", "status", "evidence"):
        t.add_column(col, overflow="fold")
    for r in report["matrix"]:
        t.add_row(r["observation"], Text(r["status"], style=STATUS_STYLE.get(r["status"], "")),
                  Text("\n".join(r["evidence"])))
    c.print(t)

    t = Table(title="Collectors", title_justify="left")
    for col in ("collector", "status", "events", "lost", "CPU", "note"):
        t.add_column(col, overflow="fold")
    for name, col in report["collectors"].items():
        events = col.get("records", col.get("events", 0))
        obs = col.get("observer") or {}
        cpu = f"{obs['cpu_s_capture']:.2f} s" if "cpu_s_capture" in obs else ""
        if "cores" in obs:
            cpu += f" ({obs['cores']:.0%} of a core)"
        t.add_row(name, Text(col["status"], style=COLLECTOR_STYLE.get(col["status"], "")), f"{events:,}",
                  str(col.get("lost") or 0), cpu, Text(col.get("reason") or ""))
    tgt = (report.get("observer") or {}).get("target")
    if tgt and tgt.get("cores") is not None:
        t.caption = (f"the tools used {report['observer']['tools_cpu_s']:.2f} CPU-s while the target used "
                     f"{tgt['cpu_s']:.2f} CPU-s ({tgt['cores']:.0%} of a core)")
    c.print(t)
    c.print(Text("Alignment: " + report["alignment"]["note"], style="dim"))
    access = access_line(report)
    if access:
        c.print(Text("Capture: " + access, style="dim"))
    for wmsg in report["warnings"][:10]:
        c.print(Text("warning: ", style="yellow") + Text(wmsg))
    if len(report["warnings"]) > 10:
        c.print(Text(f"... and {len(report['warnings']) - 10} more warnings in --json", style="yellow"))
