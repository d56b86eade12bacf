"""Sliding windows over the agent's cumulative in-kernel histograms (its `--stats` file).

The agent rewrites its stats file every second with histograms counted since it attached; the
watcher keeps the last snapshots and subtracts two of them to get any window, so a second it
missed (a busy machine) loses nothing. A window's quantile is interpolated linearly inside the
slot where its rank falls (the request slots span 19 % at most, the call slots a power of two);
"how many above X" is interpolated the same way, and a trigger asks both.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from diag.capture.ebpf_stream import loglinear_lower
from diag.syscalls import FAMILIES, PROCESS_WAITS, WAIT_FAMILIES, family


@dataclass(frozen=True)
class Hist:
    """A window's histogram: (lower ns, upper ns, count) slots, ascending."""

    slots: tuple[tuple[int, int, int], ...]

    @property
    def count(self) -> int:
        return sum(n for _, _, n in self.slots)

    def quantile(self, q: float) -> float | None:
        n = self.count
        if n == 0:
            return None
        rank = q * n
        seen = 0
        for lo, hi, c in self.slots:
            if seen + c >= rank:
                frac = (rank - seen) / c if c else 0.0
                return lo + (hi - lo) * max(0.0, min(1.0, frac))
            seen += c
        return float(self.slots[-1][1])

    def above(self, x: float) -> float:
        """How many values are above `x` (interpolated inside the slot that holds x)."""
        total = 0.0
        for lo, hi, c in self.slots:
            if lo >= x:
                total += c
            elif hi > x:
                total += c * (hi - x) / (hi - lo)
        return total

    def max(self) -> float | None:
        return float(self.slots[-1][1]) if self.slots else None

    def metric(self, name: str) -> float | None:
        if name == "max":
            return self.max()
        return self.quantile({"p50": 0.5, "p90": 0.9, "p99": 0.99}[name])


def _log2_slots(pairs) -> dict[int, int]:
    return {int(lo): int(n) for lo, n in pairs or ()}


def _log2_hist(delta: dict[int, int]) -> Hist:
    out = []
    for lo in sorted(delta):
        n = delta[lo]
        if n > 0:
            out.append((lo, max(lo * 2, 2), n))
    return Hist(tuple(out))


def _req_hist(delta: dict[int, int], sub_bits: int) -> Hist:
    return Hist(tuple((loglinear_lower(s, sub_bits), loglinear_lower(s + 1, sub_bits), n)
                      for s, n in sorted(delta.items()) if n > 0))


def _sub(new: dict[int, int], old: dict[int, int]) -> dict[int, int]:
    return {k: v - old.get(k, 0) for k, v in new.items() if v - old.get(k, 0) > 0}


@dataclass
class Window:
    """What happened between two stats snapshots."""

    seconds: float
    new: dict
    old: dict

    def requests(self, which: str = "server") -> Hist:
        r_new = (self.new.get("requests") or {})
        r_old = (self.old.get("requests") or {})
        sub = int(r_new.get("sub_bits") or 2)
        d = _sub({int(s): int(n) for s, n in r_new.get(which) or ()}, {int(s): int(n) for s, n in r_old.get(which) or ()})
        return _req_hist(d, sub)

    def syscall(self, name: str) -> Hist:
        new = (self.new.get("syscalls") or {}).get(name) or {}
        old = (self.old.get("syscalls") or {}).get(name) or {}
        return _log2_hist(_sub(_log2_slots(new.get("hist")), _log2_slots(old.get("hist"))))

    def syscall_names(self) -> list[str]:
        return sorted((self.new.get("syscalls") or {}).keys())

    def family(self, fam: str) -> Hist:
        merged: dict[int, int] = {}
        for name in self.syscall_names():
            if family(name) != fam:
                continue
            for lo, hi, n in self.syscall(name).slots:
                merged[lo] = merged.get(lo, 0) + n
        return _log2_hist(merged)

    def family_time(self, fam: str) -> Hist:
        """Per-request time in one family (the probe's fam_hist)."""
        new = (self.new.get("family_time") or {}).get(fam)
        old = (self.old.get("family_time") or {}).get(fam)
        return _log2_hist(_sub(_log2_slots(new), _log2_slots(old)))

    def counter(self, name: str) -> int:
        return int((self.new.get("counters") or {}).get(name, 0)) - int((self.old.get("counters") or {}).get(name, 0))

    def subject(self, subject: str | None, metric: str) -> tuple[Hist, str]:
        """The histogram a latency trigger reads, and what it is (gates.py's subjects: requests when
        the window has some, else the worst work syscall; a family; a syscall name)."""
        if subject in (None, "requests", "request"):
            h = self.requests()
            if h.count or subject is not None:
                return h, "request"
        if subject in (None, "syscalls", "syscall"):
            best, what = Hist(()), "work syscalls"
            for name in self.syscall_names():
                if family(name) in WAIT_FAMILIES or name in PROCESS_WAITS:
                    continue
                h = self.syscall(name)
                v, bv = h.metric(metric), best.metric(metric)
                if v is not None and (bv is None or v > bv):
                    best, what = h, name
            return best, what
        if subject in FAMILIES or subject == "other":
            return self.family(subject), f"{subject} family"
        return self.syscall(subject), subject


class History:
    """The last snapshots of one agent run, by second; a new agent run (generation) starts afresh."""

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self.snaps: deque[dict] = deque()

    def add(self, snap: dict) -> bool:
        """Add a snapshot; False when it is the one already last (the file was not rewritten)."""
        if self.snaps and (self.snaps[-1].get("ts_ns") == snap.get("ts_ns")):
            return False
        if self.snaps and (self.snaps[-1].get("agent_pid") != snap.get("agent_pid")):
            self.snaps.clear()
        self.snaps.append(snap)
        while len(self.snaps) > 2 and (snap["ts_ns"] - self.snaps[1]["ts_ns"]) / 1e9 >= self.keep_s:
            self.snaps.popleft()
        return True

    def window(self, seconds: float) -> Window | None:
        """The newest snapshot against the oldest one at most `seconds` before it."""
        if len(self.snaps) < 2:
            return None
        new = self.snaps[-1]
        old = None
        for s in self.snaps:
            if (new["ts_ns"] - s["ts_ns"]) / 1e9 <= seconds + 0.5:
                old = s
                break
        if old is None or old is new:
            old = self.snaps[-2]
        return Window((new["ts_ns"] - old["ts_ns"]) / 1e9, new, old)

    @property
    def latest(self) -> dict | None:
        return self.snaps[-1] if self.snaps else None
