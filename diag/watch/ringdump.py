"""From the agent's ring of segments (diag/agent/segments.py) to one ordinary eBPF stream in a capture.

A dump takes the closed segments that overlap the window asked for, of the newest agent run in
it (kernel stack ids are numbers of one run's stack map: two runs cannot share a stream), and
writes the stream layout diag/parse/ebpf.py reads: the first segment's header, every export
setting, kernel stack and request-at-stop line in order, the binary record files concatenated,
then the segments' aggregates and histograms summed into one set, their losses summed, and an
end line that says what the ring had dropped. The capture's manifest records the window the
segments really cover, which may be shorter than asked when the ring (bounded) dropped older
segments, and by how much.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from diag.agent.segments import read_state
from diag.capture import ebpf_stream as fmt

_SUMMED = ("aggregate", "request_hist", "family_hist", "lost", "end")


@dataclass
class Covered:
    segments: list[dict] = field(default_factory=list)
    start_ns: int = 0
    end_ns: int = 0
    dropped: dict = field(default_factory=dict)
    left_out: int = 0                   # segments in the window from an older agent run

    @property
    def seconds(self) -> float:
        return max(0.0, (self.end_ns - self.start_ns) / 1e9)


def select(ring_dir: str | Path, start_ns: int, end_ns: int) -> Covered:
    """The closed segments of the newest generation overlapping [start_ns, end_ns], oldest first."""
    state = read_state(ring_dir) or {}
    segs = [s for s in state.get("segments") or () if s.get("end_ns") and s.get("start_ns")
            and s["end_ns"] > start_ns and s["start_ns"] < end_ns and (Path(ring_dir) / s["name"]).is_dir()]
    cov = Covered(dropped=dict(state.get("dropped") or {}))
    if not segs:
        return cov
    gen = max(int(s.get("generation") or 0) for s in segs)
    keep = [s for s in segs if int(s.get("generation") or 0) == gen]
    cov.left_out = len(segs) - len(keep)
    keep.sort(key=lambda s: s["name"])
    cov.segments = keep
    cov.start_ns, cov.end_ns = keep[0]["start_ns"], keep[-1]["end_ns"]
    return cov


def _merge_hist(into: dict[int, int], pairs) -> None:
    for lo, n in pairs or ():
        into[int(lo)] = into.get(int(lo), 0) + int(n)


def merge(ring_dir: str | Path, cov: Covered, out_main: Path) -> dict:
    """Write the merged stream at `out_main` (streams/ebpf.jsonl) and its .bin files beside it.
    Returns the totals for the manifest (events, lost, requests...)."""
    ring_dir = Path(ring_dir)
    out_dir = out_main.parent
    header: dict | None = None
    aggs: dict[tuple[str, str], dict] = {}
    req: dict[str, dict[int, int]] = {}
    req_sub = 2
    fams: dict[str, dict[int, int]] = {}
    lost: dict[str, int] = {}
    events = requests = 0
    stacks: set[int] = set()
    bins = {kind: open(out_dir / fname, "wb") for kind, (fname, _s) in fmt.RECORDS.items()}
    cut = 0
    try:
        with open(out_main, "w", encoding="utf-8") as out:
            for seg in cov.segments:
                d = ring_dir / seg["name"]
                try:
                    lines = (d / fmt.MAIN).read_text(encoding="utf-8", errors="replace").splitlines()
                except OSError:
                    continue
                ended = False
                for line in lines:
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        continue                 # a cut last line (agent killed)
                    if not isinstance(obj, dict):
                        continue
                    if "format" in obj:
                        if header is None:
                            header = dict(obj)
                            header.pop("segment", None)
                            header["segments"] = [s["name"] for s in cov.segments]
                            out.write(json.dumps(header, separators=(",", ":")) + "\n")
                        continue
                    t = obj.get("type")
                    if t == "kstack":
                        if int(obj.get("id", -1)) in stacks:
                            continue
                        stacks.add(int(obj["id"]))
                    if t not in _SUMMED:
                        out.write(line + "\n")
                        continue
                    if t == "aggregate":
                        a = aggs.setdefault((obj["name"], obj.get("fd_kind", "unknown")),
                                            {"count": 0, "total_ns": 0, "max_ns": 0, "hist": {},
                                             "bytes_total": None, "bytes_hist": {}})
                        a["count"] += int(obj["count"])
                        a["total_ns"] += int(obj["total_ns"])
                        a["max_ns"] = max(a["max_ns"], int(obj.get("max_ns") or 0))
                        _merge_hist(a["hist"], obj.get("hist"))
                        if "bytes_total" in obj:
                            a["bytes_total"] = (a["bytes_total"] or 0) + int(obj["bytes_total"])
                            _merge_hist(a["bytes_hist"], obj.get("bytes_hist"))
                    elif t == "request_hist":
                        req_sub = int(obj.get("sub_bits") or 2)
                        r = req.setdefault(str(obj["latency"]), {})
                        for s, n in obj.get("slots") or ():
                            r[int(s)] = r.get(int(s), 0) + int(n)
                    elif t == "family_hist":
                        for fam, pairs in (obj.get("families") or {}).items():
                            _merge_hist(fams.setdefault(fam, {}), pairs)
                    elif t == "lost":
                        for k, v in obj.items():
                            if k != "type":
                                lost[k] = lost.get(k, 0) + int(v or 0)
                    elif t == "end":
                        ended = True
                        events += int(obj.get("events") or 0)
                        requests += int(obj.get("requests") or 0)
                if not ended:
                    cut += 1
                for kind, f in bins.items():
                    src = d / fmt.RECORDS[kind][0]
                    if src.exists():
                        with open(src, "rb") as r:
                            shutil.copyfileobj(r, f, 1 << 20)
            for (name, kind), a in sorted(aggs.items()):
                rec = {"type": "aggregate", "name": name, "fd_kind": kind, "count": a["count"],
                       "total_ns": a["total_ns"], "max_ns": a["max_ns"], "hist": sorted([k, v] for k, v in a["hist"].items())}
                if a["bytes_total"] is not None:
                    rec["bytes_total"] = a["bytes_total"]
                    rec["bytes_hist"] = sorted([k, v] for k, v in a["bytes_hist"].items())
                out.write(json.dumps(rec, separators=(",", ":")) + "\n")
            if header and header.get("requests"):
                for name in ("server", "client"):
                    r = req.get(name, {})
                    out.write(json.dumps({"type": "request_hist", "latency": name, "sub_bits": req_sub,
                                          "slots": sorted([s, n] for s, n in r.items() if n),
                                          "count": sum(r.values())}, separators=(",", ":")) + "\n")
                out.write(json.dumps({"type": "family_hist", "families": {
                    f: sorted([k, v] for k, v in h.items()) for f, h in sorted(fams.items())}},
                    separators=(",", ":")) + "\n")
            out.write(json.dumps({"type": "lost", **lost}, separators=(",", ":")) + "\n")
            end = {"type": "end", "events": events, "requests": requests, "reason": "dump",
                   "segments": len(cov.segments), "segments_cut": cut, "ring_dropped": cov.dropped,
                   "duration_ns": cov.end_ns - cov.start_ns}
            out.write(json.dumps(end, separators=(",", ":")) + "\n")
    finally:
        for f in bins.values():
            f.close()
    return {"header": header or {}, "events": events, "requests": requests, "lost": int(lost.get("count", 0)),
            "lost_requests": int(lost.get("lost_requests", 0)), "segments_cut": cut}
