"""Reading the host clocks in pairs, so wall-clock stamps can be put on CLOCK_MONOTONIC.

strace stamps with CLOCK_REALTIME, eBPF and `perf -k CLOCK_MONOTONIC` with CLOCK_MONOTONIC.
The offset between the two is read as the tightest of several back-to-back pairs; the gap of
that pair bounds the reading error. Reading it at the start and the end of a capture also bounds
drift (NTP slewing the wall clock while we capture).
"""
from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ClockPair:
    realtime_ns: int
    monotonic_ns: int
    gap_ns: int          # how long the pair took to read: the error bound of this reading

    @property
    def mono_minus_real_ns(self) -> int:
        return self.monotonic_ns - self.realtime_ns

    def to_json(self) -> dict:
        return {"realtime_ns": self.realtime_ns, "monotonic_ns": self.monotonic_ns, "gap_ns": self.gap_ns}

    @classmethod
    def from_json(cls, d: dict) -> "ClockPair":
        return cls(int(d["realtime_ns"]), int(d["monotonic_ns"]), int(d.get("gap_ns") or 0))


def read_pair(tries: int = 16) -> ClockPair:
    """The (realtime, monotonic) pair read with the smallest gap among `tries` attempts."""
    best: ClockPair | None = None
    mono = time.clock_gettime_ns
    for _ in range(tries):
        m0 = mono(time.CLOCK_MONOTONIC)
        r = time.clock_gettime_ns(time.CLOCK_REALTIME)
        m1 = mono(time.CLOCK_MONOTONIC)
        pair = ClockPair(r, (m0 + m1) // 2, m1 - m0)
        if best is None or pair.gap_ns < best.gap_ns:
            best = pair
    assert best is not None
    return best


def monotonic_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def realtime_to_monotonic(start: ClockPair, end: ClockPair | None) -> tuple[int, int]:
    """(offset to add to realtime ns, uncertainty ns) from the capture's start/end pairs.

    The offset is the mean of the two readings; the uncertainty is half their difference
    (drift during the capture) plus the worse reading gap.
    """
    if end is None:
        return start.mono_minus_real_ns, start.gap_ns
    a, b = start.mono_minus_real_ns, end.mono_minus_real_ns
    return (a + b) // 2, abs(a - b) // 2 + max(start.gap_ns, end.gap_ns)
