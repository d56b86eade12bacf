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

A capture is private (0700 directories, 0600 files) and its target's command line redacted
(diag.redact) unless asked otherwise. Reading trusts nothing: the manifest's fields are checked
(diag.capture.manifest), archives are read through diag.capture.archive, and streams are read
only when they are regular files inside the capture, within the size limits (diag.limits).
"""
from __future__ import annotations

import io
import json
import os
import platform
import pwd
import socket
import stat
import tarfile
from pathlib import Path, PurePosixPath
from typing import IO

from diag import __version__
from diag.capture.archive import READ_ERRORS, ArchiveReader
from diag.capture.clock import ClockPair, read_pair
from diag.capture.manifest import check_fields
from diag.errors import DiagError, ParseError
from diag.fsutil import write_text
from diag.limits import MAX_MANIFEST_BYTES, max_stream_bytes, too_large
from diag.units import fmt_bytes
from diag.redact import redact_target

SCHEMA = "diag.capture/1"
FILE_MODES = "directories 0700, files 0600 (owner only)"
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


def attached_by() -> dict:
    """Who is capturing: the effective user, and the user sudo was run by (SUDO_USER, read from
    diag's own environment: the only variable a capture records, and it is not the target's)."""
    uid = os.geteuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    out = {"uid": uid, "user": user}
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user and uid == 0:
        out["sudo_user"] = sudo_user
    return out


def new_manifest(target: dict, mode: str, redact: bool = True) -> dict:
    """A manifest for a capture that starts now. `target`: pid, cmdline, comm, python..."""
    start = read_pair()
    return {
        "schema": SCHEMA,
        "tool": {"name": "diag", "version": __version__},
        "status": "running",
        "mode": mode,                      # attach | run | import
        "host": host_facts(),
        "target": redact_target(target) if redact else target,
        "access": {"attached_by": attached_by(), "redacted": redact, "file_modes": FILE_MODES},
        "clock": {"start": start.to_json(), "end": None},
        "collectors": {},
        "events": {"seen": 0, "lost": 0},
    }


def _atomic_write_json(path: Path, obj: dict) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", fsync=True, mode=0o600)


class CaptureWriter:
    """Owns one capture directory while collectors write into it.

    A capture holds command lines, paths and socket peers: its directories are 0700 and its files
    0600 whatever the umask (FILE_MODES). The directory is made private before anything is
    written in it, so what the collectors create there (with their own umask) is never readable
    by others meanwhile; every save sets the modes of what they created.
    """

    def __init__(self, root: str | os.PathLike, target: dict, mode: str, redact: bool = True) -> None:
        self.root = Path(root)
        self.redact = redact
        self.write_error: str | None = None      # the first failed manifest write (a full disk...)
        if self.root.exists() and any(self.root.iterdir()):
            raise DiagError(f"{self.root}: already exists and is not empty; choose another --out or remove it")
        self.manifest = new_manifest(target, mode, redact)
        try:
            self.root.parent.mkdir(parents=True, exist_ok=True)
            self.root.mkdir(mode=0o700, exist_ok=True)
            os.chmod(self.root, 0o700)
            (self.root / STREAMS_DIR).mkdir(mode=0o700, exist_ok=True)
            _atomic_write_json(self.root / MANIFEST, self.manifest)
            self._private()
        except OSError as e:
            raise DiagError(f"{self.root}: cannot write the capture there ({e.strerror or e}): choose a writable "
                            f"directory with --out") from None

    def set_target(self, target: dict) -> None:
        """The target, once known (`diag run`: after the launch), redacted as the capture is."""
        self.manifest["target"] = redact_target(target) if self.redact else target
        self.save()

    def set_processes(self, processes: list[dict]) -> None:
        """The target's process tree as seen so far, redacted as the capture is (written at the next save)."""
        self.manifest["target"]["processes"] = [redact_target(m) for m in processes] if self.redact else processes

    def _private(self) -> None:
        for d, dirs, files in os.walk(self.root):
            os.chmod(d, 0o700)
            for name in files:
                p = os.path.join(d, name)
                try:
                    if not os.path.islink(p):
                        os.chmod(p, 0o600)
                except FileNotFoundError:       # a collector's temp file, gone meanwhile
                    pass

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
            self._private()
        except OSError as e:
            self.write_error = self.write_error or f"{e.strerror or e}"

    def finish(self, status: str = "complete") -> dict:
        self.manifest["clock"]["end"] = read_pair().to_json()
        self.manifest["status"] = status
        self.save()
        return self.manifest


class Capture:
    """A capture opened for reading, from a directory or an archive (never extracted).

    Streams are named by the manifest; each is read only if it is a regular file inside the
    capture, no larger than the stream limit (`diag.limits`). A stream that is missing, or that is
    a FIFO, a device or a link leading outside the capture, is skipped: `problem()` says why.
    """

    def __init__(self, path: str, manifest: dict, archive: ArchiveReader | None, prefix: str) -> None:
        self.path = path
        self.manifest = manifest
        self._archive = archive
        self._prefix = prefix
        self.warnings: list[str] = archive.warnings if archive is not None else []
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
        return f"{self.path}/{rel}" if self._archive is None else f"{self.path}:{rel}"

    def problem(self, rel: str) -> str | None:
        """Why stream `rel` cannot be read ("missing", "a FIFO", ...), or None when it can."""
        _check_rel(self.path, rel)
        if self._archive is not None:
            return None if self._prefix + rel in self._archive.members and \
                self._archive.members[self._prefix + rel].isreg() else "missing"
        p = Path(self.path) / rel
        if not os.path.lexists(p):
            return "missing"
        try:
            real = p.resolve(strict=True)
            st = os.stat(real)
        except (OSError, RuntimeError):
            return "a broken or looping symbolic link"
        if not real.is_relative_to(Path(self.path).resolve()):
            return f"a symbolic link to {real}, outside the capture"
        if not stat.S_ISREG(st.st_mode):
            return f"{_file_kind(st.st_mode)}, not a regular file"
        limit = max_stream_bytes()
        if st.st_size > limit:
            raise too_large(self.member_path(rel), st.st_size, limit)
        return None

    def exists(self, rel: str) -> bool:
        return self.problem(rel) is None

    def local_file(self, rel: str) -> str | None:
        """A filesystem path for the stream when the capture is a directory (None in an archive)."""
        if self._archive is not None or self.problem(rel) is not None:
            return None
        return str(Path(self.path) / rel)

    def open_text(self, rel: str) -> IO[str]:
        """Open one stream of the capture as text (tolerating invalid UTF-8)."""
        why = self.problem(rel)
        if why is not None:
            raise ParseError(self.member_path(rel), None, f"stream listed in the manifest is {why}")
        if self._archive is None:
            return open(Path(self.path) / rel, encoding="utf-8", errors="replace", newline="")
        return io.TextIOWrapper(self._archive.open(self._prefix + rel), encoding="utf-8", errors="replace",
                                newline="")

    def read_bytes(self, rel: str) -> bytes | None:
        """A stream's whole content as bytes, or None when the capture does not have it readable."""
        if self.problem(rel) is not None:
            return None
        if self._archive is None:
            try:
                return (Path(self.path) / rel).read_bytes()
            except OSError:
                return None
        with self._archive.open(self._prefix + rel) as f:
            return f.read()

    def read_head(self, rel: str, n: int = 65536) -> str:
        with self.open_text(rel) as f:
            return f.read(n)

    def close(self) -> None:
        if self._archive is not None:
            self._archive.close()


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _check_rel(path: str, rel: str) -> None:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or "\0" in rel:
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


ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def is_capture(path: str) -> bool:
    """A directory with a manifest.json (whatever it is: opening it says what is wrong), or a
    file that is a tar archive or named like one."""
    p = Path(path)
    if p.is_dir():
        return os.path.lexists(p / MANIFEST)
    if p.is_file():
        if p.name.endswith(ARCHIVE_SUFFIXES):
            return True
        try:
            return tarfile.is_tarfile(str(p))
        except READ_ERRORS:
            return False
    return False


def _parse_manifest(where: str, raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParseError(where, None, f"manifest.json is not UTF-8 text (byte {e.start}); not a diag capture")
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise ParseError(where, e.lineno, f"manifest.json is not valid JSON ({e.msg})")
    except (ValueError, RecursionError) as e:
        raise ParseError(where, None, f"manifest.json is not valid JSON ({' '.join(str(e).split())[:80]})")
    return _check_manifest(where, manifest)


def _check_manifest(path: str, manifest: object) -> dict:
    if not isinstance(manifest, dict) or "schema" not in manifest:
        raise ParseError(path, None, "manifest.json has no schema field; not a diag capture")
    schema = manifest["schema"]
    if not isinstance(schema, str):
        raise ParseError(path, None, "manifest.json's schema field is not a string; not a diag capture")
    if schema not in SUPPORTED_SCHEMAS:
        raise ParseError(path, None, f"capture schema {schema[:60]!r} is not supported by diag {__version__} "
                                     f"(supported: {', '.join(sorted(SUPPORTED_SCHEMAS))}); upgrade diag")
    return check_fields(path, manifest)


def _read_manifest_file(path: str) -> dict:
    mpath = Path(path) / MANIFEST
    shown = str(mpath)
    if not os.path.lexists(mpath):
        raise DiagError(f"{path}: directory has no manifest.json; not a diag capture")
    try:
        real = mpath.resolve(strict=True)
        st = os.stat(real)
    except (OSError, RuntimeError):
        raise ParseError(shown, None, "manifest.json is a broken or looping symbolic link; not a diag capture")
    if not real.is_relative_to(Path(path).resolve()):
        raise ParseError(shown, None, f"manifest.json is a symbolic link to {real}, outside the capture; "
                                      "refusing to read it")
    if not stat.S_ISREG(st.st_mode):
        raise ParseError(shown, None, f"manifest.json is {_file_kind(st.st_mode)}, not a regular file")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise ParseError(shown, None, f"manifest.json is {fmt_bytes(st.st_size)} (a manifest is a few KB, at most "
                                      f"{fmt_bytes(MAX_MANIFEST_BYTES)}); not a diag capture")
    try:
        with open(real, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise DiagError(f"{shown}: cannot read ({e.strerror or e})")
    return _parse_manifest(shown, raw)


def open_capture(path: str) -> Capture:
    """Open a capture directory or archive, validating its manifest."""
    if Path(path).is_dir():
        return Capture(path, _read_manifest_file(path), None, "")
    archive = ArchiveReader(path)
    try:
        manifests = sorted((n for n in archive.regular() if PurePosixPath(n).name == MANIFEST), key=len)
        if not manifests:
            raise DiagError(f"{path}: archive has no manifest.json; not a diag capture")
        mname = manifests[0]
        where = f"{path}:{mname}"
        size = archive.members[mname].size
        if size > MAX_MANIFEST_BYTES:
            raise ParseError(where, None, f"manifest.json is {fmt_bytes(size)} (a manifest is a few KB, at most "
                                          f"{fmt_bytes(MAX_MANIFEST_BYTES)}); not a diag capture")
        with archive.open(mname) as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        manifest = _parse_manifest(where, raw)
    except BaseException:
        archive.close()
        raise
    return Capture(path, manifest, archive, mname[: -len(MANIFEST)])


def pack(capture_dir: str, archive: str) -> str:
    """Pack a capture directory into a .tar.gz archive (the single-file form)."""
    src = Path(capture_dir)
    if not (src / MANIFEST).is_file():
        raise DiagError(f"{capture_dir}: not a capture directory (no manifest.json)")
    fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w:gz") as tar:
        tar.add(str(src), arcname=src.name)
    return archive
