"""Retention of the watcher's dumps: by count (`--keep N`), by disk use (`--max-disk`), oldest first,
and a free-space floor under which no dump is written at all.

The ring is bounded by the agent (`--ring-mb`); the dumps are bounded here. Dumps are the capture
directories the watcher wrote into its output directory (a manifest whose mode is "watch"); their
names start with a UTC time stamp, so the name order is their age order. Nothing else in the
directory is ever deleted.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Policy:
    keep: int = 20                  # dumps kept at most (0: no limit)
    max_disk: int = 2 << 30         # bytes all dumps may use (0: no limit)
    min_free: float = 0.05          # refuse to dump below this share of the filesystem free


def tree_bytes(d: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(d):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def dumps(out: Path) -> list[Path]:
    """The watcher's dumps in `out`, oldest first."""
    found = []
    try:
        entries = sorted(out.iterdir())
    except OSError:
        return []
    for d in entries:
        if not d.is_dir() or d.name.startswith("."):
            continue
        try:
            m = json.loads((d / "manifest.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(m, dict) and m.get("mode") == "watch":
            found.append(d)
    return found


def enforce(out: Path, policy: Policy, reserve: int = 0, protect: Path | None = None) -> list[Path]:
    """Delete the oldest dumps until at most `keep` remain and all fit in `max_disk` with
    `reserve` bytes to spare (room for the next dump). `protect`: a dump never deleted (the one
    just written). Returns what was deleted."""
    removed = []
    ds = dumps(out)
    sizes = {d: tree_bytes(d) for d in ds}
    while ds:
        total = sum(sizes[d] for d in ds)
        too_many = policy.keep and len(ds) > policy.keep
        too_big = policy.max_disk and total + reserve > policy.max_disk
        if not (too_many or too_big):
            break
        victim = next((d for d in ds if d != protect), None)
        if victim is None:
            break
        shutil.rmtree(victim, ignore_errors=True)
        ds.remove(victim)
        removed.append(victim)
    return removed


def free_share(path: Path) -> float:
    st = os.statvfs(path)
    return st.f_bavail / st.f_blocks if st.f_blocks else 0.0


def room_for_dump(out: Path, policy: Policy, need: int) -> str | None:
    """None when a dump of about `need` bytes may be written; else why not."""
    st = os.statvfs(out)
    free = st.f_bavail * st.f_frsize
    total = st.f_blocks * st.f_frsize
    if total and (free - need) / total < policy.min_free:
        return (f"the filesystem of {out} would have less than {policy.min_free:.0%} free "
                f"({free >> 20} MiB free, the dump needs about {need >> 20} MiB)")
    if policy.max_disk and need > policy.max_disk:
        return f"a dump of about {need >> 20} MiB does not fit in --max-disk ({policy.max_disk >> 20} MiB)"
    return None
