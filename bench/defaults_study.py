"""The collector-defaults study: what each collector costs at several settings, beside the eBPF
agent, and what a lower rate loses. Every setting on the threaded Python server (9 threads under
the load); the samplers whose cost grows with the target's threads (py-spy, pyruntime) also on
the one-thread asyncio server, the kind of Python server that reaches 100k requests/s.

Each setting runs through bench/collector_host.py (diag's collectors, diag's session, no
analysis) as `ebpf,X`, interleaved with baselines like the observer part; its cost is read
against `study-ebpf` (the eBPF collector alone, same host): throughput points and CPU per
request (target + observer), and the collector's own CPU during the load.

What a lower rate loses is computed, not measured: a sampler at f Hz expects f x d samples in a
request of d seconds; the scenario suite's slow requests last 5-20 ms, and the analysis reads
the samples that fall inside each slow request (crossing.py), so f x d is how often a slow
request gets any frame, GIL or stack evidence at all.
"""
from __future__ import annotations

from pathlib import Path

from bench import cpu as C
from bench import modes as M
from bench import observer as O
from diag import collect as D

TARGET = "py-threaded"
PER_THREAD = ("asyncio", ("pyspy", "pyruntime"))     # second target, and the settings run on it
REFERENCE = "study-ebpf"
SLOW_MS = (5, 20)                # the scenario suite's slow requests
CAPTURE_S = 10.0                 # diag attach's default --duration
BUDGET_CORES = 0.03              # issue 12: every collector process <= 3 % of a core
# which setting each study mode is, and the label of the process that pays for it
SETTINGS = {
    "pyspy": ("py-spy", "Hz", "py-spy record", D.PYSPY_RATE_HZ),
    "perf": ("perf", "Hz", "perf record", D.PERF_FREQUENCY_HZ),
    "process": ("process sampler", "s period", C.HOST, D.PROCESS_INTERVAL_S),
    "pyruntime": ("pyruntime", "Hz", C.HOST, D.PYRUNTIME_RATE_HZ),
}


def mode_names(kinds: tuple[str, ...] | None = None) -> list[str]:
    return ["baseline"] + [m.name for m in M.study_modes()
                           if kinds is None or m.name == REFERENCE or m.name.split("-")[1] in kinds]


def run(work: Path, rounds: int, duration: float, seed: int, log=print) -> dict:
    res = O.run_part([TARGET], mode_names(), rounds, duration, seed, work, log=log, title="defaults study")
    more = O.run_part([PER_THREAD[0]], mode_names(PER_THREAD[1]), rounds, duration, seed, work, log=log,
                      title="defaults study")
    res["targets"].update(more["targets"])
    return res


def _setting(name: str) -> tuple[str, float, bool]:
    """study-pyspy-50 -> ("pyspy", 50, callgraph?)."""
    parts = name.split("-")
    kind, val = parts[1], float(parts[2])
    return kind, val, not name.endswith("-nocg")


def evidence(kind: str, value: float) -> str:
    lo, hi = SLOW_MS
    if kind == "process":
        n = CAPTURE_S / value
        return f"{n:.0f} snapshots per {CAPTURE_S:g} s capture (a burst shorter than {value:g} s may fall between two)"
    what = {"pyspy": "Python stacks", "perf": "on-CPU stacks (only while the thread runs)",
            "pyruntime": "GIL-holder/GC readings"}[kind]
    return f"{value * lo / 1000:.2f}-{value * hi / 1000:.2f} {what} per {lo}-{hi} ms slow request"


def analyze(res: dict) -> dict:
    """Per target and study mode: cost against the reference (points, CPU µs per request), own
    CPU, what it loses; and per collector the densest setting within the 3 % budget."""
    out: dict = {"targets": {}}
    for tname, tres in res["targets"].items():
        out["targets"][tname] = _analyze_target(tres)
    out["budget"] = budget_check(out["targets"])
    return out


def _analyze_target(tres: dict) -> dict:
    rat = O.ratios(tres)
    ref = rat.get(REFERENCE)
    ref_tp = O.med(ref["tput"]) if ref and ref["tput"] else None
    ref_cpu = O.med(ref["cpu_req"]) if ref and ref["cpu_req"] else None
    ref_tpc = O.med(ref["cpu_tput"]) if ref and ref["cpu_tput"] else None
    ref_host = O.med([c.get(C.HOST, 0.0) for c in ref["cpu_by"]]) if ref and ref["cpu_by"] else None
    rows = []
    for m in M.study_modes():
        d = rat.get(m.name)
        if m.name == REFERENCE or not d or not d["tput"]:
            continue
        kind, value, cg = _setting(m.name)
        coll, unit, label, default = SETTINGS[kind]
        tp = O.med(d["tput"])
        cpu = O.med(d["cpu_req"])
        tpc = O.med(d["cpu_tput"])
        own = O.med([c.get(label, 0.0) for c in d["cpu_by"]])
        if label == C.HOST and ref_host and own:
            own = (max(0.0, own[0] - ref_host[0]), own[1], own[2])     # the host's own loop is in the reference
        rows.append({"mode": m.name, "label": m.label, "kind": kind, "collector": coll, "value": value, "unit": unit,
                     "callgraph": cg, "default": value == default and cg, "tput": tp, "cpu_req": cpu,
                     "cost_points": (ref_tp[0] - tp[0]) if ref_tp else None,
                     "cost_cpu_points": (ref_tpc[0] - tpc[0]) if ref_tpc and tpc else None,
                     "cost_cpu_us": (cpu[0] - ref_cpu[0]) if ref_cpu and cpu else None,
                     "own_cores": own[0] if own else None, "evidence": evidence(kind, value),
                     "rps": O.med(d["rps"])[0]})
    return {"label": tres["label"], "rows": rows, "reference": {"tput": ref_tp, "cpu_req": ref_cpu}}


def budget_check(per_target: dict) -> list[str]:
    """Per collector and target: the densest setting whose own CPU stays within the 3 % budget
    (issue 12: every collector process <= 3 % of a core). Facts, not the choice: the choice also
    weighs what a lower rate loses, and is argued in diag/collect/__init__.py."""
    lines = []
    for kind, (coll, unit, _, default) in SETTINGS.items():
        for tname, t in per_target.items():
            rs = [r for r in t["rows"] if r["kind"] == kind and r["callgraph"] and r["own_cores"] is not None]
            if not rs:
                continue
            rs.sort(key=lambda r: r["value"] if kind == "process" else -r["value"])
            fits = next((r for r in rs if r["own_cores"] <= BUDGET_CORES), None)
            cur = next((r for r in rs if r["default"]), None)
            now = f"the default {default:g} {unit} uses {_cores(cur)}" if cur else f"default {default:g} {unit}"
            if fits:
                lines.append(f"{coll} on {tname}: {now}; densest setting within 3 %: {fits['value']:g} {unit} "
                             f"({_cores(fits)}), which gives {fits['evidence']}")
            else:
                lines.append(f"{coll} on {tname}: {now}; no setting measured fits in 3 % (the least: "
                             f"{rs[-1]['value']:g} {unit}, {_cores(rs[-1])})")
    return lines


def _cores(r: dict | None) -> str:
    return "n/a" if not r or r["own_cores"] is None else f"{100 * r['own_cores']:.1f} % of a core"
