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
    from diag.units import parse_duration_ns

    try:
        return parse_duration_ns(value)
    except ValueError:
        raise DiagError(f"{flag} {value!r}: expected a duration such as 50ms, 1.5s or 200us")


def _parse_offsets(values: Optional[list[str]]) -> dict[str, int]:
    """['app.pyspy.json=+1.25', ...] -> {file: ns}."""
    out: dict[str, int] = {}
    for v in values or ():
        name, sep, secs = v.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = round(float(secs) * 1e9)
        except ValueError:
            raise DiagError(f"--offset {v!r}: expected FILE=+SECONDS (e.g. app.pyspy.json=+1.25)") from None
    return out


def emit_report(report: dict, json_out: Optional[str], quiet: bool) -> None:
    """Write the outputs a command was asked for; the terminal report unless --quiet."""
    from diag import render
    from diag.render import json_report, terminal

    if json_out:
        if json_out == "-":
            sys.stdout.write(json_report.dumps(report))
        else:
            render.write(report, json_out, json_report)
    if not quiet and json_out != "-":
        terminal.show(report)
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
        from diag import render
        from diag.render import html

        render.write(report, html_out, html)
        err_console.print(f"HTML report written to {html_out}", markup=False, highlight=False)
    if md_out:
        from diag import render
        from diag.render import markdown

        render.write(report, md_out, markdown, gates=results, html_path=html_out)
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
    offset: Annotated[Optional[list[str]], typer.Option(
        "--offset", help="FILE=+SECONDS: put FILE on the reference stream's clock by adding SECONDS to its "
                         "times (a relative clock, as py-spy chrometrace's, counts from the reference's first "
                         "record). Wins over the offset found from thread activity. Repeatable.")] = None,
    slow: Annotated[Optional[str], typer.Option("--slow", help="Slow threshold (e.g. 50ms); default: p99.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No terminal report.")] = False,
    html_out: HtmlOpt = None,
    md_out: MarkdownOpt = None,
    fail_on: FailOnOpt = None,
    otlp_endpoint: Annotated[Optional[str], typer.Option("--otlp-endpoint", envvar="DIAG_OTLP_ENDPOINT",
                                                         help="Send the (first) capture's histograms and the "
                                                              "findings once over OTLP/HTTP. Needs diag[export].")] = None,
    service_name: Annotated[Optional[str], typer.Option("--service-name", help="service.name of exported "
                                                                               "telemetry.")] = None,
    no_redact: Annotated[bool, typer.Option("--no-redact", help="Show command-line secrets (--password=..., "
                                            "tokens, URL passwords) as the capture holds them.")] = False,
) -> None:
    """Analyse captures and raw trace files offline, and print the report."""
    from diag.analyze.report import build_report
    from diag.load import LoadOptions, load_inputs

    gate_list = _gates(fail_on)
    _check_otlp(otlp_endpoint)
    opts = LoadOptions(fmt=fmt, date=_parse_date(date), pid=pid, offsets=_parse_offsets(offset))
    data = load_inputs(inputs, opts)
    for w in dict.fromkeys(data.warnings):
        err_console.print(f"warning: {w}", markup=False)
    report = build_report(data, slow_ns=_parse_duration_ns(slow, "--slow"), redact=not no_redact)
    rc = finish_report(report, json_out, quiet, html_out, md_out, gate_list)
    if otlp_endpoint:
        _export_capture(inputs[0] if os.path.isdir(inputs[0]) else "", otlp_endpoint, service_name, report, json_out)
    raise typer.Exit(rc)


DurationOpt = Annotated[float, typer.Option("--duration", "-d", help="Seconds to capture (0: until Ctrl-C or the "
                                                                     "target exits).")]
OutOpt = Annotated[Optional[str], typer.Option("--out", "-o", help="Capture directory to write "
                                                                  "(default: diag-COMM-PID-TIME.diag).")]
CollectorsOpt = Annotated[str, typer.Option("--collectors", "-c", help="auto, or a comma list of ebpf, strace, "
                                                                        "perf, py-spy, pyruntime, process.")]
FollowOpt = Annotated[bool, typer.Option("--follow/--no-children", "-f", help="Watch every process under the "
                                          "target too (a pre-fork master's workers, now and forked later; the "
                                          "default), or the target process alone.")]
JsonOpt = Annotated[Optional[str], typer.Option("--json", help="Write the JSON report here ('-' for stdout).")]
PayloadOpt = Annotated[int, typer.Option("--strace-payload", help="Bytes of syscall buffers strace may record "
                                                                  "(default 0: payloads can hold secrets).")]
SlowEventOpt = Annotated[str, typer.Option("--ebpf-slow", help="eBPF: send per-call records for calls slower "
                                                               "than this (0 = every call).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No terminal report.")]
OtlpOpt = Annotated[Optional[str], typer.Option("--otlp-endpoint", envvar="DIAG_OTLP_ENDPOINT",
                                                help="Send the capture's histograms and findings once to this "
                                                     "OpenTelemetry Collector (OTLP/HTTP, e.g. http://127.0.0.1:4318; "
                                                     "OTEL_EXPORTER_OTLP_* are honoured). Needs diag[export].")]
ServiceOpt = Annotated[Optional[str], typer.Option("--service-name", help="service.name of exported telemetry "
                                                                          "(default: the target's command).")]


def _check_otlp(endpoint: Optional[str]) -> None:
    if endpoint:
        from diag import telemetry

        telemetry.require("--otlp-endpoint", telemetry.OTLP)


def _export_capture(capture: str, endpoint: Optional[str], service: Optional[str], report: dict,
                    json_out: Optional[str]) -> None:
    """attach/run/replay --otlp-endpoint: the summary once; a failed export is a warning, not a failure."""
    if not endpoint:
        return
    from diag.telemetry.otlp import export_once

    try:
        ok = export_once(capture, report, endpoint, service, json_out if json_out and json_out != "-" else None)
    except Exception as e:
        ok = False
        err_console.print(f"diag: warning: OTLP export to {endpoint} failed: {type(e).__name__}: {e}", markup=False)
    if ok:
        err_console.print(f"OTLP summary sent to {endpoint}", markup=False, highlight=False)
NoRedactOpt = Annotated[bool, typer.Option("--no-redact", help="Keep command-line secrets (--password=..., tokens, "
                                                               "URL passwords) in the manifest and the report.")]


def _capture_options(duration, out, collectors, follow, payload, ebpf_slow, no_redact):
    from diag.live import CaptureOptions

    return CaptureOptions(duration_s=duration or None, out=out, collectors=collectors, follow=follow,
                          strace_payload=payload, ebpf_slow_ns=_parse_duration_ns(ebpf_slow, "--ebpf-slow") or 0,
                          redact=not no_redact)


@app.command()
def attach(
    pid: Annotated[Optional[int], typer.Argument(help="Pid of the running server (or --port / --name).",
                                                 show_default=False)] = None,
    port: Annotated[Optional[int], typer.Option("--port", help="Attach to the process listening on this TCP port.",
                                                show_default=False)] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Attach to the process whose name or command line "
                                                               "matches (a glob or a substring); it must be one "
                                                               "process, or one tree of them.",
                                                show_default=False)] = None,
    duration: DurationOpt = 10.0,
    out: OutOpt = None,
    collectors: CollectorsOpt = "auto",
    follow: FollowOpt = True,
    json_out: JsonOpt = None,
    strace_payload: PayloadOpt = 0,
    ebpf_slow: SlowEventOpt = "1ms",
    quiet: QuietOpt = False,
    html_out: HtmlOpt = None,
    md_out: MarkdownOpt = None,
    fail_on: FailOnOpt = None,
    otlp_endpoint: OtlpOpt = None,
    service_name: ServiceOpt = None,
    no_redact: NoRedactOpt = False,
) -> None:
    """Attach to a running process, capture, detach, and print the report."""
    from diag import live

    gate_list = _gates(fail_on)
    _check_otlp(otlp_endpoint)
    result = live.attach(pid, _capture_options(duration, out, collectors, follow, strace_payload, ebpf_slow,
                                               no_redact),
                         port=port, name=name)
    err_console.print(f"capture written to {result.capture} ({result.status})", highlight=False)
    report = live.report_for(result.capture, redact=not no_redact)
    rc = finish_report(report, json_out, quiet, html_out, md_out, gate_list)
    _export_capture(result.capture, otlp_endpoint, service_name, report, json_out)
    raise typer.Exit(rc)


@app.command(context_settings={"allow_interspersed_args": False})
def run(
    cmd: Annotated[list[str], typer.Argument(help="The command to run under diagnosis (after --).",
                                             show_default=False)],
    duration: DurationOpt = 0.0,
    out: OutOpt = None,
    collectors: CollectorsOpt = "auto",
    follow: FollowOpt = True,
    json_out: JsonOpt = None,
    strace_payload: PayloadOpt = 0,
    ebpf_slow: SlowEventOpt = "1ms",
    quiet: QuietOpt = False,
    html_out: HtmlOpt = None,
    md_out: MarkdownOpt = None,
    fail_on: FailOnOpt = None,
    otlp_endpoint: OtlpOpt = None,
    service_name: ServiceOpt = None,
    no_redact: NoRedactOpt = False,
) -> None:
    """Run a command under diagnosis; its exit code is passed through, unless a --fail-on gate fails (1).

    Interrupted (Ctrl-C, SIGTERM), diag stops the command too and exits with its status (128+N
    when a signal N ended it), 130 if that was 0: never 0.
    """
    from diag import live

    gate_list = _gates(fail_on)
    _check_otlp(otlp_endpoint)
    result, rc = live.run(cmd, _capture_options(duration, out, collectors, follow, strace_payload, ebpf_slow,
                                                no_redact))
    err_console.print(f"capture written to {result.capture} ({result.status})", highlight=False)
    report = live.report_for(result.capture, redact=not no_redact)
    failed = finish_report(report, json_out, quiet, html_out, md_out, gate_list)
    _export_capture(result.capture, otlp_endpoint, service_name, report, json_out)
    if failed:
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
    from diag.fsutil import write_text

    kind = format_for(out, fmt)
    data = load_inputs(inputs, LoadOptions())
    text = do_export(data, build_report(data), kind)
    if out and out != "-":
        write_text(out, text)
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
    from diag import render
    from diag.render import json_report

    gate_list = _gates(fail_on)
    b, c = cmp_mod.load_report(base), cmp_mod.load_report(current)
    result = cmp_mod.compare(b, c, base, current)
    results = gates.evaluate_compare(gate_list, b, c)
    result["gates"] = [r.to_json() for r in results]
    if json_out:
        render.write(result, json_out, json_report)
    if html_out:
        cmp_mod.write_html(result, html_out, results)
        err_console.print(f"HTML comparison written to {html_out}", markup=False, highlight=False)
    if not quiet:
        cmp_mod.render_terminal(result)
    _print_gates(results)
    raise typer.Exit(1 if gates.failed(results) else 0)


@app.command()
def watch(
    pid: Annotated[Optional[int], typer.Argument(help="Pid of the server to watch (or --port / --name).",
                                                 show_default=False)] = None,
    port: Annotated[Optional[int], typer.Option("--port", help="Watch the processes listening on this TCP "
                                                                "port, and their successors after a restart.")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Watch the processes of this name (command, "
                                                                "script or module), and their successors.")] = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Directory of the dumps (and of the ring, in .ring/).",
                                     envvar="DIAG_WATCH_OUT")] = "diag-watch",
    trigger: Annotated[Optional[list[str]], typer.Option("--trigger", "-t", help="Dump when this holds, in the "
                                                         "--fail-on grammar: 'p99>50ms', 'sync.p99>5ms', "
                                                         "'finding:disk-sync', 'severity>=warning'. Repeatable.")] = None,
    before: Annotated[float, typer.Option("--before", help="Seconds before the trigger kept in a dump.")] = 30.0,
    after: Annotated[float, typer.Option("--after", help="Seconds after the trigger, with the full collectors "
                                                         "(perf, py-spy, process sampler).")] = 10.0,
    window: Annotated[float, typer.Option("--window", help="Seconds of the sliding window a trigger reads.")] = 10.0,
    hold: Annotated[float, typer.Option("--hold", help="Seconds a trigger must hold before it fires.")] = 3.0,
    min_slow: Annotated[int, typer.Option("--min-slow", help="Values over the limit the window must hold: one "
                                                             "slow request never fires.")] = 3,
    cooldown: Annotated[float, typer.Option("--cooldown", help="Seconds between two triggered dumps.")] = 120.0,
    ring_mb: Annotated[int, typer.Option("--ring-mb", help="Bound of the ring on disk, MiB.")] = 64,
    segment_seconds: Annotated[float, typer.Option("--segment-seconds", help="Seconds per ring segment.")] = 5.0,
    keep: Annotated[int, typer.Option("--keep", help="Dumps kept at most, oldest removed first (0: no limit).")] = 20,
    max_disk: Annotated[str, typer.Option("--max-disk", help="Disk all dumps may use (e.g. 2G, 500M; 0: no "
                                                             "limit), oldest removed first.")] = "2G",
    min_free: Annotated[float, typer.Option("--min-free", help="No dump when the filesystem would have less "
                                                               "than this percentage free.")] = 5.0,
    analysis_every: Annotated[float, typer.Option("--analysis-every", help="Seconds between the light analyses "
                                                                           "finding: triggers need.")] = 10.0,
    json_events: Annotated[bool, typer.Option("--json-events", help="Events as JSON lines on stdout.")] = False,
    no_follow: Annotated[bool, typer.Option("--no-follow", help="Do not follow the target's child processes.")] = False,
    ebpf_slow: SlowEventOpt = "1ms",
    duration: Annotated[float, typer.Option("--duration", help="Stop after this many seconds (0: until "
                                                               "stopped).")] = 0.0,
    dump: Annotated[bool, typer.Option("--dump", help="Ask the watcher running with this --out for a dump now, "
                                                      "and exit.")] = False,
    metrics_port: Annotated[Optional[int], typer.Option("--metrics-port", help="Serve Prometheus metrics on this "
                                                                               "port. Needs diag[export].")] = None,
    metrics_addr: Annotated[str, typer.Option("--metrics-addr", help="Address of --metrics-port.")] = "127.0.0.1",
    otlp_endpoint: OtlpOpt = None,
    otlp_interval: Annotated[float, typer.Option("--otlp-interval", help="Seconds between OTLP exports.")] = 10.0,
    service_name: ServiceOpt = None,
) -> None:
    """Keep a cheap flight recorder on a server; on a trigger, dump the seconds before it with a report."""
    from pathlib import Path

    from diag.watch import retention, triggers
    from diag.watch.events import Events
    from diag.watch.target import TargetSpec
    from diag.watch.watcher import WatchOptions, Watcher, ask_dump

    outp = Path(out)
    if dump:
        pid_ = ask_dump(outp)
        err_console.print(f"diag watch: asked the watcher (pid {pid_}) for a dump into {outp}", markup=False)
        raise typer.Exit(0)
    given = [x is not None for x in (pid, port, name)]
    if sum(given) != 1:
        raise DiagError("diag watch: give exactly one target: a PID, --port N or --name NAME")
    for flag, v in (("--before", before), ("--after", after), ("--cooldown", cooldown), ("--duration", duration)):
        if v < 0:
            raise DiagError(f"{flag} {v:g}: must not be negative")
    for flag, v in (("--window", window), ("--segment-seconds", segment_seconds), ("--analysis-every", analysis_every)):
        if v <= 0:
            raise DiagError(f"{flag} {v:g}: must be positive")
    if ring_mb < 1:
        raise DiagError(f"--ring-mb {ring_mb}: must be at least 1")
    if not 0 <= min_free < 100:
        raise DiagError(f"--min-free {min_free:g}: a percentage between 0 and 100")
    trig = triggers.parse(trigger or [], hold, max(1, min_slow))
    if metrics_port is not None:
        from diag import telemetry

        telemetry.require("--metrics-port", telemetry.PROMETHEUS)
    _check_otlp(otlp_endpoint)
    if os.geteuid() != 0:
        from diag.errors import EXIT_NO_PRIVILEGE

        raise DiagError("diag watch needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE): run it with sudo, or as "
                        "the service in contrib/diag-watch.service", EXIT_NO_PRIVILEGE)
    opts = WatchOptions(spec=TargetSpec(pid=pid, port=port, name=name), out=outp, triggers=trig, before_s=before,
                        after_s=after, window_s=window, cooldown_s=cooldown, ring_bytes=ring_mb << 20,
                        segment_s=segment_seconds,
                        policy=retention.Policy(keep=keep, max_disk=_parse_size(max_disk, "--max-disk"),
                                                min_free=min_free / 100),
                        follow=not no_follow, analysis_every_s=analysis_every,
                        duration_s=duration or None,
                        slow_ns=_parse_duration_ns(ebpf_slow, "--ebpf-slow") or 0)
    sinks = []
    if metrics_port is not None:
        from diag.telemetry.prometheus import PrometheusSink

        sinks.append(PrometheusSink(metrics_port, metrics_addr, service_name))
    if otlp_endpoint:
        from diag.telemetry.otlp import OtlpSink

        sinks.append(OtlpSink(otlp_endpoint, service_name, otlp_interval))
    raise typer.Exit(Watcher(opts, Events(as_json=json_events), sinks).run())


def _parse_size(value: str, flag: str) -> int:
    """'2G', '500M', '64k', '1048576' -> bytes (binary units)."""
    v = value.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(v[-1:] if v else "", 1)
    try:
        n = float(v[:-1] if mult > 1 else v)
    except ValueError:
        raise DiagError(f"{flag} {value!r}: expected a size such as 2G, 500M or 0") from None
    if n < 0:
        raise DiagError(f"{flag} {value!r}: must not be negative")
    return int(n * mult)


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
    core = [c for c in checks if c.collector in ("ebpf", "strace", "perf", "py-spy", "pyruntime", "process")]
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
