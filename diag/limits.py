"""How much one replay may read: the size limits that keep hostile or broken input from
exhausting memory, and the one-line refusals that name them.

Replaying holds every record of a stream in memory (about 1 KB per strace line here), and a
py-spy JSON document is parsed whole, so the size of what is read bounds the memory used. A
stream larger than `max_stream_bytes()` (default 1 GiB; `DIAG_MAX_STREAM_SIZE=8G` raises it) is
refused before it is read, and so is an archive whose members expand past four times that: a
capture archive of a few MB can otherwise expand to gigabytes. The other limits are far above
anything diag writes and are not meant to be raised: a manifest is a few KB, a capture has a
few dozen files, a trace line a few KB (strace with a large `-s` included).
"""
from __future__ import annotations

import os
import re

from diag.errors import DiagError

DEFAULT_MAX_STREAM_BYTES = 1 << 30
ARCHIVE_FACTOR = 4                  # an archive may expand to this many times the stream limit
MAX_MANIFEST_BYTES = 16 << 20
MAX_ARCHIVE_MEMBERS = 10_000
MAX_LINE_CHARS = 16 << 20
ENV = "DIAG_MAX_STREAM_SIZE"

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "MIB": 1 << 20,
          "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40, "TIB": 1 << 40}


def parse_size(text: str, what: str) -> int:
    """'512M', '8G', '1048576' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text or "")
    unit = m.group(2).upper() if m else None
    if not m or unit not in _UNITS or float(m.group(1)) <= 0:
        raise DiagError(f"{what}={text!r}: expected a size such as 512M or 8G")
    return int(float(m.group(1)) * _UNITS[unit])


def human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def max_stream_bytes() -> int:
    """The largest stream (raw file, capture stream or archive member) a replay reads."""
    value = os.environ.get(ENV)
    return parse_size(value, ENV) if value else DEFAULT_MAX_STREAM_BYTES


def max_archive_bytes() -> int:
    """How far a capture archive may expand, all members together."""
    return ARCHIVE_FACTOR * max_stream_bytes()


def too_large(where: str, size: int | None, limit: int, what: str = "stream") -> DiagError:
    """The refusal of an input past a limit that the user may raise."""
    got = f" ({human(size)})" if size is not None else ""
    return DiagError(f"{where}: {what} larger than the {human(limit)} limit{got}; if it is genuine, raise the limit "
                     f"with {ENV}=SIZE (e.g. {ENV}=16G; replaying needs memory in proportion)")


__all__ = ["parse_size", "max_stream_bytes", "max_archive_bytes", "too_large", "human", "MAX_MANIFEST_BYTES",
           "MAX_ARCHIVE_MEMBERS", "MAX_LINE_CHARS"]
