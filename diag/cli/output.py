"""What a command does with a report: the files asked for, the terminal view, the gates, the export.

The gates and the exporter are checked before any capture starts (`ReportArgs` -> `prepare`): a
typo in a gate or a missing package must not cost a whole load test.
"""
from __future__ import annotations

import sys
from typing import Optional

from diag.cli.app import err_console, say
from diag.cli.options import ReportArgs


def prepare(args: ReportArgs) -> list:
    """Parse the gates and check the exporter's packages; returns the parsed gates."""
    from diag import gates

    gate_list = gates.parse_all(args.fail_on)
    check_otlp(args.otlp_endpoint)
    return gate_list


def check_otlp(endpoint: Optional[str]) -> None:
    if endpoint:
        from diag import telemetry

        telemetry.require("--otlp-endpoint", telemetry.OTLP)


def print_gates(results: list) -> None:
    """One line per gate on stderr, plain text (no markup, no emoji codes: `finding:new`)."""
    for r in results:
        sys.stderr.write(f"diag: gate {r.line()}\n")
    sys.stderr.flush()


def finish(report: dict, args: ReportArgs, gate_list: list, capture: str = "") -> int:
    """Every output asked for, the export, then the gates: 1 when a gate failed, else 0."""
    from diag import gates, render
    from diag.render import html, json_report, markdown, terminal

    if args.json_out == "-":
        sys.stdout.write(json_report.dumps(report))
    elif args.json_out:
        render.write(report, args.json_out, json_report)
    if not args.quiet and args.json_out != "-":
        terminal.show(report)
        if args.json_out:
            say(f"JSON report written to {args.json_out}")
    results = gates.evaluate(gate_list, report)
    if args.html_out:
        render.write(report, args.html_out, html)
        say(f"HTML report written to {args.html_out}")
    if args.md_out:
        render.write(report, args.md_out, markdown, gates=results, html_path=args.html_out)
    if args.otlp_endpoint:
        _export(capture, report, args)
    print_gates(results)
    return 1 if gates.failed(results) else 0


def _export(capture: str, report: dict, args: ReportArgs) -> None:
    """--otlp-endpoint: the summary, once; a failed export is a warning, not a failure."""
    from diag.telemetry.otlp import export_once

    json_file = args.json_out if args.json_out and args.json_out != "-" else None
    try:
        ok = export_once(capture, report, args.otlp_endpoint, args.service_name, json_file)
    except Exception as e:
        ok = False
        err_console.print(f"diag: warning: OTLP export to {args.otlp_endpoint} failed: {type(e).__name__}: {e}",
                          markup=False)
    if ok:
        say(f"OTLP summary sent to {args.otlp_endpoint}")


__all__ = ["prepare", "finish", "check_otlp", "print_gates"]
