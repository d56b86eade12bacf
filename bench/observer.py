"""The observer-effect part: every mode against every target at saturation, interleaved with
untraced baseline runs, and the per-mode ratios to the paired baseline.

Method. Each target is started once (pinned, bench/targets.py) and driven to saturation by a
closed-loop generator for a fixed time. In each round every mode runs once, in a shuffled order,
interleaved with baseline runs as B M1 M2 B M3 M4 B ...: every mode run sits next to exactly one
baseline run (its pair, measured seconds before or after it), and its throughput, p99 and CPU per
request are divided by that baseline's. Ratios are the median and min-max over rounds.

CPU per request = (the target's CPU + the observer's processes' CPU) / requests over the load
window, from /proc: the steadiest number on a shared machine. The load generator's CPU per request
is kept apart (eBPF programs run on its syscalls too, but it is not the server's cost).
"""
from __future__ import annotations

import random
import shutil
import statistics
import time
from pathlib import Path

from bench import cpu as C
from bench import modes as M
from bench.targets import make_targets, redis_cmd, wrk_cmd

# Expected throughput ratio before a first measurement (sizes redis-benchmark's request count).
PRIOR = {"strace-all": 0.05, "strace-filtered": 0.05, "attach-strace": 0.05, "ebpf-all-calls": 0.4}


def measure(target, mode: M.Mode, duration: float, expected: dict, work: Path, log=print) -> dict:
    """One run of one mode: start it, load, stop it; a failure is a result, never an exception."""
    wd = work / "run"
    shutil.rmtree(wd, ignore_errors=True)
    wd.mkdir(parents=True)
    rec: dict = {"mode": mode.name, "ok": False, "loadavg": C.loadavg()}
    run = None
    try:
        run = mode.start(target, wd)
        ours = {target.pid} | ({run.proc.pid} if run.proc else set())
        if run.proc:
            try:
                import psutil

                ours |= {p.pid for p in psutil.Process(run.proc.pid).children(recursive=True)}
            except Exception:
                pass
        rec["foreign_bpf"] = C.foreign_bpf(ours)
        if run.monitor:
            run.monitor.mark("load_start")
        cpu0, t0 = target.cpu_s(), time.monotonic()
        res = target.load(duration, expected.get(mode.name) or expected.get("baseline"))
        cpu1, t1 = target.cpu_s(), time.monotonic()
        if run.monitor:
            run.monitor.mark("load_end")
        rec.update(ok=res.ok, rps=res.rps, p99_ms=res.p99_ms, requests=res.requests, errors=res.errors,
                   load_s=res.elapsed_s, note=res.note, target_cpu_s=cpu1 - cpu0, window_s=t1 - t0,
                   load_cpu_s=res.load_cpu_s)
        if res.ok and res.rps:
            expected[mode.name] = res.rps
    except Exception as e:        # a failing mode is a result, never the end of the benchmark
        rec["note"] = f"{type(e).__name__}: {e}"
    finally:
        if run is not None:
            rec.update(mode.stop(run))
    # the target must survive and be left untraced
    rec["left_traced"] = not M._wait(lambda: not target.traced(), 5.0)
    if not target.alive():
        rec["note"] = (rec.get("note") or "") + " target died"
    shutil.rmtree(wd, ignore_errors=True)
    return rec


def interleave(modes: list, base, rng: random.Random) -> list:
    """B M1 M2 B M3 M4 B ...: every mode next to exactly one baseline run (its pair)."""
    order = modes[:]
    rng.shuffle(order)
    seq = [base]
    for j, m in enumerate(order):
        seq.append(m)
        if j % 2 == 1 or j == len(order) - 1:
            seq.append(base)
    return seq


def run_part(targets: list[str], mode_names: list[str], rounds: int, duration: float, seed: int, work: Path,
             log=print, title: str = "observer") -> dict:
    all_modes = M.modes_by_name()
    out: dict = {"rounds": rounds, "duration_s": duration, "targets": {}}
    rng = random.Random(seed)
    for t in make_targets(targets):
        modes = [all_modes[n] for n in mode_names if n != "baseline" and all_modes[n].applies(t)]
        if not modes:
            continue
        log(f"{title}: target {t.name}: {len(modes)} modes x {rounds} rounds, {duration:g} s loads")
        t.start()
        runs: list[dict] = []
        expected: dict = {}
        base = all_modes["baseline"]
        try:
            warm = t.load(1.0, 50_000)          # warm-up, discarded
            expected["baseline"] = warm.rps or None
            for name in PRIOR:
                expected[name] = (warm.rps or 50_000) * PRIOR[name]
            for r in range(rounds):
                for i, m in enumerate(interleave(modes, base, rng)):
                    if not t.alive():
                        log(f"  {t.name} died; restarting it")
                        t.start()
                    rec = measure(t, m, duration, expected, work, log)
                    rec.update(round=r, pos=i)
                    runs.append(rec)
                    cpr = cpu_per_req(rec)
                    log(f"  r{r} {m.name:22s} {rec.get('rps', 0):9.0f} req/s p99 {rec.get('p99_ms', 0):7.2f} ms"
                        f"  {cpr if cpr is not None else float('nan'):6.1f} µs CPU/req"
                        f"{'  ' + rec['note'] if rec.get('note') else ''}")
                    time.sleep(0.1)
        finally:
            t.stop()
        load = wrk_cmd(0, duration) if t.kind == "http" else redis_cmd(0, 0)
        out["targets"][t.name] = {"label": t.label, "kind": t.kind, "runs": runs,
                                  "load_cmd": " ".join(load).replace(":0/", ":PORT/").replace("-p 0", "-p PORT")
                                  .replace("-n 0", "-n N")}
    return out


# ---------------------------------------------------------------------------------------------
# ratios

def observer_cpu_s(rec: dict) -> float:
    return sum((rec.get("cpu_window") or {}).values())


def cpu_per_req(rec: dict) -> float | None:
    """(target + observer) CPU µs per request over the load window."""
    if not rec.get("ok") or not rec.get("requests"):
        return None
    return 1e6 * (rec.get("target_cpu_s", 0.0) + observer_cpu_s(rec)) / rec["requests"]


def med(xs: list) -> tuple[float, float, float] | None:
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return statistics.median(xs), min(xs), max(xs)


def ratios(tres: dict) -> dict[str, dict]:
    """Per mode, per round: the ratios to its paired baseline, and the raw per-run numbers."""
    by_round: dict[int, list[dict]] = {}
    for rec in tres["runs"]:
        by_round.setdefault(rec["round"], []).append(rec)
    out: dict[str, dict] = {}
    for recs in by_round.values():
        recs.sort(key=lambda x: x["pos"])
        for i, rec in enumerate(recs):
            if rec["mode"] == "baseline":
                continue
            bases = [x for x in (recs[i - 1] if i > 0 else None, recs[i + 1] if i + 1 < len(recs) else None)
                     if x and x["mode"] == "baseline" and x.get("ok")]
            d = out.setdefault(rec["mode"], {k: [] for k in (
                "tput", "p99", "rps", "base_rps", "p99_ms", "tool_cpu", "cpu_req", "base_cpu_req", "cpu_req_ratio", "cpu_tput",
                "target_cpu_req", "load_cpu_req", "base_load_cpu_req", "notes", "cpu_by", "cpu_total_by",
                "collectors", "pyspy", "ebpf", "loadavg", "foreign_bpf")})
            d.setdefault("left_traced", 0)
            d.setdefault("failed", 0)
            if rec.get("left_traced"):
                d["left_traced"] += 1
            if not rec.get("ok") or not bases:
                d["failed"] += 1
                if rec.get("note"):
                    d["notes"].append(rec["note"])
                continue
            b_rps = statistics.mean(b["rps"] for b in bases)
            b_p99 = statistics.mean(b["p99_ms"] for b in bases)
            d["tput"].append(rec["rps"] / b_rps)
            d["p99"].append(rec["p99_ms"] / b_p99 if b_p99 else None)
            d["rps"].append(rec["rps"])
            d["base_rps"].append(b_rps)
            d["p99_ms"].append(rec["p99_ms"])
            w = rec.get("window_s") or 1.0
            cw = rec.get("cpu_window") or {}
            d["tool_cpu"].append(sum(cw.values()) / w)
            d["cpu_by"].append({k: v / w for k, v in cw.items()})
            d["cpu_total_by"].append(rec.get("cpu_total") or {})
            d["loadavg"].append(rec.get("loadavg"))
            d["foreign_bpf"].append(len(rec.get("foreign_bpf") or []))
            c = cpu_per_req(rec)
            bc = [cpu_per_req(b) for b in bases]
            bc = [x for x in bc if x is not None]
            d["cpu_req"].append(c)
            d["base_cpu_req"].append(statistics.mean(bc) if bc else None)
            d["cpu_req_ratio"].append(c / statistics.mean(bc) if c is not None and bc else None)
            # the throughput the CPU per request predicts when the CPU is the bottleneck
            d["cpu_tput"].append(statistics.mean(bc) / c if c and bc else None)
            if rec.get("requests"):
                d["target_cpu_req"].append(1e6 * rec["target_cpu_s"] / rec["requests"])
                d["load_cpu_req"].append(1e6 * rec.get("load_cpu_s", 0.0) / rec["requests"])
                bl = [1e6 * b.get("load_cpu_s", 0.0) / b["requests"] for b in bases if b.get("requests")]
                d["base_load_cpu_req"].append(statistics.mean(bl) if bl else None)
            if rec.get("collectors"):
                d["collectors"].append(rec["collectors"])
            if rec.get("pyspy_samples"):
                d["pyspy"].append((rec["pyspy_samples"], rec.get("pyspy_errors") or 0))
            if rec.get("ebpf_events") is not None:
                d["ebpf"].append({k: rec.get(k) for k in rec if k.startswith("ebpf_")} | {"rps": rec["rps"], "window_s": w})
    return out


def baseline_stats(tres: dict) -> dict:
    """The target's untraced saturation: req/s, p99 and CPU/req over every baseline run."""
    b = [r for r in tres["runs"] if r["mode"] == "baseline" and r.get("ok")]
    return {"rps": med([r["rps"] for r in b]), "p99_ms": med([r["p99_ms"] for r in b]),
            "cpu_req": med([cpu_per_req(r) for r in b]), "runs": len(b)}
