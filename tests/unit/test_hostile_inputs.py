"""Regression tests for what the fuzz campaign (tests/fuzz, `make fuzz`) found, one input each,
cut down to the smallest that failed: every one ended in a traceback, exit 70, a hang or a
memory blow-up before its fix; each must now give a report or a one-line refusal (exit 2)."""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from diag.errors import DiagError
from diag.load import load_inputs

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "tests" / "data" / "capture" / "journal.diag"
# the same server captured by an earlier diag, whose eBPF stream was all JSON lines (still replayed)
REAL_V1 = ROOT / "tests" / "data" / "capture" / "journal-v1.diag"
PERF = ROOT / "tests" / "data" / "perf" / "cpu_flat_fields.txt"


def replay(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diag", "replay", "--quiet", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def refused(e: pytest.ExceptionInfo) -> str:
    assert e.value.exit_code == 2 and "\n" not in str(e.value)
    return str(e.value)


@pytest.fixture
def capture(tmp_path) -> Path:
    """A copy of the real capture of tests/data, to damage."""
    dest = tmp_path / "journal.diag"
    shutil.copytree(REAL, dest)
    return dest


def damage_manifest(capture: Path, change) -> None:
    m = json.loads((capture / "manifest.json").read_text())
    change(m)
    (capture / "manifest.json").write_text(json.dumps(m))


# ---------------------------------------------------------------- the manifest

@pytest.mark.parametrize("change, field", [
    (lambda m: m["collectors"].update({"py-spy": [1, 2]}), "collectors.py-spy"),          # AttributeError
    (lambda m: m["clock"].update(start="yesterday"), "clock.start"),                        # TypeError
    (lambda m: m["clock"]["start"].pop("realtime_ns"), "clock.start.realtime_ns"),          # KeyError
    (lambda m: m["collectors"]["py-spy"]["tid_map"].update({"1": None}), "tid_map.1"),      # TypeError
    (lambda m: m["collectors"]["perf"].update(observer={"cores": "x"}), "observer.cores"),  # TypeError
    (lambda m: m["collectors"]["perf"].update(counters="none"), "collectors.perf.counters"),  # AttributeError
    (lambda m: m["collectors"]["py-spy"].update(status=None), "collectors.py-spy.status"),  # AttributeError
    (lambda m: m["target"].update(cmdline="python3 x.py"), "target.cmdline"),
    (lambda m: m["clock"]["start"].update(realtime_ns=10**30), "clock.start.realtime_ns"),  # OverflowError
    (lambda m: m.update(host=["vm"]), "host"),
])
def test_manifest_field_of_the_wrong_type_is_named(capture, change, field):
    damage_manifest(capture, change)
    with pytest.raises(DiagError) as e:
        load_inputs([str(capture)])
    assert field in refused(e) and "manifest field" in str(e.value)


def test_manifest_gap_null_is_read_as_zero(capture):
    damage_manifest(capture, lambda m: m["clock"]["end"].update(gap_ns=None))    # was TypeError in ClockPair
    assert load_inputs([str(capture)]).syscalls


@pytest.mark.parametrize("raw, what", [
    ('{"schema": "diag.capture/1"}'.encode("utf-16"), "not UTF-8"),                      # UnicodeDecodeError
    (b'{"schema": "diag.capture/1", "n": ' + b"9" * 5000 + b"}", "not valid JSON"),      # ValueError (digits)
    (b"[" * 100_000, "not valid JSON"),                                                  # RecursionError
    (b'{"schema": "diag.capture/1", "pad": "' + b"x" * (17 << 20) + b'"}', "a manifest is a few KB"),
])
def test_manifest_that_is_not_json_text_is_refused(capture, raw, what):
    (capture / "manifest.json").write_bytes(raw)
    with pytest.raises(DiagError) as e:
        load_inputs([str(capture)])
    assert what in refused(e)


def test_manifest_linked_outside_the_capture_is_not_read(capture, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text('{"schema": "diag.capture/1", "secret": "hunter2"}')
    (capture / "manifest.json").unlink()
    (capture / "manifest.json").symlink_to(secret)
    with pytest.raises(DiagError) as e:
        load_inputs([str(capture)])
    assert "outside the capture" in refused(e) and "hunter2" not in str(e.value)


# ---------------------------------------------------------------- streams of a capture directory

def test_stream_linked_outside_the_capture_is_skipped_unread(capture, tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$hunter2:19000:0:99999:7:::\n")
    (capture / "streams" / "strace.txt").unlink()
    (capture / "streams" / "strace.txt").symlink_to(secret)
    data = load_inputs([str(capture)])
    assert any("strace.txt" in w and "outside the capture" in w for w in data.warnings)
    assert not any("hunter2" in w for w in data.warnings) and data.requests


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_stream_that_is_not_a_regular_file_is_skipped(capture, kind):
    p = capture / "streams" / "process.jsonl"
    p.unlink()
    if kind == "fifo":
        os.mkfifo(p)                          # reading it waited forever for a writer
    elif kind == "dev-zero":
        p.symlink_to("/dev/zero")             # an endless stream
    else:
        p.mkdir()
    data = load_inputs([str(capture)])
    assert any("process.jsonl" in w and "skipped" in w for w in data.warnings)


def test_stream_of_zeros_is_refused_as_binary(capture):
    (capture / "streams" / "strace.txt").write_bytes(bytes(1 << 20))   # one 1 MB "line"
    with pytest.raises(DiagError) as e:
        load_inputs([str(capture)])
    assert "binary data" in refused(e)


def test_stream_over_the_size_limit_is_refused_with_the_override(capture, monkeypatch):
    monkeypatch.setenv("DIAG_MAX_STREAM_SIZE", "64K")
    with pytest.raises(DiagError) as e:
        load_inputs([str(capture)])
    assert "64 KiB limit" in refused(e) and "DIAG_MAX_STREAM_SIZE" in str(e.value)


def test_raw_file_over_the_size_limit_is_refused(tmp_path):
    big = tmp_path / "big.log"
    big.write_bytes(PERF.read_bytes() * 40)
    r = replay(str(big), env={"DIAG_MAX_STREAM_SIZE": "64K"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "DIAG_MAX_STREAM_SIZE=SIZE" in r.stderr


# ---------------------------------------------------------------- archives

def pack(src: Path, dest: Path, extra=None, mode: str = "w:gz") -> Path:
    with tarfile.open(dest, mode) as tar:
        tar.add(str(src), arcname=src.name)
        if extra:
            extra(tar)
    return dest


def test_truncated_archive_replays_what_precedes_the_cut(capture, tmp_path):
    archive = pack(capture, tmp_path / "c.tar.gz")
    whole = load_inputs([str(capture)])
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size * 9 // 10])
    # was: EOFError, which click reported as "Aborted!" with exit 1 (a failed gate, to CI)
    r = replay(str(archive))
    assert r.returncode == 0, r.stderr
    assert "cut short" in r.stderr or "damaged" in r.stderr
    part = load_inputs([str(archive)])
    assert 0 < len(part.syscalls) + len(part.requests) <= len(whole.syscalls) + len(whole.requests)


def test_corrupt_archive_is_one_line(capture, tmp_path):
    archive = pack(capture, tmp_path / "c.tar.gz")
    data = bytearray(archive.read_bytes())
    data[20:4000] = bytes(3980)                 # was: tarfile.ReadError / zlib.error, exit 70
    archive.write_bytes(bytes(data))
    r = replay(str(archive))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def _member(tar: tarfile.TarFile, name: str, size: int = 0, type_=tarfile.REGTYPE, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = type_, size, linkname
    tar.addfile(info, io.BytesIO(bytes(size)) if size else None)


@pytest.mark.parametrize("extra, what", [
    (lambda t: _member(t, "journal.diag/../../escaped.txt", 3), "unsafe name"),
    (lambda t: _member(t, "/tmp/absolute.txt", 3), "unsafe name"),
    (lambda t: _member(t, "journal.diag/streams/x", type_=tarfile.SYMTYPE, linkname="/etc/shadow"), "symbolic link"),
    (lambda t: _member(t, "journal.diag/streams/y", type_=tarfile.LNKTYPE, linkname="/etc/passwd"), "hard link"),
    (lambda t: _member(t, "journal.diag/streams/z", type_=tarfile.CHRTYPE), "device file"),
    (lambda t: _member(t, "journal.diag/streams/f", type_=tarfile.FIFOTYPE), "FIFO"),
])
def test_archive_with_a_member_no_capture_has_is_refused(capture, tmp_path, extra, what):
    archive = pack(capture, tmp_path / "c.tar.gz", extra)
    with pytest.raises(DiagError) as e:
        load_inputs([str(archive)])
    assert what in refused(e)
    assert not (tmp_path / "escaped.txt").exists()


def test_archive_member_past_the_limit_is_refused_before_it_is_read(capture, tmp_path, monkeypatch):
    monkeypatch.setenv("DIAG_MAX_STREAM_SIZE", "1M")
    archive = pack(capture, tmp_path / "c.tar.gz", lambda t: _member(t, "journal.diag/streams/big", 2 << 20))
    with pytest.raises(DiagError) as e:
        load_inputs([str(archive)])
    assert "archive member larger than the 1 MiB limit (2 MiB)" in refused(e)


def test_archive_that_expands_past_the_total_is_refused(capture, tmp_path, monkeypatch):
    # five members just under the 1 MiB stream limit: 5 MiB, past 4 x 1 MiB in all
    monkeypatch.setenv("DIAG_MAX_STREAM_SIZE", "1M")

    def pad(t):
        for i in range(5):
            _member(t, f"journal.diag/pad{i}", (1 << 20) - 4096)
    archive = pack(capture, tmp_path / "c.tar.gz", pad)
    with pytest.raises(DiagError) as e:
        load_inputs([str(archive)])
    assert "capture archive expands larger than the 4 MiB limit" in refused(e)


def test_archive_with_too_many_members_is_refused(capture, tmp_path):
    def many(t):
        for i in range(10_001):
            _member(t, f"journal.diag/junk/{i}")
    archive = pack(capture, tmp_path / "c.tar", many, mode="w")
    with pytest.raises(DiagError) as e:
        load_inputs([str(archive)])
    assert "more than 10000 members" in refused(e)


def test_gzip_bomb_is_refused_from_its_header(tmp_path):
    # a 64 GiB member declared in a tar header (the data after it is never decompressed)
    info = tarfile.TarInfo("bomb.diag/streams/strace.txt")
    info.size = 64 << 30
    manifest = b'{"schema": "diag.capture/1", "collectors": {}}'
    head = tarfile.TarInfo("bomb.diag/manifest.json")
    head.size = len(manifest)
    raw = head.tobuf() + manifest + bytes(-len(manifest) % 512) + info.tobuf() + bytes(1 << 20)
    (tmp_path / "bomb.tar.gz").write_bytes(gzip.compress(raw))
    r = replay(str(tmp_path / "bomb.tar.gz"))
    assert r.returncode == 2 and "archive member larger than the 1 GiB limit (64 GiB)" in r.stderr


# ---------------------------------------------------------------- parsers

def test_process_record_with_a_list_for_a_count_is_a_bad_line(tmp_path):
    lines = (REAL / "streams" / "process.jsonl").read_text().splitlines(keepends=True)
    rec = json.loads(lines[3])
    rec["listen_queue"] = [1]                 # was: TypeError in the accept-backlog rule, exit 70
    lines[3] = json.dumps(rec) + "\n"
    p = tmp_path / "process.jsonl"
    p.write_text("".join(lines))
    data = load_inputs([str(p)])
    assert len(data.snapshots) == len(lines) - 2
    assert any("listen_queue is not a number" in w for w in data.warnings)


@pytest.mark.parametrize("value", ["Infinity", "1e400", "NaN", "9" * 5000, "[" * 50_000])
def test_ebpf_record_with_an_impossible_number_is_a_bad_line(tmp_path, value):
    lines = (REAL_V1 / "streams" / "ebpf.jsonl").read_text().splitlines(keepends=True)
    i = next(i for i, line in enumerate(lines) if '"type":"syscall"' in line.replace(" ", ""))
    lines[i] = lines[i].replace('"start_ns":', f'"start_ns":{value},"was":', 1)   # OverflowError, ValueError
    p = tmp_path / "ebpf.jsonl"
    p.write_text("".join(lines))
    data = load_inputs([str(p)])
    assert data.requests and any(f"{p}:{i + 1}" in w for w in data.warnings)


@pytest.mark.parametrize("doc", [b"[" * 100_000, b'{"traceEvents": [], "n": ' + b"9" * 5000 + b"}"])
def test_pyspy_json_that_python_cannot_load_is_refused(tmp_path, doc):
    p = tmp_path / "py-spy.json"
    p.write_bytes(doc)
    with pytest.raises(DiagError) as e:
        load_inputs([str(p)], __import__("diag.load").load.LoadOptions(fmt="pyspy-chrometrace"))
    assert "invalid JSON" in refused(e)


def test_perf_line_with_a_long_run_of_blanks_is_linear(tmp_path):
    # 1 MB of spaces in one line: the header pattern backtracked once per character (64 KB took
    # over a minute, 1 MB would take hours); with the guard the file replays in well under a second
    data = PERF.read_bytes()
    cut = data.index(b"\n", len(data) // 2) + 1
    p = tmp_path / "perf.txt"
    p.write_bytes(data[:cut] + b"x" + b" " * (1 << 20) + b"y\n" + data[cut:])
    r = subprocess.run([sys.executable, "-m", "diag", "replay", "--quiet", "--format", "perf-script", str(p)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "run of hundreds of blanks" in r.stderr


def test_perf_script_temp_file_is_removed_when_its_parse_fails(tmp_path, monkeypatch):
    # the text rebuilt from a capture's perf.data went to a temp file left behind when it did
    # not parse
    from diag import load

    monkeypatch.setattr(load.tempfile, "tempdir", str(tmp_path))

    def garbage(perf_data, into):
        Path(into).write_text("not perf output\n" * 50)
        return into
    monkeypatch.setattr(load, "_perf_script_from_data", garbage)
    with pytest.raises(DiagError):
        load._parse_perf_data(str(PERF), "perf-script", {}, None, None, {}, "perf")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- found by the 10,000-input run

@pytest.mark.parametrize("old, new", [
    ("= 0 <", "= " + "9" * 5000 + " <"),              # return value: int() of 5000 digits raised ValueError
    (" <0.", " <" + "9" * 400 + "."),                  # duration: a time past any float (OverflowError later)
])
def test_strace_line_with_an_absurd_number_is_a_bad_line(tmp_path, old, new):
    lines = (REAL / "streams" / "strace.txt").read_text().splitlines(keepends=True)
    i = next(i for i, line in enumerate(lines) if old in line)
    lines[i] = lines[i].replace(old, new, 1)
    p = tmp_path / "strace.txt"
    p.write_text("".join(lines))
    whole = load_inputs([str(REAL / "streams" / "strace.txt")])
    r = replay("--format", "strace", str(p))
    assert r.returncode == 0, r.stderr                 # was exit 70
    # the line is not read (the call it ends is lost, not given an impossible value)
    assert len(load_inputs([str(p)]).syscalls) == len(whole.syscalls) - 1


@pytest.mark.parametrize("change, what", [
    (lambda m: m.update(schema=["diag.capture/1"]), "schema field is not a string"),       # unhashable: TypeError
    (lambda m: m["collectors"]["perf"]["observer"].update(cores=None), "observer.cores"),  # None in a format spec
])
def test_manifest_values_found_by_the_long_run(capture, change, what):
    damage_manifest(capture, change)
    with pytest.raises(DiagError) as e:
        load_inputs([str(capture)])
    assert what in refused(e)


def test_pyspy_raw_count_of_thousands_of_digits_is_a_bad_line(tmp_path):
    lines = (ROOT / "tests" / "data" / "pyspy" / "raw_threads.txt").read_text().splitlines(keepends=True)
    lines[0] = lines[0].rstrip("\n").rsplit(" ", 1)[0] + " " + "9" * 5000 + "\n"   # was: ValueError, exit 70
    p = tmp_path / "raw.txt"
    p.write_text("".join(lines))
    r = replay("--format", "pyspy-raw", str(p))
    assert r.returncode == 0, r.stderr
    assert f"{p}:1: skipped 1 unparseable line" in r.stderr


def test_ebpf_record_with_a_40_digit_number_is_a_bad_line(tmp_path):
    # int() takes it; the analysis later overflowed a float division (exit 70)
    lines = (REAL_V1 / "streams" / "ebpf.jsonl").read_text().splitlines(keepends=True)
    i = next(i for i, line in enumerate(lines) if '"type":"request"' in line.replace(" ", ""))
    lines[i] = lines[i].replace('"end_ns":', '"end_ns":1' + "0" * 40 + ',"was":', 1)
    p = tmp_path / "ebpf.jsonl"
    p.write_text("".join(lines))
    r = replay(str(p))
    assert r.returncode == 0, r.stderr
    assert f"{p}:{i + 1}: skipped 1 unparseable line(s), first: a number of 20 digits or more" in r.stderr


# ---------------------------------------------------------------- found by the second long run

def _limited(mb: int):
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_AS, (mb << 20, resource.RLIM_INFINITY))


@pytest.mark.parametrize("line", [
    # a decorated fd, then 4 MB of blanks before the duration: the lazy search for the
    # decoration's ">" kept a backtrack state per character (a 20 MB line: 6 GB, 27 s)
    '14936 1796305684.565 openat(AT_FDCWD, "/etc/x", O_RDONLY) = 3</etc/x> <0.' + " " * (4 << 20) + '000009>\n',
    # an open without -y decoration and a 16 MB path: the quoted-string pattern did the same
    '14936 1796305684.565 openat(AT_FDCWD, "/' + "a" * (16 << 20) + '", O_RDONLY) = 3 <0.000009>\n',
])
def test_strace_long_line_needs_little_memory(tmp_path, line):
    head = (REAL / "streams" / "strace.txt").read_text()
    p = tmp_path / "strace.txt"
    p.write_text(head + line + head)
    r = subprocess.run([sys.executable, "-m", "diag", "replay", "--quiet", "--format", "strace", str(p)],
                       capture_output=True, text=True, timeout=120, preexec_fn=_limited(640))
    assert r.returncode == 0, r.stderr[-500:]            # was: MemoryError (exit 70) under 640 MB


@pytest.mark.parametrize("ts", ["Infinity", "NaN", "1e400", "1" + "0" * 30])
def test_chrometrace_event_with_an_impossible_time_is_refused(tmp_path, ts):
    text = (REAL / "streams" / "py-spy.json").read_text()
    text = text.replace('"ts":', f'"ts":{ts},"was":', 1).replace('"ts": ', f'"ts": {ts}, "was": ', 1)
    p = tmp_path / "py-spy.json"
    p.write_text(text)
    with pytest.raises(DiagError) as e:                  # was: OverflowError / ValueError, exit 70
        load_inputs([str(p)])
    assert "lacks a numeric 'ts'" in refused(e)


# ---------------------------------------------------------------- found by the third long run

@pytest.mark.parametrize("name, old, new", [
    # a 5000-digit pid: int() raised ValueError
    ("cpu_flat_fields.txt", " 18096/18096 ", " " + "7" * 5000 + "/18096 "),
    # a seconds field of 4000 digits: a time past any float (OverflowError in the analysis)
    ("fsync_tracepoints.txt", "  13", "  " + "9" * 4000 + "13"),
])
def test_perf_header_with_an_absurd_number_is_not_read(tmp_path, name, old, new):
    lines = (ROOT / "tests" / "data" / "perf" / name).read_text().splitlines(keepends=True)
    i = next(i for i, line in enumerate(lines[5:], 5) if old in line)   # after the lines format detection reads
    lines[i] = lines[i].replace(old, new, 1)
    p = tmp_path / name
    p.write_text("".join(lines))
    r = replay("--format", "perf-script", str(p))
    assert r.returncode == 0, r.stderr                   # was exit 70
    assert f"{p}:{i + 1}: skipped" in r.stderr
