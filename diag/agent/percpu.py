"""Per-CPU BPF arrays read a range at a time (one bpf(BPF_MAP_LOOKUP_BATCH) call per range).

BCC's `getvalue` costs one syscall and a ctypes object per slot (~3.4 µs here); a watcher reads
the request histogram (192 slots), the family histograms (432) and the active rows of the
syscall histograms every second, so it asks the kernel for a whole range in one call and sums
the CPUs from one flat buffer. Arrays only: for an array map the batch cursor is the index.
"""
from __future__ import annotations

import ctypes as ct


def _lookup(table, start: int, n: int, value_words: int, ncpu: int | None = None):
    from bcc import libbcc

    ncpu = ncpu or table.total_cpu
    keys = (ct.c_uint32 * n)()
    vals = (ct.c_uint64 * (n * ncpu * value_words))()
    # the batch cursor is the key *before* the first one returned (NULL: from the start)
    in_b, out_b, count = ct.c_uint32(max(0, start - 1)), ct.c_uint32(0), ct.c_uint32(n)
    ret = libbcc.lib.bpf_lookup_batch(table.map_fd, ct.byref(in_b) if start else None, ct.byref(out_b),
                                      ct.cast(keys, ct.c_void_p),
                                      ct.cast(vals, ct.c_void_p), ct.cast(ct.byref(count), ct.c_void_p))
    got = count.value
    if ret != 0 and got == 0:
        # older kernels without batch ops: one lookup per slot
        raise OSError(f"bpf_lookup_batch failed on {table.name if hasattr(table, 'name') else 'map'}")
    return vals, min(got, n), ncpu


def u64_range(table, start: int, n: int) -> list[int]:
    """Slots [start, start+n) of a BPF_PERCPU_ARRAY of u64, summed over the CPUs."""
    try:
        vals, got, ncpu = _lookup(table, start, n, 1)
    except OSError:
        return [int(sum(table.getvalue(ct.c_int(i)))) for i in range(start, start + n)]
    flat = list(vals)
    if ncpu == 1:
        out = flat[:got]
    else:
        out = [sum(flat[i * ncpu:(i + 1) * ncpu]) for i in range(got)]
    return out + [0] * (n - got)


def struct_range(table, start: int, n: int, nfields: int) -> list[list[int]]:
    """Rows [start, start+n) of a BPF_PERCPU_ARRAY of structs of `nfields` u64, per CPU:
    [[cpu0 field0.., cpu1 field0..], ...] flattened per row as a list of per-CPU field lists."""
    try:
        vals, got, ncpu = _lookup(table, start, n, nfields)
    except OSError:
        rows = []
        for i in range(start, start + n):
            cells = table.getvalue(ct.c_int(i))
            rows.append([[int(getattr(c, f[0])) for f in c._fields_] for c in cells])
        return rows
    flat = list(vals)
    rows = []
    for i in range(got):
        base = i * ncpu * nfields
        rows.append([flat[base + c * nfields: base + (c + 1) * nfields] for c in range(ncpu)])
    return rows + [[[0] * nfields] for _ in range(n - got)]


def plain_u64_range(table, start: int, n: int) -> list[int]:
    """Slots [start, start+n) of a plain BPF_ARRAY of u64 (one value per slot, no CPUs)."""
    try:
        vals, got, _ = _lookup(table, start, n, 1, ncpu=1)
    except OSError:
        return [int(table[ct.c_int(i)].value) for i in range(start, start + n)]
    return list(vals)[:got] + [0] * (n - got)
