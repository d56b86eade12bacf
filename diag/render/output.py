"""Writing an output file: atomically when it is a regular file, directly when it is not.

A CI job must never read a half-written report, so reports are written to a temp file and
renamed over the destination. But renaming over `/dev/null`, a FIFO or `/dev/stdout` would
replace the device with a regular file (it did, once, here): those are written in place.
"""
from __future__ import annotations

import os
import stat
import tempfile


def write_text(path: str, text: str) -> None:
    try:
        st = os.stat(path)
        regular = stat.S_ISREG(st.st_mode)
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
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
