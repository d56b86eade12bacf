"""Writing files the user reads: atomically when regular, in place when a device.

A CI job must never read a half-written report, nor replay a half-written manifest, so they are
written to a temp file and renamed over the destination. But renaming over `/dev/null`, a FIFO
or `/dev/stdout` would replace the device with a regular file (it did, once, here): those are
written in place. New files are private (0600); a file that exists keeps its mode.
"""
from __future__ import annotations

import os
import stat
import tempfile


def write_text(path: str | os.PathLike, text: str, fsync: bool = False, mode: int | None = None) -> None:
    """Write `text` to `path` (atomically for regular files; `fsync` before the rename when the
    file must survive a crash, as a capture manifest must).

    Permissions: `mode` when given; else a file that exists keeps its own (the user chose them),
    and a new one is 0600: what diag writes quotes the target (command line, paths, function
    names) and is private until its owner shares it."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
        regular = stat.S_ISREG(st.st_mode)
        keep = stat.S_IMODE(st.st_mode)
    except FileNotFoundError:
        regular, keep = True, None
    perm = mode if mode is not None else (keep if keep is not None else 0o600)
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
        os.chmod(tmp, perm)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
