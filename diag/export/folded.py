"""Folded stacks (`root;caller;leaf COUNT` per line), the input of flamegraph.pl, inferno and speedscope."""
from __future__ import annotations

from collections import Counter


def frame_name(label: str) -> str:
    """A frame label made safe for the format: `;` separates frames and a newline ends a record."""
    return label.replace(";", ":").replace("\r", " ").replace("\n", " ") or "?"


def fold(samples, on_cpu_only: bool = False) -> Counter:
    c: Counter[str] = Counter()
    for s in samples:
        if not s.frames or (on_cpu_only and s.on_cpu is False):
            continue
        c[";".join(frame_name(f.label()) for f in s.frames)] += s.weight
    return c


def render(samples, on_cpu_only: bool = False) -> str:
    """Heaviest stacks first, then by name: deterministic output for the same capture."""
    c = fold(samples, on_cpu_only)
    return "".join(f"{stack} {n}\n" for stack, n in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))
