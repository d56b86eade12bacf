"""Analysis speed: `diag replay` of real strace logs at 0.1M, 1M and 5M lines, a profile of the
hot path, and the replay of a 60 s live capture (eBPF + py-spy + perf + process) of a busy server.

Two strace logs: a real busy Python server (the threaded journal server under wrk) and a real
redis-server under redis-benchmark (every syscall, the issue's "new user" log), each traced with
`strace -f -ttt -T` until it holds >= 1M lines; 0.1M and 1M are its first lines, 5M is the
log repeated with timestamps shifted past its end. All of it lives in bench/work/ (gitignored)
and is reused by later runs unless --regen is given.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from bench.targets import make_targets, wrk_cmd

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
PYSPY = str(Path(PY).parent / "py-spy") if (Path(PY).parent / "py-spy").exists() else (shutil.which("py-spy") or "py-spy")


def count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 22)
            if not b:
                return n
            n += b.count(b"\n")


def trace_busy_server(out: Path, min_lines: int, max_s: float = 90.0, log=print) -> dict:
    """strace -f -ttt -T the threaded journal server while wrk saturates it, until `min_lines`."""
    t = make_targets(["py-threaded"])[0]
    t.start()
    wrk = strace = None
    try:
        cmd = ["strace", "-f", "-qq", "-ttt", "-T", "-o", str(out), "-p", str(t.pid)]
        strace = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not out.exists():
            time.sleep(0.05)
        time.sleep(0.3)
        wrk = subprocess.Popen(wrk_cmd(t.port, max_s), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
        t0 = time.monotonic()
        target_bytes = None
        while time.monotonic() - t0 < max_s:
            time.sleep(0.5)
            size = out.stat().st_size
            if target_bytes is None and size > 4 << 20:
                with open(out, "rb") as f:
                    head = f.read(4 << 20)
                target_bytes = int(len(head) / max(1, head.count(b"\n")) * min_lines * 1.08)
            if target_bytes and size >= target_bytes:
                break
        traced_s = time.monotonic() - t0
    finally:
        for p, sig in ((strace, signal.SIGTERM), (wrk, signal.SIGTERM)):
            if p is not None and p.poll() is None:
                p.send_signal(sig)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        t.stop()
    n = count_lines(out)
    log(f"  traced the threaded journal server under wrk for {traced_s:.1f} s: {n:,} lines")
    return {"lines": n, "traced_s": round(traced_s, 1), "command": " ".join(cmd) + "  (while: " +
            " ".join(wrk_cmd(t.port, max_s)) + ")"}


def trace_redis(out: Path, min_lines: int, max_s: float = 120.0, log=print) -> dict:
    """strace -f -ttt -T (every syscall) a redis-server under redis-benchmark (GET/SET/INCR/LPUSH
    from 8 clients, new connections per test), until `min_lines`: the issue's "real redis log"."""
    t = make_targets(["redis"], str(out.parent))[0]
    t.start()
    strace = None
    cmd = ["strace", "-f", "-qq", "-ttt", "-T", "-o", str(out), "-p", str(t.pid)]
    t0 = time.monotonic()
    try:
        strace = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not out.exists():
            time.sleep(0.05)
        time.sleep(0.3)
        bench_cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(t.port), "-c", "8", "-n", "200000", "-q",
                     "-t", "set,get,incr,lpush"]
        while time.monotonic() - t0 < max_s and count_lines(out) < min_lines * 1.05:
            subprocess.run(bench_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=max_s)
    finally:
        if strace is not None and strace.poll() is None:
            strace.send_signal(signal.SIGTERM)
            try:
                strace.wait(20)
            except subprocess.TimeoutExpired:
                strace.kill()
        t.stop()
    n = count_lines(out)
    log(f"  traced redis-server under redis-benchmark for {time.monotonic() - t0:.1f} s: {n:,} lines")
    return {"lines": n, "traced_s": round(time.monotonic() - t0, 1),
            "command": " ".join(cmd) + "  (while: redis-benchmark -c 8 -n 200000 -t set,get,incr,lpush, repeated)"}


_TS = re.compile(rb"^(\d+) +(\d+)\.(\d{6}) ")


def build_sizes(base: Path, sizes: list[int], workdir: Path) -> dict[int, Path]:
    """First N lines of the base log; beyond its length, repeats with timestamps shifted."""
    out = {}
    base_lines = count_lines(base)
    span_us = None
    for n in sizes:
        p = workdir / f"strace-{n // 1000}k.log"
        if p.exists() and count_lines(p) == n:
            out[n] = p
            continue
        if n <= base_lines:
            with open(base, "rb") as src, open(p, "wb") as dst:
                for i, line in enumerate(src):
                    if i >= n:
                        break
                    dst.write(line)
        else:
            if span_us is None:
                first = last = None
                with open(base, "rb") as f:
                    for line in f:
                        m = _TS.match(line)
                        if m:
                            us = int(m.group(2)) * 1_000_000 + int(m.group(3))
                            first = us if first is None else first
                            last = us
                span_us = (last - first) + 1_000_000
            written, rep = 0, 0
            with open(p, "wb") as dst:
                while written < n:
                    shift = rep * span_us
                    with open(base, "rb") as src:
                        for line in src:
                            if written >= n:
                                break
                            if shift:
                                m = _TS.match(line)
                                if m:
                                    us = int(m.group(2)) * 1_000_000 + int(m.group(3)) + shift
                                    line = b"%s %d.%06d " % (m.group(1), us // 1_000_000, us % 1_000_000) + \
                                        line[m.end():]
                            dst.write(line)
                            written += 1
                    rep += 1
        out[n] = p
    return out


def timed(argv: list[str], timeout: float = 900.0) -> dict:
    """Run a command; wall time, CPU time and peak RSS of the child (wait4 rusage)."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         cwd=str(REPO))
    err = b""
    deadline = t0 + timeout
    # read stderr without blocking wait4 (warnings are short)
    import threading

    chunks: list[bytes] = []
    th = threading.Thread(target=lambda: chunks.append(p.stderr.read()), daemon=True)
    th.start()
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            p.kill()
            pid, status, ru = os.wait4(p.pid, 0)
            break
        time.sleep(0.005)
    wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    th.join(5)
    err = b"".join(chunks)
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_mb": ru.ru_maxrss / 1024.0,
            "rc": p.returncode, "stderr": err.decode(errors="replace")[-300:]}


REPORT_OUT = REPO / "bench" / "work" / "replay-report.json"


def replay_cmd(path: Path) -> list[str]:
    # A real file, not /dev/null: a diag that writes its report atomically (temp file + rename)
    # would replace /dev/null itself with a regular file (seen with diag before bd74669).
    return [PY, "-m", "diag", "replay", str(path), "--json", str(REPORT_OUT), "-q"]


def replay_speed(workdir: Path, sizes: list[int], repeats: dict[int, int], regen: bool, log=print,
                 kind: str = "journal") -> dict:
    """`kind` "journal": the threaded journal server under wrk; "redis": redis-server under
    redis-benchmark (the log of the issue: every syscall, a native server, many connections)."""
    workdir.mkdir(parents=True, exist_ok=True)
    base = workdir / "strace-base.log"
    meta_path = workdir / "strace-base.json"
    need = max(1_000_000, min(sizes))
    if regen or not base.exists() or not meta_path.exists() or json.loads(meta_path.read_text())["lines"] < need:
        for p in workdir.glob("strace-*k.log"):
            p.unlink()
        log("  generating the strace log (tracing a busy server)...")
        meta = trace_redis(base, need, log=log) if kind == "redis" else trace_busy_server(base, need)
        meta_path.write_text(json.dumps(meta))
    else:
        meta = json.loads(meta_path.read_text())
        meta["reused"] = True
        log(f"  reusing {base} ({meta['lines']:,} lines)")
    files = build_sizes(base, sizes, workdir)
    rows = []
    for n in sizes:
        runs = []
        for _ in range(repeats.get(n, 1)):
            r = timed(replay_cmd(files[n]))
            if r["rc"] != 0:
                log(f"  replay of {n} lines failed: rc {r['rc']}: {r['stderr']}")
            runs.append(r)
            log(f"  replay {n:>9,} lines: {r['wall_s']:.2f} s, {n / r['wall_s']:,.0f} lines/s, "
                f"peak RSS {r['maxrss_mb']:.0f} MB")
        rows.append({"lines": n, "bytes": files[n].stat().st_size, "runs": runs})
    return {"base": meta, "rows": rows, "kind": kind,
            "command": " ".join(replay_cmd(Path("LOG"))).replace(str(REPO) + "/", "")}


# ---------------------------------------------------------------------------------------------
# profile

def profile_replay(log_path: Path, out_dir: Path, rate: int = 250, log=print, name: str | None = None) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    prof = out_dir / f"{name or 'replay-' + log_path.stem.split('-')[-1]}.speedscope.json"
    argv = [PYSPY, "record", "--rate", str(rate), "--format", "speedscope", "--output", str(prof), "--"] + \
        replay_cmd(log_path)
    r = subprocess.run(argv, capture_output=True, text=True, cwd=str(REPO), timeout=900)
    if r.returncode != 0 or not prof.exists():
        return {"error": (r.stderr or r.stdout)[-400:]}
    summary = summarize_speedscope(prof)
    (out_dir / (prof.name.replace(".speedscope.json", ".top.txt"))).write_text(summary["text"])
    summary["file"] = str(prof.resolve().relative_to(REPO))
    summary["command"] = " ".join(argv).replace(str(REPO) + "/", "")
    log(f"  profile written to {prof}")
    return summary


def summarize_speedscope(path: Path, top: int = 15) -> dict:
    d = json.loads(path.read_text())
    frames = d["shared"]["frames"]
    self_t: dict[str, float] = defaultdict(float)
    total_t: dict[str, float] = defaultdict(float)
    all_w = 0.0

    def key(i: int) -> str:
        f = frames[i]
        file = f.get("file") or ""
        file = file.replace(str(REPO) + "/", "")
        if "/site-packages/" in file or "/lib/python3" in file:
            file = re.sub(r".*/(site-packages|lib/python3[.\d]*)/", "", file)
        return f"{f['name']} ({file})"

    for prof in d["profiles"]:
        for stack, w in zip(prof["samples"], prof["weights"]):
            all_w += w
            if not stack:
                continue
            self_t[key(stack[-1])] += w
            for k in {key(i) for i in stack}:
                total_t[k] += w
    if not all_w:
        return {"self": [], "total": [], "text": "no samples\n"}
    s = sorted(self_t.items(), key=lambda kv: -kv[1])[:top]
    t = sorted(((k, v) for k, v in total_t.items() if "(diag/" in k), key=lambda kv: -kv[1])[:top]
    n_samples = sum(len(p["samples"]) for p in d["profiles"])
    unit = d["profiles"][0].get("unit", "") if d["profiles"] else ""
    lines = [f"profile {path.name}: {n_samples} samples ({all_w:.1f} {unit}); % of all samples",
             "", "top self time (function (file)):"]
    lines += [f"  {100 * v / all_w:5.1f} %  {k}" for k, v in s]
    lines += ["", "top inclusive time, diag functions:"]
    lines += [f"  {100 * v / all_w:5.1f} %  {k}" for k, v in t]
    return {"samples": n_samples, "self": [(k, round(100 * v / all_w, 1)) for k, v in s],
            "total": [(k, round(100 * v / all_w, 1)) for k, v in t], "text": "\n".join(lines) + "\n"}


# ---------------------------------------------------------------------------------------------
# 60 s capture -> report

def capture_replay(workdir: Path, seconds: float, repeats: int, log=print, profile_dir: Path | None = None) -> dict:
    """diag attach (default collectors) to the fsync journal server under wrk for `seconds`, then
    time `diag replay CAPTURE` to the JSON report (and to HTML if the renderer exists)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cap = workdir / f"capture-{int(seconds)}s.diag"
    shutil.rmtree(cap, ignore_errors=True)
    t = make_targets(["py-fsync"])[0]
    t.argv = [a for a in t.argv]
    i = t.argv.index("--compact-every")
    t.argv[i + 1] = "25"           # the demo's fault: a bigger fsync every 25th request
    t.start()
    wrk = None
    try:
        wrk = subprocess.Popen(wrk_cmd(t.port, seconds + 15), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
        time.sleep(1.0)
        attach = [PY, "-m", "diag", "attach", str(t.pid), "--duration", f"{seconds:g}", "--out", str(cap), "--json",
                  str(cap) + ".json", "--quiet"]
        live = timed(attach, timeout=seconds + 300)
    finally:
        if wrk is not None and wrk.poll() is None:
            wrk.send_signal(signal.SIGTERM)
            wrk.wait(10)
        t.stop()
    size = sum(p.stat().st_size for p in cap.rglob("*") if p.is_file()) if cap.exists() else 0
    try:
        manifest = json.loads((cap / "manifest.json").read_text())
        collectors = {k: {kk: v.get(kk) for kk in ("status", "events", "lost", "calls", "requests", "lost_requests")}
                      for k, v in manifest.get("collectors", {}).items()}
    except (OSError, ValueError):
        collectors = {}
    streams = {p.name: p.stat().st_size for p in (cap / "streams").glob("*")} if cap.exists() else {}
    log(f"  {seconds:g} s capture: {size / 1e6:.1f} MB, collectors {collectors}")
    runs_json = [timed(replay_cmd(cap)) for _ in range(repeats)]
    for r in runs_json:
        log(f"  replay capture -> JSON: {r['wall_s']:.2f} s, peak RSS {r['maxrss_mb']:.0f} MB")
    help_text = subprocess.run([PY, "-m", "diag", "replay", "--help"], capture_output=True, text=True).stdout
    runs_html = None
    if "--html" in help_text:
        runs_html = [timed([PY, "-m", "diag", "replay", str(cap), "--html", str(workdir / "report.html"), "-q"])
                     for _ in range(repeats)]
    log("  profiling one replay of the capture with py-spy")
    prof = profile_replay(cap, profile_dir or REPO / "bench" / "profiles", log=log, name=f"replay-capture-{int(seconds)}s")
    return {"profile": prof, "seconds": seconds, "capture_bytes": size, "streams": streams, "collectors": collectors,
            "attach_total_s": live["wall_s"], "attach_rc": live["rc"], "json": runs_json, "html": runs_html,
            "html_available": runs_html is not None,
            "command": "diag attach PID --duration %g --out CAPTURE --json FILE --quiet; then %s" % (
                seconds, "python " + " ".join(replay_cmd(Path("CAPTURE"))[1:]).replace(str(REPO) + "/", ""))}
