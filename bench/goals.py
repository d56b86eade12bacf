"""Issue 12's goals as verdict lines: each goal, per target, "met" or "missed by N points", with the
floor and the peer beside it and the cause where a part of the bench measures one.

A verdict is read from medians over rounds of ratios to paired baselines; "within 3 points"
compares two modes' median throughput ratios. On a shared machine a median of 3 rounds still
moves by several points, so each verdict also shows the min-max and the CPU per request (target
+ observer, the steadier number), and says when the range crosses the goal.
"""
from __future__ import annotations

from dataclasses import dataclass

from bench import constant_rate as CR
from bench import cpu as C
from bench.observer import med

POINTS = 0.03          # "within 3 points"
CORE_BUDGET = 0.03     # "<= 3 % of a core at 100k requests/s"
AT_RPS = 100_000
MIN_RPS = 20_000       # below this a target says little about the cost at 100k req/s
SATURATION_MIN = {"py-threaded": 0.95, "redis": 0.90}
LATENCY_MAX = CR.LATENCY_MAX


@dataclass
class Verdict:
    goal: str
    target: str
    measured: str
    met: bool | None          # None: not measured
    verdict: str
    cause: str = ""

    def line(self) -> str:
        return f"[{'MET' if self.met else 'n/a' if self.met is None else 'MISSED'}] {self.goal} ({self.target}): " \
               f"{self.verdict}; {self.measured}" + (f" -- {self.cause}" if self.cause else "")


def _tp(r: dict, mode: str):
    d = r.get(mode)
    return med(d["tput"]) if d and d["tput"] else None


def _cpr(r: dict, mode: str):
    d = r.get(mode)
    return med(d["cpu_req_ratio"]) if d and d["cpu_req_ratio"] else None


def _tpc(r: dict, mode: str):
    """Throughput as the CPU per request predicts it (baseline CPU/req / mode CPU/req)."""
    d = r.get(mode)
    return med(d["cpu_tput"]) if d and d["cpu_tput"] else None


def _by_cpu(a, b, allowance: float) -> str:
    """The same comparison read from CPU per request (steadier on a shared machine)."""
    if a is None or b is None:
        return ""
    gap = b[0] - a[0] - allowance
    return f" (by CPU/req: {100 * a[0]:.0f} % vs {100 * b[0]:.0f} %, " + \
        ("met)" if gap <= 0 else f"missed by {100 * gap:.0f} points)")


def _pct(t) -> str:
    return "n/a" if t is None else f"{100 * t[0]:.0f} % ({100 * t[1]:.0f}-{100 * t[2]:.0f})"


def _x(t) -> str:
    return "n/a" if t is None else f"{t[0]:.2f}x ({t[1]:.2f}-{t[2]:.2f})"


def _context(r: dict) -> str:
    return f"floor {_pct(_tp(r, 'ebpf-floor'))}, peer {_pct(_tp(r, 'syscount'))}"


def _cores(r: dict, mode: str, label: str):
    d = r.get(mode)
    if not d or not d["cpu_by"]:
        return None
    return med([c.get(label, 0.0) for c in d["cpu_by"]])


def _probe_cause(probe: dict | None) -> str:
    if not probe or probe.get("error"):
        return ""
    rows = {r["setting"]: r for r in probe["rows"]}
    d = rows.get("eBPF agent default")
    f = next((r for k, r in rows.items() if k.startswith("eBPF agent --floor")), None)
    if not (d and f):
        return ""
    return (f"probe part: +{f['extra_ns']:.0f} ns per syscall at the floor, +{d['over_floor_ns']:.0f} ns more "
            f"with the probe's work (default)")


def _compare(goal, t, r, mode, ref, ref_name, allowance, cause) -> Verdict | None:
    a, b = _tp(r, mode), _tp(r, ref)
    if mode not in r and ref not in r:
        return None                       # neither mode was in this run
    if a is None or b is None:
        return Verdict(goal, t, f"{mode} {_pct(a)}, {ref} {_pct(b)}", None, "not measured")
    gap = b[0] - a[0] - allowance
    measured = (f"{mode} {_pct(a)} vs {ref_name} {_pct(b)}; CPU/req {_x(_cpr(r, mode))} vs {_x(_cpr(r, ref))}; "
                f"{_context(r)}")
    cpu = _by_cpu(_tpc(r, mode), _tpc(r, ref), allowance)
    if gap <= 0:
        crossing = a[1] < b[2] - allowance
        return Verdict(goal, t, measured, True,
                       "met" + (" (median; the ranges overlap the limit)" if crossing else "") + cpu)
    return Verdict(goal, t, measured, False, f"missed by {100 * gap:.0f} points" + cpu, cause)


def verdicts(data: dict) -> list[Verdict]:
    out: list[Verdict] = []
    rat = data.get("ratios") or {}
    probe = data.get("probe")
    for t, r in rat.items():
        ebpf_cost = _probe_cause(probe)
        ag = _cores(r, "ebpf-default", C.EBPF_AGENT)
        if ag:
            ebpf_cost += ("; " if ebpf_cost else "") + f"agent process {ag[0]:.3f} cores during the load"
        out.append(_compare("eBPF agent within 3 points of the floor", t, r, "ebpf-default", "ebpf-floor", "floor",
                            POINTS, ebpf_cost))
        out.append(_compare("eBPF agent at least as good as syscount-bpfcc -L", t, r, "ebpf-default", "syscount",
                            "syscount", 0.0, ebpf_cost))
        if "attach-ebpf" in r and "attach-auto" in r:
            costs = []
            e = _tp(r, "attach-ebpf")
            for m in ("attach-ebpf,process", "attach-ebpf,perf", "attach-ebpf,py-spy", "attach-ebpf,pyruntime"):
                x = _tp(r, m)
                if x and e:
                    costs.append(f"{m.split(',')[1]} {100 * (e[0] - x[0]):+.0f} points")
            out.append(_compare("diag attach default within 3 points of --collectors ebpf", t, r, "attach-auto",
                                "attach-ebpf", "attach-ebpf", POINTS,
                                "each collector beside eBPF (attach-ebpf minus attach-ebpf,X): " + ", ".join(costs)
                                if costs else ""))
        if t in SATURATION_MIN and "attach-auto" in r:
            need = SATURATION_MIN[t]
            a = _tp(r, "attach-auto")
            goal = f"diag attach default >= {100 * need:.0f} % at saturation"
            if a is None:
                out.append(Verdict(goal, t, "no successful attach-auto run", None, "not measured"))
            else:
                f, e = _tp(r, "ebpf-floor"), _tp(r, "ebpf-default")
                parts = []
                if f:
                    parts.append(f"the floor alone costs {100 * (1 - f[0]):.0f} points")
                if f and e:
                    parts.append(f"the probe's work {100 * (f[0] - e[0]):+.0f}")
                if e:
                    parts.append(f"the other collectors and diag {100 * (e[0] - a[0]):+.0f}")
                measured = f"attach-auto {_pct(a)}, CPU/req {_x(_cpr(r, 'attach-auto'))}; {_context(r)}"
                c = _tpc(r, "attach-auto")
                cpu = "" if c is None else f" (by CPU/req: {100 * c[0]:.0f} %)"
                if a[0] >= need:
                    out.append(Verdict(goal, t, measured, True, "met" + cpu))
                else:
                    out.append(Verdict(goal, t, measured, False, f"missed by {100 * (need - a[0]):.0f} points" + cpu,
                                       "; ".join(parts)))
        out += _agent_cpu(t, r)
    out = [v for v in out if v is not None]
    cr = data.get("constant_rate")
    if cr:
        for t, tres in cr["targets"].items():
            s = CR.summarize(tres, cr["mode"])
            p50, p99 = s["p50"], s["p99"]
            half = 0.5 * tres.get("saturation_rps", 2 * tres["rate"])
            at = "half saturation" if tres["rate"] >= 0.99 * half else f"below half saturation ({half:.0f})"
            goal = f"p50 and p99 at {tres['rate']:.0f} req/s ({at}) <= {LATENCY_MAX:.1f}x untraced"
            if p50 is None or p99 is None:
                out.append(Verdict(goal, t, "no complete pair", None, "not measured", "; ".join(s["notes"])[:200]))
                continue
            measured = (f"p50 {_x(p50)}, p99 {_x(p99)} ({cr['mode']}: p50 {s['m_p50'][0]:.3f} ms, p99 "
                        f"{s['m_p99'][0]:.3f} ms; untraced p50 {s['b_p50'][0]:.3f} ms, p99 {s['b_p99'][0]:.3f} ms); "
                        f"generator's own send lag p99 {s['b_lag99'][0]:.3f} / {s['m_lag99'][0]:.3f} ms")
            worst = max(p50[0], p99[0])
            if not CR.decidable(s):
                out.append(Verdict(goal, t, measured, None,
                                   f"not decidable: of {s['pairs']} pairs, {s['lag_dominated']} had the generator's "
                                   f"own send lag over half the p99 (the shared machine descheduled it) and "
                                   f"{s.get('over_capacity', 0)} were over the target's capacity untraced"))
            elif worst <= LATENCY_MAX:
                out.append(Verdict(goal, t, measured, True, "met"))
            else:
                which = "p99" if p99[0] >= p50[0] else "p50"
                out.append(Verdict(goal, t, measured, False, f"missed: {which} {worst:.2f}x",
                                   _latency_cause(tres) or _saturation_cpu(rat.get(t, {}))))
    return out


def _latency_cause(tres: dict) -> str:
    """From the breakdown round: each mode's p50/p99 against the baseline next to it."""
    parts = []
    for mode in CR.BREAKDOWN:
        s = CR.summarize(tres, mode)
        if s["p50"] and s["p99"]:
            parts.append(f"{mode} p50 {s['p50'][0]:.2f}x p99 {s['p99'][0]:.2f}x")
    return ("breakdown round: " + ", ".join(parts)) if parts else ""


def _saturation_cpu(r: dict) -> str:
    parts = []
    for m in ("ebpf-floor", "ebpf-default", "attach-ebpf", "attach-auto"):
        c = _cpr(r, m)
        if c:
            parts.append(f"{m} CPU/req {c[0]:.2f}x")
    return ("at saturation: " + ", ".join(parts)) if parts else ""


SCALES = (C.EBPF_AGENT, C.SYSCOUNT)     # their work grows with the target's syscalls and requests


def _agent_cpu(t: str, r: dict) -> list[Verdict]:
    """Every collector process's cores during the load. The eBPF agent's work grows with the
    request rate, so below 100k req/s it is also scaled linearly to 100k (an upper bound: its
    export is capped by a budget and part of its work is per second); the samplers' work is per
    sample, not per request, so theirs is read as measured."""
    out = []
    mode = "attach-auto" if (r.get("attach-auto") or {}).get("cpu_by") else "ebpf-default"
    if mode not in r:
        return out
    d = r.get(mode)
    if not d or not d["cpu_by"]:
        return out
    labels = sorted({k for c in d["cpu_by"] for k in c if any(x.get(k, 0) for x in d["cpu_by"])})
    rps = med(d["rps"])[0]
    cells, over, undecided = [], [], []
    for label in labels:
        now = med([c.get(label, 0.0) for c in d["cpu_by"]])[0]
        if label in SCALES and rps < AT_RPS:
            at = med([c.get(label, 0.0) * AT_RPS / x for c, x in zip(d["cpu_by"], d["rps"]) if x])[0]
            cells.append(f"{label} {100 * now:.1f} % ({100 * at:.1f} % scaled to 100k)")
            if now > CORE_BUDGET:
                over.append((at, label))
            elif at > CORE_BUDGET:
                undecided.append((at, label, now))
        else:
            cells.append(f"{label} {100 * now:.1f} %")
            if now > CORE_BUDGET:
                over.append((now, label))
    if not cells:
        return out
    goal = "each collector process <= 3 % of a core at 100k req/s"
    measured = f"{mode} at {rps / 1000:.1f}k req/s, cores during the load: " + ", ".join(cells)
    if rps < MIN_RPS:
        worst = max(over or undecided or [(0.0, "-")])
        out.append(Verdict(goal, t, measured, None,
                           f"reference only: {rps / 1000:.1f}k req/s is far from 100k"
                           + (f" (over 3 % here: {', '.join(sorted({x[1] for x in over}))})" if over else ""),
                           "a sampler's cost is per sample and per thread of the target, not per request"
                           if over and worst[1] not in SCALES else ""))
    elif over:
        v, label = max(over)
        out.append(Verdict(goal, t, measured, False, f"missed by {100 * (v - CORE_BUDGET):.1f} % of a core ({label})",
                           "a sampler's cost is per sample and per thread of the target, not per request"
                           if label not in SCALES else ""))
    elif undecided:
        at, label, now = max(undecided)
        out.append(Verdict(goal, t, measured, None, f"not decidable at {rps / 1000:.1f}k req/s: {label} uses "
                                                   f"{100 * now:.1f} % here, {100 * at:.1f} % scaled linearly "
                                                   f"(an upper bound: part of its work is per second)"))
    else:
        out.append(Verdict(goal, t, measured, True, "met"))
    return out
