"""`diag watch` argument handling (typer's CliRunner): one-line errors with their exit codes."""
from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from diag.cli import app

runner = CliRunner()


def run(*args):
    from diag.errors import DiagError

    try:
        r = runner.invoke(app, list(args), catch_exceptions=True)
    except DiagError as e:                  # pragma: no cover (typer re-raises with standalone mode off)
        return e.exit_code, str(e)
    if isinstance(r.exception, DiagError):
        return r.exception.exit_code, str(r.exception)
    return r.exit_code, r.output


@pytest.mark.parametrize("args,code,words", [
    ((), 2, "exactly one target"),
    (("1", "--port", "80"), 2, "exactly one target"),
    (("1", "--trigger", "p99>>5"), 2, "--trigger 'p99>>5'"),
    (("1", "--trigger", "p99>+10%"), 2, "baseline"),
    (("1", "--ring-mb", "0"), 2, "--ring-mb"),
    (("1", "--max-disk", "lots"), 2, "--max-disk"),
    (("1", "--window", "0"), 2, "--window"),
])
def test_bad_options_are_one_line_errors(args, code, words):
    rc, msg = run("watch", *args)
    assert rc == code and words in msg and "\n" not in msg.strip()


def test_dump_without_a_running_watcher_says_so(tmp_path):
    rc, msg = run("watch", "--dump", "--out", str(tmp_path))
    assert rc == 3 and "no watcher runs" in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="checks the message given to a user without root")
def test_without_root_it_says_what_it_needs(tmp_path):
    rc, msg = run("watch", str(os.getpid()), "--out", str(tmp_path))
    assert rc == 4 and "CAP_BPF" in msg
