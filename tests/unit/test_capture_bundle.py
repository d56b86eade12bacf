"""The capture bundle: written incrementally, read back as a directory or an archive."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from diag.capture.bundle import CaptureWriter, open_capture, pack
from diag.capture.clock import read_pair, realtime_to_monotonic
from diag.errors import DiagError, ParseError
from diag.load import load_inputs


def _snapshot_line(ts: int) -> str:
    return json.dumps({"ts_ns": ts, "pid": 1, "cpu_user_s": 0.1, "cpu_system_s": 0.0, "ctx_voluntary": 1,
                       "ctx_involuntary": 0, "num_fds": 4, "num_threads": 1}) + "\n"


def test_manifest_is_valid_while_running_and_after_finish(tmp_path):
    # GIVEN a capture being written
    w = CaptureWriter(tmp_path / "c.diag", {"pid": 1, "cmdline": ["x"]}, "attach")
    # THEN its manifest already says what it is, and that it is running
    m = json.loads((tmp_path / "c.diag" / "manifest.json").read_text())
    assert m["schema"] == "diag.capture/1" and m["status"] == "running"
    assert m["clock"]["start"]["monotonic_ns"] > 0 and m["host"]["kernel"] == os.uname().release
    # WHEN a collector registers and the capture finishes
    w.set_collector("process", status="ok", stream="process.jsonl", format="process-jsonl", events=3, lost=1)
    w.finish()
    m = json.loads((tmp_path / "c.diag" / "manifest.json").read_text())
    assert m["status"] == "complete" and m["clock"]["end"]["monotonic_ns"] >= m["clock"]["start"]["monotonic_ns"]
    assert m["collectors"]["process"]["stream"] == "streams/process.jsonl"
    assert m["events"] == {"seen": 3, "lost": 1}


def test_refuses_to_overwrite_a_capture(tmp_path):
    d = tmp_path / "c.diag"
    d.mkdir()
    (d / "x").write_text("keep me")
    with pytest.raises(DiagError, match="already exists"):
        CaptureWriter(d, {}, "attach")
    assert (d / "x").read_text() == "keep me"


def test_interrupted_capture_replays_up_to_last_complete_record(tmp_path):
    # GIVEN a capture whose writer was killed mid-line (manifest still "running")
    w = CaptureWriter(tmp_path / "c.diag", {"pid": 1}, "attach")
    w.set_collector("process", status="ok", stream="process.jsonl", format="process-jsonl")
    with open(w.stream_path("process.jsonl"), "w") as f:
        f.write('{"format": "diag.process/1"}\n' + _snapshot_line(1000) + _snapshot_line(2000) + '{"ts_ns": 30')
    # WHEN it is loaded
    data = load_inputs([str(tmp_path / "c.diag")])
    # THEN the complete records are there, with warnings for the interruption and the cut line
    assert [s.ts_ns for s in data.snapshots] == [1000, 2000]
    assert any("interrupted" in x for x in data.warnings)
    assert any("truncated" in x for x in data.warnings)


def test_archive_reads_like_the_directory(tmp_path):
    w = CaptureWriter(tmp_path / "c.diag", {"pid": 1}, "attach")
    w.set_collector("process", status="ok", stream="process.jsonl", format="process-jsonl")
    w.stream_path("process.jsonl").write_text('{"format": "diag.process/1"}\n' + _snapshot_line(5))
    w.finish()
    archive = pack(str(tmp_path / "c.diag"), str(tmp_path / "c.diag.tar.gz"))
    a, d = load_inputs([archive]), load_inputs([str(tmp_path / "c.diag")])
    assert a.snapshots == d.snapshots and len(a.snapshots) == 1
    assert a.manifest == d.manifest


def test_archive_stream_escaping_the_capture_is_refused(tmp_path):
    w = CaptureWriter(tmp_path / "c.diag", {"pid": 1}, "attach")
    w.manifest["collectors"]["evil"] = {"status": "ok", "stream": "../../etc/passwd", "format": "strace"}
    w.finish()
    with pytest.raises(ParseError, match="outside the capture"):
        load_inputs([str(tmp_path / "c.diag")])


def test_unknown_schema_is_a_one_line_error(tmp_path):
    d = tmp_path / "c.diag"
    d.mkdir()
    (d / "manifest.json").write_text('{"schema": "diag.capture/99"}')
    with pytest.raises(ParseError, match="not supported") as e:
        open_capture(str(d))
    assert e.value.exit_code == 2 and "\n" not in str(e.value)


def test_corrupt_archive_is_a_one_line_error(tmp_path):
    p = tmp_path / "x.tar"
    with tarfile.open(p, "w") as t:
        info = tarfile.TarInfo("a.txt")
        t.addfile(info)
    with pytest.raises(DiagError, match="no manifest.json"):
        open_capture(str(p))


def test_clock_pair_offset_matches_the_clocks():
    a = read_pair()
    b = read_pair()
    off, unc = realtime_to_monotonic(a, b)
    # the offset is the mean of the two readings, its uncertainty their half-difference plus the
    # worse reading gap (each pair's monotonic stamp is the midpoint of the two reads around its
    # realtime read, so it is off by at most half its gap)
    assert 0 <= a.gap_ns and 0 <= b.gap_ns
    assert off == (a.mono_minus_real_ns + b.mono_minus_real_ns) // 2
    assert unc == abs(a.mono_minus_real_ns - b.mono_minus_real_ns) // 2 + max(a.gap_ns, b.gap_ns)
    # a third pair, read later, agrees within the error bounds of the readings: the uncertainty,
    # the third pair's own gap, and what NTP may slew the wall clock in between (the kernel slews
    # at most 500 ppm of frequency plus 500 ppm of offset correction)
    c = read_pair()
    slew = (c.monotonic_ns - a.monotonic_ns) * 1000 // 1_000_000 + 1
    err = abs((c.realtime_ns + off) - c.monotonic_ns)
    assert err <= unc + c.gap_ns + slew + 4, (err, unc, c.gap_ns, slew)   # +4: integer halvings


def test_cli_replay_of_missing_file_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "diag", "replay", str(tmp_path / "nope.txt")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_json_report_to_dev_null_leaves_the_device_alone(tmp_path):
    # GIVEN a character device as the --json destination (a benchmark's `--json /dev/null`)
    import stat

    from diag import render
    from diag.render import json_report
    # WHEN a report is written there
    render.write({"schema": "diag.report/1"}, "/dev/null", json_report)
    # THEN it is still a character device (an atomic rename would have replaced it with a file)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    # and regular files are still written whole
    render.write({"schema": "diag.report/1"}, str(tmp_path / "r.json"), json_report)
    assert json.loads((tmp_path / "r.json").read_text())["schema"] == "diag.report/1"
