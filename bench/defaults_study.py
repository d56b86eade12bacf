"""The collector-defaults study: what each collector costs at several settings, beside the eBPF
agent, on the threaded Python server, and what a lower rate loses.

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

TARGET = "py-threaded"
REFERENCE = "study-ebpf"
SLOW_MS = (5, 20)                # the scenario suite's slow requests
CAPTURE_S = 10.0                 # diag attach's default --duration
NOISE_POINTS = 0.02              # a cost below this is not told apart from noise here
# which setting each study mode is, and the label of the process that pays for it
SETTINGS = {
    "pyspy": ("py-spy", "Hz", "py-spy record", 100),
    "perf": ("perf", "Hz", "perf record", 99),
    "process": ("process sampler", "s period", C.HOST, 0.5),
    "pyruntime": ("pyruntime", "Hz", C.HOST, 200),
}


def mode_names() -> list[str]:
    return ["baseline"] + [m.name for m in M.study_modes()]


def run(work: Path, rounds: int, duration: float, seed: int, log=print) -> dict:
    res = O.run_part([TARGET], mode_names(), rounds, duration, seed, work, log=log, title="defaults study")
    return res


def _setting(name: str) -> tuple[str, float, bool]:
    """study-pyspy-50 -> ("pyspy", 50, callgraph?)."""
    parts = name.split("-")
    kind, val = parts[1], float(parts[2])
    return kind, val, not name.endswith("-nocg")


def losses(kind: str, value: float) -> str:
    lo, hi = SLOW_MS
    if kind == "process":
        n = CAPTURE_S / value
        return f"{n:.0f} snapshots in a {CAPTURE_S:g} s capture (a burst shorter than {value:g} s may fall between two)"
    what = {"pyspy": "Python stacks", "perf": "on-CPU stacks (only while the thread runs)",
            "pyruntime": "GIL-holder/GC readings"}[kind]
    return f"{value * lo / 1000:.2f}-{value * hi / 1000:.2f} {what} per {lo}-{hi} ms slow request"


def analyze(res: dict) -> dict:
    """Per study mode: cost against the reference (points, CPU µs per request), own CPU, losses."""
    tres = res["targets"].get(TARGET)
    if not tres:
        return {"rows": []}
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
                     "own_cores": own[0] if own else None, "loses": losses(kind, value),
                     "rps": O.med(d["rps"])[0]})
    return {"rows": rows, "reference": {"tput": ref_tp, "cpu_req": ref_cpu},
            "proposal": propose(rows)}


def propose(rows: list[dict]) -> dict[str, str]:
    """Per collector: keep the default unless it costs more than the noise (2 points, read from
    CPU per request, the steadier number, or 3 % of a core of its own) and a lower setting
    measured does not."""
    out = {}
    for kind in SETTINGS:
        rs = [r for r in rows if r["kind"] == kind and r["callgraph"]]
        if not rs:
            continue
        # highest sampling density first (a period is the inverse of a rate)
        rs.sort(key=lambda r: r["value"] if kind == "process" else -r["value"])

        def cheap(r):
            return ((r["cost_cpu_points"] is None or r["cost_cpu_points"] <= NOISE_POINTS)
                    and (r["own_cores"] is None or r["own_cores"] <= 0.03))

        default = next((r for r in rs if r["default"]), None)
        pick = next((r for r in rs if cheap(r)), None)
        coll, unit = SETTINGS[kind][0], SETTINGS[kind][1]
        if default and cheap(default):
            out[kind] = (f"keep {coll} at {default['value']:g} {unit}: its cost is within the noise "
                         f"({_pts(default)}, own CPU {_cores(default)})")
        elif pick:
            out[kind] = (f"lower {coll} to {pick['value']:g} {unit}: the default costs {_pts(default)}, this setting "
                         f"{_pts(pick)}; it loses {pick['loses']}" if default else f"{coll}: {pick['value']:g} {unit}")
        else:
            out[kind] = (f"{coll}: every setting measured costs more than the noise here; the cost does not fall "
                         f"with the rate, so keep the default ({_pts(default) if default else 'n/a'})")
    return out


def _pts(r: dict | None) -> str:
    if not r or r["cost_cpu_points"] is None:
        return "n/a"
    return f"{100 * r['cost_cpu_points']:+.0f} points by CPU/req"


def _cores(r: dict) -> str:
    return "n/a" if r["own_cores"] is None else f"{100 * r['own_cores']:.1f} % of a core"
