"""Writing files the user reads: atomically when regular, in place when a device.

A CI job must never read a half-written report, nor replay a half-written manifest, so they are
written to a temp file and renamed over the destination. But renaming over `/dev/null`, a FIFO
or `/dev/stdout` would replace the device with a regular file (it did, once, here): those are
written in place. The temp file gets the mode a plain open() would have given it.
"""
from __future__ import annotations

import os
import stat
import tempfile


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> None:
    """Write `text` to `path` (atomically for regular files; `fsync` before the rename when the
    file must survive a crash, as a capture manifest must)."""
    path = os.fspath(path)
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        regular = True
    if not regular:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".diag-out.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
