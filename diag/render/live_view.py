"""The view shown while capturing, on a terminal: time, events per collector, losses, slowest calls."""
from __future__ import annotations

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from diag.collect.base import Target
from diag.units import fmt_duration


class LiveView:
    """The rich view shown while capturing: time, per-collector events/s and lost, slowest calls."""

    def __init__(self, console: Console, target: Target) -> None:
        self.console = console
        self.target = target
        self.last: dict[str, tuple[float, int]] = {}
        self.live = Live(console=console, refresh_per_second=4, transient=True)

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        return self.live.__exit__(*exc)

    def tick(self, state: dict) -> None:
        el, dur = state["elapsed_s"], state["duration_s"]
        head = Text(f"diag: capturing pid {self.target.pid} ({self.target.comm})  {el:5.1f} s")
        head.append(f" / {dur:.0f} s" if dur else " (Ctrl-C to stop)")
        t = Table(box=None, pad_edge=False)
        for col in ("collector", "events", "events/s", "lost", "note"):
            t.add_column(col)
        slow: list[tuple[str, int]] = []
        for name, st in state["collectors"].items():
            prev_t, prev_n = self.last.get(name, (0.0, 0))
            rate = (st.events - prev_n) / max(1e-3, el - prev_t)
            self.last[name] = (el, st.events)
            t.add_row(name, f"{st.events:,}", f"{rate:,.0f}", str(st.lost), Text(st.note))
            slow.extend(st.slowest)
        parts = [head, t]
        if slow:
            slow.sort(key=lambda x: -x[1])
            parts.append(Text("slowest so far: " + ", ".join(f"{n} {fmt_duration(d)}" for n, d in slow[:5])))
        self.live.update(Group(*parts))
