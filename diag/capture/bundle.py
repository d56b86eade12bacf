"""The capture bundle: a manifest and one raw stream per collector, in a directory or an archive.

Layout (documented in docs/capture-format.md):

    NAME.diag/
      manifest.json          schema "diag.capture/1"; rewritten atomically as the capture goes
      streams/strace.txt     each collector's raw output, exactly as the collector wrote it
      streams/py-spy.json
      streams/process.jsonl
      ...

A capture is written incrementally: the manifest is written first with status "running" and
rewritten (write to a temp file, fsync, rename) whenever a collector changes state, so a capture
cut by a crash or SIGKILL still has a valid manifest and streams readable up to their last
complete record. The same layout packed in a tar (optionally gzip'ed) is a capture archive.
"""
from __future__ import annotations

import io
import json
import os
import platform
import socket
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

from diag import __version__
from diag.capture.clock import ClockPair, read_pair
from diag.errors import DiagError, ParseError
from diag.fsutil import write_text

SCHEMA = "diag.capture/1"
SUPPORTED_SCHEMAS = {SCHEMA}
MANIFEST = "manifest.json"
STREAMS_DIR = "streams"


def host_facts() -> dict:
    u = platform.uname()
    boot_id = None
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        pass
    return {"hostname": socket.gethostname(), "kernel": u.release, "machine": u.machine,
            "os": u.system, "cpus": os.cpu_count(), "boot_id": boot_id}


def new_manifest(target: dict, mode: str) -> dict:
    """A manifest for a capture that starts now. `target`: pid, cmdline, comm, python..."""
    start = read_pair()
    return {
        "schema": SCHEMA,
        "tool": {"name": "diag", "version": __version__},
        "status": "running",
        "mode": mode,                      # attach | run | import
        "host": host_facts(),
        "target": target,
        "clock": {"start": start.to_json(), "end": None},
        "collectors": {},
        "events": {"seen": 0, "lost": 0},
    }


def _atomic_write_json(path: Path, obj: dict) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", fsync=True)


class CaptureWriter:
    """Owns one capture directory while collectors write into it."""

    def __init__(self, root: str | os.PathLike, target: dict, mode: str) -> None:
        self.root = Path(root)
        self.write_error: str | None = None      # the first failed manifest write (a full disk...)
        if self.root.exists() and any(self.root.iterdir()):
            raise DiagError(f"{self.root}: already exists and is not empty; choose another --out or remove it")
        self.manifest = new_manifest(target, mode)
        try:
            (self.root / STREAMS_DIR).mkdir(parents=True, exist_ok=True)
            _atomic_write_json(self.root / MANIFEST, self.manifest)
        except OSError as e:
            raise DiagError(f"{self.root}: cannot write the capture there ({e.strerror or e}): choose a writable "
                            f"directory with --out") from None

    def stream_path(self, filename: str) -> Path:
        """Where a collector writes its raw stream (`streams/FILENAME`)."""
        return self.root / STREAMS_DIR / filename

    def set_collector(self, name: str, **fields) -> None:
        """Create or update a collector's entry (status, reason, stream, format, settings, ...)."""
        entry = self.manifest["collectors"].setdefault(name, {"status": "pending"})
        for k, v in fields.items():
            if k == "stream" and v is not None:
                v = str(PurePosixPath(STREAMS_DIR) / Path(v).name)
            entry[k] = v
        self.save()

    def save(self) -> None:
        """Rewrite the manifest atomically. A failed write (a full disk) keeps the last whole one
        on disk and is remembered in `write_error`: the session stops the capture on it, and
        the capture stays replayable as far as it was written."""
        seen = sum(int(c.get("events") or 0) for c in self.manifest["collectors"].values())
        lost = sum(int(c.get("lost") or 0) for c in self.manifest["collectors"].values())
        self.manifest["events"] = {"seen": seen, "lost": lost}
        try:
            _atomic_write_json(self.root / MANIFEST, self.manifest)
        except OSError as e:
            self.write_error = self.write_error or f"{e.strerror or e}"

    def finish(self, status: str = "complete") -> dict:
        self.manifest["clock"]["end"] = read_pair().to_json()
        self.manifest["status"] = status
        self.save()
        return self.manifest


class Capture:
    """A capture opened for reading, from a directory or a tar archive."""

    def __init__(self, path: str, manifest: dict, tar: tarfile.TarFile | None, prefix: str) -> None:
        self.path = path
        self.manifest = manifest
        self._tar = tar
        self._prefix = prefix
        self.warnings: list[str] = []
        if manifest.get("status") not in ("complete", None):
            self.warnings.append(f"{path}: capture status is {manifest.get('status')!r} (interrupted); "
                                 "replaying what was written")

    @property
    def start(self) -> ClockPair | None:
        c = (self.manifest.get("clock") or {}).get("start")
        return ClockPair.from_json(c) if c else None

    @property
    def end(self) -> ClockPair | None:
        c = (self.manifest.get("clock") or {}).get("end")
        return ClockPair.from_json(c) if c else None

    def collectors(self) -> dict[str, dict]:
        return dict(self.manifest.get("collectors") or {})

    def member_path(self, rel: str) -> str:
        """A display path for a stream inside the capture."""
        return f"{self.path}/{rel}" if self._tar is None else f"{self.path}:{rel}"

    def exists(self, rel: str) -> bool:
        _check_rel(self.path, rel)
        if self._tar is None:
            return (Path(self.path) / rel).is_file()
        try:
            self._tar.getmember(self._prefix + rel)
            return True
        except KeyError:
            return False

    def local_file(self, rel: str) -> str | None:
        """A filesystem path for the stream when the capture is a directory (None in an archive)."""
        return str(Path(self.path) / rel) if self._tar is None else None

    def open_text(self, rel: str) -> IO[str]:
        """Open one stream of the capture as text (tolerating invalid UTF-8)."""
        _check_rel(self.path, rel)
        if self._tar is None:
            try:
                return open(Path(self.path) / rel, encoding="utf-8", errors="replace", newline="")
            except FileNotFoundError:
                raise ParseError(self.member_path(rel), None, "stream listed in the manifest is missing")
        try:
            f = self._tar.extractfile(self._prefix + rel)
        except KeyError:
            f = None
        if f is None:
            raise ParseError(self.member_path(rel), None, "stream listed in the manifest is missing")
        return io.TextIOWrapper(f, encoding="utf-8", errors="replace", newline="")

    def read_bytes(self, rel: str) -> bytes | None:
        """A stream's whole content as bytes, or None when the capture does not have it."""
        _check_rel(self.path, rel)
        if self._tar is None:
            try:
                return (Path(self.path) / rel).read_bytes()
            except OSError:
                return None
        try:
            f = self._tar.extractfile(self._prefix + rel)
        except KeyError:
            return None
        return f.read() if f is not None else None

    def read_head(self, rel: str, n: int = 65536) -> str:
        with self.open_text(rel) as f:
            return f.read(n)

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()


def _check_rel(path: str, rel: str) -> None:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts:
        raise ParseError(path, None, f"manifest names a stream outside the capture: {rel!r}")


def read_manifest(capture_dir: str | os.PathLike) -> dict | None:
    """The manifest of a capture directory being written (None until it exists): it is rewritten
    atomically, so a read sees it whole."""
    try:
        with open(Path(capture_dir) / MANIFEST) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def is_ready(manifest: dict | None) -> bool:
    """Every collector of the capture has started (eBPF compiled and attached, py-spy sampling):
    the mark the session writes once they all have."""
    return bool(manifest) and bool((manifest.get("clock") or {}).get("collectors_started_monotonic_ns"))


def wait_ready(capture_dir: str | os.PathLike, alive, timeout_s: float = 90.0) -> bool:
    """Until the capture is ready (True), `alive()` turns False or the time is up (False)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        if is_ready(read_manifest(capture_dir)):
            return True
        time.sleep(0.05)
    return is_ready(read_manifest(capture_dir))


def is_capture(path: str) -> bool:
    p = Path(path)
    if p.is_dir():
        return (p / MANIFEST).is_file()
    if p.is_file():
        try:
            return tarfile.is_tarfile(str(p))
        except (EOFError, OSError, zlib.error):
            return False        # a cut or corrupt gzip (a Go profile, say) is no archive: its parser says why
    return False


def _check_manifest(path: str, manifest: object) -> dict:
    if not isinstance(manifest, dict) or "schema" not in manifest:
        raise ParseError(path, None, "manifest.json has no schema field; not a diag capture")
    schema = manifest["schema"]
    if schema not in SUPPORTED_SCHEMAS:
        raise ParseError(path, None, f"capture schema {schema!r} is not supported by diag {__version__} "
                                     f"(supported: {', '.join(sorted(SUPPORTED_SCHEMAS))}); upgrade diag")
    return manifest


def open_capture(path: str) -> Capture:
    """Open a capture directory or archive, validating its manifest."""
    p = Path(path)
    if p.is_dir():
        mpath = p / MANIFEST
        try:
            text = mpath.read_text()
        except FileNotFoundError:
            raise DiagError(f"{path}: directory has no manifest.json; not a diag capture")
        try:
            manifest = json.loads(text)
        except json.JSONDecodeError as e:
            raise ParseError(str(mpath), e.lineno, f"manifest.json is not valid JSON ({e.msg})")
        return Capture(path, _check_manifest(str(mpath), manifest), None, "")
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise DiagError(f"{path}: cannot open as a capture archive ({e})")
    names = [m.name for m in tar.getmembers() if m.isfile()]
    manifests = sorted((n for n in names if PurePosixPath(n).name == MANIFEST), key=len)
    if not manifests:
        tar.close()
        raise DiagError(f"{path}: archive has no manifest.json; not a diag capture")
    mname = manifests[0]
    prefix = mname[: -len(MANIFEST)]
    f = tar.extractfile(mname)
    assert f is not None
    try:
        manifest = json.load(f)
    except json.JSONDecodeError as e:
        tar.close()
        raise ParseError(f"{path}:{mname}", e.lineno, f"manifest.json is not valid JSON ({e.msg})")
    return Capture(path, _check_manifest(f"{path}:{mname}", manifest), tar, prefix)


def pack(capture_dir: str, archive: str) -> str:
    """Pack a capture directory into a .tar.gz archive (the single-file form)."""
    src = Path(capture_dir)
    if not (src / MANIFEST).is_file():
        raise DiagError(f"{capture_dir}: not a capture directory (no manifest.json)")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(str(src), arcname=src.name)
    return archive
