"""PerfScriptParser: `perf script` text -> StackSample / SyscallEvent.

Inline samples are copied from real perf 6.1 output (then edited where a case needs it); the files
under tests/data/perf were recorded with tests/data/perf/capture.sh.
"""
from __future__ import annotations

import io
import json
import os

import pytest

from diag.errors import EXIT_BAD_INPUT, ParseError
from diag.model import Frame, StackSample, SyscallEvent
from diag.parse import detect, parse_file
from diag.parse.base import ParseContext
from diag.parse.perf import PerfScriptParser
from diag.syscall_numbers import X86_64

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "perf")
PYSPY_DATA = os.path.join(os.path.dirname(__file__), "..", "data", "pyspy")


def parse(text: str, **kw) -> tuple[list, ParseContext]:
    ctx = ParseContext(path=kw.pop("path", "perf.txt"), **kw)
    return list(PerfScriptParser().parse(io.StringIO(text), ctx)), ctx


def samples(recs) -> list[StackSample]:
    return [r for r in recs if isinstance(r, StackSample)]


def syscalls(recs) -> list[SyscallEvent]:
    return [r for r in recs if isinstance(r, SyscallEvent)]


def data(name: str) -> str:
    return os.path.join(DATA, name)


def parse_data(name: str, **kw):
    path = data(name)
    ctx = ParseContext(path=path, **kw)
    with open(path, newline="") as f:
        return list(PerfScriptParser().parse(f, ctx)), ctx


# ---- header lines ----------------------------------------------------------------------------------

CHAIN = ("\tffffffff81234567 ext4_sync_file+0x1f ([kernel.kallsyms])\n"
         "\t    7f1200001234 PyEval_EvalFrameDefault+0x4780 (/usr/lib/libpython3.11.so.1.0)\n"
         "\t               0 [unknown] ([unknown])\n\n")


@pytest.mark.parametrize("header, comm, pid, tid, ts", [
    ("python3 12345/12346 [001] 12345.678901234:     250000 cpu-clock:ppp: \n",
     "python3", 12345, 12346, 12345_678901234),
    ("swapper     0 [000]  1234.5678:    5025125 cpu-clock: \n", "swapper", None, 0, 1234_567800000),
    # comm with spaces and digits, and a pid-looking token inside it
    ("Web Content 2 77/78 [003]    55.000001:          1 cpu-clock: \n", "Web Content 2", 77, 78, 55_000001000),
    ("worker 5  4011   177.438809:    1001001 cpu-clock: \n", "worker 5", None, 4011, 177_438809000),
    ("kworker/0:1H-kb     12 [000]     3.000000001: 1 cpu-clock: \n", "kworker/0:1H-kb", None, 12, 3_000000001),
    # -F without comm
    (" 4214   185.816806317: cpu-clock: \n", None, None, 4214, 185_816806317),
    # -a with pid/tid, perf's right-aligned comm (no call chain -> %16s)
    ("         python3  4171/4214  [001]   185.918146:    2004008 cpu-clock: \n", "python3", 4171, 4214,
     185_918146000),
])
def test_header_variants(header, comm, pid, tid, ts):
    recs, ctx = parse(header + CHAIN)
    (s,) = samples(recs)
    assert (s.thread_name, s.pid, s.tid, s.ts_ns) == (comm, pid, tid, ts)
    assert s.on_cpu is True and s.source == "perf"
    assert ctx.warnings == []


def test_call_chain_is_root_first_and_symbols_are_clean():
    recs, _ = parse("python3 1/2 10.000000001: 1 cpu-clock: \n" + CHAIN)
    (s,) = samples(recs)
    assert s.frames == (
        Frame(function="[unknown]"),
        Frame(function="PyEval_EvalFrameDefault", module="/usr/lib/libpython3.11.so.1.0"),
        Frame(function="ext4_sync_file", module="[kernel.kallsyms]"),
    )


def test_frames_without_sym_or_dso_fields_and_cpp_symbols():
    text = ("bash  4011   177.438809654: \n"               # -F comm,tid,time,ip: bare addresses
            "\t           148f2\n"
            "\t               0\n\n"
            "app 9/9 1.5: 1 cpu-clock: \n"
            "\t  55d0 std::vector<int, std::allocator<int> >::push_back(int const&)+0x12 (/usr/bin/app)\n"
            "\t  55e0 main (/usr/bin/app)\n\n")
    recs, _ = parse(text)
    a, b = samples(recs)
    assert [f.function for f in a.frames] == ["0x0", "0x148f2"]
    assert a.on_cpu is None                             # no event field: the sampler is unknown
    assert b.frames[-1] == Frame(function="std::vector<int, std::allocator<int> >::push_back(int const&)",
                                 module="/usr/bin/app")


def test_python_perf_trampoline_frames():
    text = ("python3 5/5 2.0: 1 cpu-clock: \n"
            "\t    7f00 py::busy_loop:/srv/app/busy.py+0x7 (/tmp/perf-5.map)\n"
            "\t    7f10 py::<module>:/srv/app/busy.py (/tmp/perf-5.map)\n\n")
    (s,) = samples(parse(text)[0])
    assert s.frames == (Frame(function="<module>", file="/srv/app/busy.py", module="/tmp/perf-5.map"),
                        Frame(function="busy_loop", file="/srv/app/busy.py", module="/tmp/perf-5.map"))


def test_sample_without_call_chain_uses_the_header_symbol():
    text = ("         python3  4171/4214    185.918146:    2004008 cpu-clock:      7f9112debb3a __vdso_clock_gettime ([vdso])\n"
            "         python3  4171/4213    185.920151:    2004008 cpu-clock:      7f9112976c70 PyFloat_FromDouble+0x10 (/lib/libpython3.11.so.1.0)\n"
            "         python3  4171/4213    185.921486:    2004008 cpu-clock:  ffffffff815e12eb unmap_page_range+0xfb ([kernel.kallsyms])\n")
    a, b, c = samples(parse(text)[0])
    assert a.frames == (Frame(function="__vdso_clock_gettime", module="[vdso]"),)
    assert b.frames == (Frame(function="PyFloat_FromDouble", module="/lib/libpython3.11.so.1.0"),)
    assert c.frames[0].module == "[kernel.kallsyms]"
    assert [s.tid for s in (a, b, c)] == [4214, 4213, 4213]


def test_cpu_sample_without_any_frame_is_still_an_on_cpu_sample():
    (s,) = samples(parse("python3  4171/4214    185.918146: cpu-clock: \n")[0])
    assert s.frames == () and s.on_cpu is True


def test_other_events_are_on_cpu_none_and_need_frames():
    text = ("python3 1/1 [000] 5.0: sched:sched_switch: prev_comm=python3 prev_pid=1 prev_prio=120 "
            "prev_state=S ==> next_comm=swapper/0 next_pid=0 next_prio=120\n"
            "python3 1/1 [000] 6.0: sched:sched_switch: prev_comm=python3 prev_pid=1 prev_state=S ==> "
            "next_comm=x next_pid=0 next_prio=120\n"
            "\tffffffff821eb2c1 __schedule+0x2c1 ([kernel.kallsyms])\n"
            "\tffffffff821ebb11 schedule+0x21 ([kernel.kallsyms])\n\n"
            "python3 1/1 [000] 7.0: 1 cycles:P: \n"
            "\t  1000 f (/bin/x)\n\n"
            "python3 1/1 [000] 8.0: 1 cpu/cycles/u: \n"
            "\t  1000 f (/bin/x)\n\n")
    a, b, c = samples(parse(text)[0])
    assert (a.ts_ns, a.on_cpu, a.frames[-1].function) == (6_000000000, None, "__schedule")
    assert (b.on_cpu, c.on_cpu) == (True, True)


def test_offset_is_added_and_times_are_exact():
    recs, _ = parse("p 1/1 1.000001: 1 cpu-clock: \np 1/1 99999.999999999: 1 cpu-clock: \n", offset_ns=-7)
    assert [s.ts_ns for s in samples(recs)] == [1_000001000 - 7, 99999_999999999 - 7]


def test_srcline_comment_and_side_band_lines_are_skipped():
    text = ("# ========\n# clockid: monotonic (1)\n# ========\n#\n"
            "       perf-exec     0     0.000000000: PERF_RECORD_COMM: perf-exec:4171/4171\n"
            "bash 10071   621.918432856:    1001001 cpu-clock: \n"
            "\t           1462a handle_amd+0xa (/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2)\n"
            "  dl-get-cpu-features.c:321\n"
            "\t               0 [unknown] ([unknown])\n\n"
            "         python3  4171   185.379282890: PERF_RECORD_COMM exec: python3:4171/4171\n")
    recs, ctx = parse(text)
    (s,) = samples(recs)
    assert [f.function for f in s.frames] == ["[unknown]", "handle_amd"]
    assert ctx.warnings == []


def test_non_monotonic_clock_header_warns():
    recs, ctx = parse("# clockid: realtime (0)\np 1/1 1.0: 1 cpu-clock: \n")
    assert len(samples(recs)) == 1
    assert any("CLOCK_MONOTONIC" in w for w in ctx.warnings)


# ---- syscall tracepoints ----------------------------------------------------------------------------

def test_syscalls_tracepoints_pair_into_events():
    text = ("python3 4391/4391 [000] 219.865138815: syscalls:sys_enter_fsync: fd: 0x00000003\n"
            "python3 4391/4391 [001] 219.865568311:  syscalls:sys_exit_fsync: 0x0\n"
            "python3 4567/4568 [000] 230.653828408: syscalls:sys_enter_read: fd: 0x000003e7, buf: 0x7f, count: 0x0000000a\n"
            "python3 4567/4568 [000] 230.653829139:  syscalls:sys_exit_read: 0xfffffffffffffff7\n"
            "python3 4567/4568 [000] 230.653864802: syscalls:sys_enter_read: fd: 0x00000003, buf: 0x7f, count: 0x0000000a\n"
            "python3 4567/4568 [000] 230.653866785:  syscalls:sys_exit_read: 0x3\n")
    recs, ctx = parse(text, offset_ns=1000)
    assert samples(recs) == []                      # no call chains: no stack samples
    fsync, ebadf, ok = syscalls(recs)
    assert fsync == SyscallEvent(pid=4391, tid=4391, name="fsync", start_ns=219_865138815 + 1000,
                                 dur_ns=429_496, ret=0, fd=3, source="perf")
    assert (ebadf.name, ebadf.fd, ebadf.ret, ebadf.errno, ebadf.nbytes, ebadf.pid, ebadf.tid) == \
        ("read", 999, -1, "EBADF", None, 4567, 4568)
    assert (ok.ret, ok.nbytes, ok.errno, ok.dur_ns) == (3, 3, None, 1983)
    assert ctx.warnings == []


def test_raw_syscalls_use_the_x86_64_table():
    assert X86_64[74] == "fsync" and X86_64[232] == "epoll_wait"
    text = ("python3  4483 [000]   222.453786180: raw_syscalls:sys_enter: NR 74 (3, 0, 0, 7f1faf434b98, 0, 0)\n"
            "python3  4483 [001]   222.454342065:  raw_syscalls:sys_exit: NR 74 = 0\n"
            "python3  4483 [001]   222.454350528: raw_syscalls:sys_enter: NR 0 (3, 7f1faf29c7a0, 64, 0, 0, 0)\n"
            "python3  4483 [001]   222.454350999: raw_syscalls:sys_exit: NR 0 = -11 ffffffff81415e9c syscall_exit_work ([kernel.kallsyms])\n"
            "python3  4483 [001]   222.454351000: raw_syscalls:sys_enter: NR 15 (0, 7ffedab70d90, ffffffffffffff80, 0, 0, 11)\n"
            "python3  4483 [001]   222.454352000: raw_syscalls:sys_exit: NR -1 = 0\n"
            "python3  4483 [001]   222.454353000: raw_syscalls:sys_enter: NR 202 (7f00, 80, 0, 0, 0, 0)\n"
            "python3  4483 [001]   222.454363000: raw_syscalls:sys_exit: NR 202 = 0\n"
            "python3  4483 [001]   222.454370000: raw_syscalls:sys_enter: NR 999 (1, 2)\n"
            "python3  4483 [001]   222.454371000: raw_syscalls:sys_exit: NR 999 = -38\n")
    recs, ctx = parse(text, pid=4483)
    evs = syscalls(recs)
    assert [(e.name, e.ret, e.errno, e.fd) for e in evs] == [
        ("fsync", 0, None, 3), ("read", -1, "EAGAIN", 3), ("rt_sigreturn", 0, None, None),
        ("futex", 0, None, None), ("syscall_999", -1, "ENOSYS", None)]
    assert evs[0].dur_ns == 555_885 and evs[0].pid == 4483
    assert any("syscall_N" in w for w in ctx.warnings)


def test_both_tracepoint_kinds_report_each_call_once():
    recs, ctx = parse_data("raw_and_syscalls_read.txt")
    reads = [e for e in syscalls(recs) if e.name == "read"]
    assert [(e.fd, e.ret, e.errno, e.nbytes) for e in reads] == [
        (999, -1, "EBADF", None), (3, -1, "EAGAIN", None), (3, 3, None, 3)]
    names = [e.name for e in syscalls(recs)]
    assert names.count("fsync") == 1 and "pipe2" in names and "ioctl" in names
    # the file ends inside munmap: reported as unfinished
    assert [e.name for e in syscalls(recs) if e.dur_ns is None] == ["munmap"]
    assert len({(e.tid, e.start_ns) for e in syscalls(recs)}) == len(syscalls(recs))


def test_unpaired_enter_and_exit():
    text = ("p 7/8 1.0: syscalls:sys_exit_read: 0x5\n"            # enter before the recording started
            "p 7/8 2.0: syscalls:sys_enter_fsync: fd: 0x00000004\n"
            "p 7/8 3.0: syscalls:sys_enter_fsync: fd: 0x00000005\n"  # exit of the first was lost
            "p 7/8 4.0: syscalls:sys_exit_fsync: 0x0\n"
            "p 7/9 5.0: syscalls:sys_enter_exit_group: error_code: 0x00000000\n")
    recs, ctx = parse(text)
    evs = syscalls(recs)
    assert [(e.name, e.fd, e.start_ns, e.dur_ns) for e in evs] == [
        ("fsync", 4, 2_000000000, None), ("fsync", 5, 3_000000000, 1_000000000),
        ("exit_group", None, 5_000000000, None)]
    assert any("1 sys_exit" in w for w in ctx.warnings)


def test_tracepoint_call_chains_become_on_cpu_none_samples():
    recs, ctx = parse_data("fsync_tracepoints_callchain.txt")
    evs = syscalls(recs)
    assert len(evs) == 10 and {(e.name, e.fd, e.ret) for e in evs} == {("fsync", 3, 0)}
    assert all(e.dur_ns > 0 for e in evs)
    stacks = samples(recs)
    assert len(stacks) == 20 and {s.on_cpu for s in stacks} == {None}
    assert {s.frames[-1].function for s in stacks} == {"fsync"}
    assert all(s.pid == e.pid for s in stacks for e in evs)


def test_tracepoint_single_ip_is_not_a_stack():
    text = ("python3  4391/4391  [000]   219.865138815: syscalls:sys_enter_fsync: fd: 0x00000003     7f2525d1cc20 fsync (/usr/lib/x86_64-linux-gnu/libc.so.6)\n"
            "python3  4391/4391  [001]   219.865568311:  syscalls:sys_exit_fsync: 0x0     7f2525d1cc20 fsync (/usr/lib/x86_64-linux-gnu/libc.so.6)\n")
    recs, _ = parse(text)
    assert samples(recs) == [] and len(syscalls(recs)) == 1


def test_unreadable_tracepoint_payload_is_a_bad_line():
    text = "p 1/1 1.0: raw_syscalls:sys_enter: garbage\n" + "p 1/1 2.0: 1 cpu-clock: \n" * 3
    recs, ctx = parse(text)
    assert len(samples(recs)) == 3
    assert any("perf.txt:1:" in w and "raw_syscalls:sys_enter" in w for w in ctx.warnings)


# ---- recorded files -----------------------------------------------------------------------------------

def test_recorded_callchain_ns():
    recs, ctx = parse_data("cpu_callchain_ns.txt")
    ss = samples(recs)
    assert len(ss) == 24 and ctx.warnings == []
    assert len({s.pid for s in ss}) == 1 and len({s.tid for s in ss}) == 3     # main + 2 workers
    assert all(s.on_cpu and s.thread_name == "python3" and s.frames for s in ss)
    assert [s.ts_ns for s in ss] == sorted(s.ts_ns for s in ss)
    assert any(f.function == "_PyEval_EvalFrameDefault" for s in ss for f in s.frames)
    # leaf last: the first sample's leaf is the first call-chain line of the file
    with open(data("cpu_callchain_ns.txt")) as f:
        first_leaf = f.read().split("\n")[1].split()[1].split("+")[0]
    assert ss[0].frames[-1].function == first_leaf


def test_recorded_default_output_in_microseconds():
    recs, ctx = parse_data("cpu_callchain_default_us.txt")
    ss = samples(recs)
    assert len(ss) == 6 and ctx.warnings == []
    assert all(s.pid is None for s in ss)               # default fields: tid only
    assert all(s.ts_ns % 1000 == 0 for s in ss)         # perf printed µs


def test_recorded_header_and_srcline_files():
    for name in ("cpu_callchain_header.txt", "cpu_callchain_srcline.txt"):
        recs, ctx = parse_data(name)
        assert len(samples(recs)) == 3 and ctx.warnings == [], name


def test_recorded_flat_fields_and_all_cpus():
    recs, _ = parse_data("cpu_flat_fields.txt")
    ss = samples(recs)
    assert len(ss) == 40 and all(len(s.frames) == 1 and s.on_cpu for s in ss)
    recs, _ = parse_data("cpu_all_cpus.txt")
    ss = samples(recs)
    idle = [s for s in ss if s.thread_name == "swapper"]
    assert len(ss) == 4 and len(idle) == 2
    assert all(s.tid == 0 and s.pid == 0 and s.frames[-1].function == "pv_native_safe_halt" for s in idle)
    assert all(s.tid > 0 and s.pid > 0 for s in ss if s not in idle)


def test_recorded_load_field_list():
    # perf script -F comm,pid,tid,cpu,time,event,ip,sym,dso,trace: no period, a [cpu]
    recs, ctx = parse_data("cpu_load_fields.txt")
    ss = samples(recs)
    assert len(ss) == 10 and ctx.warnings == []
    assert all(s.on_cpu and s.pid is not None and s.frames for s in ss)


def test_recorded_default_tracepoints_no_pid():
    recs, _ = parse_data("fsync_tracepoints.txt", pid=4242)
    evs = syscalls(recs)
    assert len(evs) == 10 and {e.pid for e in evs} == {4242}      # ctx.pid when perf printed no pid


def test_parse_file_detects_all_recorded_files():
    for name in sorted(os.listdir(DATA)):
        if name.endswith(".txt"):
            ps = parse_file(data(name))
            assert ps.info.format == "perf-script" and ps.info.records > 0, name


# ---- malformed, truncated, empty ---------------------------------------------------------------------

def test_malformed_file_is_a_parse_error_naming_file_and_line():
    text = "p 1/1 1.0: 1 cpu-clock: \n" + "".join(f"garbage line {i}\n" for i in range(30))
    with pytest.raises(ParseError) as ei:
        parse(text, path="bad.txt")
    assert ei.value.exit_code == EXIT_BAD_INPUT == 2
    assert str(ei.value).startswith("bad.txt:2:")


def test_output_without_time_field_says_so():
    text = "         python3  4214 cpu-clock:      7f9112debb46 __vdso_clock_gettime ([vdso])\n" * 3
    with pytest.raises(ParseError) as ei:
        parse(text, path="notime.txt")
    assert "notime.txt:1:" in str(ei.value) and "time field" in str(ei.value)


def test_a_few_bad_lines_are_a_warning():
    text = "Warning:\np 1/1 1.0: 1 cpu-clock: \n\tdeadbeef f (x)\n\n\tdeadbeef stray (x)\np 1/1 2.0: 1 cpu-clock: \n"
    recs, ctx = parse(text)
    assert len(samples(recs)) == 2
    assert len(ctx.warnings) == 1 and "perf.txt:1:" in ctx.warnings[0] and "2 unparseable" in ctx.warnings[0]


def test_truncated_last_line_is_a_warning_and_drops_that_sample():
    full = "p 1/1 1.0: 1 cpu-clock: \n\t  10 a (x)\n\t  20 main (x)\n\np 1/1 2.0: 1 cpu-clock: \n\t  10 a (x)\n\t  20 ma"
    recs, ctx = parse(full)
    assert [s.ts_ns for s in samples(recs)] == [1_000000000]
    assert any("perf.txt:7: file is truncated" in w for w in ctx.warnings)
    # cut inside a header line
    recs, ctx = parse("p 1/1 1.0: 1 cpu-clock: \np 1/1 2.0: 1 cpu-cl")
    assert len(samples(recs)) == 1 and any("truncated" in w for w in ctx.warnings)


def test_file_ending_inside_a_call_chain_drops_that_sample():
    recs, ctx = parse("p 1/1 1.0: 1 cpu-clock: \n\t  10 a (x)\n\np 1/1 2.0: 1 cpu-clock: \n\t  10 a (x)\n")
    assert len(samples(recs)) == 1 and any("inside a call chain" in w for w in ctx.warnings)


def test_empty_input():
    recs, ctx = parse("")
    assert recs == [] and ctx.warnings == []
    recs, ctx = parse("# ========\n# captured on : x\n")
    assert recs == []


def test_empty_file_through_parse_file(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("")
    with pytest.raises(ParseError, match="empty"):
        parse_file(str(p), fmt="perf-script")


# ---- sniffing ---------------------------------------------------------------------------------------

STRACE = ('1234  1700000000.123456 read(3, "", 4096) = 0 <0.000010>\n'
          '1234  1700000000.123500 write(1, "hi\\n", 3) = 3 <0.000004>\n'
          '[pid  1235] 12:34:56.789012 futex(0x7f, FUTEX_WAIT, 0, NULL <unfinished ...>\n'
          "1234  12:34:56.789012 close(3)                = 0\n")


def test_sniff_accepts_every_recorded_file():
    for name in sorted(os.listdir(DATA)):
        if name.endswith(".txt"):
            with open(data(name)) as f:
                head = f.read(64 * 1024)
            assert PerfScriptParser().sniff(head, name), name
            assert detect(data(name)).format == "perf-script", name


def test_sniff_tolerates_leading_warnings_and_a_cut_head():
    head = "Warning:\nProcessed 100 events and lost 1 chunks!\n\np 1/1 1.0: 1 cpu-clock: \n\tab f (x)\n\np 1/1 2.0: 1 cpu"
    assert PerfScriptParser().sniff(head, "x")


@pytest.mark.parametrize("head", [
    STRACE,
    '1234  read(3, "", 4096) = 0\n',
    "[]\n",
    '{"$schema": "https://www.speedscope.app/file-format-schema.json", "profiles": []}\n',
    '[{"args": {"filename": "x.py", "line": 1}, "cat": "py-spy", "name": "f", "ph": "B", "pid": 1, "tid": 2, "ts": 3}]\n',
    "thread (4806): busy-worker;Thread._bootstrap (threading.py:1002);busy_function (prog.py:6) 14\n",
    "hello world\nthis is 12.5: not perf\n",
    "",
])
def test_sniff_rejects_other_formats(head):
    assert not PerfScriptParser().sniff(head, "x.txt")


def test_sniff_rejects_pyspy_files():
    for name in os.listdir(PYSPY_DATA):
        with open(os.path.join(PYSPY_DATA, name)) as f:
            assert not PerfScriptParser().sniff(f.read(64 * 1024), name), name


def test_sniff_rejects_json_lines():
    head = "\n".join(json.dumps({"ts": 1.5, "pid": 3, "comm": "x"}) for _ in range(3)) + "\n"
    assert not PerfScriptParser().sniff(head, "x.jsonl")
