"""Triggers: the gate grammar of `--fail-on` (diag/gates.py), evaluated every second while watching.

A latency trigger (`p99>50ms`, `sync.p99>5ms`, `fsync.max>1s`) reads a sliding window of the
in-kernel histograms (diag/watch/hist.py): no analysis runs. It fires when, at every evaluation
of the last `hold` seconds, the window's metric was over the limit *and* at least `min_slow`
values of the window were over it: one slow request never fires, however few requests there are
(with 20 requests in a window, p99 is the slowest one). A finding trigger (`finding:disk-sync`,
`severity>=warning`) needs the rules: the watcher runs a light analysis of the ring's last
window (eBPF only) every `analysis_every` seconds, and it fires when the finding is there in
enough consecutive analyses to cover the hold time.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from diag import gates
from diag.errors import DiagError
from diag.units import fmt_duration
from diag.watch.hist import Window


@dataclass
class Trigger:
    gate: gates.Gate
    hold_s: float
    min_slow: int
    streak: int = 0                         # consecutive evaluations over the limit
    last_detail: str = ""

    @property
    def expr(self) -> str:
        return self.gate.expr

    @property
    def needs_analysis(self) -> bool:
        return self.gate.kind in ("finding", "severity")

    def slug(self) -> str:
        return slug(self.expr)

    def evaluate(self, w: Window) -> tuple[bool, str]:
        """(over the limit in this window, what was measured)."""
        g = self.gate
        h, what = w.subject(g.subject, g.metric)
        value = h.metric(g.metric)
        if value is None:
            return False, f"{what} {g.metric}: no values in the last {w.seconds:.0f} s"
        over = gates._OPS[g.op](value, g.value_ns)
        n_over = h.above(g.value_ns) if g.op in (">", ">=") else h.count - h.above(g.value_ns)
        detail = (f"{what} {g.metric} {fmt_duration(value)} over {w.seconds:.0f} s ({h.count:,} values, "
                  f"{n_over:.0f} {'over' if g.op in ('>', '>=') else 'under'} {fmt_duration(g.value_ns)})")
        return over and n_over >= self.min_slow, detail

    def tick(self, w: Window, period_s: float = 1.0) -> bool:
        """One evaluation; True when the trigger fires (over the limit for the whole hold time)."""
        ok, self.last_detail = self.evaluate(w)
        self.streak = self.streak + 1 if ok else 0
        return ok and self.streak >= max(1, math.ceil(self.hold_s / period_s))

    def tick_report(self, report: dict, period_s: float) -> bool:
        """One light analysis (finding and severity triggers)."""
        res = gates.evaluate([self.gate], report)[0]
        self.last_detail = res.detail
        self.streak = self.streak + 1 if res.failed else 0
        return res.failed and self.streak >= max(1, math.ceil(self.hold_s / period_s))

    def reset(self) -> None:
        self.streak = 0


@dataclass
class TriggerSet:
    triggers: list[Trigger] = field(default_factory=list)

    @property
    def latency(self) -> list[Trigger]:
        return [t for t in self.triggers if not t.needs_analysis]

    @property
    def analysis(self) -> list[Trigger]:
        return [t for t in self.triggers if t.needs_analysis]

    def reset(self) -> None:
        for t in self.triggers:
            t.reset()


def parse(exprs: list[str], hold_s: float, min_slow: int) -> TriggerSet:
    """Each `--trigger` through the gate grammar; a change against a baseline (`+20%`) has none here."""
    out = []
    for e in exprs:
        try:
            g = gates.parse(e)
        except DiagError as err:
            raise DiagError(str(err).replace("--fail-on", "--trigger", 1)) from None
        if g.change:
            raise DiagError(f"--trigger {e!r}: a change against a baseline has no meaning while watching; "
                            f"give an absolute limit such as 'p99>50ms'")
        if g.kind == "latency" and g.op in ("<", "<="):
            raise DiagError(f"--trigger {e!r}: a trigger fires when latency is high: use > or >=")
        out.append(Trigger(g, hold_s, min_slow))
    return TriggerSet(out)


def slug(text: str) -> str:
    """'sync.p99>5ms' -> 'sync.p99-gt-5ms'; 'finding:disk-sync' -> 'finding-disk-sync' (file names)."""
    s = text.strip().lower().replace(">=", "-ge-").replace("<=", "-le-").replace(">", "-gt-").replace("<", "-lt-")
    s = s.replace("==", "-eq-").replace("=", "-eq-").replace(":", "-")
    s = re.sub(r"[^a-z0-9._-]+", "-", s).strip("-")
    return re.sub(r"-{2,}", "-", s)[:60] or "trigger"
