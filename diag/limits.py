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

from diag.errors import DiagError
from diag.units import fmt_bytes, parse_size

DEFAULT_MAX_STREAM_BYTES = 1 << 30
ARCHIVE_FACTOR = 4                  # an archive may expand to this many times the stream limit
MAX_MANIFEST_BYTES = 16 << 20
MAX_ARCHIVE_MEMBERS = 10_000
MAX_LINE_CHARS = 16 << 20
ENV = "DIAG_MAX_STREAM_SIZE"


def max_stream_bytes() -> int:
    """The largest stream (raw file, capture stream or archive member) a replay reads."""
    value = os.environ.get(ENV)
    if not value:
        return DEFAULT_MAX_STREAM_BYTES
    try:
        size = parse_size(value)
    except ValueError:
        size = 0
    if size <= 0:
        raise DiagError(f"{ENV}={value!r}: expected a size such as 512M or 8G")
    return size


def max_archive_bytes() -> int:
    """How far a capture archive may expand, all members together."""
    return ARCHIVE_FACTOR * max_stream_bytes()


def too_large(where: str, size: int | None, limit: int, what: str = "stream") -> DiagError:
    """The refusal of an input past a limit that the user may raise."""
    got = f" ({fmt_bytes(size)})" if size is not None else ""
    return DiagError(f"{where}: {what} larger than the {fmt_bytes(limit)} limit{got}; if it is genuine, raise the "
                     f"limit with {ENV}=SIZE (e.g. {ENV}=16G; replaying needs memory in proportion)")


__all__ = ["max_stream_bytes", "max_archive_bytes", "too_large", "MAX_MANIFEST_BYTES",
           "MAX_ARCHIVE_MEMBERS", "MAX_LINE_CHARS"]
