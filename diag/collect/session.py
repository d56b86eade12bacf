"""The capture session: start collectors together, watch, stop them in reverse order, always.

Guarantees (the production-safety contract of `diag attach`):
- every collector is stopped in reverse start order on normal end, Ctrl-C, SIGTERM, SIGHUP or an
  exception (try/finally around the whole capture, signal handlers that only set a flag);
- if diag is killed with SIGKILL, each tool's PDEATHSIG makes it detach and flush (see
  collect/base.py); eBPF programs are released with the agent's fds;
- a collector that fails degrades the capture (recorded in the manifest), never aborts it,
  unless none can run;
- the target exiting mid-capture ends the capture with what was seen.
"""
from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import psutil

from diag.capture.bundle import CaptureWriter
from diag.capture.clock import monotonic_ns
from diag.collect.base import FAILED, NOT_APPLICABLE, OK, UNAVAILABLE, Collector, Target, Unavailable
from diag.errors import EXIT_BAD_INPUT, EXIT_NO_COLLECTOR, DiagError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class SessionResult:
    capture: str
    status: str                      # complete | interrupted | target-exited
    started: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    reason: str = ""                 # the signal that stopped the capture (SIGINT, SIGTERM, SIGHUP), if any


class StopFlag:
    """Set by a signal handler or the target exiting; the capture loop polls it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = ""
        self.count = 0                  # how many times it was set (a second Ctrl-C, ...)

    def set(self, reason: str) -> None:
        self.count += 1
        if not self.event.is_set():
            self.reason = reason
            self.event.set()


def start_collectors(collectors: list[Collector], target: Target, writer: CaptureWriter) -> tuple[list, dict]:
    """Check and start each collector; returns (started, {name: reason for the rest})."""
    started, skipped = [], {}
    for c in collectors:
        reason = c.check(target)
        if reason:
            status = NOT_APPLICABLE if reason.startswith("not applicable") else UNAVAILABLE
            writer.set_collector(c.name, status=status, reason=reason)
            skipped[c.name] = reason
            continue
        try:
            c.start(target, writer)
            started.append(c)
        except Unavailable as e:
            writer.set_collector(c.name, status=FAILED, reason=str(e))
            skipped[c.name] = str(e)
            stop_safely(c, writer)
    return started, skipped


def stop_all(started: list[Collector], writer: CaptureWriter) -> None:
    """Stop collectors, the last started first: every one is told at once (their streams end
    together), then each is waited for; one failing never keeps the others attached."""
    for c in reversed(started):
        begin = getattr(c, "begin_stop", None)
        if begin is not None:
            try:
                begin()
            except Exception:
                pass
    for c in reversed(started):
        stop_safely(c, writer)


def stop_safely(c: Collector, writer: CaptureWriter) -> None:
    try:
        c.stop()
    except Exception as e:  # stopping one must never prevent stopping the others
        writer.set_collector(c.name, status=FAILED, reason=f"stop failed: {type(e).__name__}: {e}")
    cost = getattr(c, "observer_cost", None)
    if cost is not None:
        try:
            writer.set_collector(c.name, observer=cost())
        except Exception:
            pass


def run_capture(target: Target, collectors: list[Collector], writer: CaptureWriter, duration_s: float | None,
                target_alive: Callable[[], bool] | None = None, on_tick: Callable[[dict], None] | None = None,
                tick_s: float = 0.5, before_start: Callable[[], None] | None = None,
                release: Callable[[], None] | None = None,
                after_release: list[Collector] | tuple = (), stop: StopFlag | None = None) -> SessionResult:
    """Run one capture to its end. `target_alive` defaults to "the pid exists and is not a zombie".

    `release` (`diag run`): the target is a command held before its exec; it is called once the
    `collectors` are attached (never when the capture was interrupted before, nor when none could
    start), then the `after_release` collectors start (py-spy needs the exec'd interpreter); the
    stop flag is checked again after the release (it waits for the exec): once diag is told to
    stop, a collector still to attach is not started, but one flagged `runs_from_release` (the
    strace that launched the command, already tracing it) is, so that it is stopped like the others.
    `clock.collectors_started_monotonic_ns` is written to the manifest when all have started, and
    with `release` only once the command was released: the mark that the capture is ready. A
    capture whose command was never released ends "interrupted", without that mark.

    No collector started is an error (EXIT_NO_COLLECTOR), even if a signal came meanwhile, except
    under `release` when the signal came before a release that could have happened (a collector
    had started, or some wait for it): the command never ran, the capture is interrupted.
    `stop`: a flag the caller already feeds from its own signal handlers (`diag run`, so that a
    signal landing before or after this function is not lost); by default a fresh one.
    """
    stop = stop if stop is not None else StopFlag()
    previous = {}

    def handler(signum, frame):
        stop.set(signal.Signals(signum).name)

    for s in STOP_SIGNALS:
        try:
            previous[s] = signal.signal(s, handler)
        except ValueError:      # not the main thread (tests): rely on the caller's stop
            pass
    alive = target_alive or (lambda: _pid_alive(target.pid))
    if target.follow_children and target.tree is None:
        from diag.collect.targets import ProcessTree

        target.tree = ProcessTree(target.pid)
    if target.tree is not None:
        target.tree.refresh()
        writer.set_target(target.to_json())
    started: list[Collector] = []
    status = "complete"
    released = False
    try:
        started, skipped = start_collectors(collectors, target, writer)
        if release is not None and (started or after_release) and not stop.event.is_set():
            release()
            released = True
            for c in after_release:
                if stop.event.is_set() and not getattr(c, "runs_from_release", False):
                    why = f"not started: diag was stopped ({stop.reason}) before it could attach"
                    writer.set_collector(c.name, status=UNAVAILABLE, reason=why)
                    skipped[c.name] = why
                    continue
                more, why = start_collectors([c], target, writer)
                started += more
                skipped.update(why)
        # a signal came before a release that could have happened: the command never ran
        held_back = release is not None and not released and bool(started or after_release)
        if not started and not held_back:
            writer.finish("failed")
            raise DiagError("no collector could run here: " +
                            "; ".join(f"{k}: {v}" for k, v in skipped.items()) +
                            " (run `diag doctor` for the fixes)", EXIT_NO_COLLECTOR)
        if held_back:
            status = "interrupted"       # a signal before the release: the command never ran
        else:
            writer.manifest["clock"]["collectors_started_monotonic_ns"] = monotonic_ns()
            writer.save()
            if before_start:
                before_start()
            t0 = time.monotonic()
            while True:
                if stop.event.wait(tick_s):
                    status = "interrupted"
                    break
                elapsed = time.monotonic() - t0
                if target.tree is not None and target.tree.refresh():
                    writer.set_processes(target.tree.to_json())
                    writer.save()
                if on_tick:
                    on_tick({"elapsed_s": elapsed, "duration_s": duration_s,
                             "collectors": {c.name: c.stats() for c in started}})
                if not alive():
                    status = "target-exited"
                    break
                if writer.write_error:
                    status = "write-failed"
                    break
                if duration_s is not None and elapsed >= duration_s:
                    break
    finally:
        if target.tree is not None:
            target.tree.refresh()
            writer.set_processes(target.tree.to_json())
        stop_all(started, writer)
        for s, h in previous.items():
            signal.signal(s, h)
        if writer.manifest["status"] == "running":
            # Ctrl-C / SIGTERM end a capture normally (all collectors stopped and flushed); only an
            # exception, or a command never released, leaves it "interrupted". A SIGKILL leaves it
            # "running": replay warns.
            import sys

            writer.manifest["end_reason"] = stop.reason or status
            cut = sys.exc_info()[0] is not None or (release is not None and not released)
            writer.finish("interrupted" if cut else "complete")
    if writer.write_error:
        raise DiagError(f"{writer.root}: the capture could not be written ({writer.write_error}); every collector "
                        f"was stopped and what was written is kept (diag replay reads it): free space, or use "
                        f"--out elsewhere", EXIT_BAD_INPUT)
    return SessionResult(str(writer.root), status, [c.name for c in started], skipped, stop.reason)


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


__all__ = ["run_capture", "start_collectors", "SessionResult", "StopFlag", "STOP_SIGNALS", "OK"]
