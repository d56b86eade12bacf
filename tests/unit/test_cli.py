"""The `diag` command line (typer's CliRunner): bad options of attach, run, replay, export and
compare are one-line errors with the exit codes of the README, found before anything starts; attach
and run take the same shared options. No capture is ever started here: `no_capture` makes any
attempt fail the test instead."""
from __future__ import annotations

import dataclasses
import os
import re
import socket
import sys
import uuid

import pytest
import typer
from typer.testing import CliRunner

from diag import __version__
from diag.cli import app, main
from diag.cli.options import CaptureArgs, ReportArgs
from diag.errors import DiagError

runner = CliRunner()
BAD_GATE = "p99>>5"
MISSING = "/nonexistent/diag-test/input.strace"


def invoke(*args: str) -> tuple[int, str]:
    """(exit code, message): a DiagError's code and line as main() would print them, else click's."""
    r = runner.invoke(app, list(args), catch_exceptions=True)
    if isinstance(r.exception, DiagError):
        return r.exception.exit_code, str(r.exception)
    return r.exit_code, r.output


@pytest.fixture(autouse=True)
def no_capture(monkeypatch):
    """Starting a collector or a command is a test failure, never a real capture."""
    def refuse(*a, **kw):
        raise AssertionError("a capture was about to start")

    monkeypatch.setattr("diag.live._capture", refuse)
    monkeypatch.setattr("diag.live.HeldCommand", refuse)


def absent_pid() -> int:
    """A pid no process can have: above the kernel's pid_max."""
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read()) + 1


@pytest.fixture
def idle_port():
    """A TCP port bound by this test but not listening: nothing can listen on it meanwhile."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("0.0.0.0", 0))
    yield s.getsockname()[1]
    s.close()


def test_version_is_printed_and_exits_zero():
    assert invoke("--version") == (0, f"diag {__version__}\n")


# ---- exit 2: bad input or option, before anything starts -----------------------------------------

@pytest.mark.parametrize("args, words", [
    # the gate is checked first: an absent pid or command would otherwise be exit 3
    (("attach", "{pid}", "--fail-on", BAD_GATE), f"--fail-on '{BAD_GATE}': not a gate"),
    (("run", "--fail-on", BAD_GATE, "--", MISSING), f"--fail-on '{BAD_GATE}': not a gate"),
    (("replay", "--fail-on", BAD_GATE, MISSING), f"--fail-on '{BAD_GATE}': not a gate"),
    (("compare", MISSING, MISSING, "--fail-on", BAD_GATE), f"--fail-on '{BAD_GATE}': not a gate"),
    (("attach", "{pid}", "--ebpf-slow", "nonsense"), "--ebpf-slow 'nonsense': expected a duration"),
    (("attach", "{pid}", "--duration", "-5"), "--duration -5: expected seconds >= 0"),
    (("run", "--duration", "-1", "--", "/bin/true"), "--duration -1: expected seconds >= 0"),
    (("run", "--ebpf-slow", "nonsense", "--", MISSING), "--ebpf-slow 'nonsense': expected a duration"),
    (("run", "--collectors", "ebpf,nonsense", "--", "/bin/true"), "unknown collector 'nonsense'"),
    (("attach", "--port", "70000"), "--port 70000: not a TCP port"),
    (("attach",), "give exactly one target"),
    (("attach", "{pid}", "--port", "80"), "give exactly one target"),
    (("replay", MISSING), f"{MISSING}: no such file or directory"),
    (("replay", "--offset", "bad", MISSING), "--offset 'bad': expected FILE=+SECONDS"),
    (("replay", "--date", "2024-13-45", MISSING), "--date '2024-13-45': expected YYYY-MM-DD"),
    (("export", "--format", "nope", MISSING), "--format 'nope': expected one of perfetto, speedscope, folded"),
    (("export", "-o", "out.weird", MISSING), "give --format perfetto|speedscope|folded"),
    (("compare", MISSING, MISSING), f"{MISSING}: no such file or directory"),
])
def test_bad_options_are_one_line_errors_with_exit_code_2(args, words):
    rc, msg = invoke(*(a.format(pid=absent_pid()) for a in args))
    assert rc == 2
    assert words in msg and "\n" not in msg.strip()


def test_a_bad_slow_threshold_of_replay_is_named(tmp_path):
    trace = tmp_path / "app.strace"
    trace.write_text('1710504000.000100 read(3, "x", 1) = 1 <0.000010>\n')
    rc, msg = invoke("replay", "--slow", "fast", str(trace))
    assert (rc, msg) == (2, "--slow 'fast': expected a duration such as 50ms, 1.5s or 200us")


@pytest.mark.parametrize("args, words", [
    (("attach", "--duration", "soon", "1"), "Invalid value for '--duration'"),
    (("run",), "Missing argument"),
    (("attach", "--no-such-flag"), "No such option: --no-such-flag"),
    (("nosuchcommand",), "No such command"),
])
def test_usage_errors_are_clicks_with_exit_code_2(args, words):
    rc, out = invoke(*args)
    assert rc == 2 and words in out


def test_main_prints_one_line_and_exits_with_the_errors_code(monkeypatch, capsys):
    # GIVEN the console entry point, as the `diag` script runs it
    monkeypatch.setattr(sys, "argv", ["diag", "replay", "--date", "2024-13-45", MISSING])
    # WHEN a bad option is given
    with pytest.raises(SystemExit) as exit_:
        main()
    # THEN one line on stderr, no traceback, exit code 2
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "diag: error: --date '2024-13-45': expected YYYY-MM-DD\n"


# ---- exit 3: no target; 4: privilege; 5: no collector --------------------------------------------

def test_attach_to_a_pid_that_does_not_exist_is_exit_3():
    pid = absent_pid()
    assert invoke("attach", str(pid)) == (3, f"pid {pid} does not exist (or has exited): check it with "
                                             f"`ps -p {pid}`")


def test_attach_to_a_port_nothing_listens_on_is_exit_3(idle_port):
    rc, msg = invoke("attach", "--port", str(idle_port))
    assert rc == 3 and msg.startswith(f"no process listening on TCP port {idle_port}")


def test_attach_to_a_name_nothing_matches_is_exit_3():
    name = f"diag-test-{uuid.uuid4().hex}"
    rc, msg = invoke("attach", "--name", name)
    assert rc == 3 and msg.startswith(f"no process match --name '{name}'")


def test_run_of_a_command_that_does_not_exist_is_exit_3():
    assert invoke("run", "--", MISSING) == (3, f"diag run: command not found: {MISSING}")


def test_attach_to_another_users_process_without_root_is_exit_4(monkeypatch):
    # GIVEN diag running as another user than this test process's owner (its effective uid)
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)
    # WHEN it is asked to attach to this process
    rc, msg = invoke("attach", str(os.getpid()))
    # THEN it refuses before any collector starts
    assert rc == 4 and "only root attaches to another user's process" in msg


def test_python_collectors_alone_for_a_native_command_is_exit_5_and_it_is_not_run():
    rc, msg = invoke("run", "--collectors", "py-spy,pyruntime", "--", "/bin/true")
    assert rc == 5
    assert msg.startswith("no collector could run here") and "not run" in msg


# ---- the options attach and run share ------------------------------------------------------------

def option_names(command: str) -> set[str]:
    out = invoke(command, "--help")[1]
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", out))


def test_attach_and_run_list_the_same_capture_and_report_options():
    # GIVEN every flag the two groups declare
    fields = {f.name for group in (CaptureArgs, ReportArgs) for f in dataclasses.fields(group)}
    params = typer.main.get_command(app).commands["run"].params
    shared = {o for p in params if p.name in fields for o in p.opts + p.secondary_opts if o.startswith("--")}
    assert {"--duration", "--ebpf-slow", "--no-children", "--fail-on", "--no-redact", "--otlp-endpoint"} <= shared
    # THEN both commands' help lists them all, and attach only adds its ways to name a target
    attach, run = option_names("attach"), option_names("run")
    assert shared <= attach and shared <= run
    assert attach - run == {"--port", "--name"}
    # and replay takes the report options, not the capture ones
    replay = option_names("replay")
    assert "--fail-on" in replay and "--no-redact" in replay and "--ebpf-slow" not in replay


def test_run_captures_until_the_command_exits_by_default_attach_for_ten_seconds():
    commands = typer.main.get_command(app).commands
    duration = {name: next(p.default for p in commands[name].params if p.name == "duration")
                for name in ("attach", "run")}
    assert duration == {"attach": 10.0, "run": 0.0}


SHARED_VALUES = ["--duration", "5", "--out", "{tmp}/cap.diag", "--collectors", "auto", "--no-children",
                 "--strace-payload", "0", "--ebpf-slow", "2ms", "--json", "{tmp}/r.json", "--quiet",
                 "--html", "{tmp}/r.html", "--markdown", "{tmp}/r.md", "--fail-on", "p99>50ms",
                 "--service-name", "svc", "--no-redact"]


@pytest.mark.parametrize("command", ["attach", "run"])
def test_attach_and_run_accept_every_shared_option(command, tmp_path):
    # GIVEN every shared option with a valid value (--otlp-endpoint aside: it needs optional
    # packages), and a target that does not exist
    opts = [v.format(tmp=tmp_path) for v in SHARED_VALUES]
    args = [command, *opts, str(absent_pid())] if command == "attach" else [command, *opts, "--", MISSING]
    # WHEN invoked
    rc, _ = invoke(*args)
    # THEN the options were all parsed: the error is the missing target's, and nothing was written
    assert rc == 3
    assert list(tmp_path.iterdir()) == []
