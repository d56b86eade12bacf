"""The `diag` command line: thin typer commands that parse arguments and call the pipeline.

Errors are `DiagError`s caught once in `main()`, printed as one line, and mapped to the exit
codes documented in the README; no traceback reaches the user unless DIAG_DEBUG=1.
"""
from __future__ import annotations

import datetime as _dt
import os
import sys
from typing import Annotated, Optional

import typer
from rich.console import Console

from diag import __version__
from diag.errors import EXIT_INTERRUPTED, DiagError

app = typer.Typer(
    name="diag",
    help="Syscall-level latency diagnostics for Linux servers: why is p99 slow, with evidence.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"diag {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """Attach to a live server, run a command under diagnosis, or replay captures and traces."""


def _parse_date(value: Optional[str]) -> Optional[_dt.date]:
    if value is None:
        return None
    try:
        return _dt.date.fromisoformat(value)
    except ValueError:
        raise DiagError(f"--date {value!r}: expected YYYY-MM-DD")


def _parse_duration_ns(value: Optional[str], flag: str) -> Optional[int]:
    """'50ms', '1.5s', '200us', '120' (ms) -> ns."""
    if value is None:
        return None
    v = value.strip().lower()
    for suffix, mult in (("ns", 1), ("us", 1_000), ("µs", 1_000), ("ms", 1_000_000), ("s", 1_000_000_000)):
        if v.endswith(suffix):
            num = v[: -len(suffix)]
            break
    else:
        num, mult = v, 1_000_000
    try:
        return int(float(num) * mult)
    except ValueError:
        raise DiagError(f"{flag} {value!r}: expected a duration such as 50ms, 1.5s or 200us")


def emit_report(report: dict, json_out: Optional[str], quiet: bool) -> None:
    """Write the outputs a command was asked for; the terminal report unless --quiet."""
    from diag.render import json_report, terminal

    if json_out:
        if json_out == "-":
            sys.stdout.write(json_report.dumps(report))
        else:
            json_report.write(report, json_out)
    if not quiet and json_out != "-":
        terminal.render(report)
        if json_out:
            err_console.print(f"JSON report written to {json_out}")


def _gates(fail_on: Optional[list[str]]) -> list:
    """Parsed before any capture starts: a typo in a gate must not cost a whole load test."""
    from diag import gates

    return gates.parse_all(fail_on)


def finish_report(report: dict, json_out: Optional[str], quiet: bool, html_out: Optional[str],
                  md_out: Optional[str], gate_list: list) -> int:
    """All outputs, then the gates: 1 when a gate failed (each printed on its own line), else 0."""
    from diag import gates

    emit_report(report, json_out, quiet)
    results = gates.evaluate(gate_list, report)
    if html_out:
        from diag.render import html

        html.write(report, html_out)
        err_console.print(f"HTML report written to {html_out}", markup=False, highlight=False)
    if md_out:
        from diag.render import markdown

        markdown.write(report, md_out, results, html_out)
    _print_gates(results)
    return 1 if gates.failed(results) else 0


def _print_gates(results: list) -> None:
    """One line per gate on stderr, plain text (no markup, no emoji codes: `finding:new`)."""
    for r in results:
        sys.stderr.write(f"diag: gate {r.line()}\n")
    sys.stderr.flush()


HtmlOpt = Annotated[Optional[str], typer.Option("--html", help="Write the self-contained HTML report here.")]
MarkdownOpt = Annotated[Optional[str], typer.Option("--markdown", help="Write a short Markdown summary here "
                                                                       "(for a CI job summary).")]
FailOnOpt = Annotated[Optional[list[str]], typer.Option("--fail-on", help="Exit 1 when this gate fails, e.g. "
                                                        "'p99>50ms', 'finding:disk-sync', 'severity>=warning'. "
                                                        "Repeatable. See docs/ci.md.")]


@app.command()
def replay(
    inputs: Annotated[list[str], typer.Argument(help="Capture directories/archives, or raw trace files "
                                                      "(strace text, `perf script` text, py-spy output).",
                                                show_default=False)],
    json_out: Annotated[Optional[str], typer.Option("--json", help="Write the JSON report (diag.report/1) here; "
                                                                    "'-' for stdout.")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="Force the format of raw files: strace, "
                                                                "perf-script, pyspy-speedscope, "
                                                                "pyspy-chrometrace, pyspy-raw.")] = None,
    date: Annotated[Optional[str], typer.Option("--date", help="Date (YYYY-MM-DD) of strace -t/-tt time-of-day "
                                                               "stamps.")] = None,
    pid: Annotated[Optional[int], typer.Option("--pid", help="Pid of a strace log written without -f.")] = None,
    slow: Annotated[Optional[str], typer.Option("--slow", help="Slow threshold (e.g. 50ms); default: p99.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No terminal report.")] = False,
    html_out: HtmlOpt = None,
    md_out: MarkdownOpt = None,
    fail_on: FailOnOpt = None,
    no_redact: Annotated[bool, typer.Option("--no-redact", help="Show command-line secrets (--password=..., "
                                            "tokens, URL passwords) as the capture holds them.")] = False,
) -> None:
    """Analyse captures and raw trace files offline, and print the report."""
    from diag.analyze.report import build_report
    from diag.load import LoadOptions, load_inputs

    gate_list = _gates(fail_on)
    opts = LoadOptions(fmt=fmt, date=_parse_date(date), pid=pid)
    data = load_inputs(inputs, opts)
    for w in dict.fromkeys(data.warnings):
        err_console.print(f"warning: {w}", markup=False)
    report = build_report(data, slow_ns=_parse_duration_ns(slow, "--slow"), redact=not no_redact)
    raise typer.Exit(finish_report(report, json_out, quiet, html_out, md_out, gate_list))


DurationOpt = Annotated[float, typer.Option("--duration", "-d", help="Seconds to capture (0: until Ctrl-C or the "
                                                                     "target exits).")]
OutOpt = Annotated[Optional[str], typer.Option("--out", "-o", help="Capture directory to write "
                                                                  "(default: diag-COMM-PID-TIME.diag).")]
CollectorsOpt = Annotated[str, typer.Option("--collectors", "-c", help="auto, or a comma list of ebpf, strace, "
                                                                        "perf, py-spy, process.")]
FollowOpt = Annotated[bool, typer.Option("--follow", "-f", help="Also trace child processes.")]
JsonOpt = Annotated[Optional[str], typer.Option("--json", help="Write the JSON report here ('-' for stdout).")]
PayloadOpt = Annotated[int, typer.Option("--strace-payload", help="Bytes of syscall buffers strace may record "
                                                                  "(default 0: payloads can hold secrets).")]
SlowEventOpt = Annotated[str, typer.Option("--ebpf-slow", help="eBPF: send per-call records for calls slower "
                                                               "than this (0 = every call).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No terminal report.")]
NoRedactOpt = Annotated[bool, typer.Option("--no-redact", help="Keep command-line secrets (--password=..., tokens, "
                                                               "URL passwords) in the manifest and the report.")]


def _capture_options(duration, out, collectors, follow, payload, ebpf_slow, no_redact):
    from diag.live import CaptureOptions

    return CaptureOptions(duration_s=duration or None, out=out, collectors=collectors, follow=follow,
                          strace_payload=payload, ebpf_slow_ns=_parse_duration_ns(ebpf_slow, "--ebpf-slow") or 0,
                          redact=not no_redact)


@app.command()
def attach(
    pid: Annotated[int, typer.Argument(help="Pid of the running server.", show_default=False)],
    duration: DurationOpt = 10.0,
    out: OutOpt = None,
    collectors: CollectorsOpt = "auto",
    follow: FollowOpt = False,
    json_out: JsonOpt = None,
    strace_payload: PayloadOpt = 0,
    ebpf_slow: SlowEventOpt = "1ms",
    quiet: QuietOpt = False,
    html_out: HtmlOpt = None,
    md_out: MarkdownOpt = None,
    fail_on: FailOnOpt = None,
    no_redact: NoRedactOpt = False,
) -> None:
    """Attach to a running process, capture, detach, and print the report."""
    from diag import live

    gate_list = _gates(fail_on)
    result = live.attach(pid, _capture_options(duration, out, collectors, follow, strace_payload, ebpf_slow,
                                               no_redact))
    err_console.print(f"capture written to {result.capture} ({result.status})", highlight=False)
    raise typer.Exit(finish_report(live.report_for(result.capture, redact=not no_redact), json_out, quiet, html_out,
                                   md_out, gate_list))


@app.command(context_settings={"allow_interspersed_args": False})
def run(
    cmd: Annotated[list[str], typer.Argument(help="The command to run under diagnosis (after --).",
                                             show_default=False)],
    duration: DurationOpt = 0.0,
    out: OutOpt = None,
    collectors: CollectorsOpt = "auto",
    follow: FollowOpt = False,
    json_out: JsonOpt = None,
    strace_payload: PayloadOpt = 0,
    ebpf_slow: SlowEventOpt = "1ms",
    quiet: QuietOpt = False,
    html_out: HtmlOpt = None,
    md_out: MarkdownOpt = None,
    fail_on: FailOnOpt = None,
    no_redact: NoRedactOpt = False,
) -> None:
    """Run a command under diagnosis; its exit code is passed through, unless a --fail-on gate fails (1).

    Interrupted (Ctrl-C, SIGTERM), diag stops the command too and exits with its status (128+N
    when a signal N ended it), 130 if that was 0: never 0.
    """
    from diag import live

    gate_list = _gates(fail_on)
    result, rc = live.run(cmd, _capture_options(duration, out, collectors, follow, strace_payload, ebpf_slow,
                                                no_redact))
    err_console.print(f"capture written to {result.capture} ({result.status})", highlight=False)
    if finish_report(live.report_for(result.capture, redact=not no_redact), json_out, quiet, html_out, md_out,
                     gate_list):
        raise typer.Exit(1)
    # rc: the command's status as a shell gives it; None: it outlived --duration and still runs
    raise typer.Exit(rc if rc is not None else 0)


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
    from diag.load import LoadOptions, load_inputs
    from diag.render.html import write_text

    kind = format_for(out, fmt)
    data = load_inputs(inputs, LoadOptions())
    text = do_export(data, build_report(data), kind)
    if out and out != "-":
        write_text(text, out)
        err_console.print(f"{kind} export written to {out}", markup=False, highlight=False)
    else:
        sys.stdout.write(text)


@app.command()
def compare(
    base: Annotated[str, typer.Argument(help="Baseline: a capture or a JSON report (--json).", show_default=False)],
    current: Annotated[str, typer.Argument(help="Current: a capture or a JSON report.", show_default=False)],
    html_out: HtmlOpt = None,
    json_out: Annotated[Optional[str], typer.Option("--json", help="Write the comparison (diag.compare/1) here.")] = None,
    fail_on: Annotated[Optional[list[str]], typer.Option("--fail-on", help="Exit 1 on a regression, e.g. "
                                                         "'p99>+20%', 'p50>+2ms', 'finding:new', 'p99>50ms'. "
                                                         "Repeatable.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Two captures or JSON reports side by side: percentiles, syscall families, findings."""
    from diag import compare as cmp_mod
    from diag import gates
    from diag.render import json_report

    gate_list = _gates(fail_on)
    b, c = cmp_mod.load_report(base), cmp_mod.load_report(current)
    result = cmp_mod.compare(b, c, base, current)
    results = gates.evaluate_compare(gate_list, b, c)
    result["gates"] = [r.to_json() for r in results]
    if json_out:
        json_report.write(result, json_out)
    if html_out:
        cmp_mod.write_html(result, html_out, results)
        err_console.print(f"HTML comparison written to {html_out}", markup=False, highlight=False)
    if not quiet:
        cmp_mod.render_terminal(result)
    _print_gates(results)
    raise typer.Exit(1 if gates.failed(results) else 0)


@app.command()
def doctor(
    pid: Annotated[Optional[int], typer.Option("--pid", help="Check against this target (py-spy applicability, "
                                                             "ptrace permission).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Which collectors can run here, and the exact fix for those that cannot."""
    import json as _json

    from rich.table import Table
    from rich.text import Text

    from diag.doctor import run_checks

    checks = run_checks(pid)
    if as_json:
        typer.echo(_json.dumps({"checks": [c.to_json() for c in checks], "uid": os.geteuid()}, indent=2))
    else:
        t = Table(title=f"diag doctor (uid {os.geteuid()}, kernel {os.uname().release})", title_justify="left")
        for col in ("collector", "status", "detail", "fix"):
            t.add_column(col, overflow="fold")
        for c in checks:
            t.add_row(c.collector, Text("ready" if c.ok else "unavailable", style="green" if c.ok else "red"),
                      Text(c.detail), Text(c.fix))
        Console().print(t)
    core = [c for c in checks if c.collector in ("ebpf", "strace", "perf", "py-spy", "process")]
    raise typer.Exit(0 if any(c.ok for c in core) else 5)


def main() -> None:
    """Console entry point: run the app, turning DiagError into one line and its exit code.

    Usage errors (unknown flag, missing argument) are click's, exit code 2, as for bad input.
    """
    try:
        app()
    except DiagError as e:
        sys.stderr.write(f"diag: error: {e}\n")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("diag: interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:
        if os.environ.get("DIAG_DEBUG"):
            raise
        err_console.print(f"diag: internal error: {type(e).__name__}: {e} (set DIAG_DEBUG=1 for the traceback)",
                          markup=False)
        sys.exit(70)


if __name__ == "__main__":  # pragma: no cover
    main()
