"""`diag watch`: the always-on flight recorder's command line (diag.watch does the work)."""
from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from diag.cli.app import app, say
from diag.cli.options import OtlpOpt, ServiceOpt, SlowEventOpt, parse_duration_ns, parse_size
from diag.cli.output import check_otlp
from diag.errors import EXIT_NO_PRIVILEGE, DiagError


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
                                                         "'finding:disk-sync', 'severity>=warning'. "
                                                         "Repeatable.")] = None,
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
                                                        "port. Needs the optional export packages.")] = None,
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
        say(f"diag watch: asked the watcher (pid {pid_}) for a dump into {outp}")
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
    check_otlp(otlp_endpoint)
    if os.geteuid() != 0:
        raise DiagError("diag watch needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE): run it with sudo, or as "
                        "the service in contrib/diag-watch.service", EXIT_NO_PRIVILEGE)
    opts = WatchOptions(spec=TargetSpec(pid=pid, port=port, name=name), out=outp, triggers=trig, before_s=before,
                        after_s=after, window_s=window, cooldown_s=cooldown, ring_bytes=ring_mb << 20,
                        segment_s=segment_seconds,
                        policy=retention.Policy(keep=keep, max_disk=parse_size(max_disk, "--max-disk"),
                                                min_free=min_free / 100),
                        follow=not no_follow, analysis_every_s=analysis_every,
                        duration_s=duration or None,
                        slow_ns=parse_duration_ns(ebpf_slow, "--ebpf-slow") or 0)
    sinks = []
    if metrics_port is not None:
        from diag.telemetry.prometheus import PrometheusSink

        sinks.append(PrometheusSink(metrics_port, metrics_addr, service_name))
    if otlp_endpoint:
        from diag.telemetry.otlp import OtlpSink

        sinks.append(OtlpSink(otlp_endpoint, service_name, otlp_interval))
    raise typer.Exit(Watcher(opts, Events(as_json=json_events), sinks).run())
