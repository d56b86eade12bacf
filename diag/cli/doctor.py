"""`diag doctor`: which collectors can run here, and the fix for each that cannot."""
from __future__ import annotations

import os
from typing import Annotated, Optional

import typer
from rich.console import Console

from diag.cli.app import app
from diag.errors import EXIT_NO_COLLECTOR


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
    raise typer.Exit(0 if any(c.ok for c in core) else EXIT_NO_COLLECTOR)
