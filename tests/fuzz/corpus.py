"""The fuzz campaign's seeds and the hostile inputs made from them.

Seeds are real: every trace file under tests/data (strace, perf script, perf trace, py-spy in each
format, Go pprof) and the streams of two real captures (tests/data/capture/journal.diag: eBPF with
its binary record files, process sampler, perf, py-spy, CPython runtime, strace; journal-v1.diag,
by an earlier diag: an all-JSON eBPF stream); capture seeds are those captures and one assembled
by CaptureWriter from the raw files. A case is a recipe (drawn by hypothesis) that `materialize` turns into files under a
scratch directory: a damaged raw file, a capture directory with a damaged manifest or streams
(missing, replaced by links to outside files, devices, FIFOs), or a capture archive with unsafe
members (`..` and absolute names, links, devices, an expansion to gigabytes).
"""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import strategies as st
from mutate import dumps, json_values, mutate_bytes, mutate_json, mutate_jsonl

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
REAL_CAPTURE = DATA / "capture" / "journal.diag"
REAL_CAPTURE_V1 = DATA / "capture" / "journal-v1.diag"     # its eBPF stream all JSON lines (diag.ebpf/1)


@dataclass(frozen=True)
class Seed:
    name: str              # path under tests/data
    data: bytes
    fmt: str | None        # the format it is detected as (None: refused even undamaged)


def raw_seeds() -> list[Seed]:
    from diag.errors import DiagError
    from diag.parse import detect

    out = []
    for p in sorted(DATA.rglob("*")):
        if not p.is_file() or p.suffix == ".sh" or p.name == "manifest.json":
            continue
        try:
            fmt = detect(str(p)).format
        except DiagError:
            fmt = None
        out.append(Seed(str(p.relative_to(DATA)), p.read_bytes(), fmt))
    return out


def build_capture_seeds(into: Path) -> list[Path]:
    """The real captures (today's, and one by an earlier diag), and one written by CaptureWriter
    around raw files of tests/data."""
    from diag.capture.bundle import CaptureWriter

    real = into / "journal.diag"
    shutil.copytree(REAL_CAPTURE, real)
    shutil.copytree(REAL_CAPTURE_V1, into / "journal-v1.diag")
    w = CaptureWriter(into / "assembled.diag", {"pid": 25447, "cmdline": ["python3", "server.py", "--token=abc"],
                                                "comm": "python3", "threads": [25447, 25448]}, "attach")
    streams = {"strace": ("strace/threads_yy.log", "strace.txt", "strace"),
               "perf": ("perf/fsync_tracepoints_callchain.txt", "perf.txt", "perf-script"),
               "py-spy": ("pyspy/chrometrace_threads.json", "py-spy.json", "pyspy-chrometrace"),
               "process": ("capture/journal.diag/streams/process.jsonl", "process.jsonl", "process-jsonl"),
               # the all-JSON eBPF stream of an earlier diag (the real capture's has binary record files)
               "ebpf": ("capture/journal-v1.diag/streams/ebpf.jsonl", "ebpf.jsonl", "ebpf-jsonl")}
    for name, (src, dst, fmt) in streams.items():
        shutil.copy(DATA / src, w.stream_path(dst))
        w.set_collector(name, status="ok", stream=dst, format=fmt, events=10, started_monotonic_ns=1000,
                        tid_map={"140000": 25448} if name == "py-spy" else None)
    w.finish()
    # what CaptureWriter read from this machine and this moment (clocks, host, who) is replaced by
    # the real capture's, so that a seed makes the same inputs on every run and every machine
    path = into / "assembled.diag" / "manifest.json"
    m, fixed = json.loads(path.read_text()), json.loads((real / "manifest.json").read_text())
    m.update(clock=fixed["clock"], host=fixed["host"], tool=fixed["tool"],
             access={"attached_by": {"uid": 0, "user": "root"}, "redacted": True,
                     "file_modes": "directories 0700, files 0600 (owner only)"})
    for entry in m["collectors"].values():
        entry["started_monotonic_ns"] = fixed["clock"]["start"]["monotonic_ns"]
    path.write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    return [real, into / "journal-v1.diag", into / "assembled.diag"]


# ---------------------------------------------------------------- cases

@dataclass
class Case:
    """One input: files written under a case directory, and the replay arguments to run on it."""

    kind: str
    seed: str
    ops: list[str] = field(default_factory=list)
    write: object = None          # callable(case_dir) -> input path (relative to case_dir)
    fmt: str | None = None        # --format to force
    outputs: tuple[str, ...] = ("json",)


@st.composite
def raw_case(draw, seed: Seed) -> Case:
    """`seed` damaged byte-wise, or (JSON formats) reshaped; its format forced one time in two."""
    jsonish = seed.fmt in ("ebpf-jsonl", "process-jsonl", "pyspy-speedscope", "pyspy-chrometrace")
    shape = jsonish and draw(st.booleans())
    if shape and seed.fmt in ("ebpf-jsonl", "process-jsonl"):
        data, ops = draw(mutate_jsonl(seed.data))
        kind = "jsonl-shape"
    elif shape:
        data, ops = draw(mutate_json(json.loads(seed.data)))
        data, kind = dumps(data), "json-shape"
    else:
        data, ops = draw(mutate_bytes(seed.data))
        kind = "raw"
    fmt = seed.fmt if seed.fmt and draw(st.booleans()) else None
    return Case(kind, seed.name, ops, _file_writer(os.path.basename(seed.name), data), fmt)


@st.composite
def junk_case(draw) -> Case:
    kind = draw(st.sampled_from(["binary", "text", "empty", "json-value", "many-lines"]))
    if kind == "binary":
        data = draw(st.binary(min_size=1, max_size=4096))
    elif kind == "text":
        data = draw(st.text(min_size=1, max_size=2000)).encode("utf-8", "surrogatepass")
    elif kind == "empty":
        data = draw(st.sampled_from([b"", b"\n", b"   \n\t\n", b"\0"]))
    elif kind == "json-value":
        data = dumps(draw(json_values))
    else:
        data = draw(st.sampled_from([b"\n", b"x\n", b"{}\n", b"1 2 3\n"])) * draw(st.sampled_from([1000, 100000]))
    fmt = draw(st.one_of(st.none(), st.sampled_from(["strace", "perf-script", "pyspy-speedscope",
                                                     "pyspy-chrometrace", "pyspy-raw", "ebpf-jsonl",
                                                     "process-jsonl"])))
    return Case("junk", kind, [kind], _file_writer("input.txt", data), fmt)


def _file_writer(name: str, data: bytes):
    def write(case_dir: Path) -> str:
        (case_dir / name).write_bytes(data)
        return name
    return write


# ---------------------------------------------------------------- capture directories

STREAM_TRICKS = ["delete", "empty", "mutate", "symlink-outside", "symlink-dev-zero", "symlink-loop", "fifo",
                 "directory", "dangling"]


def capture_ops(seed: Path):
    """(seed bundle, manifest mutations, stream tricks): applied by `apply_capture_ops`."""
    @st.composite
    def strategy(draw):
        manifest = json.loads((seed / "manifest.json").read_text())
        ops: list[str] = []
        actions = []
        what = draw(st.sampled_from(["manifest", "streams", "both", "manifest-bytes", "manifest-special"]))
        if what in ("manifest", "both"):
            manifest, names = draw(mutate_json(manifest))
            ops += names
        manifest_bytes = dumps(manifest)
        if what == "manifest-bytes":
            manifest_bytes, names = draw(mutate_bytes(manifest_bytes))
            ops += [f"manifest-{n}" for n in names]
        if what == "manifest-special":
            trick = draw(st.sampled_from(["symlink-dev-zero", "symlink-outside", "fifo", "directory", "huge",
                                          "delete"]))
            actions.append(("manifest.json", trick, None))
            ops.append(f"manifest-{trick}")
        if what in ("streams", "both"):
            streams = sorted(p.name for p in (seed / "streams").iterdir())
            for _ in range(draw(st.integers(1, 3))):
                s = draw(st.sampled_from(streams))
                trick = draw(st.sampled_from(STREAM_TRICKS))
                payload = None
                if trick == "mutate":
                    payload, names = draw(mutate_bytes((seed / "streams" / s).read_bytes(), max_ops=2))
                    ops += [f"{s}:{n}" for n in names]
                else:
                    ops.append(f"{s}:{trick}")
                actions.append((f"streams/{s}", trick, payload))
        return seed, manifest_bytes, actions, ops
    return strategy()


def apply_capture_ops(dest: Path, seed: Path, manifest_bytes: bytes, actions: list, outside: Path) -> None:
    """Write the damaged capture at `dest`. `outside` is a file beside the case (a secret that
    must never reach a report)."""
    shutil.copytree(seed, dest)
    (dest / "manifest.json").write_bytes(manifest_bytes)
    for rel, trick, payload in actions:
        p = dest / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.is_symlink() or p.exists():
            p.unlink()              # a FIFO too: writing into one would wait for a reader
        if trick == "delete":
            continue
        if trick == "empty":
            p.write_bytes(b"")
        elif trick == "mutate":
            p.write_bytes(payload)
        elif trick == "symlink-outside":
            p.symlink_to(outside)
        elif trick == "symlink-dev-zero":
            p.symlink_to("/dev/zero")
        elif trick == "symlink-loop":
            p.symlink_to(p.name)
        elif trick == "dangling":
            p.symlink_to(dest / "nowhere")
        elif trick == "fifo":
            os.mkfifo(p)
        elif trick == "directory":
            p.mkdir()
        elif trick == "huge":
            # valid JSON, 40 MB of it: a manifest is a few KB
            with open(p, "wb") as f:
                f.write(b'{"schema": "diag.capture/1", "pad": "')
                f.write(b"x" * (40 << 20))
                f.write(b'"}')


# ---------------------------------------------------------------- archives

MAX_MEMBERS_PAST = 10_050          # just past diag's member cap (diag.limits.MAX_ARCHIVE_MEMBERS)
ARCHIVE_TRICKS = ["plain", "dotdot-member", "absolute-member", "symlink-member", "hardlink-member", "device-member",
                  "fifo-member", "dotdot-prefix", "two-manifests", "many-members", "member-bomb", "total-bomb",
                  "truncated", "flipped", "huge-declared"]


@st.composite
def archive_ops(draw):
    compression = draw(st.sampled_from(["gz", "gz", "", "bz2", "xz"]))
    # one archive in two packed plainly (its damage is in the capture inside), the others with tricks
    tricks = draw(st.one_of(st.just(["plain"]), st.lists(st.sampled_from(ARCHIVE_TRICKS), min_size=1, max_size=2,
                                                        unique=True)))
    cut = draw(st.floats(0.0, 1.0))
    flips = draw(st.lists(st.integers(0, 10**9), min_size=1, max_size=8))
    return compression, tricks, cut, flips


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


class _Zeros(io.RawIOBase):
    """`n` zero bytes, produced on demand (an archive member that expands to gigabytes)."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        k = min(len(b), self.left)
        b[:k] = bytes(k)
        self.left -= k
        return k


def write_archive(dest: Path, capture: Path, compression: str, tricks: list[str], cut: float, flips: list[int],
                  bomb_bytes: int, outside: Path) -> None:
    """Pack `capture` (a directory) into `dest` with the given tricks. An archive with a bomb is
    always gzip'ed (written straight to disk, never held in memory)."""
    top = capture.name
    prefix = "../../" if "dotdot-prefix" in tricks else ""
    bomb = "member-bomb" in tricks or "total-bomb" in tricks
    if bomb:
        compression = "gz"
    mode = f"w:{compression}" if compression not in ("", "gz") else "w"
    kw = {"compresslevel": 1} if compression == "bz2" else ({"preset": 0} if compression == "xz" else {})
    # gzip by hand, with mtime 0: tarfile's own would stamp the time, and the same recipe would
    # make different bytes from one second to the next (the campaign tells inputs apart by bytes)
    raw = open(dest, "wb")
    fileobj = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) if compression == "gz" else None
    with raw, (fileobj or contextlib.nullcontext()), \
            tarfile.open(fileobj=fileobj or raw, mode=mode, **kw) as tar:
        for p in sorted(capture.rglob("*")):
            rel = f"{prefix}{top}/{p.relative_to(capture)}"
            if p.is_symlink() or not p.is_file():
                continue
            _add_bytes(tar, rel, p.read_bytes())
        if "dotdot-member" in tricks:
            _add_bytes(tar, f"{top}/../../escaped.txt", b"escaped\n")
        if "absolute-member" in tricks:
            _add_bytes(tar, str(outside.parent / "absolute-escape.txt"), b"escaped\n")
        if "symlink-member" in tricks or "hardlink-member" in tricks:
            info = tarfile.TarInfo(f"{top}/streams/strace.txt")
            info.type = tarfile.SYMTYPE if "symlink-member" in tricks else tarfile.LNKTYPE
            info.linkname = str(outside) if "symlink-member" in tricks else "/etc/passwd"
            tar.addfile(info)
        if "device-member" in tricks:
            info = tarfile.TarInfo(f"{top}/streams/ebpf.jsonl")
            info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 5
            tar.addfile(info)
        if "fifo-member" in tricks:
            info = tarfile.TarInfo(f"{top}/streams/process.jsonl")
            info.type = tarfile.FIFOTYPE
            tar.addfile(info)
        if "two-manifests" in tricks:
            _add_bytes(tar, "manifest.json", b'{"schema": "diag.capture/1", "collectors": {"x": '
                                             b'{"stream": "streams/strace.txt", "format": "strace"}}}')
        if "many-members" in tricks:
            for i in range(MAX_MEMBERS_PAST):
                _add_bytes(tar, f"{top}/junk/{i}", b"")
        if "member-bomb" in tricks:
            # one stream just past the stream limit
            info = tarfile.TarInfo(f"{top}/streams/strace.txt")
            info.size = bomb_bytes + (1 << 20)
            tar.addfile(info, _Zeros(info.size))
        if "total-bomb" in tricks:
            # five members each under the stream limit, past the archive's total in all
            for i in range(5):
                info = tarfile.TarInfo(f"{top}/streams/pad{i}.txt")
                info.size = bomb_bytes - (1 << 20)
                tar.addfile(info, _Zeros(info.size))
    if bomb:
        return
    data = dest.read_bytes()
    if "huge-declared" in tricks and compression == "":
        # a member header that claims 8 GiB, with the archive ending soon after it
        info = tarfile.TarInfo(f"{top}/streams/perf.txt")
        info.size = 8 << 30
        data = info.tobuf() + data[:4096]
    if "truncated" in tricks:
        data = data[:int(len(data) * cut)]
    if "flipped" in tricks and data:
        b = bytearray(data)
        for f in flips:
            b[f % len(b)] ^= 0x5A
        data = bytes(b)
    dest.write_bytes(data)


def gzip_bomb(path: Path, size: int) -> None:
    """A .tar.gz capture whose strace stream expands to `size` bytes of zeros (made once: ~1.6 s
    per GiB here). Built with raw zlib so it costs one pass."""
    header = tarfile.TarInfo("bomb.diag/manifest.json")
    manifest = json.dumps({"schema": "diag.capture/1", "status": "complete", "collectors": {
        "strace": {"status": "ok", "stream": "streams/strace.txt", "format": "strace"}}}).encode()
    header.size = len(manifest)
    member = tarfile.TarInfo("bomb.diag/streams/strace.txt")
    member.size = size
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    with open(path, "wb") as f:
        f.write(z.compress(header.tobuf() + manifest + bytes(-len(manifest) % 512) + member.tobuf()))
        left = size
        while left:
            k = min(left, len(chunk))
            f.write(z.compress(chunk[:k]))
            left -= k
        f.write(z.compress(bytes(-size % 512) + bytes(1024)))
        f.write(z.flush())
