"""`make bench`: the observer effect of every collector and the analysis speed, into bench/RESULTS.md.

    python -m bench.run                 # full run (< 20 min on the 2-core reference machine)
    python -m bench.run --quick         # a few minutes: 1 round, shorter loads, no 5M replay
                                        # (writes bench/work/RESULTS-quick.md, profiles in bench/work)
    python -m bench.run --only observer --targets redis --modes attach-auto,ebpf-default

Method (observer effect). Each target is started once and driven to saturation by a real load
generator on 127.0.0.1 for a fixed time (wrk -t2 -c8 -dS --latency; redis-benchmark -c 8 -t get
with a request count sized to last S seconds). In each round every mode runs once, in a shuffled
order, interleaved with baseline runs as B M1 M2 B M3 M4 B ...: every mode run sits next to exactly
one baseline run (its pair, measured seconds before or after it), and the mode's throughput and
p99 are divided by that baseline's. Ratios are reported as the median and min-max over the rounds (>= 3 in a full run).
The load generator, the target and the tools share the machine's 2 cores, as they would on a
busy host.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import modes as M
from bench import replay_speed as R
from bench.probe_cost import probe_cost
from bench.targets import ALL_TARGETS, make_targets, redis_cmd, wrk_cmd

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
WORK = BENCH / "work"

# Expected throughput ratio before a first measurement (sizes redis-benchmark's request count).
PRIOR = {"strace-all": 0.04, "strace-filtered": 0.05, "attach-strace": 0.05, "ebpf-all": 0.4}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# observer effect

def measure(target, mode: M.Mode, duration: float, expected: dict, work: Path) -> dict:
    wd = work / "run"
    shutil.rmtree(wd, ignore_errors=True)
    wd.mkdir(parents=True)
    rec: dict = {"mode": mode.name, "ok": False}
    run = None
    try:
        run = mode.start(target, wd)
        if run.monitor:
            run.monitor.mark("load_start")
        cpu0, t0 = target.cpu_s(), time.monotonic()
        res = target.load(duration, expected.get(mode.name) or expected.get("baseline"))
        cpu1, t1 = target.cpu_s(), time.monotonic()
        if run.monitor:
            run.monitor.mark("load_end")
        rec.update(ok=res.ok, rps=res.rps, p99_ms=res.p99_ms, requests=res.requests, errors=res.errors,
                   load_s=res.elapsed_s, note=res.note, target_cpu_s=cpu1 - cpu0, window_s=t1 - t0)
        if res.ok and res.rps:
            expected[mode.name] = res.rps
    except Exception as e:        # a failing mode is a result, never the end of the benchmark
        rec["note"] = f"{type(e).__name__}: {e}"
    finally:
        if run is not None:
            rec.update(mode.stop(run))
    # the target must survive and be left untraced
    left = M._wait(lambda: not target.traced(), 5.0)
    rec["left_traced"] = not left
    if not target.alive():
        rec["note"] = (rec.get("note") or "") + " target died"
    shutil.rmtree(wd, ignore_errors=True)
    return rec


def observer(targets: list[str], mode_names: list[str], rounds: int, duration: float, seed: int) -> dict:
    all_modes = M.modes_by_name()
    out: dict = {"rounds": rounds, "duration_s": duration, "targets": {}}
    rng = random.Random(seed)
    for t in make_targets(targets, str(WORK)):
        modes = [all_modes[n] for n in mode_names if n != "baseline" and all_modes[n].applies(t)]
        log(f"target {t.name}: {len(modes)} modes x {rounds} rounds, {duration:g} s loads")
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
                order = modes[:]
                rng.shuffle(order)
                # B M1 M2 B M3 M4 B ...: every mode run is next to exactly one baseline run (its pair)
                seq = [base]
                for j, m in enumerate(order):
                    seq.append(m)
                    if j % 2 == 1 or j == len(order) - 1:
                        seq.append(base)
                for i, m in enumerate(seq):
                    if not t.alive():
                        log(f"  {t.name} died; restarting it")
                        t.start()
                    rec = measure(t, m, duration, expected, WORK)
                    rec.update(round=r, pos=i)
                    runs.append(rec)
                    if m.name != "baseline":
                        log(f"  r{r} {m.name:18s} {rec.get('rps', 0):9.0f} req/s p99 {rec.get('p99_ms', 0):7.2f} ms"
                            f"{'  ' + rec['note'] if rec.get('note') else ''}")
                    time.sleep(0.1)
        finally:
            t.stop()
        out["targets"][t.name] = {"label": t.label, "kind": t.kind, "runs": runs,
                                  "load_cmd": " ".join(wrk_cmd(0, duration) if t.kind == "http"
                                                       else redis_cmd(0, 0)).replace(":0/", ":PORT/")
                                  .replace("-p 0", "-p PORT").replace("-n 0", "-n N")}
    return out


def _med(xs: list[float]) -> tuple[float, float, float] | None:
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return statistics.median(xs), min(xs), max(xs)


def ratios(tres: dict) -> dict[str, dict]:
    """Per mode: throughput and p99 ratios against the paired baseline, per round."""
    runs = tres["runs"]
    by_round: dict[int, list[dict]] = {}
    for rec in runs:
        by_round.setdefault(rec["round"], []).append(rec)
    out: dict[str, dict] = {}
    for r, recs in by_round.items():
        recs.sort(key=lambda x: x["pos"])
        for i, rec in enumerate(recs):
            if rec["mode"] == "baseline":
                continue
            bases = [x for x in (recs[i - 1] if i > 0 else None, recs[i + 1] if i + 1 < len(recs) else None)
                     if x and x["mode"] == "baseline" and x.get("ok")]
            d = out.setdefault(rec["mode"], {"tput": [], "p99": [], "rps": [], "base_rps": [], "base_p99": [],
                                             "p99_ms": [], "tool_cpu": [], "target_cpu_req": [],
                                             "base_cpu_req": [], "notes": [], "cpu_by": [], "cpu_total_by": [],
                                             "collectors": [], "left_traced": 0, "failed": 0})
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
            d["p99_ms"].append(rec["p99_ms"])
            d["base_rps"].append(b_rps)
            d["base_p99"].append(b_p99)
            w = rec.get("window_s") or 1.0
            cw = rec.get("cpu_window") or {}
            d["tool_cpu"].append(sum(cw.values()) / w)
            d["cpu_by"].append({k: v / w for k, v in cw.items()})
            d["cpu_total_by"].append(rec.get("cpu_total") or {})
            if rec.get("requests"):
                d["target_cpu_req"].append(1e6 * rec["target_cpu_s"] / rec["requests"])
                bq = [1e6 * b["target_cpu_s"] / b["requests"] for b in bases if b.get("requests")]
                d["base_cpu_req"].append(statistics.mean(bq) if bq else None)
            if rec.get("collectors"):
                d["collectors"].append(rec["collectors"])
            if rec.get("pyspy_samples"):
                d.setdefault("pyspy", []).append((rec["pyspy_samples"], rec.get("pyspy_errors") or 0))
            if rec.get("ebpf_lost") is not None or rec.get("ebpf_events") is not None:
                d.setdefault("ebpf", []).append({k: rec.get(k) for k in ("ebpf_events", "ebpf_lost", "ebpf_calls",
                                                                          "ebpf_requests")})
    return out


# ---------------------------------------------------------------------------------------------
# RESULTS.md

def fmt_r(t: tuple | None, pct: bool = True) -> str:
    if t is None:
        return "n/a"
    m, lo, hi = t
    if pct:
        return f"{100 * m:.0f} % ({100 * lo:.0f}-{100 * hi:.0f})"
    return f"{m:.2f}x ({lo:.2f}-{hi:.2f})"


def fmt_n(x: float | None) -> str:
    if x is None:
        return "n/a"
    if x >= 10_000:
        return f"{x / 1000:.1f}k"
    if x >= 1000:
        return f"{x / 1000:.2f}k"
    return f"{x:.0f}"


def diag_version() -> str:
    """The commit measured, and whether diag/ or probes/ differed from it (with the diff's hash)."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "unknown commit"
    diff = subprocess.run(["git", "-C", str(REPO), "diff", "HEAD", "--", "diag", "probes"], capture_output=True).stdout
    if not diff:
        return head
    import hashlib
    return f"{head} + uncommitted changes to diag/ or probes/ (diff sha1 {hashlib.sha1(diff).hexdigest()[:10]})"


def machine() -> dict:
    def cmd(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return "n/a"

    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        mem = int(open("/proc/meminfo").readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return {
        "host": platform.node(), "kernel": platform.release(), "cpu": model, "cpus": os.cpu_count(),
        "mem_mb": mem, "python": platform.python_version(), "os": cmd(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
        "tools": {"wrk": cmd(["sh", "-c", "wrk -v 2>&1 | head -1"]).split("Copyright")[0].strip(),
                  "redis": cmd(["redis-server", "--version"]).split(" sha=")[0],
                  "strace": cmd(["sh", "-c", "strace -V | head -1"]),
                  "perf": cmd(["perf", "--version"]),
                  "py-spy": cmd([M.PYSPY, "--version"]),
                  "diag": diag_version()},
        "disk_var_tmp": cmd(["sh", "-c", "df -T /var/tmp | tail -1 | awk '{print $2}'"]),
    }


GOALS = [
    # (target, mode, min throughput ratio, max p99 ratio, text)
    ("redis", "attach-auto", 0.95, 1.2, "diag attach default on redis-server: >= 95 % throughput, p99 <= 1.2x"),
    ("py-threaded", "attach-auto", 0.95, 1.2,
     "diag attach default on the threaded Python server: >= 95 % throughput, p99 <= 1.2x"),
    ("py-threaded", "attach-ebpf", 0.97, None, "eBPF-only (diag attach --collectors ebpf) on the threaded Python "
                                               "server: >= 97 % throughput"),
    ("py-threaded", "ebpf-default", 0.97, None, "eBPF agent alone (default 1 ms) on the threaded Python server: "
                                                ">= 97 % throughput"),
]


def profile_tables(prof: dict, n_self: int, n_total: int) -> list[str]:
    """The self-time and inclusive-time tables of a py-spy profile summary."""
    L = ["| self time | function (file) |", "|---|---|"]
    L += [f"| {v:.1f} % | `{k}` |" for k, v in prof["self"][:n_self]]
    L += ["", "| inclusive time | diag function (file) |", "|---|---|"]
    L += [f"| {v:.1f} % | `{k}` |" for k, v in prof["total"][:n_total]]
    return L + [""]


def write_results(path: Path, data: dict, args) -> None:
    L: list[str] = []
    m = data["machine"]
    L.append("# diag benchmarks: observer effect and analysis speed\n")
    L.append(f"Generated by `{data['command']}` on {data['date']} "
             f"({'QUICK run: 1 round, short loads, for iteration only' if args.quick else 'full run'}), "
             f"in {data['elapsed_s'] / 60:.1f} min.\n")
    for n in data.get("notes", []):
        L.append(f"> {n}\n")
    L.append("## Machine\n")
    L.append(f"- {m['cpus']} vCPU ({m['cpu']}), {m['mem_mb'] // 1024} GiB RAM, {m['os']}, kernel {m['kernel']}; "
             f"/var/tmp on {m['disk_var_tmp']}")
    L.append(f"- Python {m['python']}; " + "; ".join(f"{k} {v}" for k, v in m["tools"].items()))
    L.append("- Shared and noisy 2-core VM: the load generator, the target and the tools all share the 2 cores. "
             "Read the ratios, not the absolute rates.\n")

    obs = data.get("observer")
    if obs:
        L.append("## Observer effect\n")
        L.append(f"Method: each target is started once; every mode runs once per round in a shuffled order, interleaved "
                 f"with baseline runs as B M1 M2 B M3 M4 B ... so that every mode run is paired with the baseline "
                 f"run next to it (measured seconds before or after it); a mode's ratio = its value / its pair's "
                 f"baseline. {obs['rounds']} round(s), {obs['duration_s']:g} s of "
                 f"load per run; median (min-max) over rounds. Throughput ratio: higher is better (100 % = no "
                 f"cost); p99 ratio: lower is better (1.00x = no cost). `tool CPU` = CPU used by the observer's "
                 f"processes during the load window, in cores (1.0 = one core busy); `target CPU/req` = the "
                 f"target's CPU µs per request (includes in-kernel probe and ptrace-stop costs charged to it), "
                 f"vs its pair's baseline.\n")
        L.append("Loads: " + "; ".join(f"{k}: `{v['load_cmd']}`" for k, v in obs["targets"].items()) + "\n")
        L.append("Modes (the exact commands; each tool is started before the load and waited for until attached; "
                 "`diag attach` runs are ended with SIGINT (Ctrl-C) right after the load, then write the capture "
                 "and the report as a user's run would; the next run starts when diag has exited):\n")
        ran = {m for t in data["ratios"].values() for m in t}
        for mo in M.modes_by_name().values():
            if mo.name == "baseline" or mo.name not in ran:
                continue
            cmd = mo.command(type("T", (), {"pid": "PID"})(), Path("OUT"))
            cmd = " ".join(str(c) for c in cmd).replace(sys.executable, "python").replace(str(REPO) + "/", "")
            cmd = cmd.replace(M._strace_traced(), "<TRACED of diag/collect/strace.py>")
            L.append(f"- `{mo.name}`: {mo.label}: `{cmd}`")
        L.append("")
        for tname, tres in obs["targets"].items():
            rs = data["ratios"][tname]
            bases = [r["rps"] for r in tres["runs"] if r["mode"] == "baseline" and r.get("ok")]
            bp99 = [r["p99_ms"] for r in tres["runs"] if r["mode"] == "baseline" and r.get("ok")]
            bm = _med(bases)
            pm = _med(bp99)
            L.append(f"### {tres['label']}\n")
            L.append(f"Baseline: {fmt_n(bm[0]) if bm else 'n/a'} req/s ({fmt_n(bm[1]) if bm else ''}-"
                     f"{fmt_n(bm[2]) if bm else ''}), p99 {pm[0]:.2f} ms ({pm[1]:.2f}-{pm[2]:.2f}) "
                     f"over {len(bases)} baseline runs.\n" if bm and pm else "Baseline: no successful run.\n")
            L.append("| mode | throughput vs baseline | p99 vs baseline | req/s (median) | p99 ms (median) | "
                     "tool CPU, cores | target CPU/req vs baseline | notes |")
            L.append("|---|---|---|---|---|---|---|---|")
            for mo in M.modes_by_name().values():
                if mo.name not in rs:
                    continue
                d = rs[mo.name]
                notes = []
                if d["failed"]:
                    notes.append(f"{d['failed']} failed run(s): " + "; ".join(dict.fromkeys(d["notes"]))[:160])
                if d["left_traced"]:
                    notes.append(f"target left traced {d['left_traced']}x")
                if d.get("ebpf"):
                    lost = [e.get("ebpf_lost") or 0 for e in d["ebpf"]]
                    ev = [e.get("ebpf_events") or 0 for e in d["ebpf"]]
                    notes.append(f"events {fmt_n(statistics.median(ev))}, lost {fmt_n(statistics.median(lost))}")
                    rq = [e.get("ebpf_requests") for e in d["ebpf"] if e.get("ebpf_requests") is not None]
                    if rq:
                        notes.append(f"request records {fmt_n(statistics.median(rq))}")
                if d.get("pyspy"):
                    errs = [100 * e / n for n, e in d["pyspy"] if n]
                    if errs:
                        notes.append(f"py-spy sample errors {statistics.median(errs):.1f} % "
                                     f"({min(errs):.1f}-{max(errs):.1f})")
                for c in d["collectors"][:1]:
                    e = c.get("ebpf")
                    if e:
                        notes.append(f"ebpf events {fmt_n(e.get('events') or 0)}, lost {e.get('lost') or 0}")
                    bad = [f"{k}: {v.get('status')}" for k, v in c.items() if v.get("status") not in ("ok", None)]
                    if bad:
                        notes.append(", ".join(bad))
                cpr = [a / b for a, b in zip(d["target_cpu_req"], d["base_cpu_req"]) if a and b]
                L.append(f"| {mo.label} | {fmt_r(_med(d['tput']))} | {fmt_r(_med(d['p99']), pct=False)} | "
                         f"{fmt_n(_med(d['rps'])[0]) if d['rps'] else 'n/a'} | "
                         f"{_med(d['p99_ms'])[0]:.2f} | " if d["rps"] else
                         f"| {mo.label} | n/a | n/a | n/a | n/a | ")
                if d["rps"]:
                    L[-1] += (f"{_med(d['tool_cpu'])[0]:.2f} | {fmt_r(_med(cpr), pct=False)} | "
                              f"{'; '.join(notes)} |")
                else:
                    L[-1] += f" | | {'; '.join(notes)} |"
            L.append("")

        # goals
        L.append("### Goals (issue 7)\n")
        L.append("| goal | measured (median, min-max) | verdict |")
        L.append("|---|---|---|")
        for tname, mode, tmin, pmax, text in GOALS:
            d = data["ratios"].get(tname, {}).get(mode)
            if not d or not d["tput"]:
                L.append(f"| {text} | not measured | n/a |")
                continue
            tp, p9 = _med(d["tput"]), _med(d["p99"])
            ok_t = tp[0] >= tmin
            ok_p = pmax is None or (p9 is not None and p9[0] <= pmax)
            parts = [f"throughput {fmt_r(tp)}"] + ([f"p99 {fmt_r(p9, pct=False)}"] if pmax else [])
            miss = []
            if not ok_t:
                miss.append(f"throughput short by {100 * (tmin - tp[0]):.1f} points")
            if not ok_p:
                miss.append(f"p99 over by {p9[0] - pmax:.2f}x")
            verdict = "MET" if ok_t and ok_p else "MISSED: " + ", ".join(miss)
            if ok_t and ok_p and (tp[1] < tmin or (pmax and p9[2] > pmax)):
                verdict += " (median; the range crosses the goal)"
            L.append(f"| {text} | {'; '.join(parts)} | {verdict} |")
        L.append("")

        # summary matrix (for the README)
        L.append("### Summary: throughput and p99 vs baseline, per mode and target (medians)\n")
        tn = list(obs["targets"])
        L.append("| mode | " + " | ".join(tn) + " |")
        L.append("|---|" + "---|" * len(tn))
        for mo in M.modes_by_name().values():
            if mo.name == "baseline" or not any(mo.name in data["ratios"][t] for t in tn):
                continue
            cells = []
            for t in tn:
                d = data["ratios"][t].get(mo.name)
                if not d or not d["tput"]:
                    cells.append("n/a")
                    continue
                p9 = _med(d["p99"])
                cells.append(f"{100 * _med(d['tput'])[0]:.0f} %, p99 {p9[0]:.2f}x" if p9 else
                             f"{100 * _med(d['tput'])[0]:.0f} %")
            L.append(f"| {mo.name} | " + " | ".join(cells) + " |")
        L.append("")

        # per-collector CPU during diag attach
        L.append("### Observer cost: CPU used by each collector process during `diag attach`\n")
        L.append("CPU seconds per second of load window (cores), median over rounds, from psutil polling of the "
                 "`diag attach` process tree every 50 ms (a process's CPU is attributed by its command line). "
                 "`whole run` = CPU seconds over the tool's whole life (start, capture, stop, and for diag the "
                 "analysis and report), median.\n")
        cols = [("ebpf agent", ("ebpf agent",)), ("py-spy", ("py-spy record", "py-spy dump")),
                ("perf record + stat", ("perf record", "perf stat")), ("strace", ("strace",)),
                ("diag process", ("diag (orchestrator, process sampler, analysis)",))]
        L.append("| target | diag attach mode | " + " | ".join(c for c, _ in cols) +
                 " | all, during load | all, whole run (CPU s) |")
        L.append("|---|---|" + "---|" * (len(cols) + 2))
        for tname in obs["targets"]:
            for mo in M.modes_by_name().values():
                if not mo.name.startswith("attach-") or mo.name not in data["ratios"][tname]:
                    continue
                d = data["ratios"][tname][mo.name]
                if not d["cpu_by"]:
                    continue
                cells = []
                for _, labs in cols:
                    v = _med([sum(c.get(x, 0.0) for x in labs) for c in d["cpu_by"]])
                    present = any(x in c for c in d["cpu_by"] + d["cpu_total_by"] for x in labs)
                    cells.append(f"{v[0]:.3f}" if present else "-")
                allw = _med([sum(c.values()) for c in d["cpu_by"]])
                allt = _med([sum(c.values()) for c in d["cpu_total_by"]])
                L.append(f"| {tname} | {mo.name} | " + " | ".join(cells) + f" | {allw[0]:.3f} | {allt[0]:.2f} |")
        L.append("")
        L.append("`diag process` runs the orchestrator and the process sampler (a thread) during the capture, then "
                 "the analysis; `whole run` also counts compile/attach of the probe, `perf script` at stop, and the "
                 "report. The eBPF programs' in-kernel cost is not in the agent's CPU: it is charged to every "
                 "process that makes syscalls (the tracepoints are global), the target's share shows in the "
                 "`target CPU/req` column above.\n")

    for rep_key, what in (("replay", "the threaded journal server under wrk"),
                          ("replay_redis", "redis-server under redis-benchmark")):
        if data.get(rep_key):
            L += _replay_rows(data[rep_key], what)
    for prof_key in ("profile", "profile_redis"):
        prof = data.get(prof_key)
        if not prof:
            continue
        L.append(f"### Profile of the replay hot path ({'redis log' if prof_key == 'profile_redis' else 'journal log'})\n")
        if prof.get("error"):
            L.append(f"py-spy failed: {prof['error']}\n")
        else:
            L.append(f"`{prof['command']}` -> `{prof['file']}` ({prof['samples']} samples; open it in "
                     f"https://www.speedscope.app). Summary also in `bench/profiles/`.\n")
            L += profile_tables(prof, 12, 12)
    pc = data.get("probe")
    if pc and pc.get("error"):
        L.append(f"## eBPF probe: target CPU per traced call\n\nNot measured: {pc['error']}\n")
    elif pc:
        L.append("## eBPF probe: target CPU per traced call\n")
        L.append(f"A Python loop makes {pc['calls']:,} one-byte reads of /dev/zero and measures its own thread CPU "
                 f"time per call, untraced and under each setting, in {pc['rounds']} interleaved rounds "
                 "(`bench/probe_cost.py`). `extra` = median over rounds of (setting - untraced run of the same "
                 "round). The empty programs are the kernel's fixed price of a tracepoint with a BPF program "
                 "attached, which no probe can go under. This is the cheapest path of a traced call (no "
                 "kernel stack, no request); blocking calls and requests cost more.\n")
        if pc.get("note"):
            L.append(f"> {pc['note']}\n")
        L.append("| setting | CPU ns per call, median (min-max) | extra ns per call |")
        L.append("|---|---|---|")
        for r in pc["rows"]:
            extra = "-" if r["setting"] == "untraced" else f"+{r['extra_ns']:.0f}"
            L.append(f"| {r['setting']} | {r['ns_per_call']:.0f} ({r['min']:.0f}-{r['max']:.0f}) | {extra} |")
        L.append("")
    cap = data.get("capture")
    if cap:
        L.append(f"## Replay of a {cap['seconds']:g} s live capture to a report\n")
        L.append(f"Target: the fsync journal server (demo fault: a 4 MB write + fsync every 25th request) under "
                 f"`wrk -t2 -c8`, captured with `diag attach` default collectors ({', '.join(cap['collectors'])}); "
                 f"capture {cap['capture_bytes'] / 1e6:.1f} MB (" +
                 ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sorted(cap['streams'].items())) + "). "
                 f"`diag attach` took {cap['attach_total_s']:.1f} s end to end (capture + stop + report). "
                 f"Collectors: " + "; ".join(f"{k}: {v.get('status')}, events {v.get('events')}"
                                             f"{', lost ' + str(v.get('lost')) if v.get('lost') is not None else ''}"
                                             for k, v in cap["collectors"].items()) + ".\n")
        L.append("| output | runs | wall s, median (min-max) | peak RSS MB | target (< 5 s) |")
        L.append("|---|---|---|---|---|")
        w = _med([r["wall_s"] for r in cap["json"]])
        rss = _med([r["maxrss_mb"] for r in cap["json"]])
        L.append(f"| JSON report (`{cap['command'].split('then ', 1)[-1]}`) | {len(cap['json'])} | {w[0]:.2f} "
                 f"({w[1]:.2f}-{w[2]:.2f}) | {rss[0]:.0f} | {'MET' if w[0] < 5 else 'MISSED'} (for JSON) |")
        if cap.get("html"):
            w = _med([r["wall_s"] for r in cap["html"]])
            L.append(f"| HTML report | {len(cap['html'])} | {w[0]:.2f} ({w[1]:.2f}-{w[2]:.2f}) | | "
                     f"{'MET' if w[0] < 5 else 'MISSED'} |")
        else:
            L.append("| HTML report | - | not measured: `diag replay` has no `--html` renderer yet | | n/a |")
        L.append("")
    cp = (cap or {}).get("profile")
    if cp and not cp.get("error"):
        L.append(f"Profile of one replay of this capture to JSON: `{cp['file']}` ({cp['samples']} samples).\n")
        L += profile_tables(cp, 10, 14)
    for ex in data.get("experiments", []):
        L.append(f"## {ex['title']}\n")
        L.append(ex["text"] + "\n")
    L.append("## Reproduce\n")
    L.append("`make bench` (full), `make bench BENCH_ARGS=--quick` (a few minutes), or e.g. "
             "`.venv/bin/python -m bench.run --only observer --targets redis --modes attach-auto`. "
             "Raw per-run data of the last run: `bench/work/results.json` (not in git).\n")
    path.write_text("\n".join(L) + "\n")


def _replay_rows(rep: dict, what: str) -> list[str]:
    """The analysis-speed table of one strace log: wall time, lines/s, RSS per size, goals."""
    b = rep["base"]
    L = [f"## Analysis speed: `diag replay` of a real strace log of {what}\n",
         f"Log: {b['lines']:,} lines from tracing {what} for {b.get('traced_s', '?')} s (`{b.get('command', '')}`)"
         f"{' (reused from an earlier run)' if b.get('reused') else ''}. 0.1M and 1M are its first lines; 5M "
         f"repeats it with timestamps shifted past its end. Command: `{rep['command']}`; wall time end to end "
         f"(interpreter start to exit), peak RSS from wait4(). Goals: >= 500k lines/s at 1M lines, < 300 MB at "
         f"5M lines, linear growth.\n",
         "| lines | MB | runs | wall s, median (min-max) | lines/s (median) | CPU s | peak RSS MB | µs/line | goal |",
         "|---|---|---|---|---|---|---|---|---|"]
    for row in rep["rows"]:
        w = _med([r["wall_s"] for r in row["runs"]])
        c = _med([r["cpu_s"] for r in row["runs"]])
        rss = _med([r["maxrss_mb"] for r in row["runs"]])
        lps = row["lines"] / w[0]
        met = ""
        if row["lines"] == 1_000_000:
            met = "speed " + ("MET" if lps >= 500_000 else f"MISSED ({lps / 5000:.0f} % of 500k)")
        elif row["lines"] == 5_000_000:
            met = "RSS " + ("MET" if rss[0] < 300 else f"MISSED ({rss[0]:.0f} MB)")
        L.append(f"| {row['lines']:,} | {row['bytes'] / 1e6:.0f} | {len(row['runs'])} | {w[0]:.2f} "
                 f"({w[1]:.2f}-{w[2]:.2f}) | {lps:,.0f} | {c[0]:.2f} | {rss[0]:.0f} | "
                 f"{1e6 * w[0] / row['lines']:.2f} | {met} |")
    L.append("")
    return L


def experiment_table(results: dict) -> str:
    """A compact table (throughput, p99, target CPU/req vs paired baseline) of an observer-only run."""
    rows = ["| target | mode | throughput vs baseline | p99 vs baseline | target CPU/req vs baseline | notes |",
            "|---|---|---|---|---|---|"]
    modes = M.modes_by_name()
    for tname, tres in results["observer"]["targets"].items():
        for name, d in ratios(tres).items():
            cpr = [a / b for a, b in zip(d["target_cpu_req"], d["base_cpu_req"]) if a and b]
            note = ""
            if d.get("ebpf"):
                rq = [e.get("ebpf_requests") for e in d["ebpf"] if e.get("ebpf_requests") is not None]
                note = f"request records {fmt_n(statistics.median(rq))}" if rq else "no request records"
            label = modes[name].label if name in modes else name
            rows.append(f"| {tname} | {label} | {fmt_r(_med(d['tput']))} | {fmt_r(_med(d['p99']), pct=False)} | "
                        f"{fmt_r(_med(cpr), pct=False)} | {note} |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 round, short loads, no 5M replay: a few minutes")
    ap.add_argument("--only", choices=("observer", "probe", "replay", "capture", "watch"), action="append",
                    help="run only these parts (repeatable)")
    ap.add_argument("--targets", default=",".join(ALL_TARGETS))
    ap.add_argument("--modes", default="all", help="comma list of mode names, or all")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--duration", type=int, default=None, help="seconds of load per run")
    ap.add_argument("--capture-seconds", type=float, default=None)
    ap.add_argument("--regen", action="store_true", help="re-trace the strace log even if bench/work has one")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=None, help="default bench/RESULTS.md; bench/work/RESULTS-quick.md with --quick")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root (strace/perf/eBPF attach to the targets)", file=sys.stderr)
        return 2
    for tool in ("wrk", "redis-server", "redis-benchmark", "strace", "perf"):
        if not shutil.which(tool):
            print(f"bench: {tool} is not installed: run `make setup` (.ci/install-system-deps)", file=sys.stderr)
            return 2
    if a.out is None:
        a.out = str(WORK / "RESULTS-quick.md") if a.quick else str(BENCH / "RESULTS.md")
    rounds = a.rounds or (1 if a.quick else 3)
    duration = a.duration or (1 if a.quick else 2)
    cap_s = a.capture_seconds or (10.0 if a.quick else 60.0)
    parts = set(a.only or ("observer", "probe", "replay", "capture", "watch"))
    names = [m.name for m in M.all_modes()] if a.modes == "all" else ["baseline"] + a.modes.split(",")
    unknown = set(names) - set(M.modes_by_name())
    if unknown:
        print(f"bench: unknown modes {sorted(unknown)}; choose from {', '.join(M.modes_by_name())}", file=sys.stderr)
        return 2
    WORK.mkdir(parents=True, exist_ok=True)
    # only a full run replaces the profiles kept in git; --quick ones stay in bench/work
    profile_dir = WORK / "profiles" if a.quick else BENCH / "profiles"
    t0 = time.monotonic()
    data: dict = {"date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
                  "command": " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
                  "machine": machine()}
    if "observer" in parts:
        data["observer"] = observer(a.targets.split(","), names, rounds, duration, a.seed)
        data["ratios"] = {t: ratios(v) for t, v in data["observer"]["targets"].items()}
    if "probe" in parts:
        log("eBPF probe: target CPU per traced call")
        try:
            data["probe"] = probe_cost(WORK / "probe", 3 if a.quick else 7, log=log)
        except Exception as e:          # one failed part must not lose the others' hours of data
            log(f"probe part failed: {type(e).__name__}: {e}")
            data["probe"] = {"error": f"{type(e).__name__}: {e}"}
    if "replay" in parts:
        log("analysis speed: diag replay of strace logs")
        sizes = [100_000, 1_000_000] + ([] if a.quick else [5_000_000])
        repeats = {100_000: 3, 1_000_000: 1 if a.quick else 2, 5_000_000: 1}
        data["replay"] = R.replay_speed(WORK / "replay", sizes, repeats, a.regen, log=log)
        log("analysis speed: diag replay of a redis-server strace log")
        data["replay_redis"] = R.replay_speed(WORK / "replay-redis", sizes, repeats, a.regen, log=log, kind="redis")
        log("profiling the replay of 1M lines with py-spy")
        data["profile"] = R.profile_replay(WORK / "replay" / "strace-1000k.log", profile_dir, log=log)
        data["profile_redis"] = R.profile_replay(WORK / "replay-redis" / "strace-1000k.log", profile_dir, log=log,
                                                 name="replay-redis-1000k")
    if "capture" in parts:
        log(f"replay of a {cap_s:g} s live capture")
        data["capture"] = R.capture_replay(WORK / "capture", cap_s, 3, log=log, profile_dir=profile_dir)
    if "watch" in parts:
        # the cost of leaving `diag watch` running: its own table, bench/RESULTS-watch.md
        from bench import watch_cost

        log("diag watch: the cost of watching, beside untraced and diag attach")
        try:
            w = watch_cost.run_part(["py-threaded", "redis"], rounds, 5.0 if not a.quick else 2.0, a.seed, log=log)
            w["date"], w["elapsed_s"] = data["date"], time.monotonic() - t0
            watch_cost.write(w, (WORK if a.quick else BENCH) / "RESULTS-watch.md", data["command"])
        except Exception as e:
            log(f"watch part failed: {type(e).__name__}: {e}")
        if parts == {"watch"}:
            log("done: bench/RESULTS-watch.md")
            return 0
    data["elapsed_s"] = time.monotonic() - t0
    (WORK / "results.json").write_text(json.dumps(data, indent=1, default=str))
    write_results(Path(a.out), data, a)
    log(f"done in {data['elapsed_s'] / 60:.1f} min: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
