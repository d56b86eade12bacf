"""The agent's segment mode (`--segment-dir`): its stream as a ring of self-contained time segments.

`diag watch` keeps the probe attached for days; one ever-growing stream would fill the disk, and
a dump must be able to take "the last 30 s" without stopping anything. So in this mode the agent
writes the same stream as usual (diag/capture/ebpf_stream.py), cut every `--segment-seconds`
into a directory of its own:

    RING/ring.json                 the ring's state, rewritten atomically at every change
    RING/g0001-s000042/ebpf.jsonl  header (as usual, plus the segment's place), the export setting
                                   in force, kernel stacks first used in the segment, then at its
                                   end the in-kernel aggregates and histograms *of the segment*
                                   (differences of the cumulative maps), its losses and an end line
    RING/g0001-s000042/ebpf.*.bin  the ring-buffer records consumed during the segment

A segment is closed at its time, when the watcher asks (SIGUSR1: "cut now", so a dump can take
data up to this second), or early when it reaches a quarter of the bound. Before each batch is
copied the oldest closed segments are deleted until the batch fits: the directory never holds
more than `--ring-bytes` (what a batch cannot fit even then is dropped and counted). While a
watcher copies a window out of the ring it writes RING/pin.json (the window, and an expiry):
segments in it are not deleted, and new records that do not fit meanwhile are dropped and
counted instead. Dropped segments and records are counted in ring.json. `g` is the generation: a watcher that restarts the
agent (the target restarted) gives it the next one, and the new agent adopts the segments already
there into its bound.

With `--stats FILE` the agent also rewrites FILE every second with the cumulative in-kernel
histograms (requests server-side and client-visible, per-call latency per syscall, per-request
time per family) and counters, read with one batch lookup per range (diag/agent/percpu.py):
what the watcher's triggers and the metrics exporters read, with no analysis run.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

from diag.agent import percpu
from diag.agent.agent import Agent, log
from diag.agent.syscall_table import traced
from diag.capture import ebpf_stream as fmt
from diag.syscalls import PROBE_FAMILY_KEYS

RING_STATE = "ring.json"
PIN = "pin.json"                 # written by a watcher while it dumps: segments it must keep
JSON_SLACK = 256 * 1024          # room kept for the JSON lines of a segment (stacks, end records)
MIN_RING_BYTES = 1 << 20


def segment_name(generation: int, seq: int) -> str:
    return f"g{generation:04d}-s{seq:06d}"


def dir_bytes(d: Path) -> int:
    total = 0
    try:
        for f in d.iterdir():
            try:
                total += f.stat().st_size
            except OSError:
                pass
    except OSError:
        pass
    return total


def read_state(ring_dir: str | os.PathLike) -> dict | None:
    try:
        with open(Path(ring_dir) / RING_STATE) as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


class _Discard:
    """A sink for ring batches that cannot fit under the bound (counted, never written)."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, b) -> None:
        self.n += len(b)

    def flush(self) -> None:
        pass

    def tell(self) -> int:
        return 0


class SegmentAgent(Agent):
    """The agent with its stream cut into a bounded ring of segments (see the module doc)."""

    def __init__(self, args) -> None:
        super().__init__(args)
        self.ring_dir = Path(args.segment_dir)
        self.bound = int(args.ring_bytes)
        self.generation = int(args.segment_generation)
        self.seq = 0
        self.header_obj: dict | None = None
        self.seg_dir: Path | None = None
        self.seg_start = 0
        self.seg_deadline = 0.0
        self.closed: list[dict] = []           # oldest first: name, start_ns, end_ns, bytes, generation
        self.dropped = {"segments": 0, "bytes": 0, "records": 0, "until_ns": 0}
        self.cut_requested = False
        self.snap: dict | None = None          # cumulative maps at the current segment's start
        self.seg_records: dict[str, int] = {}
        self.seg_json_bytes = 0
        # from the start: a "cut" that comes while the probe compiles must not kill the agent
        signal.signal(signal.SIGUSR1, self._on_cut)

    # --- set-up -------------------------------------------------------------------------------
    def open_outputs(self) -> None:
        self.ring_dir.mkdir(parents=True, exist_ok=True)
        self._adopt()
        self.open_rings()
        self.snap = self.snapshot()
        self._open_segment(time.clock_gettime_ns(time.CLOCK_MONOTONIC))

    def _on_cut(self, signum, frame) -> None:
        self.cut_requested = True

    def _adopt(self) -> None:
        """Segments an earlier generation left count in this one's bound (oldest first)."""
        old = read_state(self.ring_dir) or {}
        self.dropped.update({k: int(v) for k, v in (old.get("dropped") or {}).items() if k in self.dropped})
        known = {s["name"]: s for s in old.get("segments") or () if isinstance(s, dict) and "name" in s}
        cur = old.get("current")
        if isinstance(cur, dict) and cur.get("name"):
            known.setdefault(cur["name"], cur)
        for d in sorted(p for p in self.ring_dir.iterdir() if p.is_dir() and p.name.startswith("g")):
            s = dict(known.get(d.name) or {"name": d.name, "start_ns": 0, "end_ns": 0})
            s["bytes"] = dir_bytes(d)
            s.setdefault("generation", int(d.name[1:5]) if d.name[1:5].isdigit() else 0)
            self.closed.append(s)

    def _open_segment(self, start_ns: int) -> None:
        self.seq += 1
        name = segment_name(self.generation, self.seq)
        self.seg_dir = self.ring_dir / name
        self.seg_dir.mkdir(parents=True, exist_ok=True)
        self.seg_start = start_ns
        self.seg_deadline = time.monotonic() + float(self.args.segment_seconds)
        self.out = open(self.seg_dir / fmt.MAIN, "w", encoding="utf-8")
        self.files = {kind: open(self.seg_dir / fname, "wb") for kind, (fname, _s) in fmt.RECORDS.items()
                      if kind in self.rings}
        self.stacks_written = set()
        self.seg_records = {kind: r.records for kind, r in self.rings.items()}
        self.seg_json_bytes = 0
        if self.header_obj is not None:
            self._write_header()
            if self.export.threshold_ns or self.export.mask:
                self.write({"type": "export", "ts_ns": start_ns, "threshold_ns": self.export.threshold_ns,
                            "mask": self.export.mask, "rate": self.export.rate})
        self.save_state()

    def _write_header(self) -> None:
        h = dict(self.header_obj, segment={"name": self.seg_dir.name, "generation": self.generation,
                                           "seq": self.seq, "start_ns": self.seg_start},
                 tgids=list(self.tgids))
        super().write(h)

    def write(self, obj: dict) -> None:
        if "format" in obj and self.header_obj is None:
            self.header_obj = obj
            self._write_header()
            return
        line = json.dumps(obj, separators=(",", ":")) + "\n"
        self.seg_json_bytes += len(line)
        self.out.write(line)

    # --- the bound ----------------------------------------------------------------------------
    def current_bytes(self) -> int:
        return sum(f.tell() for f in self.files.values()) + self.out.tell()

    def total_bytes(self) -> int:
        return sum(int(s.get("bytes") or 0) for s in self.closed) + self.current_bytes()

    def _pin(self) -> tuple[int, int] | None:
        """(from_ns, to_ns) of the window a dump is copying, while its pin has not expired."""
        try:
            with open(self.ring_dir / PIN) as f:
                p = json.load(f)
            if int(p["expires_ns"]) < time.clock_gettime_ns(time.CLOCK_MONOTONIC):
                return None
            return int(p["from_ns"]), int(p["to_ns"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _drop_oldest(self) -> bool:
        """Delete the oldest closed segment a dump is not copying; False when there is none."""
        pin = self._pin()
        i = 0
        if pin is not None:
            while i < len(self.closed) and int(self.closed[i].get("end_ns") or 0) > pin[0] \
                    and int(self.closed[i].get("start_ns") or 0) < pin[1]:
                i += 1
        if i >= len(self.closed):
            return False
        s = self.closed.pop(i)
        shutil.rmtree(self.ring_dir / s["name"], ignore_errors=True)
        self.dropped["segments"] += 1
        self.dropped["bytes"] += int(s.get("bytes") or 0)
        self.dropped["until_ns"] = max(self.dropped["until_ns"], int(s.get("end_ns") or 0))
        return True

    def make_room(self, incoming: int) -> bool:
        """Delete the oldest closed segments until `incoming` more bytes fit; False if they cannot."""
        changed = False
        while self.total_bytes() + incoming + JSON_SLACK > self.bound:
            if not self._drop_oldest():
                break
            changed = True
        if changed:
            self.save_state()
        return self.total_bytes() + incoming + JSON_SLACK <= self.bound

    # --- the loop -----------------------------------------------------------------------------
    def consume(self) -> None:
        if self.out is None or self.out.closed:
            return
        now = time.monotonic()
        if self.cut_requested or now >= self.seg_deadline or self.current_bytes() > self.bound // 4:
            self.cut_requested = False
            self.rotate()
        for kind, ring in self.rings.items():
            pending = ring.pending()
            if pending <= 0:
                continue
            if not self.make_room(pending):
                if self.current_bytes() > 0 and self.closed == [] and self._pin() is None:
                    self.rotate()                 # the segment alone is too big: close it, free it
                    self.make_room(pending)
                if not self.make_room(pending):
                    sink = _Discard()
                    self.dropped["records"] += ring.consume(sink)
                    continue
            self.drain(kind, ring)

    def rotate(self) -> None:
        """Close the current segment (its aggregates, histograms, losses, end) and open the next."""
        end_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        self._close_segment(end_ns, "segment")
        self._open_segment(end_ns)

    def _close_segment(self, end_ns: int, reason: str, at_stop: list[dict] | None = None) -> None:
        new = self.snapshot()
        for rec in at_stop or ():
            self.write(rec)
        for rec in self.delta_records(self.snap, new):
            self.write(rec)
        self.snap = new
        events = {kind: r.records - self.seg_records.get(kind, 0) for kind, r in self.rings.items()}
        self.write({"type": "end", "events": events.get("calls", 0), "requests": events.get("requests", 0),
                    "sched": events.get("sched", 0), "counters": getattr(self, "seg_counters", {}),
                    "reason": reason, "segment": self.seg_dir.name,
                    "start_ns": self.seg_start, "end_ns": end_ns, "duration_ns": end_ns - self.seg_start})
        for f in self.files.values():
            f.close()
        self.out.close()
        self.closed.append({"name": self.seg_dir.name, "start_ns": self.seg_start, "end_ns": end_ns,
                            "bytes": dir_bytes(self.seg_dir), "generation": self.generation})

    def save_state(self, stopped: str | None = None) -> None:
        cur = None
        if self.seg_dir is not None and self.out is not None and not self.out.closed:
            cur = {"name": self.seg_dir.name, "start_ns": self.seg_start, "generation": self.generation}
        state = {"bound_bytes": self.bound, "segment_seconds": float(self.args.segment_seconds),
                 "generation": self.generation, "agent_pid": os.getpid(), "tgids": list(self.tgids),
                 "segments": self.closed, "current": cur, "dropped": self.dropped,
                 "attached": self.header_obj is not None, "stopped": stopped,
                 "ts_ns": time.clock_gettime_ns(time.CLOCK_MONOTONIC)}
        tmp = self.ring_dir / (RING_STATE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, self.ring_dir / RING_STATE)

    def write_progress(self) -> None:
        super().write_progress()
        if self.header_obj is not None and self.seq == 1 and not getattr(self, "_attached_saved", False):
            self._attached_saved = True
            self.save_state()
        if self.args.stats:
            self.write_stats()

    # --- cheaper reads of the same maps (the agent runs for days: its idle cost matters) --------
    def hist_counts(self, table: str, row: int, nslot: int) -> list[int]:
        return percpu.u64_range(self.b[table], row * nslot, nslot)

    def counters(self) -> dict:
        h = self.h
        vals = percpu.u64_range(self.b["counters"], 0, h.CNT_MAX)
        return {name.lower(): int(vals[v]) for name, v in h.prefixed("CNT_").items() if name != "MAX"}

    def follow_new_targets(self) -> None:
        """As the agent's, with the target bitmap read in one batch (512 words for pid_max 32768)."""
        if not self.args.follow:
            return
        from diag.agent import procfs

        table = self.b["target_bits"]
        found = []
        for w, word in enumerate(percpu.plain_u64_range(table, 0, len(table))):
            while word:
                low = word & -word
                pid = (w << 6) + low.bit_length() - 1
                word ^= low
                if pid not in self.seeded and procfs.is_process(pid):
                    found.append(pid)
        self.add_targets(found)

    # --- cumulative maps ----------------------------------------------------------------------
    def snapshot(self) -> dict:
        """The cumulative in-kernel maps now: aggregates per (syscall, kind), request and family
        histograms, counters."""
        h = self.h
        snap: dict = {"agg": {}, "counters": self.counters()}
        nrows = len(self.idx_name) * h.DIAG_NKIND
        if nrows:
            rows = percpu.struct_range(self.b["agg"], 0, nrows, 4)
            for row, cells in enumerate(rows):
                count = sum(c[0] for c in cells)
                if not count:
                    continue
                prev = (self.snap or {}).get("agg", {}).get(row)
                if prev and prev["count"] == count:
                    snap["agg"][row] = prev              # unchanged: its histograms too
                    continue
                base = row * h.DIAG_NSLOT
                snap["agg"][row] = {"count": count, "total_ns": sum(c[1] for c in cells),
                                    "bytes_total": sum(c[2] for c in cells), "max_ns": max(c[3] for c in cells),
                                    "hist": percpu.u64_range(self.b["lat_hist"], base, h.DIAG_NSLOT),
                                    "bytes_hist": percpu.u64_range(self.b["bytes_hist"], base, h.DIAG_NSLOT)}
        if self.want_requests:
            snap["req"] = percpu.u64_range(self.b["req_hist"], 0, h.REQ_NHIST * h.REQ_NSLOT)
            snap["fam"] = percpu.u64_range(self.b["fam_hist"], 0, h.FAM_N * h.DIAG_NSLOT)
        return snap

    def delta_records(self, old: dict | None, new: dict) -> list[dict]:
        """The segment's own aggregates and histograms: `new` minus `old`, as stream records."""
        h = self.h
        old = old or {"agg": {}, "counters": {}}
        timed = traced(h)
        recs = []

        def hist(a: list[int], b: list[int] | None) -> list[list[int]]:
            b = b or [0] * len(a)
            return [[fmt.log2_lower(s), x - y] for s, (x, y) in enumerate(zip(a, b)) if x - y > 0]

        for row, cur in sorted(new["agg"].items()):
            prev = old["agg"].get(row)
            count = cur["count"] - (prev["count"] if prev else 0)
            if count <= 0:
                continue
            idx, kind = divmod(row, h.DIAG_NKIND)
            name = self.idx_name[idx]
            lat = hist(cur["hist"], prev["hist"] if prev else None)
            # the segment's max: the cumulative one if it grew here, else its highest slot's bound
            if not prev or cur["max_ns"] > prev["max_ns"]:
                mx = cur["max_ns"]
            else:
                mx = min(cur["max_ns"], max((lo * 2 - 1 if lo else 1) for lo, _ in lat)) if lat else 0
            rec = {"type": "aggregate", "name": name, "fd_kind": _kind_name(kind), "count": count,
                   "total_ns": cur["total_ns"] - (prev["total_ns"] if prev else 0), "max_ns": mx, "hist": lat}
            if timed[name].flags & h.SF_BYTES:
                rec["bytes_total"] = cur["bytes_total"] - (prev["bytes_total"] if prev else 0)
                rec["bytes_hist"] = hist(cur["bytes_hist"], prev["bytes_hist"] if prev else None)
            recs.append(rec)
        recs.sort(key=lambda r: (r["name"], r["fd_kind"]))
        if self.want_requests and "req" in new:
            oreq = old.get("req") or [0] * len(new["req"])
            for which, name in ((h.REQ_HIST_SERVER, "server"), (h.REQ_HIST_CLIENT, "client")):
                lo = which * h.REQ_NSLOT
                d = [a - b for a, b in zip(new["req"][lo:lo + h.REQ_NSLOT], oreq[lo:lo + h.REQ_NSLOT])]
                recs.append({"type": "request_hist", "latency": name, "sub_bits": h.REQ_SUB_BITS,
                             "slots": [[s, n] for s, n in enumerate(d) if n > 0], "count": sum(x for x in d if x > 0)})
            ofam = old.get("fam") or [0] * len(new["fam"])
            fams = {}
            for i, fam in enumerate(list(PROBE_FAMILY_KEYS)[:h.FAM_N]):
                lo = i * h.DIAG_NSLOT
                d = [a - b for a, b in zip(new["fam"][lo:lo + h.DIAG_NSLOT], ofam[lo:lo + h.DIAG_NSLOT])]
                if any(x > 0 for x in d):
                    fams[PROBE_FAMILY_KEYS[fam]] = [[fmt.log2_lower(s), n] for s, n in enumerate(d) if n > 0]
            recs.append({"type": "family_hist", "families": fams})
        c, oc = new["counters"], old.get("counters") or {}
        dc = {k: v - int(oc.get(k, 0)) for k, v in c.items()}
        lost = {"type": "lost", "count": dc["event_lost"], "agg_errors": dc["agg_err"],
                "stack_errors": dc["stack_err"], "fd_map_errors": dc["fdmap_err"], "lost_sched": dc["sched_lost"]}
        if self.want_requests:
            lost.update(lost_requests=dc["req_lost"], conn_map_errors=dc["conn_err"])
        recs.append(lost)
        self.seg_counters = dc
        return recs

    def write_stats(self) -> None:
        """The cumulative histograms and counters, for the watcher's triggers and exporters.
        Not rewritten while nothing changed (an idle target), except every 10 s."""
        h = self.h
        c = self.counters()
        key = (c.get("calls"), c.get("req_done"), c.get("wakeups"), c.get("runq"), len(self.tgids),
               self.dropped["segments"])
        now = time.monotonic()
        if key == getattr(self, "_stats_key", None) and now - getattr(self, "_stats_at", 0.0) < 10.0:
            return
        self._stats_key, self._stats_at = key, now
        snap = self.snapshot()
        calls: dict[str, dict] = {}
        for row, a in snap["agg"].items():
            name = self.idx_name[row // h.DIAG_NKIND]
            c = calls.setdefault(name, {"count": 0, "total_ns": 0, "max_ns": 0, "hist": [0] * h.DIAG_NSLOT})
            c["count"] += a["count"]
            c["total_ns"] += a["total_ns"]
            c["max_ns"] = max(c["max_ns"], a["max_ns"])
            c["hist"] = [x + y for x, y in zip(c["hist"], a["hist"])]
        for c in calls.values():
            c["hist"] = [[fmt.log2_lower(s), n] for s, n in enumerate(c["hist"]) if n]
        out = {"ts_ns": time.clock_gettime_ns(time.CLOCK_MONOTONIC), "agent_pid": os.getpid(),
               "generation": self.generation, "tgids": list(self.tgids), "counters": snap["counters"],
               "syscalls": calls, "records": {kind: r.records for kind, r in self.rings.items()}}
        if "req" in snap:
            n = h.REQ_NSLOT
            out["requests"] = {"sub_bits": h.REQ_SUB_BITS,
                               "server": [[s, x] for s, x in enumerate(snap["req"][:n]) if x],
                               "client": [[s, x] for s, x in enumerate(snap["req"][n:2 * n]) if x]}
            fams = {}
            for i, fam in enumerate(list(PROBE_FAMILY_KEYS)[:h.FAM_N]):
                lo = i * h.DIAG_NSLOT
                row = snap["fam"][lo:lo + h.DIAG_NSLOT]
                if any(row):
                    fams[PROBE_FAMILY_KEYS[fam]] = [[fmt.log2_lower(s), x] for s, x in enumerate(row) if x]
            out["family_time"] = fams
        out["ring"] = {"bytes": self.total_bytes(), "bound_bytes": self.bound,
                       "segments": len(self.closed) + 1, "dropped": dict(self.dropped)}
        tmp = self.args.stats + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, separators=(",", ":"))
        os.replace(tmp, self.args.stats)

    # --- end ----------------------------------------------------------------------------------
    def finish(self, started: int) -> int:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.detach()
        for _ in range(100):
            self.consume()
            if not any(r.pending() for r in self.rings.values()):
                break
        at_stop: list[dict] = []
        if self.want_requests:
            self.write = at_stop.append          # drain_connections writes the requests at stop
            try:
                self.drain_connections()
            finally:
                del self.write
        self._close_segment(time.clock_gettime_ns(time.CLOCK_MONOTONIC), self.stop_reason or "stop", at_stop)
        self.seg_dir = None
        self.save_state(stopped=self.stop_reason or "stop")
        self.write_progress_final()
        for r in self.rings.values():
            r.close()
        c = self.counters()
        log(f"stopped ({self.stop_reason}): ring {self.ring_dir}: {len(self.closed)} segments, "
            f"dropped {self.dropped['segments']} segments and {self.dropped['records']} records; "
            f"{c['event_lost']} slow calls lost in the kernel")
        return 0

    def write_progress_final(self) -> None:
        if self.args.progress:
            Agent.write_progress(self)


def _kind_name(kind: int) -> str:
    from diag.agent.agent import KIND_NAMES

    return KIND_NAMES[kind] if kind < len(KIND_NAMES) else "unknown"
