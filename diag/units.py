"""Units and severity: how durations, sizes and shares are written and read, and the severity ladder.

Every stage that prints a duration or parses one (`--slow 50ms`, a gate `p99>2ms`) goes through
here, so a report, a gate message and the terminal say the same thing the same way.
"""
from __future__ import annotations

import re

NS_PER_US, NS_PER_MS, NS_PER_S = 1_000, 1_000_000, 1_000_000_000

# Suffixes a duration may carry, longest match first ("ms" before "s").
DURATION_UNITS: tuple[tuple[str, int], ...] = (("ns", 1), ("us", NS_PER_US), ("µs", NS_PER_US),
                                               ("ms", NS_PER_MS), ("s", NS_PER_S))

SEVERITIES = ("info", "warning", "critical")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}


def fmt_duration(ns: int | float | None) -> str:
    """'1.25 s', '340 ms', '12.5 ms', '80 µs', '950 ns'; 'n/a' for None."""
    if ns is None:
        return "n/a"
    ns = float(ns)
    if abs(ns) >= NS_PER_S:
        return f"{ns / NS_PER_S:.2f} s"
    if abs(ns) >= 100 * NS_PER_MS:
        return f"{ns / NS_PER_MS:.0f} ms"
    if abs(ns) >= NS_PER_MS:
        return f"{ns / NS_PER_MS:.1f} ms"
    if abs(ns) >= NS_PER_US:
        return f"{ns / NS_PER_US:.0f} µs"
    return f"{ns:.0f} ns"


def fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{float(x) * 100:.0f}%"


def fmt_count(x: int | None) -> str:
    return "n/a" if x is None else f"{x:,}"


def fmt_bytes(n: int | float | None) -> str:
    """'1 GiB', '1.5 MiB', '512 KiB', '900 B' (binary units, three significant digits)."""
    if n is None:
        return "n/a"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


# Suffixes a size may carry (binary units whatever the spelling: 2G, 2GB and 2GiB are 2 x 2**30).
SIZE_UNITS = {"": 1, "B": 1, **{p + s: 1 << (10 * (i + 1)) for i, p in enumerate("KMGT") for s in ("", "B", "IB")}}


def parse_size(text: str) -> int:
    """'512M', '8G', '2GiB', '64k', '1048576' -> bytes. ValueError when it is not a size."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text or "")
    unit = m.group(2).upper() if m else None
    if not m or unit not in SIZE_UNITS:
        raise ValueError(f"not a size: {text!r}")
    return int(float(m.group(1)) * SIZE_UNITS[unit])


def split_duration(text: str, default_unit: int = NS_PER_MS) -> tuple[float, int]:
    """'50ms' -> (50.0, 1e6); a bare number takes `default_unit`. ValueError when not a number."""
    v = text.strip().lower()
    for suffix, mult in sorted(DURATION_UNITS, key=lambda u: -len(u[0])):
        if v.endswith(suffix):
            return float(v[: -len(suffix)]), mult
    return float(v), default_unit


def parse_duration_ns(text: str, default_unit: int = NS_PER_MS) -> int:
    """'50ms', '1.5s', '200us', '120' (ms by default) -> ns. ValueError when it is not one."""
    num, mult = split_duration(text, default_unit)
    return int(num * mult)


def ladder(share: float, per_request_ns: float, warning_ns: float, critical_ns: float,
           warning_share: float = 0.25, critical_share: float = 0.5) -> str:
    """The severity ladder every time-based finding climbs: critical when it explains at least
    `critical_share` of the slow time and costs `critical_ns` per slow request; warning at
    `warning_share` and `warning_ns`; info otherwise."""
    if share >= critical_share and per_request_ns >= critical_ns:
        return "critical"
    if share >= warning_share and per_request_ns >= warning_ns:
        return "warning"
    return "info"


def at_least(severity: str, floor: str) -> bool:
    return SEVERITY_RANK[severity] >= SEVERITY_RANK[floor]
