"""What each of the probe's programs costs, from the kernel's own run statistics: the scheduler
programs above all (sched_waking: who woke a request's thread; sched_switch: off-CPU and runq
time), which run on every context switch and wakeup of the machine, not only on the target's
syscalls.

Method: `kernel.bpf_stats_enabled` on (the kernel then times every run of every BPF program:
`run_cnt`, `run_time_ns`; it costs ~20 ns per run itself, so the figures are upper bounds) for
the part only, restored after. The journal example server (threaded, each request fsyncs under a
lock: wakeups of blocked request threads on every request, the case the wakeup records exist
for) runs under a paced load on 127.0.0.1 with the agent attached in its default setting; the
agent's programs are read (bpftool) before and after the load. Per program: runs per second,
ns per run, and the share of one core all its runs took. Rounds give medians and min-max.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.modes import agent_python, stop_agent
from diag.agent.procfs import held_prog_ids

REPO = Path(__file__).resolve().parents[1]
STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"
LOAD_S = 8.0
RATE = 200.0


def _prog_stats(ids: set[int]) -> dict[int, dict]:
    """id -> {name, run_cnt, run_time_ns} of the given programs (bpftool)."""
    r = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, timeout=30)
    out = {}
    for p in json.loads(r.stdout or "[]"):
        if int(p.get("id", -1)) in ids:
            out[int(p["id"])] = {"name": p.get("name", "?"), "run_cnt": int(p.get("run_cnt", 0)),
                                 "run_time_ns": int(p.get("run_time_ns", 0))}
    return out


def _start_server(work: Path) -> tuple[subprocess.Popen, int]:
    srv = subprocess.Popen([sys.executable, "-m", "diag.examples.journal_server", "--port", "0", "--journal",
                            str(work / "journal.bin")], cwd=str(REPO), stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    line = srv.stdout.readline()
    if "listening on" not in line:
        srv.kill()
        raise RuntimeError(f"journal server did not start: {line!r}")
    return srv, int(line.rsplit(":", 1)[1])


def one_round(work: Path) -> dict[str, dict]:
    """Program name -> {runs_per_s, ns_per_run, core_share} over one paced load."""
    from diag.examples.load import drive

    work.mkdir(parents=True, exist_ok=True)
    srv, port = _start_server(work)
    agent = None
    try:
        out = work / "ebpf.jsonl"
        agent = subprocess.Popen([agent_python(), "-m", "diag.agent", "--pid", str(srv.pid), "--out", str(out)],
                                 cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while not (out.exists() and out.read_bytes().split(b"\n", 1)[0].endswith(b"}")):
            if agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("eBPF agent did not start")
            time.sleep(0.05)
        ids = held_prog_ids(agent.pid)
        before = _prog_stats(ids)
        t0 = time.monotonic()
        drive("127.0.0.1", port, requests=int(RATE * LOAD_S * 2), seconds=LOAD_S, concurrency=4, rate=RATE)
        wall = time.monotonic() - t0
        after = _prog_stats(ids)
    finally:
        if agent is not None:
            stop_agent(agent)
        srv.terminate()
        srv.wait(15)
        shutil.rmtree(work, ignore_errors=True)
    rows: dict[str, dict] = {}
    for pid_, a in after.items():
        b = before.get(pid_, {"run_cnt": 0, "run_time_ns": 0})
        runs, ns = a["run_cnt"] - b["run_cnt"], a["run_time_ns"] - b["run_time_ns"]
        r = rows.setdefault(a["name"], {"runs": 0, "ns": 0})
        r["runs"] += runs
        r["ns"] += ns
    return {name: {"runs_per_s": r["runs"] / wall, "ns_per_run": r["ns"] / r["runs"] if r["runs"] else 0.0,
                   "core_share": r["ns"] / (wall * 1e9)} for name, r in rows.items()}


def sched_cost(work: Path, rounds: int, log=print) -> dict:
    """Every program's cost over `rounds` loads, with the kernel's statistics on for the part only."""
    if not shutil.which("bpftool"):
        return {"error": "bpftool is not installed (apt install bpftool)"}
    try:
        with open(STATS_SYSCTL) as f:
            prev = f.read().strip()
        with open(STATS_SYSCTL, "w") as f:
            f.write("1")
    except OSError as e:
        return {"error": f"cannot enable {STATS_SYSCTL}: {e.strerror}"}
    runs: list[dict[str, dict]] = []
    try:
        for i in range(rounds):
            runs.append(one_round(work / f"round{i}"))
            tot = sum(r["core_share"] for r in runs[-1].values())
            log(f"  program cost round {i + 1}/{rounds}: all programs {tot:.2%} of a core")
    finally:
        with open(STATS_SYSCTL, "w") as f:
            f.write(prev)
    rows = []
    for name in sorted({n for r in runs for n in r}):
        got = [r[name] for r in runs if name in r]
        ns = [g["ns_per_run"] for g in got]
        share = [g["core_share"] for g in got]
        rows.append({"program": name, "runs_per_s": statistics.median(g["runs_per_s"] for g in got),
                     "ns_per_run": statistics.median(ns), "ns_min": min(ns), "ns_max": max(ns),
                     "core_share": statistics.median(share), "share_min": min(share), "share_max": max(share)})
    rows.sort(key=lambda r: -r["core_share"])
    totals = [sum(r[n]["core_share"] for n in r) for r in runs]
    return {"rounds": rounds, "load_s": LOAD_S, "rate": RATE, "rows": rows,
            "total_share": statistics.median(totals), "total_min": min(totals), "total_max": max(totals)}


__all__ = ["sched_cost"]

if __name__ == "__main__":
    res = sched_cost(REPO / "bench" / "work" / "sched", int(os.environ.get("ROUNDS", "3")))
    print(json.dumps(res, indent=1))
