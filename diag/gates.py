"""CI gates: `--fail-on` expressions parsed once, then evaluated against a report (or two, for compare).

Grammar (whitespace ignored, case-insensitive):

    latency gate   [SUBJECT.]METRIC OP VALUE       p99>50ms   p50>=5ms   max>1s   sync.p99>10ms
    finding gate   finding:ID                      finding:disk-sync   (fails when that finding fired)
    severity gate  severity OP LEVEL               severity>=warning   (levels: info < warning < critical)

    METRIC  p50 | p90 | p99 | max
    OP      > | >= | < | <=
    VALUE   a duration: 250us, 50ms, 1.5s, 900ns (a bare number is milliseconds)
    SUBJECT requests | syscalls | a syscall family (sync, read, ...) | a syscall name (fsync, ...)

Without a SUBJECT a latency gate reads the request latency when the report has requests
(`requests.count > 0`), else the *worst work syscall*: the highest value of METRIC over the
syscall rows outside the wait families (poll, accept, futex, sleep) and the process waits
(wait4, waitid, pause, rt_sigsuspend, rt_sigtimedwait), which block by design.

`diag compare` also accepts a change against the baseline as VALUE: `p99>+20%` (relative) or
`p99>+5ms` (absolute), and `finding:new` (fails when a warning or critical finding appeared;
info-level findings come and go with load and do not fail a job).

A latency gate whose metric is absent from the report (no requests and no timed syscalls) fails
with "not measurable": a CI job should not pass because the capture saw nothing. A family or
syscall the target never called, in a report that did time syscalls, reads 0.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from diag.errors import DiagError
from diag.syscalls import PROCESS_WAITS, WAIT_FAMILIES
from diag.units import DURATION_UNITS, NS_PER_MS, SEVERITY_RANK, fmt_duration

METRICS = ("p50", "p90", "p99", "max")
_OPS = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b}

_LATENCY = re.compile(r"^(?:(?P<subject>[a-z0-9_]+)\.)?(?P<metric>p50|p90|p99|max)(?P<op>>=|<=|>|<)"
                      r"(?P<sign>\+)?(?P<value>[0-9.]+)(?P<unit>ns|us|µs|ms|s|%)?$")
_SEVERITY = re.compile(r"^severity(?P<op>>=|<=|>|<|==|=)(?P<level>info|warning|critical)$")
_FINDING = re.compile(r"^finding:(?P<id>[a-z0-9][a-z0-9_.-]*)$")


@dataclass(frozen=True)
class Gate:
    expr: str
    kind: str                       # latency | finding | severity
    metric: str | None = None
    subject: str | None = None      # None: requests if present, else the worst work syscall
    op: str = ">"
    value_ns: int | None = None     # absolute threshold, or absolute change (+5ms) when `change`
    percent: float | None = None    # relative change (+20%) against the baseline
    change: bool = False            # compare only: VALUE is a change against the baseline
    finding: str | None = None
    level: str | None = None


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    failed: bool
    detail: str

    def line(self) -> str:
        return f"{'FAILED' if self.failed else 'passed'}: {self.gate.expr}: {self.detail}"

    def to_json(self) -> dict:
        return {"expr": self.gate.expr, "failed": self.failed, "detail": self.detail}


def _bad(expr: str, why: str) -> DiagError:
    return DiagError(f"--fail-on {expr!r}: {why}; expected e.g. 'p99>50ms', 'finding:disk-sync', "
                     f"'severity>=warning' (compare: 'p99>+20%')")


def parse(expr: str) -> Gate:
    s = re.sub(r"\s+", "", expr).lower()
    if m := _FINDING.match(s):
        return Gate(expr=expr, kind="finding", finding=m["id"])
    if m := _SEVERITY.match(s):
        op = "==" if m["op"] in ("=", "==") else m["op"]
        return Gate(expr=expr, kind="severity", op=op, level=m["level"])
    if m := _LATENCY.match(s):
        unit, sign = m["unit"], bool(m["sign"])
        try:
            num = float(m["value"])
        except ValueError:
            raise _bad(expr, f"{m['value']!r} is not a number")
        if unit == "%":
            if not sign:
                raise _bad(expr, "a percentage is a change against the baseline: write it '+20%'")
            return Gate(expr=expr, kind="latency", metric=m["metric"], subject=m["subject"], op=m["op"],
                        percent=num, change=True)
        mult = dict(DURATION_UNITS)[unit] if unit else NS_PER_MS
        return Gate(expr=expr, kind="latency", metric=m["metric"], subject=m["subject"], op=m["op"],
                    value_ns=int(num * mult), change=sign)
    if s.startswith("finding:"):
        raise _bad(expr, "a finding id is lower-case letters, digits and dashes")
    raise _bad(expr, "not a gate")


def parse_all(exprs: list[str] | None) -> list[Gate]:
    return [parse(e) for e in exprs or []]


def _is_work(row: dict) -> bool:
    return row.get("family") not in WAIT_FAMILIES and row.get("name") not in PROCESS_WAITS


def latency_value(report: dict, metric: str, subject: str | None = None) -> tuple[float | None, str]:
    """The value a latency gate reads, and what it is (for the message)."""
    key = f"{metric}_ns"
    req = report.get("requests") or {}
    if subject in (None, "requests", "request") and (req.get("count") or 0) > 0:
        return (req.get("latency") or {}).get(key), f"request {metric}"
    if subject in ("requests", "request"):
        return None, f"request {metric} (the report has no requests)"
    rows = (report.get("latency") or {}).get("syscalls") or []
    if subject in (None, "syscalls", "syscall"):
        cands = [r for r in rows if _is_work(r) and r.get("count") and r.get(key) is not None]
        if not cands:
            return None, f"{metric} (no requests and no timed work syscalls in the report)"
        worst = max(cands, key=lambda r: r[key])
        return worst[key], f"worst work-syscall {metric} ({worst['name']} on {worst.get('fd_kind', '?')})"
    fams = (report.get("latency") or {}).get("families") or {}
    if subject in fams:
        return fams[subject].get(key), f"{subject} family {metric}"
    named = [r for r in rows if r.get("name") == subject and r.get("count") and r.get(key) is not None]
    if named:
        worst = max(named, key=lambda r: r[key])
        return worst[key], f"{subject} {metric}"
    if rows or fams:
        # Syscalls were timed, just none of these: the target never made that call.
        return 0, f"{subject} {metric} (no {subject} calls)"
    return None, f"{subject} {metric} (no timed syscalls in the report)"


def _check_findings(gate: Gate, report: dict) -> GateResult:
    findings = report.get("findings") or []
    if gate.kind == "finding":
        hit = [f for f in findings if f.get("id") == gate.finding]
        if hit:
            f = hit[0]
            return GateResult(gate, True, f"finding {f['id']} ({f.get('severity')}, "
                                          f"{f.get('share', 0):.0%}): {f.get('summary', '')}")
        return GateResult(gate, False, f"finding {gate.finding} did not fire")
    want = SEVERITY_RANK[gate.level]
    cmp = (lambda a, b: a == b) if gate.op == "==" else _OPS[gate.op]
    hit = [f for f in findings if cmp(SEVERITY_RANK.get(f.get("severity"), 0), want)]
    if hit:
        return GateResult(gate, True, ", ".join(f"{f['id']} ({f.get('severity')})" for f in hit[:5]))
    return GateResult(gate, False, f"no finding with severity {gate.op} {gate.level}")


def evaluate(gates: list[Gate], report: dict) -> list[GateResult]:
    """Gates against one report. A change gate (`+20%`) needs a baseline: use `diag compare`."""
    out = []
    for g in gates:
        if g.kind != "latency":
            out.append(_check_findings(g, report))
            continue
        if g.change:
            out.append(GateResult(g, True, "a change (+N% / +Nms) needs a baseline: use `diag compare BASE "
                                           "CURRENT --fail-on ...`"))
            continue
        value, what = latency_value(report, g.metric, g.subject)
        if value is None:
            out.append(GateResult(g, True, f"not measurable: {what}"))
            continue
        failed = _OPS[g.op](value, g.value_ns)
        out.append(GateResult(g, failed, f"{what} = {fmt_duration(value)} (limit {g.op} {fmt_duration(g.value_ns)})"))
    return out


def evaluate_compare(gates: list[Gate], base: dict, current: dict) -> list[GateResult]:
    """Gates for `diag compare`: changes against `base`; absolute and finding gates on `current`."""
    out = []
    for g in gates:
        if g.kind == "finding" and g.finding == "new":
            before = {f["id"] for f in base.get("findings") or []}
            new = [f"{f['id']} ({f.get('severity')})" for f in current.get("findings") or []
                   if f["id"] not in before and SEVERITY_RANK.get(f.get("severity"), 0) >= SEVERITY_RANK["warning"]]
            out.append(GateResult(g, bool(new), ("appeared: " + ", ".join(new)) if new
                                  else "no new warning or critical finding"))
            continue
        if g.kind != "latency" or not g.change:
            out.extend(evaluate([g], current))
            continue
        b, what = latency_value(base, g.metric, g.subject)
        c, what_c = latency_value(current, g.metric, g.subject)
        if b is None or c is None:
            out.append(GateResult(g, True, f"not measurable: base {what}; current {what_c}"))
            continue
        if g.percent is not None:
            change = (c - b) / b * 100 if b else (0.0 if c == b else float("inf"))
            failed = _OPS[g.op](change, g.percent)
            out.append(GateResult(g, failed, f"{what_c}: {fmt_duration(b)} -> {fmt_duration(c)} ({change:+.1f}%, "
                                             f"limit {g.op} +{g.percent:g}%)"))
        else:
            failed = _OPS[g.op](c - b, g.value_ns)
            out.append(GateResult(g, failed, f"{what_c}: {fmt_duration(b)} -> {fmt_duration(c)} ({'+' if c >= b else '-'}"
                                             f"{fmt_duration(abs(c - b))}, limit {g.op} +{fmt_duration(g.value_ns)})"))
    return out


def failed(results: list[GateResult]) -> list[GateResult]:
    return [r for r in results if r.failed]
