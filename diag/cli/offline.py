"""Commands on what was already captured: `replay`, `export`, `compare`."""
from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from diag.cli import output
from diag.cli.app import app, err_console, say
from diag.cli.options import HtmlOpt, QuietOpt, ReportArgs, parse_date, parse_duration_ns, parse_offsets, takes


@app.command()
@takes(ReportArgs())
def replay(
    inputs: Annotated[list[str], typer.Argument(help="Capture directories/archives, or raw trace files "
                                                      "(strace text, `perf script` text, py-spy output).",
                                                show_default=False)],
    fmt: Annotated[Optional[str], typer.Option("--format", help="Force the format of raw files: strace, "
                                                                "perf-script, pyspy-speedscope, "
                                                                "pyspy-chrometrace, pyspy-raw.")] = None,
    date: Annotated[Optional[str], typer.Option("--date", help="Date (YYYY-MM-DD) of strace -t/-tt time-of-day "
                                                               "stamps.")] = None,
    pid: Annotated[Optional[int], typer.Option("--pid", help="Pid of a strace log written without -f.")] = None,
    offset: Annotated[Optional[list[str]], typer.Option(
        "--offset", help="FILE=+SECONDS: put FILE on the reference stream's clock by adding SECONDS to its "
                         "times (a relative clock, as py-spy chrometrace's, counts from the reference's first "
                         "record). Wins over the offset found from thread activity. Repeatable.")] = None,
    slow: Annotated[Optional[str], typer.Option("--slow", help="Slow threshold (e.g. 50ms); default: p99.")] = None,
    *,
    report: ReportArgs,
) -> None:
    """Analyse captures and raw trace files offline, and print the report."""
    from diag.analyze.report import build_report
    from diag.load import LoadOptions, load_inputs

    gate_list = output.prepare(report)
    opts = LoadOptions(fmt=fmt, date=parse_date(date), pid=pid, offsets=parse_offsets(offset))
    data = load_inputs(inputs, opts)
    for w in dict.fromkeys(data.warnings):
        err_console.print(f"warning: {w}", markup=False)
    doc = build_report(data, slow_ns=parse_duration_ns(slow, "--slow"), redact=report.redact)
    capture = inputs[0] if os.path.isdir(inputs[0]) else ""      # the export's histograms come from a capture
    raise typer.Exit(output.finish(doc, report, gate_list, capture))


@app.command()
def export(
    inputs: Annotated[list[str], typer.Argument(help="A capture (or raw trace files) to export.", show_default=False)],
    fmt: Annotated[Optional[str], typer.Option("--format", "-f", help="perfetto (Chrome trace JSON for "
                                               "ui.perfetto.dev), speedscope, or folded; default: from -o's "
                                               "extension.")] = None,
    out: Annotated[Optional[str], typer.Option("--output", "-o", help="File to write (default: stdout).")] = None,
) -> None:
    """Export a capture's timeline or stacks for Perfetto, speedscope or flamegraph tools."""
    from diag.analyze.report import build_report
    from diag.export import export as do_export
    from diag.export import format_for
    from diag.fsutil import write_text
    from diag.load import LoadOptions, load_inputs

    kind = format_for(out, fmt)
    data = load_inputs(inputs, LoadOptions())
    text = do_export(data, build_report(data), kind)
    if out and out != "-":
        write_text(out, text)
        say(f"{kind} export written to {out}")
    else:
        sys.stdout.write(text)


@app.command()
def compare(
    base: Annotated[str, typer.Argument(help="Baseline: a capture or a JSON report (--json).", show_default=False)],
    current: Annotated[str, typer.Argument(help="Current: a capture or a JSON report.", show_default=False)],
    html_out: HtmlOpt = None,
    json_out: Annotated[Optional[str], typer.Option("--json", help="Write the comparison (diag.compare/1) "
                                                                   "here.")] = None,
    fail_on: Annotated[Optional[list[str]], typer.Option("--fail-on", help="Exit 1 on a regression, e.g. "
                                                         "'p99>+20%', 'p50>+2ms', 'finding:new', 'p99>50ms'. "
                                                         "Repeatable.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Two captures or JSON reports side by side: percentiles, syscall families, findings."""
    from diag import compare as cmp_mod
    from diag import gates, render
    from diag.render import json_report

    gate_list = gates.parse_all(fail_on)
    b, c = cmp_mod.load_report(base), cmp_mod.load_report(current)
    result = cmp_mod.compare(b, c, base, current)
    results = gates.evaluate_compare(gate_list, b, c)
    result["gates"] = [r.to_json() for r in results]
    if json_out:
        render.write(result, json_out, json_report)
    if html_out:
        cmp_mod.write_html(result, html_out, results)
        say(f"HTML comparison written to {html_out}")
    if not quiet:
        cmp_mod.render_terminal(result)
    output.print_gates(results)
    raise typer.Exit(1 if gates.failed(results) else 0)
