"""`make bench`: the observer effect of every collector, latency at a constant rate, the collector
defaults study and the analysis speed, into bench/RESULTS.md, with a verdict line per goal of
issue 12 on the console and in the file.

    python -m bench.run                 # full run: 35-45 min on the 2-core reference machine
    python -m bench.run --quick         # ~10 min: 1 round, 2 s loads, no 5M replay, 10 s capture
                                        # (writes bench/work/RESULTS-quick.md, profiles in bench/work)
    python -m bench.run --report-only bench/work/results.json   # rewrite RESULTS.md, no measuring
    python -m bench.run --only observer --targets redis --modes attach-auto,ebpf-floor

Time of a full run (3 rounds; estimated from per-run timings of --quick runs on the reference
machine): observer ~16 min (69 runs a round, 3 s loads plus ~1.5 s to start and stop each tool),
constant rate ~5 min (a fresh saturation check and a calibration run per target, then 3 rounds)
plus ~2 min for each target where the default misses (its breakdown round),
study ~8 min, probe 1 min, replay and capture ~4 min. Bounded: every load has a fixed duration or
request count and a timeout, every tool a stop timeout after which it is killed.

Parts: observer (bench/observer.py: modes of bench/modes.py at saturation, interleaved with
baselines), latency (bench/constant_rate.py: p50/p99 at half the saturation rate), study
(bench/defaults_study.py: collector rates), probe (bench/probe_cost.py: CPU per traced call), sched
(bench/sched_cost.py: each probe program's cost from the kernel's statistics, wakeups included),
replay and capture (bench/replay_speed.py: analysis speed). Verdicts: bench/goals.py; the file:
bench/results.py. Targets and load generators are pinned to separate cores (bench/targets.py).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import constant_rate as CR
from bench import defaults_study as S
from bench import goals as G
from bench import modes as M
from bench import observer as O
from bench import replay_speed as R
from bench import results
from bench import targets as T
from bench.probe_cost import probe_cost
from bench.sched_cost import sched_cost

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
WORK = BENCH / "work"
PARTS = ("observer", "latency", "study", "probe", "sched", "replay", "capture", "watch")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


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
                  "bcc": cmd([M.agent_python(), "-c", "import bcc; print(bcc.__version__)"]),
                  "diag": diag_version()},
        "disk_var_tmp": cmd(["sh", "-c", "df -T /var/tmp | tail -1 | awk '{print $2}'"]),
    }


def _part(name: str, fn, data: dict, key: str):
    """Run one part; a failed part is recorded and the others go on (never lose an hour of data)."""
    try:
        data[key] = fn()
    except Exception as e:
        log(f"{name} part failed: {type(e).__name__}: {e}")
        data[key] = {"error": f"{type(e).__name__}: {e}"}


def summarize(data: dict) -> list:
    """What is derived from the raw runs: ratios, the study's summary, the verdicts."""
    if "observer" in data:
        data["ratios"] = {t: O.ratios(v) for t, v in data["observer"]["targets"].items()}
    if "study" in data and "error" not in data["study"]:
        data["study_summary"] = S.analyze(data["study"])
    return G.verdicts(data)


def report_only(path: Path, a) -> int:
    data = json.loads(path.read_text())
    quick = "--quick" in data.get("command", "")
    out = Path(a.out or (WORK / "RESULTS-quick.md" if quick else BENCH / "RESULTS.md"))
    verdicts = summarize(data)
    results.write(out, data, verdicts, quick)
    for v in verdicts:
        print(v.line())
    print(f"rewrote {out} from {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 round, short loads, no 5M replay: about 10 min")
    ap.add_argument("--only", choices=PARTS, action="append", help="run only these parts (repeatable)")
    ap.add_argument("--targets", default=",".join(T.ALL_TARGETS))
    ap.add_argument("--modes", default="all", help="comma list of observer mode names, or all")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--duration", type=float, default=None, help="seconds of load per saturation run")
    ap.add_argument("--latency-duration", type=float, default=None, help="seconds per constant-rate run")
    ap.add_argument("--capture-seconds", type=float, default=None)
    ap.add_argument("--no-pin", action="store_true", help="do not pin the target and the load generator")
    ap.add_argument("--regen", action="store_true", help="re-trace the strace log even if bench/work has one")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=None, help="default bench/RESULTS.md; bench/work/RESULTS-quick.md with --quick")
    ap.add_argument("--report-only", metavar="RESULTS_JSON", default=None,
                    help="measure nothing: rewrite the results file and verdicts from a saved results.json")
    a = ap.parse_args(argv)
    if a.report_only:
        return report_only(Path(a.report_only), a)
    if os.geteuid() != 0:
        print("bench: run as root (strace/perf/eBPF attach to the targets)", file=sys.stderr)
        return 2
    for tool in ("wrk", "redis-server", "redis-benchmark", "strace", "perf", "gcc"):
        if not shutil.which(tool):
            print(f"bench: {tool} is not installed: run `make setup` (.ci/install-system-deps)", file=sys.stderr)
            return 2
    if a.out is None:
        a.out = str(WORK / "RESULTS-quick.md") if a.quick else str(BENCH / "RESULTS.md")
    rounds = a.rounds or (1 if a.quick else 3)
    duration = a.duration or (2 if a.quick else 3)
    lat_s = a.latency_duration or (3 if a.quick else 6)
    cap_s = a.capture_seconds or (10.0 if a.quick else 60.0)
    parts = set(a.only or PARTS)
    targets = a.targets.split(",")
    names = [m.name for m in M.all_modes()] if a.modes == "all" else ["baseline"] + a.modes.split(",")
    unknown = set(names) - set(M.modes_by_name())
    if unknown:
        print(f"bench: unknown modes {sorted(unknown)}; choose from {', '.join(M.modes_by_name())}", file=sys.stderr)
        return 2
    T.PIN = T.Pinning() if a.no_pin else T.Pinning.default()
    WORK.mkdir(parents=True, exist_ok=True)
    # only a full run replaces the profiles kept in git; --quick ones stay in bench/work
    profile_dir = WORK / "profiles" if a.quick else BENCH / "profiles"
    t0 = time.monotonic()
    data: dict = {"date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
                  "command": " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
                  "machine": machine(), "pinning": T.PIN.describe()}
    log(f"pinning: {T.PIN.describe()}")
    if "probe" in parts:
        # first: its per-call numbers explain the observer part's verdicts
        log("eBPF probe: target CPU per traced call")
        _part("probe", lambda: probe_cost(WORK / "probe", 3 if a.quick else 7, log=log), data, "probe")
    if "sched" in parts:
        log("eBPF probe: each program's cost from the kernel's statistics (the wakeup and runq programs)")
        _part("sched", lambda: sched_cost(WORK / "sched", 2 if a.quick else 5, log=log), data, "sched")
    if "observer" in parts:
        data["observer"] = O.run_part(targets, names, rounds, duration, a.seed, WORK, log=log)
        data["ratios"] = {t: O.ratios(v) for t, v in data["observer"]["targets"].items()}
        for v in G.verdicts(data):          # early, on the console: the rest takes a while
            print(v.line(), flush=True)
    if "latency" in parts:
        sats = {t: (O.baseline_stats(v)["rps"] or (0,))[0] for t, v in (data.get("observer") or {}).get(
            "targets", {}).items()}
        _part("latency", lambda: CR.run_part(targets, sats, rounds, lat_s, 0.5 if a.quick else 1.0, WORK, log=log),
              data, "constant_rate")
        if "error" in data["constant_rate"]:
            data.pop("constant_rate")
    if "study" in parts:
        _part("study", lambda: S.run(WORK, rounds, duration, a.seed, log=log), data, "study")
        if "error" not in data["study"]:
            for line in S.analyze(data["study"])["budget"]:
                log(f"defaults: {line}")
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
            w = watch_cost.run_part(["py-threaded", "redis"], rounds, 2.0 if a.quick else 5.0, a.seed, log=log)
            w["date"], w["elapsed_s"] = data["date"], time.monotonic() - t0
            watch_cost.write(w, (WORK if a.quick else BENCH) / "RESULTS-watch.md", data["command"])
        except Exception as e:
            log(f"watch part failed: {type(e).__name__}: {e}")
        if parts == {"watch"}:
            log("done: bench/RESULTS-watch.md")
            return 0
    data["elapsed_s"] = time.monotonic() - t0
    verdicts = summarize(data)
    (WORK / "results.json").write_text(json.dumps(data, indent=1, default=str))
    results.write(Path(a.out), data, verdicts, a.quick)
    for v in verdicts:
        print(v.line(), flush=True)
    log(f"done in {data['elapsed_s'] / 60:.1f} min: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
