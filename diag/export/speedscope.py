"""speedscope's file format (https://www.speedscope.app/file-format-schema.json): one sampled
profile per thread and kind of sample (on-CPU stacks weighted by count, off-CPU kernel stacks
weighted by the nanoseconds the thread stayed blocked)."""
from __future__ import annotations

import json

SCHEMA_URL = "https://www.speedscope.app/file-format-schema.json"


def _frame_key(f) -> tuple:
    return (f.function, f.file, f.line, f.module)


def profile(data, report: dict | None = None) -> dict:
    frames: list[dict] = []
    index: dict[tuple, int] = {}

    def frame_id(f) -> int:
        k = _frame_key(f)
        if k not in index:
            index[k] = len(frames)
            d = {"name": f.function + (f" [{f.module}]" if f.module and not f.file else "")}
            if f.file:
                d["file"] = f.file
            if f.line:
                d["line"] = int(f.line)
            frames.append(d)
        return index[k]

    groups: dict[tuple, list] = {}
    for s in data.samples:
        if not s.frames:
            continue
        off = s.on_cpu is False and s.dur_ns is not None
        groups.setdefault((s.tid, s.source, off), []).append(s)
    profiles = []
    for (tid, source, off), samples in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        samples.sort(key=lambda s: (s.ts_ns is None, s.ts_ns or 0))
        stacks = [[frame_id(f) for f in s.frames] for s in samples]
        weights = [int(s.dur_ns) if off else int(s.weight) for s in samples]
        name = next((s.thread_name for s in samples if s.thread_name), None)
        profiles.append({
            "type": "sampled",
            "name": f"tid {tid}{f' ({name})' if name else ''}: {source} {'off-CPU, ns blocked' if off else 'samples'}",
            "unit": "nanoseconds" if off else "none",
            "startValue": 0,
            "endValue": sum(weights),
            "samples": stacks,
            "weights": weights,
        })
    target = (report or {}).get("target") or {}
    label = target.get("comm") or " ".join(target.get("cmdline") or []) or "capture"
    from diag import __version__

    return {"$schema": SCHEMA_URL, "shared": {"frames": frames}, "profiles": profiles,
            "name": f"diag: {label}", "activeProfileIndex": 0, "exporter": f"diag {__version__}"}


def dumps(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n"
