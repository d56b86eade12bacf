"""Options shared by several commands, declared once, and the parsing of their values.

`attach`, `run` and `replay` share the report options (ReportArgs); `attach` and `run` share the
capture options (CaptureArgs). Each group is a dataclass whose fields carry their typer
declarations; `@takes(ReportArgs(), CaptureArgs(duration=0.0))` adds a group's fields to a
command's options (the instance gives the defaults, so one command may differ) and hands the
command one object per group. A new shared flag is one field here, and every command that
takes its group has it, with the same name, help and parsing.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import inspect
import typing
from dataclasses import dataclass
from typing import Annotated, Optional

import typer

from diag.errors import DiagError

# ---- values --------------------------------------------------------------------------------------


def parse_date(value: Optional[str]) -> Optional[_dt.date]:
    if value is None:
        return None
    try:
        return _dt.date.fromisoformat(value)
    except ValueError:
        raise DiagError(f"--date {value!r}: expected YYYY-MM-DD") from None


def parse_duration_ns(value: Optional[str], flag: str) -> Optional[int]:
    """'50ms', '1.5s', '200us', '120' (ms) -> ns."""
    if value is None:
        return None
    from diag.units import parse_duration_ns as parse

    try:
        return parse(value)
    except ValueError:
        raise DiagError(f"{flag} {value!r}: expected a duration such as 50ms, 1.5s or 200us") from None


def parse_size(value: str, flag: str) -> int:
    """'2G', '500M', '64k', '0' -> bytes (binary units)."""
    from diag.units import parse_size as parse

    try:
        return parse(value)
    except ValueError:
        raise DiagError(f"{flag} {value!r}: expected a size such as 2G, 500M or 0") from None


def parse_offsets(values: Optional[list[str]]) -> dict[str, int]:
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


# ---- single options used by commands outside the groups --------------------------------------------

HtmlOpt = Annotated[Optional[str], typer.Option("--html", help="Write the self-contained HTML report here.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No terminal report.")]
SlowEventOpt = Annotated[str, typer.Option("--ebpf-slow", help="eBPF: send per-call records for calls slower "
                                                               "than this (0 = every call).")]
OtlpOpt = Annotated[Optional[str], typer.Option("--otlp-endpoint", envvar="DIAG_OTLP_ENDPOINT",
                                                help="Send the capture's histograms and findings to this "
                                                     "OpenTelemetry Collector (OTLP/HTTP, e.g. http://127.0.0.1:4318; "
                                                     "OTEL_EXPORTER_OTLP_* are honoured). Needs the optional "
                                                     "export packages.")]
ServiceOpt = Annotated[Optional[str], typer.Option("--service-name", help="service.name of exported telemetry "
                                                                          "(default: the target's command).")]


# ---- groups --------------------------------------------------------------------------------------

@dataclass
class ReportArgs:
    """Where the report goes, the CI gates, the export, and redaction (attach, run, replay)."""

    PARAM: typing.ClassVar[str] = "report"

    json_out: Annotated[Optional[str], typer.Option("--json", help="Write the JSON report (diag.report/1) here "
                                                                   "('-' for stdout).")] = None
    quiet: QuietOpt = False
    html_out: HtmlOpt = None
    md_out: Annotated[Optional[str], typer.Option("--markdown", help="Write a short Markdown summary here (for a "
                                                                     "CI job summary).")] = None
    fail_on: Annotated[Optional[list[str]], typer.Option("--fail-on", help="Exit 1 when this gate fails, e.g. "
                                                         "'p99>50ms', 'finding:disk-sync', 'severity>=warning'. "
                                                         "Repeatable. See docs/ci.md.")] = None
    otlp_endpoint: OtlpOpt = None
    service_name: ServiceOpt = None
    no_redact: Annotated[bool, typer.Option("--no-redact", help="Keep command-line secrets (--password=..., "
                                                                "tokens, URL passwords) in the capture and the "
                                                                "report.")] = False

    @property
    def redact(self) -> bool:
        return not self.no_redact


@dataclass
class CaptureArgs:
    """What to capture and how (attach, run)."""

    PARAM: typing.ClassVar[str] = "capture"

    duration: Annotated[float, typer.Option("--duration", "-d", help="Seconds to capture (0: until Ctrl-C or the "
                                                                     "target exits).")] = 10.0
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Capture directory to write "
                                                                   "(default: diag-COMM-PID-TIME.diag).")] = None
    collectors: Annotated[str, typer.Option("--collectors", "-c", help="auto, or a comma list of ebpf, strace, "
                                                                       "perf, py-spy, pyruntime, process.")] = "auto"
    follow: Annotated[bool, typer.Option("--follow/--no-children", "-f", help="Watch every process under the "
                                         "target too (a pre-fork master's workers, now and forked later; the "
                                         "default), or the target process alone.")] = True
    strace_payload: Annotated[int, typer.Option("--strace-payload", help="Bytes of syscall buffers strace may "
                                                "record (default 0: payloads can hold secrets).")] = 0
    ebpf_slow: SlowEventOpt = "1ms"

    def options(self, redact: bool):
        """The session's options (diag.live.CaptureOptions)."""
        from diag.live import CaptureOptions

        if self.duration < 0 or self.duration != self.duration:
            raise DiagError(f"--duration {self.duration:g}: expected seconds >= 0 (0: until Ctrl-C)")
        if self.strace_payload < 0:
            raise DiagError(f"--strace-payload {self.strace_payload}: expected a number of bytes >= 0")
        return CaptureOptions(duration_s=self.duration or None, out=self.out, collectors=self.collectors,
                              follow=self.follow, strace_payload=self.strace_payload,
                              ebpf_slow_ns=parse_duration_ns(self.ebpf_slow, "--ebpf-slow") or 0, redact=redact)


def takes(*groups):
    """Give a command the options of each group (an instance: its values are the defaults) as
    keyword options, and call it with one group object per group, named by the group's PARAM."""

    def decorate(command):
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values()
               if p.name not in {g.PARAM for g in groups}]
        added = []
        for g in groups:
            hints = typing.get_type_hints(type(g), include_extras=True)
            added += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=getattr(g, f.name),
                                        annotation=hints[f.name]) for f in dataclasses.fields(g)]

        @functools.wraps(command)
        def with_groups(*args, **kw):
            for g in groups:
                kw[g.PARAM] = type(g)(**{f.name: kw.pop(f.name) for f in dataclasses.fields(g)})
            return command(*args, **kw)

        params = own + added
        with_groups.__signature__ = inspect.Signature(params)
        with_groups.__annotations__ = {p.name: p.annotation for p in params}
        return with_groups

    return decorate


__all__ = ["ReportArgs", "CaptureArgs", "takes", "parse_date", "parse_duration_ns", "parse_size", "parse_offsets",
           "HtmlOpt", "QuietOpt", "SlowEventOpt", "OtlpOpt", "ServiceOpt"]
