"""Reading a capture archive (.tar, .tar.gz, .tar.bz2, .tar.xz) without trusting it.

A capture archive comes from another machine or a CI artifact: it may be damaged, cut short, or
made to hurt. Nothing is ever extracted to disk; members are read in memory, by name. So that a
few MB cannot expand to gigabytes, the decompressed stream is read through a counter that
refuses to go past `limits.max_archive_bytes()`, each member's declared size is checked against
`limits.max_stream_bytes()` before anything of it is read, and the member count is capped. Only
regular files and directories are accepted, with relative names that stay inside the archive:
a capture has no links, devices or FIFOs, and a name with `..` or a leading `/` is refused
(`diag.capture.bundle.pack` writes neither). An archive cut short keeps what precedes the cut,
with a warning, as a cut stream does.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zlib
from pathlib import PurePosixPath
from typing import IO

from diag.errors import DiagError, ParseError
from diag.limits import MAX_ARCHIVE_MEMBERS, max_archive_bytes, max_stream_bytes, too_large

# What a damaged archive raises while it is decompressed or walked.
READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError)


class _Exceeded(Exception):
    pass


class _Bounded(io.RawIOBase):
    """The decompressed archive, refusing to be read or sought past `limit` bytes."""

    def __init__(self, inner: IO[bytes], limit: int) -> None:
        self.inner = inner
        self.limit = limit
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: offset, io.SEEK_CUR: self.pos + offset}.get(whence)
        if target is None:                    # SEEK_END: would decompress everything
            raise OSError("archive: seek from the end is not supported")
        if target > self.limit:
            raise _Exceeded()
        self.pos = self.inner.seek(target)
        return self.pos

    def readinto(self, b) -> int:
        n = min(len(b), self.limit + 1 - self.pos)
        if n <= 0:
            raise _Exceeded()
        data = self.inner.read(n)
        b[:len(data)] = data
        self.pos += len(data)
        if self.pos > self.limit:
            raise _Exceeded()
        return len(data)

    def close(self) -> None:
        self.inner.close()
        super().close()


def _decompressed(path: str) -> IO[bytes]:
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if magic[:3] == b"BZh":
        return bz2.open(path, "rb")
    if magic == b"\xfd7zXZ\x00":
        return lzma.open(path, "rb")
    return open(path, "rb")


def _unsafe(name: str) -> bool:
    p = PurePosixPath(name)
    return p.is_absolute() or ".." in p.parts or "\\" in name or "\0" in name


def _kind(m: tarfile.TarInfo) -> str:
    if m.issym():
        return "a symbolic link"
    if m.islnk():
        return "a hard link"
    if m.ischr() or m.isblk():
        return "a device file"
    if m.isfifo():
        return "a FIFO"
    return "not a regular file"


class ArchiveReader:
    """The members of one capture archive, checked; `open` reads one of them."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.warnings: list[str] = []
        self.members: dict[str, tarfile.TarInfo] = {}
        stream_limit, total_limit = max_stream_bytes(), max_archive_bytes()
        try:
            self._raw = _Bounded(_decompressed(path), total_limit)
            self._tar = tarfile.open(fileobj=io.BufferedReader(self._raw, 1 << 16), mode="r:")
        except _Exceeded:
            raise too_large(path, None, total_limit, "capture archive expands")
        except READ_ERRORS as e:
            raise DiagError(f"{path}: cannot open as a capture archive ({_reason(e)})")
        try:
            self._walk(stream_limit, total_limit)
        except BaseException:
            self.close()
            raise

    def _walk(self, stream_limit: int, total_limit: int) -> None:
        tar = self._tar
        m = tar.next()                       # the first member, read by tarfile.open
        while m is not None:
            if len(self.members) >= MAX_ARCHIVE_MEMBERS:
                raise DiagError(f"{self.path}: archive has more than {MAX_ARCHIVE_MEMBERS} members; a capture has "
                                "a few dozen files: not a diag capture")
            if _unsafe(m.name):
                raise DiagError(f"{self.path}: archive member {m.name!r} has an unsafe name (absolute, or with "
                                "'..'); diag writes relative names only: not a diag capture")
            if not (m.isreg() or m.isdir()):
                raise DiagError(f"{self.path}: archive member {m.name!r} is {_kind(m)}; a capture holds regular "
                                "files only: not a diag capture")
            if m.isreg() and m.size > stream_limit:
                raise too_large(f"{self.path}:{m.name}", m.size, stream_limit, "archive member")
            self.members[m.name] = m
            try:
                m = tar.next()
            except _Exceeded:
                raise too_large(self.path, None, total_limit, "capture archive expands")
            except READ_ERRORS as e:
                if not self.members:
                    raise DiagError(f"{self.path}: cannot read as a capture archive ({_reason(e)})")
                self.warnings.append(f"{self.path}: archive is damaged or cut short after {m.name!r} "
                                     f"({_reason(e)}); replaying the members before it")
                return

    def regular(self) -> list[str]:
        return [n for n, m in self.members.items() if m.isreg()]

    def open(self, name: str) -> IO[bytes]:
        """A member's bytes; a read error past its start ends it early (with a warning)."""
        m = self.members.get(name)
        if m is None or not m.isreg():
            raise KeyError(name)
        try:
            f = self._tar.extractfile(m)
        except _Exceeded:
            raise too_large(self.path, None, max_archive_bytes(), "capture archive expands")
        except READ_ERRORS as e:
            raise ParseError(f"{self.path}:{name}", None, f"cannot read this archive member ({_reason(e)})")
        if f is None:
            raise KeyError(name)
        return io.BufferedReader(_Guarded(f, f"{self.path}:{name}", self.warnings))

    def close(self) -> None:
        try:
            self._tar.close()
        finally:
            self._raw.close()


class _Guarded(io.RawIOBase):
    """One member's bytes: a damaged archive (bad CRC, cut short) ends the member with a warning
    instead of an error, so the records read before the damage are kept."""

    def __init__(self, inner: IO[bytes], where: str, warnings: list[str]) -> None:
        self.inner, self.where, self.warnings = inner, where, warnings
        self.failed = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.failed:
            return 0
        try:
            data = self.inner.read(len(b))
        except _Exceeded:
            raise too_large(self.where, None, max_archive_bytes(), "capture archive expands")
        except READ_ERRORS as e:
            self.failed = True
            self.warnings.append(f"{self.where}: archive damaged inside this member ({_reason(e)}); "
                                 "replayed up to the damage")
            return 0
        b[:len(data)] = data
        return len(data)


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:160]


__all__ = ["ArchiveReader", "READ_ERRORS"]
