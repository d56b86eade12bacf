"""The one error type of the tool: a one-line message and the exit code it maps to.

Raised anywhere, caught once in the CLI, printed as a single line without a traceback.
"""
from __future__ import annotations

# Documented exit codes (README "Exit codes").
EXIT_OK = 0
EXIT_GATE_FAILED = 1      # a --fail-on gate failed (CI use)
EXIT_BAD_INPUT = 2        # malformed / unreadable / unknown input file, bad option
EXIT_NO_TARGET = 3        # the PID does not exist or the command could not be started
EXIT_NO_PRIVILEGE = 4     # a required privilege is missing (ptrace, perf, eBPF)
EXIT_NO_COLLECTOR = 5     # no collector can run here
EXIT_INTERRUPTED = 130    # interrupted before anything was captured


class DiagError(Exception):
    """An error the user can act on. `str(err)` is the whole message: what, where, how to fix."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ParseError(DiagError):
    """Malformed input at a known place. Message format: `FILE:LINE: what is wrong`."""

    def __init__(self, path: str, line: int | None, what: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {what}", EXIT_BAD_INPUT)
        self.path = path
        self.line = line
