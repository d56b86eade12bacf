"""The `diag` command line: thin typer commands that parse arguments and call the pipeline.

One module per family of commands (capture: attach, run; offline: replay, export, compare; watch;
doctor), the options several commands share declared once (options.py), and what becomes of a
report in one place (output.py). Errors are `DiagError`s caught once in `main()`, printed as one
line, and mapped to the exit codes documented in the README; no traceback reaches the user unless
DIAG_DEBUG=1.
"""
from __future__ import annotations

import os
import sys

from diag.cli import capture, doctor, offline, watch  # noqa: F401  (each registers its commands on `app`)
from diag.cli.app import app, err_console
from diag.errors import EXIT_INTERRUPTED, DiagError


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


__all__ = ["app", "main"]
