"""The typer application every command registers on, and the consoles the commands print to."""
from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console

from diag import __version__

app = typer.Typer(
    name="diag",
    help="Syscall-level latency diagnostics for Linux servers: why is p99 slow, with evidence.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Messages (warnings, where a file was written) go to stderr: stdout may carry `--json -`.
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


def say(line: str) -> None:
    """One plain line on stderr (no markup: paths and findings may hold brackets)."""
    err_console.print(line, markup=False, highlight=False)


__all__ = ["app", "err_console", "say"]
