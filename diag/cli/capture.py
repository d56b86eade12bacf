"""`diag attach` and `diag run`: capture, then report (diag.live does the capture)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from diag.cli import output
from diag.cli.app import app, say
from diag.cli.options import CaptureArgs, ReportArgs, takes


@app.command()
@takes(CaptureArgs(), ReportArgs())
def attach(
    pid: Annotated[Optional[int], typer.Argument(help="Pid of the running server (or --port / --name).",
                                                 show_default=False)] = None,
    port: Annotated[Optional[int], typer.Option("--port", help="Attach to the process listening on this TCP port.",
                                                show_default=False)] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Attach to the process whose name or command line "
                                                               "matches (a glob or a substring); it must be one "
                                                               "process, or one tree of them.",
                                                show_default=False)] = None,
    *,
    capture: CaptureArgs,
    report: ReportArgs,
) -> None:
    """Attach to a running process, capture, detach, and print the report."""
    from diag import live

    gate_list = output.prepare(report)
    result = live.attach(pid, capture.options(report.redact), port=port, name=name)
    say(f"capture written to {result.capture} ({result.status})")
    doc = live.report_for(result.capture, redact=report.redact)
    raise typer.Exit(output.finish(doc, report, gate_list, result.capture))


@app.command(context_settings={"allow_interspersed_args": False})
@takes(CaptureArgs(duration=0.0), ReportArgs())
def run(
    cmd: Annotated[list[str], typer.Argument(help="The command to run under diagnosis (after --).",
                                             show_default=False)],
    *,
    capture: CaptureArgs,
    report: ReportArgs,
) -> None:
    """Run a command under diagnosis; its exit code is passed through, unless a --fail-on gate fails (1).

    Interrupted (Ctrl-C, SIGTERM), diag stops the command too and exits with its status (128+N
    when a signal N ended it), 130 if that was 0: never 0.
    """
    from diag import live

    gate_list = output.prepare(report)
    result, rc = live.run(cmd, capture.options(report.redact))
    say(f"capture written to {result.capture} ({result.status})")
    doc = live.report_for(result.capture, redact=report.redact)
    if output.finish(doc, report, gate_list, result.capture):
        raise typer.Exit(1)
    # rc: the command's status as a shell gives it; None: it outlived --duration and still runs
    raise typer.Exit(rc if rc is not None else 0)
