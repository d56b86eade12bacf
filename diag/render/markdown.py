"""A short Markdown summary of a report, for a CI job summary ($GITHUB_STEP_SUMMARY) or a PR comment.

Target strings are escaped for Markdown *and* HTML (GitHub renders inline HTML in summaries).
"""
from __future__ import annotations

import html
import re

from diag.render.html import verdict
from diag.units import fmt_duration, fmt_pct

EXTENSION = ".md"
NAME = "markdown"

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def esc(s) -> str:
    """Plain text in Markdown: HTML-escaped, Markdown punctuation backslashed, one line."""
    text = html.escape(str(s), quote=True).replace("\r", " ").replace("\n", " ")
    return _MD_SPECIAL.sub(r"\\\1", text)


def code(s) -> str:
    """Inline code: GitHub shows it verbatim (no entity decoding), so only ` and | need care."""
    return "`" + str(s).replace("`", "'").replace("|", "\\|").replace("\n", " ") + "`"


def render(report: dict, gates: list | None = None, html_path: str | None = None, top: int = 5) -> str:
    v = verdict(report)
    t = report.get("target") or {}
    label = t.get("comm") or " ".join(t.get("cmdline") or []) or "capture"
    w = report.get("window") or {}
    out = [f"### diag: {esc(v['head'])}", ""]
    if v.get("text"):
        out += [esc(v["text"]), ""]
    out.append(f"Target {code(label)} · {w.get('duration_s', 0):.1f} s window"
               + (f" · HTML report: {esc(html_path)}" if html_path else ""))
    out.append("")
    for lim in report.get("limits") or []:
        out.append(f"- cannot show: {esc(lim)}")
    if report.get("limits"):
        out.append("")
    req = report.get("requests") or {}
    if req.get("count"):
        lat = req.get("latency") or {}
        out += ["| requests | p50 | p90 | p99 | max | slow |", "|---:|---:|---:|---:|---:|---:|",
                f"| {req['count']:,} | {fmt_duration(lat.get('p50_ns'))} | {fmt_duration(lat.get('p90_ns'))} | {fmt_duration(lat.get('p99_ns'))} "
                f"| {fmt_duration(lat.get('max_ns'))} | {req.get('slow_count', 0):,} |", ""]
    if gates:
        out += ["| gate | result | detail |", "|---|---|---|"]
        for g in gates:
            out.append(f"| {code(g.gate.expr)} | {'❌ failed' if g.failed else '✅ passed'} | {esc(g.detail)} |")
        out.append("")
    findings = report.get("findings") or []
    if findings:
        out += ["| # | finding | severity | share | summary |", "|---:|---|---|---:|---|"]
        for f in findings[:top]:
            out.append(f"| {f.get('rank')} | {code(f.get('id'))} | {esc(f.get('severity'))} | {fmt_pct(f.get('share'))} "
                       f"| {esc(f.get('summary'))} |")
        if len(findings) > top:
            out.append(f"\n{len(findings) - top} more findings in the HTML/JSON report.")
        out.append("")
    fams = (report.get("latency") or {}).get("families") or {}
    if fams:
        out += ["| syscall family | calls | total | p50 | p99 | max |", "|---|---:|---:|---:|---:|---:|"]
        for name, st in sorted(fams.items(), key=lambda kv: -(kv[1].get("total_ns") or 0))[:6]:
            q = "≈" if st.get("approx") else ""
            out.append(f"| {esc(name)} | {st.get('count', 0):,} | {fmt_duration(st.get('total_ns'))} | {q}{fmt_duration(st.get('p50_ns'))} "
                       f"| {q}{fmt_duration(st.get('p99_ns'))} | {fmt_duration(st.get('max_ns'))} |")
        out.append("")
    bad = [n for n, c in sorted((report.get("collectors") or {}).items()) if c.get("status") not in ("ok", None)]
    if bad:
        out.append("Collectors not ok: " + ", ".join(f"{esc(n)} ({esc(report['collectors'][n].get('status'))})"
                                                  for n in bad))
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"

