"""`diag watch`: the loop of a flight recorder that runs until stopped.

Every second it reads the agent's cumulative histograms, feeds the exporters, and evaluates the
triggers; a trigger (or SIGUSR1, or `diag watch --dump`) starts a dump in a worker thread
(diag/watch/dump.py) while the loop goes on; then a cool-down, and retention. The agent is started
from this (main) thread: its parent-death signal follows the thread that forked it. When every
watched process has exited, a port or name target is looked up again every second and a new
agent (the next ring generation) attaches to whatever serves it now; a pid target ends the watch.

Signals: SIGINT, SIGTERM, SIGHUP stop it (a dump in its `--after` window is cut short but still
written and analysed); SIGUSR1 asks for a dump now (cool-down does not apply; one at a time).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from diag.capture.clock import monotonic_ns
from diag.collect.base import Target
from diag.collect.pyspy import is_python
from diag.errors import EXIT_NO_TARGET, DiagError
from diag.watch import dump as dumps
from diag.watch import retention
from diag.watch import target as targets
from diag.watch.agentproc import RingAgent
from diag.watch.events import Events, utc_now
from diag.watch.hist import History
from diag.watch.triggers import TriggerSet

PID_FILE = ".watch.pid"
RING = ".ring"
TICK_S = 1.0


@dataclass
class WatchOptions:
    spec: targets.TargetSpec
    out: Path
    triggers: TriggerSet
    before_s: float = 30.0
    after_s: float = 10.0
    window_s: float = 10.0
    cooldown_s: float = 120.0
    ring_bytes: int = 64 << 20
    segment_s: float = 5.0
    policy: retention.Policy = field(default_factory=retention.Policy)
    follow: bool = True
    analysis_every_s: float = 10.0
    duration_s: float | None = None          # tests and benchmarks: stop after this long
    slow_ns: int = 1_000_000


class Watcher:
    def __init__(self, opts: WatchOptions, events: Events, sinks: list | None = None) -> None:
        self.o = opts
        self.events = events
        self.sinks = sinks or []
        self.stop = threading.Event()
        self.stop_reason = ""
        self.dump_asked: str | None = None
        self.ring_dir = opts.out / RING
        self.agent: RingAgent | None = None
        self.generation = 0
        self.pids: list[int] = []
        self.target: Target | None = None
        self.history = History(keep_s=max(opts.window_s, 1.0) + 5)
        self.dump_thread: threading.Thread | None = None
        self.last_dump_ns = 0
        self.dumps_written = 0
        self._last_analysis = 0.0

    # --- signals and the pid file ---------------------------------------------------------------
    def _on_stop(self, signum, frame) -> None:
        self.stop_reason = signal.Signals(signum).name
        self.stop.set()

    def _on_dump(self, signum, frame) -> None:
        self.dump_asked = "SIGUSR1"

    def _claim(self) -> None:
        self.o.out.mkdir(parents=True, exist_ok=True)
        pidf = self.o.out / PID_FILE
        other = running_watcher(self.o.out)
        if other:
            raise DiagError(f"diag watch: {self.o.out} is already used by the watcher pid {other}; "
                            f"give another --out or stop it", EXIT_NO_TARGET)
        pidf.write_text(f"{os.getpid()}\n")

    # --- the target and its agent ---------------------------------------------------------------
    def _attach(self, pids: list[int]) -> None:
        self.generation += 1
        self.pids = pids
        d = targets.describe(pids[0])
        self.target = Target(pid=pids[0], cmdline=d.get("cmdline") or [], comm=d.get("comm", ""),
                             is_python=is_python(pids[0]), follow_children=self.o.follow)
        self.agent = RingAgent(self.ring_dir, pids, self.generation, self.o.ring_bytes, self.o.segment_s,
                               follow=self.o.follow, slow_ns=self.o.slow_ns)
        self.agent.start()
        self.o.triggers.reset()
        for s in self.sinks:
            s.target(d, self.o.spec.describe())
        self.events.emit("attached", f"{self.o.spec.describe()}: pids {pids} ({d.get('comm', '?')}), ring "
                                     f"generation {self.generation}, bound {self.o.ring_bytes >> 20} MiB",
                         target=d, pids=pids, generation=self.generation, spec=self.o.spec.describe())

    def _wait_for_target(self) -> list[int] | None:
        said = False
        while not self.stop.is_set():
            pids = targets.resolve(self.o.spec)
            if pids:
                return pids
            if not self.o.spec.can_return:
                return None
            if not said:
                self.events.emit("waiting", f"no process for {self.o.spec.describe()} yet; looking every second",
                                 spec=self.o.spec.describe())
                said = True
            self.stop.wait(TICK_S)
        return None

    # --- the loop ---------------------------------------------------------------------------------
    def run(self) -> int:
        o = self.o
        if not o.spec.can_return and not targets.resolve(o.spec):
            raise DiagError(f"pid {o.spec.pid} does not exist (or has exited): check it with `ps -p {o.spec.pid}`",
                            EXIT_NO_TARGET)
        self._claim()
        previous = {s: signal.signal(s, self._on_stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._on_dump)
        t_end = time.monotonic() + o.duration_s if o.duration_s else None
        shutil.rmtree(self.ring_dir, ignore_errors=True)      # a ring of an earlier run: another clock epoch
        try:
            pids = targets.resolve(o.spec)
            if not pids:
                pids = self._wait_for_target()
            if pids:
                self._attach(pids)
                self.events.emit("watching", self._summary(), triggers=[t.expr for t in o.triggers.triggers],
                                 out=str(o.out), before_s=o.before_s, after_s=o.after_s, window_s=o.window_s,
                                 cooldown_s=o.cooldown_s, ring_bytes=o.ring_bytes)
            while not self.stop.is_set():
                if t_end and time.monotonic() >= t_end:
                    self.stop_reason = "duration"
                    break
                self.stop.wait(TICK_S)
                if self.stop.is_set():
                    break
                if not self._agent_ok():
                    break
                self._tick()
        finally:
            self._shutdown()
            for s, h in previous.items():
                signal.signal(s, h)
        return 0

    def _summary(self) -> str:
        t = ", ".join(x.expr for x in self.o.triggers.triggers) or "none (SIGUSR1 / --dump only)"
        return (f"triggers {t}; window {self.o.window_s:g} s, hold {self.o.triggers.triggers[0].hold_s:g} s, "
                f"cool-down {self.o.cooldown_s:g} s; dumps of {self.o.before_s:g} s before + {self.o.after_s:g} s "
                f"after into {self.o.out}" if self.o.triggers.triggers else
                f"triggers {t}; dumps of {self.o.before_s:g} s before + {self.o.after_s:g} s after into {self.o.out}")

    def _agent_ok(self) -> bool:
        """The agent runs; else the target went away (look for its successor) or the agent failed."""
        if self.agent is not None and self.agent.alive():
            return True
        gone = not any(targets.alive(p) for p in self.pids)
        if self.agent is not None:
            why = self.agent.error() if not gone else ""
            self.agent.stop()
            self.agent = None
            self.events.emit("target-exited" if gone else "agent-exited",
                             f"{self.o.spec.describe()}: pids {self.pids} exited" if gone else
                             f"the eBPF agent stopped: {why}; attaching again", pids=self.pids, reason=why or None)
        self._join_dump()
        if not gone:
            self._attach([p for p in self.pids if targets.alive(p)])
            return True
        pids = self._wait_for_target()
        if not pids:
            if not self.stop.is_set():
                self.stop_reason = "target-exited"
            return False
        self.history = History(keep_s=self.history.keep_s)
        self._attach(pids)
        return True

    def _read_stats(self) -> dict | None:
        try:
            with open(self.ring_dir / "stats.json") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _tick(self) -> None:
        snap = self._read_stats()
        fresh = snap is not None and self.history.add(snap)
        if fresh:
            for s in self.sinks:
                s.update(snap)
        busy = self.dump_thread is not None and self.dump_thread.is_alive()
        if self.dump_asked and not busy:
            why, self.dump_asked = self.dump_asked, None
            self._start_dump(why, "manual" if why == "--dump" else "signal-usr1", "asked for a dump")
            return
        if self.dump_asked and busy:
            self.events.emit("dump-skipped", f"{self.dump_asked}: a dump is already being written", reason=self.dump_asked)
            self.dump_asked = None
        cooling = self.last_dump_ns and (monotonic_ns() - self.last_dump_ns) / 1e9 < self.o.cooldown_s
        if busy or cooling:
            return
        if fresh:
            w = self.history.window(self.o.window_s)
            if w is not None and w.seconds >= 0.5:
                for t in self.o.triggers.latency:
                    if t.tick(w):
                        self._start_dump(t.expr, t.slug(), t.last_detail)
                        return
        if self.o.triggers.analysis and time.monotonic() - self._last_analysis >= self.o.analysis_every_s:
            self._last_analysis = time.monotonic()
            report = dumps.light_report(self.o.out, self.ring_dir, self.agent, self.target, self.o.window_s)
            if report is not None:
                for t in self.o.triggers.analysis:
                    if t.tick_report(report, self.o.analysis_every_s):
                        self._start_dump(t.expr, t.slug(), t.last_detail)
                        return

    # --- dumps ----------------------------------------------------------------------------------
    def _start_dump(self, reason: str, slug: str, detail: str) -> None:
        # what the dump will take: the ring's window (at most what the ring holds now) and the
        # after-window collectors' streams (perf and py-spy: a few MB for --after 10)
        latest = self.history.latest or {}
        ring_now = int((latest.get("ring") or {}).get("bytes") or self.o.ring_bytes)
        need = min(ring_now, self.o.ring_bytes) + (32 << 20)
        retention.enforce(self.o.out, self.o.policy, reserve=need)
        why_not = retention.room_for_dump(self.o.out, self.o.policy, need)
        if why_not:
            self.events.emit("dump-skipped", f"{reason}: {why_not}", reason=reason, detail=why_not)
            self.last_dump_ns = monotonic_ns()
            return
        req = dumps.DumpRequest(reason, slug, detail, monotonic_ns(), utc_now())
        self.last_dump_ns = req.trigger_ns
        self.o.triggers.reset()
        self.events.emit("trigger", f"{reason}: {detail}; capturing {self.o.before_s:g} s before and "
                                    f"{self.o.after_s:g} s after", trigger=reason, detail=detail,
                         pids=self.pids, capture=str(self.o.out / dumps.dump_name(req)))
        self.dump_thread = threading.Thread(target=self._dump, args=(req,), name="diag-watch-dump", daemon=True)
        self.dump_thread.start()

    def _dump(self, req: dumps.DumpRequest) -> None:
        try:
            res = dumps.run_dump(req, self.o.out, self.ring_dir, self.agent, self.target, self.o.before_s,
                                 self.o.after_s, self.stop, settle_s=self.o.segment_s + 5)
            dumps.analyse(res)
        except Exception as e:
            self.events.emit("dump-failed", f"{req.reason}: {type(e).__name__}: {e}", trigger=req.reason,
                             error=f"{type(e).__name__}: {e}")
            return
        self.dumps_written += 1
        removed = retention.enforce(self.o.out, self.o.policy, protect=res.capture)
        findings = [{"id": f["id"], "severity": f.get("severity"), "share": round(float(f.get("share") or 0), 3),
                     "summary": f.get("summary")} for f in (res.report or {}).get("findings") or ()]
        top = ", ".join(f"{f['id']} ({f['severity']}, {f['share']:.0%})" for f in findings[:3]) or "no finding"
        req_lat = ((res.report or {}).get("requests") or {}).get("latency") or {}
        self.events.emit("capture", f"{req.reason}: {res.capture} ({res.covered_s:.0f} s covered): {top}"
                                    + (f"; {res.error}" if res.error else ""),
                         trigger=req.reason, detail=req.detail, capture=str(res.capture),
                         report=str(res.json_path) if res.json_path else None,
                         html=str(res.html_path) if res.html_path else None, covered_s=round(res.covered_s, 3),
                         findings=findings, error=res.error, request_p99_ns=req_lat.get("p99_ns"),
                         target=targets.describe(self.pids[0]) if self.pids else None)
        for d in removed:
            self.events.emit("removed", f"{d} (retention: --keep {self.o.policy.keep}, --max-disk "
                                        f"{self.o.policy.max_disk >> 20} MiB)", capture=str(d))
        for s in self.sinks:
            try:
                s.dump(req.reason, res, findings)
            except Exception as e:
                self.events.emit("export-failed", f"{type(s).__name__}: {e}", error=str(e))

    def _join_dump(self) -> None:
        if self.dump_thread is not None:
            self.dump_thread.join()
            self.dump_thread = None

    def _shutdown(self) -> None:
        self.stop.set()                   # a dump in its --after window ends it now
        self._join_dump()
        if self.agent is not None:
            self.agent.stop()
        for s in self.sinks:
            try:
                s.close()
            except Exception:
                pass
        try:
            (self.o.out / PID_FILE).unlink()
        except OSError:
            pass
        self.events.emit("stopped", f"{self.stop_reason or 'stopped'}; {self.dumps_written} dump(s) written",
                         reason=self.stop_reason or None, dumps=self.dumps_written)


def running_watcher(out: Path) -> int | None:
    """The pid of a live `diag watch` using `out`, from its pid file (a stale file is ignored)."""
    try:
        pid = int((out / PID_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return None
    return pid if b"watch" in argv and pid != os.getpid() else None


def ask_dump(out: Path) -> int:
    """`diag watch --dump`: SIGUSR1 to the watcher of `out`; its pid."""
    pid = running_watcher(out)
    if pid is None:
        raise DiagError(f"diag watch --dump: no watcher runs with --out {out} (no live pid in {out / PID_FILE})",
                        EXIT_NO_TARGET)
    os.kill(pid, signal.SIGUSR1)
    return pid
