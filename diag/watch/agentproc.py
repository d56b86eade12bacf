"""The eBPF agent in segment mode, run by the watcher: start, cut a segment, stop, all by signals.

Started with a parent-death signal (SIGTERM) from the watcher's main thread (the signal follows
the *thread* that forked it), in its own process group: if the watcher is killed, even with
SIGKILL, the agent detaches its programs and closes its last segment. It writes its ring into
`ring_dir` and its cumulative histograms into `stats` every second (diag/agent/segments.py).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from diag.agent.segments import read_state
from diag.collect.base import pdeathsig_preexec
from diag.collect.ebpf import SYSTEM_PYTHON, agent_error_line, bcc_python
from diag.errors import EXIT_NO_COLLECTOR, DiagError
from diag.resources import package_root

# Request records per second the probe exports before it keeps only the slow tail and exemplars:
# a quarter of attach's budget, for an agent that runs for days (the histograms stay exact).
WATCH_EXPORT_BUDGET = 500


class RingAgent:
    def __init__(self, ring_dir: Path, pids: list[int], generation: int, ring_bytes: int, segment_s: float,
                 follow: bool = True, slow_ns: int = 1_000_000, log_dir: Path | None = None) -> None:
        self.ring_dir = ring_dir
        self.stats_path = ring_dir / "stats.json"
        self.pids = pids
        self.generation = generation
        self.ring_bytes = ring_bytes
        self.segment_s = segment_s
        self.follow = follow
        self.slow_ns = slow_ns
        self.log_path = (log_dir or ring_dir) / f"agent-g{generation:04d}.stderr"
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        py = bcc_python() or SYSTEM_PYTHON
        pythonpath = os.pathsep.join(p for p in (str(package_root()), os.environ.get("PYTHONPATH", "")) if p)
        a = ["/usr/bin/env", f"PYTHONPATH={pythonpath}", py, "-m", "diag.agent"]
        for p in self.pids:
            a += ["--pid", str(p)]
        a += ["--segment-dir", str(self.ring_dir), "--segment-seconds", f"{self.segment_s:g}",
              "--ring-bytes", str(self.ring_bytes), "--segment-generation", str(self.generation),
              "--stats", str(self.stats_path), "--slow-ns", str(self.slow_ns),
              "--export-budget", str(WATCH_EXPORT_BUDGET)]
        if self.follow:
            a.append("--follow")
        return a

    def start(self, timeout_s: float = 60.0) -> None:
        self.ring_dir.mkdir(parents=True, exist_ok=True)
        err = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                         preexec_fn=pdeathsig_preexec(signal.SIGTERM), close_fds=True)
        finally:
            err.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            st = read_state(self.ring_dir) or {}
            if st.get("attached") and st.get("agent_pid") == self._agent_pid():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        why = self.error() or ("the eBPF agent did not attach within %.0f s" % timeout_s if self.alive()
                               else "the eBPF agent exited before attaching")
        self.stop()
        raise DiagError(f"diag watch: eBPF: {why} (`diag doctor` says what is missing)", EXIT_NO_COLLECTOR)

    def _agent_pid(self) -> int | None:
        """The agent's own pid (the Popen is /usr/bin/env, which execs it: the same pid)."""
        return self.proc.pid if self.proc else None

    def error(self) -> str:
        try:
            return agent_error_line(self.log_path.read_bytes()[-20000:].decode(errors="replace"))
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cut(self) -> None:
        """Ask for the current segment to be closed now (the data up to now becomes dumpable)."""
        if self.alive():
            try:
                self.proc.send_signal(signal.SIGUSR1)
            except ProcessLookupError:
                pass

    def stop(self, timeout_s: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode
