"""The eBPF probe loaded for real (root, BCC, syscall tracepoints) on targets making known calls."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from diag.capture.bundle import CaptureWriter
from diag.collect.base import Target, Unavailable
from diag.collect.ebpf import EbpfCollector
from diag.model import StackSample, SyscallAggregate, SyscallEvent
from diag.syscalls import FdKind
from diag.parse.base import ParseContext
from diag.parse.ebpf import EbpfParser
from diag.resources import package_root
from ebpf_helpers import EBPF_MARKS, PY, WORKDIR, start_agent, stop_agent
from other_user import run_as_nobody

pytestmark = [*EBPF_MARKS]



def start_target(code: str, *args: str) -> subprocess.Popen:
    """A target that waits for a line on stdin before doing its known calls."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(code: str, tmp_path: Path, *agent_args: str, target_args: tuple[str, ...] = ()):
    out = tmp_path / "ebpf.jsonl"
    target = start_target(code, *target_args)
    agent = start_agent(target.pid, out, *agent_args)
    stdout, stderr = target.communicate("go\n", timeout=120)
    assert target.returncode == 0, stderr
    # the agent stops by itself once the target has exited; SIGTERM is the collector's way
    lines, recs, _, agent_err = stop_agent(agent, out)
    return stdout, lines, recs, agent_err


def aggregates(recs) -> dict[tuple[str, FdKind], SyscallAggregate]:
    return {(a.name, a.fd_kind): a for a in recs if isinstance(a, SyscallAggregate)}


KNOWN_CALLS = """
import json, os, socket, sys, tempfile, time
sys.stdin.readline()
mono = lambda: time.clock_gettime_ns(time.CLOCK_MONOTONIC)
d = tempfile.mkdtemp(dir=sys.argv[1])
fd = os.open(os.path.join(d, "f"), os.O_WRONLY | os.O_CREAT, 0o600)
fsyncs = []
for i in range(20):
    os.write(fd, b"x" * 4096)
    t0 = mono(); os.fsync(fd); t1 = mono()
    fsyncs.append((t0, t1))
os.close(fd)
a, b = socket.socketpair()
a.sendall(b"y" * 5000)
for i in range(5):
    assert len(os.read(b.fileno(), 1000)) == 1000
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen(8)
clients = [socket.create_connection(lst.getsockname()) for _ in range(3)]
conns = [lst.accept()[0] for _ in range(3)]
clients[0].sendall(b"z" * 5000)
for i in range(5):
    assert len(conns[0].recv(1000, socket.MSG_WAITALL)) == 1000
for s in clients + conns + [lst, a, b]:
    s.close()
os.unlink(os.path.join(d, "f")); os.rmdir(d)
print(json.dumps({"fsyncs": fsyncs}))
"""


def test_known_calls_counts_bytes_kinds_and_durations(tmp_path):
    stdout, lines, recs, _ = run(KNOWN_CALLS, tmp_path, "--slow-ns", "0", target_args=(WORKDIR,))
    header = lines[0]
    assert header["format"] == "diag.ebpf/2" and header["slow_ns"] == 0
    assert {"fsync", "read", "accept4", "recvfrom"} <= set(header["syscalls"])
    assert lines[-1]["type"] == "end" and lines[-2]["type"] == "lost" and lines[-2]["count"] == 0
    print("compile_ms", header["compile_ms"], "attach_ms", header["attach_ms"])

    agg = aggregates(recs)
    assert agg[("fsync", FdKind.FILE)].count == 20
    assert agg[("write", FdKind.FILE)].bytes_total == 20 * 4096
    assert agg[("read", FdKind.SOCKET)].count == 5 and agg[("read", FdKind.SOCKET)].bytes_total == 5000
    assert agg[("recvfrom", FdKind.SOCKET)].bytes_total == 5000
    accepts = sum(a.count for (n, k), a in agg.items() if n in ("accept", "accept4"))
    assert accepts == 3 and agg[("accept4", FdKind.SOCKET)].count == 3
    assert agg[("connect", FdKind.SOCKET)].count == 3
    # histogram buckets add up to the count
    assert sum(n for _, n in agg[("fsync", FdKind.FILE)].log2_hist_ns) == 20

    # every call was emitted (slow-ns 0, nothing lost): the events match the aggregates
    events = [r for r in recs if isinstance(r, SyscallEvent)]
    assert len(events) == lines[-1]["events"] == sum(a.count for a in agg.values())
    reads = [e for e in events if e.name == "read" and e.fd_kind is FdKind.SOCKET]
    assert [e.nbytes for e in reads] == [1000] * 5

    # each fsync as eBPF saw it lies inside the target's own CLOCK_MONOTONIC measurement
    measured = json.loads(stdout)["fsyncs"]
    fsyncs = sorted((e for e in events if e.name == "fsync"), key=lambda e: e.start_ns)
    assert len(fsyncs) == 20
    for e, (t0, t1) in zip(fsyncs, measured):
        assert t0 <= e.start_ns and e.end_ns <= t1, (e, t0, t1)
        assert 0 < e.dur_ns <= t1 - t0
    ratios = [e.dur_ns / (t1 - t0) for e, (t0, t1) in zip(fsyncs, measured)]
    print("fsync eBPF/target duration ratio min %.3f median %.3f" % (min(ratios), sorted(ratios)[10]))


SLOW_FSYNC = """
import os, sys, tempfile
sys.stdin.readline()
d = tempfile.mkdtemp(dir=sys.argv[1])
p = os.path.join(d, "big")
fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
for i in range(3):
    os.write(fd, os.urandom(8 << 20))
    os.fsync(fd)
os.close(fd); os.unlink(p); os.rmdir(d)
"""
BLOCK_OR_FS = ("ext4_", "jbd2", "blk_", "file_write_and_wait", "filemap_", "folio_wait", "io_schedule",
               "submit_bio", "wait_on_page")


def test_slow_fsync_offcpu_stack_names_fs_or_block_functions(tmp_path):
    _, lines, recs, _ = run(SLOW_FSYNC, tmp_path, "--slow-ns", "1000000", target_args=(WORKDIR,))
    fsyncs = {e.start_ns: e for e in recs if isinstance(e, SyscallEvent) and e.name == "fsync"}
    assert fsyncs, "no fsync slower than 1 ms"
    samples = [r for r in recs if isinstance(r, StackSample)]
    assert samples and all(s.on_cpu is False and s.frames[0].module == "kernel" for s in samples)
    with_stack = [(fsyncs[s.ts_ns], s) for s in samples if s.ts_ns in fsyncs]
    assert with_stack, fsyncs
    call, stack = max(with_stack, key=lambda cs: cs[0].dur_ns)
    frames = [f.function for f in stack.frames]
    print("fsync %.1f ms, off-CPU %.1f ms:" % (call.dur_ns / 1e6, stack.dur_ns / 1e6), " -> ".join(frames))
    assert stack.dur_ns <= call.dur_ns
    assert any(f.startswith(BLOCK_OR_FS) for f in frames), frames
    assert "fsync" in " ".join(frames)          # __x64_sys_fsync / do_fsync
    assert frames[-1] in ("__schedule", "schedule")   # leaf: where it blocked


def test_load_aggregates_exact_and_losses_counted(tmp_path):
    n = 1_000_000
    out = tmp_path / "ebpf.jsonl"
    # sh waits for the go line, then becomes dd: the same pid, 2n traced calls at C speed
    target = subprocess.Popen(["sh", "-c", f"read x; exec dd if=/dev/zero of=/dev/null bs=1 count={n}"],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    agent = start_agent(target.pid, out, "--slow-ns", "0", "--ringbuf-pages", "1")
    # the agent is stopped for the whole burst: nothing drains its one-page ring buffer, which
    # holds far fewer than 2n records, so records are surely lost (in-kernel aggregates are not)
    agent.send_signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        _, dd_err = target.communicate("go\n", timeout=600)
        elapsed = time.monotonic() - t0
    finally:
        agent.send_signal(signal.SIGCONT)
    assert target.returncode == 0, dd_err
    agent.send_signal(signal.SIGTERM)
    _, err = agent.communicate(timeout=120)
    assert agent.returncode == 0, err.decode()
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    with open(out) as f:
        recs = list(EbpfParser().parse(f, ParseContext(path=str(out))))
    agg = aggregates(recs)
    lost, end = lines[-2], lines[-1]
    # throughput is the benchmark's business (bench/): printed only
    print(f"{2 * n} calls in {elapsed:.2f}s = {2 * n / elapsed:,.0f}/s; delivered {end['events']}, "
          f"lost {lost['count']}")
    assert agg[("read", FdKind.OTHER)].count == n            # /dev/zero: exact despite losses
    assert agg[("write", FdKind.OTHER)].count == n           # /dev/null
    assert agg[("read", FdKind.OTHER)].bytes_total == n
    assert lost["type"] == "lost" and lost["count"] > 0 and lost["agg_errors"] == 0
    assert end["events"] + lost["count"] == end["calls"] == sum(a.count for a in agg.values())


def test_dump_probe_shows_cflags():
    r = subprocess.run([PY, "-m", "diag.agent", "--pid", "123", "--slow-ns", "5", "--dump-probe"],
                       env=dict(os.environ, PYTHONPATH=str(package_root())), capture_output=True, text=True, check=True)
    assert "#define TARGET_TGID 123" in r.stdout and "#define SLOW_NS 5ULL" in r.stdout
    assert "int diag_sys_exit(" in r.stdout


# --- the collector ------------------------------------------------------------------------------

def test_collector_check_reasons(monkeypatch):
    c = EbpfCollector()
    assert c.check(Target(pid=os.getpid())) is None
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    reason = c.check(Target(pid=os.getpid()))
    assert reason and "root" in reason and "sudo" in reason


def test_collector_check_as_nobody():
    # nobody runs a staged copy of diag: the checkout may be unreadable to it (a 0700 directory)
    code = ("from diag.collect.ebpf import EbpfCollector; from diag.collect.base import Target; "
            "print(EbpfCollector().check(Target(pid=1)))")
    r = run_as_nobody(["-c", code])
    assert r.returncode == 0, r.stderr
    assert "eBPF needs root" in r.stdout


def test_collector_bad_probe_is_unavailable(tmp_path):
    bad = tmp_path / "bad.c"
    bad.write_text("int diag_sys_exit(void *ctx) { return this_is_not_c; }\n")
    writer = CaptureWriter(tmp_path / "cap.diag", target={"pid": os.getpid()}, mode="attach")
    c = EbpfCollector(probe=str(bad))
    with pytest.raises(Unavailable) as e:
        c.start(Target(pid=os.getpid()), writer)
    print(e.value)
    assert "this_is_not_c" in str(e.value) or "compile" in str(e.value).lower()
    assert writer.manifest["collectors"]["ebpf"]["status"] == "failed"
    c.stop()   # safe after a failed start


def test_collector_lifecycle(tmp_path):
    target = start_target(SLOW_FSYNC, WORKDIR)
    writer = CaptureWriter(tmp_path / "cap.diag", target={"pid": target.pid}, mode="attach")
    c = EbpfCollector(slow_ns=1_000_000)
    t0 = time.monotonic()
    c.start(Target(pid=target.pid), writer)
    print("collector start (compile+load+attach) %.2fs" % (time.monotonic() - t0))
    entry = writer.manifest["collectors"]["ebpf"]
    assert entry["status"] == "ok" and entry["format"] == "ebpf-jsonl" and entry["stream"] == "streams/ebpf.jsonl"
    assert entry["settings"]["slow_ns"] == 1_000_000 and entry["settings"]["requests"] is True
    assert c.stats().running
    target.communicate("go\n", timeout=120)
    time.sleep(1.2)                       # one progress tick
    c.stop()
    c.stop()                              # idempotent
    st = c.stats()
    entry = writer.manifest["collectors"]["ebpf"]
    assert entry["status"] == "ok" and entry["lost"] == 0 and entry["events"] == st.events >= 1
    assert not st.running and c.proc.returncode == 0
    with open(writer.stream_path("ebpf.jsonl")) as f:
        recs = list(EbpfParser().parse(f, ParseContext(path="ebpf.jsonl")))
    assert aggregates(recs)[("fsync", FdKind.FILE)].count == 3
