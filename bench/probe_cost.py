"""What one traced syscall costs the target under the eBPF probe, in CPU nanoseconds.

The cheapest path of a traced call: an fd of kind "other", no kernel stack (the call never
blocks), no request (not a socket). Calls that block, or that belong to a request, cost more;
the observer benchmark measures those inside whole servers.

The throughput ratios of the observer benchmark mix many effects (the load generator's own
syscalls hitting the same tracepoints, the agent's CPU, scheduling on 2 shared cores). This part
isolates the probe's price per call: a Python loop makes N one-byte reads of /dev/zero (a traced
syscall of the read family on an fd of kind "other") and measures its own thread CPU time per
call, untraced and under each setting, in interleaved rounds (one run of every setting per round,
in order), so each setting's extra cost is read against the untraced runs of the same rounds.

Settings: the agent's `--floor` (every program returns at once: the kernel's fixed price of a
tracepoint with a BPF program, the floor no probe can go under), the agent's default (aggregates,
slow events, request summarizer) and `--no-requests`. The extra ns per call over the floor is
the probe's own work, the part its code can still win back.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.modes import agent_python, stop_agent

REPO = Path(__file__).resolve().parents[1]
CALLS = 200_000

LOOP = r'''
import os, sys, time
fd = os.open("/dev/zero", os.O_RDONLY)
print("ready", flush=True)
sys.stdin.readline()
for _ in range(5000):
    os.read(fd, 1)
t0 = time.thread_time_ns()
for _ in range(%d):
    os.read(fd, 1)
print((time.thread_time_ns() - t0) / %d, flush=True)
'''


SETTINGS = {
    "untraced": None,
    "eBPF agent --floor (programs return at once)": ["--floor"],
    "eBPF agent default": [],
    "eBPF agent --no-requests": ["--no-requests"],
}
FLOOR = "eBPF agent --floor (programs return at once)"


def one_run(agent_args: list[str] | None, work: Path) -> float:
    loop = subprocess.Popen([sys.executable, "-c", LOOP % (CALLS, CALLS)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    agent = None
    try:
        assert loop.stdout.readline().strip() == "ready"
        if agent_args is not None:
            out = work / f"probe-cost-{loop.pid}" / "ebpf.jsonl"
            out.parent.mkdir(parents=True, exist_ok=True)
            agent = subprocess.Popen([agent_python(), "-m", "diag.agent", "--pid", str(loop.pid),
                                      "--out", str(out), *agent_args], cwd=str(REPO),
                                     env={**os.environ, "PYTHONPATH": str(REPO)},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while not (out.exists() and out.read_bytes().split(b"\n", 1)[0].endswith(b"}")):
                if agent.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"eBPF agent did not start ({' '.join(agent_args)})")
                time.sleep(0.05)
        loop.stdin.write("go\n")
        loop.stdin.flush()
        ns = float(loop.stdout.readline())
        loop.wait(timeout=60)
        return ns
    finally:
        if loop.poll() is None:
            loop.kill()
        if agent is not None:
            stop_agent(agent)
            shutil.rmtree(work / f"probe-cost-{loop.pid}", ignore_errors=True)


def probe_cost(work: Path, rounds: int, log=print) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[float]] = {k: [] for k in SETTINGS}
    for r in range(rounds):
        for name, args in SETTINGS.items():
            runs[name].append(one_run(args, work))
        log(f"  probe cost round {r + 1}/{rounds}: " +
            ", ".join(f"{k.split(' (')[0]} {v[-1]:.0f} ns" for k, v in runs.items()))
    base = statistics.median(runs["untraced"])
    floor = runs[FLOOR]
    rows = []
    for name, v in runs.items():
        extra = [x - u for x, u in zip(v, runs["untraced"])]
        over = [x - f for x, f in zip(v, floor)]
        rows.append({"setting": name, "ns_per_call": statistics.median(v), "min": min(v), "max": max(v),
                     "extra_ns": statistics.median(extra), "over_floor_ns": statistics.median(over),
                     "ratio": statistics.median(v) / base})
    return {"calls": CALLS, "rounds": rounds, "rows": rows}


__all__ = ["probe_cost"]

if __name__ == "__main__":
    for row in probe_cost(REPO / "bench" / "work" / "probe", int(os.environ.get("ROUNDS", "3")))["rows"]:
        print(row)
