"""`diag compare BASE CURRENT`: two captures (or JSON reports) side by side, and regression gates.

The comparison is plain data (schema `diag.compare/1`) built from the two report dicts; the
terminal table, the HTML page and the gates only read it.
"""
from __future__ import annotations

import json
import os

from diag.errors import DiagError
from diag.gates import latency_value

SCHEMA = "diag.compare/1"
PCTS = ("p50", "p90", "p99", "max")


def load_report(path: str, slow_ns: int | None = None) -> dict:
    """A JSON report (diag.report/1) as is; anything else is loaded and analysed."""
    if path.endswith(".json") and os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            raise DiagError(f"{path}: not a readable JSON report ({e})")
        if isinstance(doc, dict) and str(doc.get("schema", "")).startswith("diag.report/"):
            return doc
        raise DiagError(f"{path}: not a diag JSON report (no schema diag.report/1); pass the capture directory "
                        f"or a file written by --json")
    from diag.analyze.report import build_report
    from diag.load import LoadOptions, load_inputs

    return build_report(load_inputs([path], LoadOptions()), slow_ns=slow_ns)


def _label(report: dict, path: str) -> str:
    t = report.get("target") or {}
    return f"{os.path.basename(os.path.normpath(path))} ({t.get('comm') or 'target'})"


def _change(b, c) -> float | None:
    if b is None or c is None:
        return None
    if b == 0:
        return 0.0 if c == 0 else None
    return (c - b) / b


def compare(base: dict, current: dict, base_path: str = "base", current_path: str = "current") -> dict:
    rows = []
    has_req = all((r.get("requests") or {}).get("count") for r in (base, current))
    subjects = (["requests"] if has_req else []) + ["syscalls"]
    for subject in subjects:
        vals = {which: {m: latency_value(rep, m, subject)[0] for m in PCTS}
                for which, rep in (("base", base), ("current", current))}
        what = "requests" if subject == "requests" else "worst work syscall"
        rows.append({"name": what, "base": vals["base"], "current": vals["current"],
                     "change": {m: _change(vals["base"][m], vals["current"][m]) for m in PCTS}})
    fb = (base.get("latency") or {}).get("families") or {}
    fc = (current.get("latency") or {}).get("families") or {}
    families = []
    for name in sorted(set(fb) | set(fc), key=lambda n: -max((fb.get(n) or {}).get("total_ns") or 0,
                                                              (fc.get(n) or {}).get("total_ns") or 0)):
        b, c = fb.get(name) or {}, fc.get(name) or {}
        entry = {"name": name}
        for key in ("count", "total_ns", "p50_ns", "p99_ns", "max_ns"):
            entry[key] = {"base": b.get(key), "current": c.get(key), "change": _change(b.get(key), c.get(key))}
        families.append(entry)
    by_b = {f["id"]: f for f in base.get("findings") or []}
    by_c = {f["id"]: f for f in current.get("findings") or []}
    brief = lambda f: {"id": f["id"], "severity": f.get("severity"), "share": f.get("share"),  # noqa: E731
                       "summary": f.get("summary")}
    return {
        "schema": SCHEMA,
        "base": {"path": base_path, "label": _label(base, base_path), "window": base.get("window"),
                 "verdict": _verdict_line(base)},
        "current": {"path": current_path, "label": _label(current, current_path), "window": current.get("window"),
                    "verdict": _verdict_line(current)},
        "latency": rows,
        "families": families,
        "findings": {
            "appeared": [brief(by_c[i]) for i in by_c if i not in by_b],
            "disappeared": [brief(by_b[i]) for i in by_b if i not in by_c],
            "persisting": [{"id": i, "severity": by_c[i].get("severity"), "base_share": by_b[i].get("share"),
                            "current_share": by_c[i].get("share")} for i in by_c if i in by_b],
        },
    }


def _verdict_line(report: dict) -> str:
    from diag.render.html import verdict

    v = verdict(report)
    return f"{v['head']}: {v['text']}" if v.get("text") else v["head"]


def _fmt_change(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:+.0f}%"


def render_terminal(cmp: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from diag.units import fmt_duration

    c = console or Console(width=None if Console().is_terminal else 120)
    c.print(Text.assemble(("diag compare", "bold"), "  base ", Text(cmp["base"]["label"]), "  →  current ",
                          Text(cmp["current"]["label"])))
    c.print(Text("base:    ") + Text(cmp["base"]["verdict"]))
    c.print(Text("current: ") + Text(cmp["current"]["verdict"]))
    t = Table(title="Latency percentiles", title_justify="left")
    for col in ("", *PCTS):
        t.add_column(col, justify="left" if not col else "right")
    for r in cmp["latency"]:
        t.add_row(r["name"], *[Text(f"{fmt_duration(r['base'][m])} → {fmt_duration(r['current'][m])} ({_fmt_change(r['change'][m])})",
                                    style="red" if (r["change"][m] or 0) > 0.1 else "green"
                                    if (r["change"][m] or 0) < -0.1 else "") for m in PCTS])
    c.print(t)
    if cmp["families"]:
        t = Table(title="Syscall families", title_justify="left")
        for col in ("family", "calls", "total", "p50", "p99", "max"):
            t.add_column(col, justify="left" if col == "family" else "right")
        for f in cmp["families"]:
            cells = []
            for key in ("count", "total_ns", "p50_ns", "p99_ns", "max_ns"):
                v = f[key]
                fmt = (lambda x: "-" if x is None else f"{x:,}") if key == "count" else fmt_duration
                cells.append(f"{fmt(v['base'])} → {fmt(v['current'])} ({_fmt_change(v['change'])})")
            t.add_row(Text(f["name"]), *cells)
        c.print(t)
    fd = cmp["findings"]
    for what, style in (("appeared", "red"), ("disappeared", "green")):
        for f in fd[what]:
            c.print(Text(f"finding {what}: ", style=style) + Text(f"{f['id']} ({f['severity']}) {f['summary'] or ''}"))
    for f in fd["persisting"]:
        c.print(Text(f"finding still there: {f['id']} ({f['severity']}) share "
                     f"{(f['base_share'] or 0):.0%} → {(f['current_share'] or 0):.0%}"))


def render_html(cmp: dict, gate_results: list | None = None) -> str:
    from diag.render import html

    return html.render_template("compare.html.j2", {"c": cmp, "gates": gate_results or [],
                                                    "change": _fmt_change}, [])


def write_html(cmp: dict, path: str, gate_results: list | None = None) -> None:
    from diag.fsutil import write_text

    write_text(path, render_html(cmp, gate_results))
