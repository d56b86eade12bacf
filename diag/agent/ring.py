"""BPF ring buffers consumed by whole batches through mmap: no Python call per record.

BCC's ring_buffer_consume calls a Python callback for every record, about 2 µs each: at 100k
requests/s that alone is a fifth of a core. A BPF ring buffer map can be mapped by its consumer
(the kernel's own layout: a consumer page we write our position to, then the producer page and
the data area mapped twice in a row, so a record that wraps is contiguous). Each record there is
an 8-byte header (length with BUSY/DISCARD bits, page offset) and the record, padded to 8 bytes.
Records of one ring all have one size here, so a batch is checked for unfinished records by
reading every header word at a fixed stride, and copied to the capture as it is: the decoder
(diag.parse.ebpf) unpacks the same bytes with one struct.iter_unpack.
"""
from __future__ import annotations

import ctypes as ct
import mmap
import struct

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
RECORD_HEADER = 8


def stride_of(record_size: int) -> int:
    """Bytes one record takes in the ring (and in the capture's .bin file)."""
    return (RECORD_HEADER + record_size + 7) & ~7


class RingReader:
    """One BPF_RINGBUF_OUTPUT map, read without per-record calls. `consume(out)` appends every
    committed record to the binary file `out` and returns how many it copied."""

    def __init__(self, map_fd: int, data_bytes: int, record_size: int) -> None:
        page = mmap.PAGESIZE
        self.size = data_bytes
        self.record_size = record_size
        self.stride = stride_of(record_size)
        self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._prod = mmap.mmap(map_fd, page + 2 * data_bytes, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._cpos = ct.c_uint64.from_buffer(self._cons, 0)
        self._data_off = page
        self.records = 0
        self.bytes = 0

    def pending(self) -> int:
        return struct.unpack_from("=Q", self._prod, 0)[0] - self._cpos.value

    def consume(self, out) -> int:
        prod = struct.unpack_from("=Q", self._prod, 0)[0]
        cons = self._cpos.value
        avail = prod - cons
        if avail <= 0:
            return 0
        start = self._data_off + (cons % self.size)
        chunk = self._prod[start:start + avail]
        # header words at a fixed stride: stop at the first record still being written
        words = memoryview(chunk).cast("I")[::self.stride // 4].tolist()
        n = len(words)
        if words.count(self.record_size) != n:
            n = self._committed(words)
        used = n * self.stride
        if used:
            out.write(chunk[:used])
            self._cpos.value = cons + used
            self.records += n
            self.bytes += used
        return n

    def _committed(self, words: list[int]) -> int:
        """Records up to the first header that is not a committed record of our size: one still
        being written (BUSY). A discarded record never happens here: the probe only outputs."""
        for i, w in enumerate(words):
            if w != self.record_size:
                return i
        return len(words)

    def close(self) -> None:
        del self._cpos
        for m in (self._cons, self._prod):
            try:
                m.close()
            except (BufferError, ValueError):
                pass
