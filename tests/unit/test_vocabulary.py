"""One vocabulary: what diag's Python and the eBPF probe both name agrees, by reading the probe's
own header (probes/diag_events.h) — nothing there is copied by hand."""
from __future__ import annotations

import struct

from diag.agent import header
from diag.agent.syscall_table import fd_tracking, traced
from diag.capture import ebpf_stream
from diag.parse.ebpf import FLAG_DEFAULTS
from diag.syscalls import BREAKDOWN_KEYS, FAMILY_OF, PROBE_FAMILY_KEYS, FdKind

H = header.load()


def test_fd_kinds_are_the_headers_in_order():
    kinds = [FdKind.UNKNOWN, FdKind.SOCKET, FdKind.FILE, FdKind.PIPE, FdKind.OTHER]
    for k in kinds:
        assert H.defines[f"DIAG_KIND_{k.name}"] == kinds.index(k)
    assert H.DIAG_NKIND == len(kinds)


def test_request_families_are_the_headers_in_order():
    fams = {name: i for name, i in H.prefixed("FAM_").items() if name not in ("N", "IO")}
    assert sorted(fams.values()) == list(range(H.FAM_N))
    for name, i in fams.items():
        assert list(PROBE_FAMILY_KEYS)[i] == name.lower()
    assert set(PROBE_FAMILY_KEYS.values()) <= set(BREAKDOWN_KEYS)


def test_the_parsers_flag_defaults_are_the_headers():
    for name, value in FLAG_DEFAULTS.items():
        assert H.defines[name] == value, name
    assert all(n.startswith(ebpf_stream.RECORD_CONSTANT_PREFIXES) for n in FLAG_DEFAULTS)


def test_record_layouts_match_their_c_size():
    for name, lay in H.structs.items():
        assert struct.calcsize(lay.fmt) == lay.size, name
        assert header.Layout.from_json(lay.to_json()) == lay
    # the records the stream names exist in the header
    assert {s for _, s in ebpf_stream.RECORDS.values()} <= set(H.structs)


def test_every_traced_syscall_has_a_family_and_fits_the_aggregates():
    t = traced(H)
    assert sum(1 for v in t.values() if v.flags & H.SF_LAT) <= H.DIAG_NIDX
    for name in t:
        assert name in FAMILY_OF, f"{name} is traced by the probe but has no family"
    assert not set(t) & set(fd_tracking(H))


def test_the_header_reader_reads_what_it_is_given():
    text = """
    #define A 3
    #define B_MASK 0xff
    struct rec { u64 t; u32 n[A]; u8 name[16]; s32 x; };
    """
    h = header.parse_header(text)
    assert h.A == 3 and h.B_MASK == 255
    lay = h.structs["rec"]
    assert lay.names()[:2] == ["t", "n.0"] and lay.size == struct.calcsize(lay.fmt) == 8 + 12 + 16 + 4
