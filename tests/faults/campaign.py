"""`make faults`: what happens to the target when diag itself meets trouble, run many times.

Each run starts a real server under bounded load, starts `diag attach` on it, does one bad thing
to diag (or to its surroundings), and then checks, whatever diag did:

- the target is alive (unless the run made it exit) and untraced: TracerPid 0 on every thread;
- no BPF program of diag's is loaded (bpftool), no collector process of the run is left
  (strace, perf, py-spy, the eBPF agent);
- the capture, when one was written, replays (`diag replay`: exit 0, or a one-line refusal, never
  a traceback), and diag's own exit code and stderr are what the README documents.

Faults: kill -9 of diag at a random moment (eBPF default and strace modes), Ctrl-C while the
collectors start, the target exiting mid-capture, the target exec'ing mid-capture, a full disk
for --out (a 1 MiB tmpfs), an unwritable --out, a second diag on the same target. The table of
runs by outcome is printed and written to docs/fault-results.txt.

    python tests/faults/campaign.py [--kill9-runs 50] [--seed N] [--table docs/fault-results.txt]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from diag.agent.procfs import held_prog_ids  # noqa: E402
from diag.capture.bundle import is_ready, read_manifest  # noqa: E402
from diag.examples.load import drive  # noqa: E402
from toolbox import all_tracers as tracers  # noqa: E402

OUR_PROGRAMS = ("diag_sys_enter", "diag_sys_exit", "diag_learn_stack")
COLLECTOR_MARKS = ("diag.agent", "py-spy", "perf record", "perf stat", "strace")


@dataclass
class Run:
    fault: str
    mode: str
    outcome: str = "ok"
    problems: list[str] = field(default_factory=list)
    detail: str = ""


def diag_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "diag", *args]


def _held_programs() -> dict[int, str]:
    """BPF program id -> command line of a live process holding it (from /proc/*/fdinfo)."""
    held = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        held.update(dict.fromkeys(held_prog_ids(int(d)), cmd))
    return held


def our_programs(capture: str) -> list[str]:
    """diag's BPF programs still loaded that belong to this run: held by a process of this run, or
    held by no live process at all (leaked). Programs of other diag runs on the machine (another
    engineer's test) are held by their own agents, and not counted."""
    try:
        r = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True, timeout=20)
        progs = [(p.get("id"), p.get("name")) for p in json.loads(r.stdout or "[]") if p.get("name") in OUR_PROGRAMS]
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []
    if not progs:
        return []
    held = _held_programs()
    return [f"{name} (id {pid_})" for pid_, name in progs if pid_ not in held or capture in held[pid_]]


def leftovers(capture: str) -> list[str]:
    """Collector processes of this run still alive (their command line names the capture)."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or ())
        if capture in cmd and any(m in cmd for m in COLLECTOR_MARKS):
            out.append(f"{p.info['pid']}: {cmd[:80]}")
    return out


def wait(pred, timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval_s)
    return pred()


class Server:
    """The bundled journal server (fsync under a lock) under a bounded paced load."""

    def __init__(self, workdir: str, exec_after_s: float | None = None, exit_after_s: float | None = None) -> None:
        code = ["-m", "diag.examples.journal_server", "--journal", os.path.join(workdir, "j.bin")]
        if exec_after_s is not None or exit_after_s is not None:
            # a wrapper that runs the server in a thread and, after a while, exec's itself into a
            # plain sleeper (same pid) or exits
            code = ["-c", _WRAPPER, os.path.join(workdir, "j.bin"), str(exec_after_s or 0), str(exit_after_s or 0)]
        self.proc = subprocess.Popen([sys.executable, *code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        line = self.proc.stdout.readline()
        self.port = int(line.rsplit(":", 1)[1])
        import threading

        self.stop = threading.Event()
        self.load = threading.Thread(target=drive, kwargs=dict(host="127.0.0.1", port=self.port, requests=10**9,
                                                               seconds=60.0, concurrency=2, rate=100, stop=self.stop),
                                     daemon=True)
        self.load.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        self.stop.set()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.load.join(10)


_WRAPPER = r'''
import os, sys, threading, time
from http.server import ThreadingHTTPServer
from diag.examples.journal_server import Journal, make_handler
srv = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(Journal(sys.argv[1]), 25))
srv.daemon_threads = True
threading.Thread(target=srv.serve_forever, daemon=True).start()
print("listening on 127.0.0.1:%d" % srv.server_address[1], flush=True)
exec_after, exit_after = float(sys.argv[2]), float(sys.argv[3])
time.sleep(exec_after or exit_after)
if exec_after:
    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(30)"])
os._exit(0)
'''


def check_after(run: Run, server: Server, capture: str, target_may_exit: bool = False) -> None:
    if not target_may_exit and server.proc.poll() is not None:
        run.problems.append("target died")
    if server.proc.poll() is None:
        if not wait(lambda: not any(tracers(server.pid).values()), 10):
            run.problems.append(f"target left traced: {tracers(server.pid)}")
    if not wait(lambda: not our_programs(capture), 15):
        run.problems.append(f"BPF programs left loaded: {our_programs(capture)}")
    if not wait(lambda: not leftovers(capture), 15):
        run.problems.append(f"collector processes left: {leftovers(capture)}")
    if os.path.exists(os.path.join(capture, "manifest.json")):
        r = subprocess.run(diag_cmd("replay", capture, "--quiet", "--json", os.devnull), capture_output=True,
                           text=True, cwd=ROOT, timeout=300)
        if "Traceback" in r.stderr or r.returncode not in (0, 2) or (r.returncode == 2 and r.stderr.count("\n") > 1
                                                                     and "warning" not in r.stderr):
            run.problems.append(f"replay of the partial capture: exit {r.returncode}: {r.stderr.strip()[-300:]}")


def one(fault: str, mode: str, rng: random.Random, work: str) -> Run:
    run = Run(fault, mode)
    d = tempfile.mkdtemp(dir=work)
    capture = os.path.join(d, "c.diag")
    server = None
    mounted = None
    try:
        if fault == "target-exec":
            server = Server(d, exec_after_s=rng.uniform(2.0, 4.0))
        elif fault == "target-exit":
            server = Server(d, exit_after_s=rng.uniform(2.0, 4.0))
        else:
            server = Server(d)
        out = capture
        if fault == "disk-full":
            mounted = os.path.join(d, "small")
            os.makedirs(mounted)
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mounted], check=True)
            out = capture = os.path.join(mounted, "c.diag")
        elif fault == "unwritable-out":
            ro = os.path.join(d, "ro")
            os.makedirs(ro)
            subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", ro], check=True)
            mounted = ro
            out = capture = os.path.join(ro, "c.diag")
        argv = diag_cmd("attach", str(server.pid), "--duration", "8", "--collectors", mode, "--out", out, "--quiet",
                        "--json", os.path.join(d, "r.json"))
        p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        second = None
        if fault == "kill9":
            # a random moment: while the collectors start, or while they capture
            if rng.random() < 0.4:
                time.sleep(rng.uniform(0.0, 2.5))
            else:
                wait(lambda: p.poll() is not None or is_ready(read_manifest(capture)), 60)
                time.sleep(rng.uniform(0.0, 4.0))
            p.send_signal(signal.SIGKILL)
            p.wait(30)
            run.detail = "killed"
        elif fault == "ctrl-c-startup":
            time.sleep(rng.uniform(0.1, 1.5))
            p.send_signal(signal.SIGINT)
            p.wait(120)
            err = p.stderr.read()
            # -2: killed by the SIGINT itself, before Python installed its handler (a shell says 130)
            if p.returncode not in (0, 130, -2) or "Traceback" in err:
                run.problems.append(f"Ctrl-C at start-up: exit {p.returncode}: {err.strip()[-300:]}")
        elif fault == "second-diag":
            wait(lambda: p.poll() is not None or is_ready(read_manifest(capture)), 60)
            cap2 = os.path.join(d, "c2.diag")
            second = subprocess.run(diag_cmd("attach", str(server.pid), "--duration", "2", "--collectors", mode,
                                             "--out", cap2, "--quiet"), cwd=ROOT, capture_output=True, text=True,
                                    timeout=180)
            if "Traceback" in second.stderr or second.returncode not in (0, 5):
                run.problems.append(f"second diag: exit {second.returncode}: {second.stderr.strip()[-300:]}")
            p.wait(180)
            check_after(run, server, cap2)
        else:
            p.wait(180)
        err = p.stderr.read() if p.stderr and not p.stderr.closed else ""
        if fault in ("disk-full", "unwritable-out"):
            # a one-line error naming the path, a documented exit code, no traceback
            lines = [x for x in err.splitlines() if x.strip() and not x.startswith("diag: capturing")]
            if p.returncode in (0,) and fault == "unwritable-out":
                run.problems.append("diag exited 0 writing into a read-only directory")
            if "Traceback" in err or p.returncode == 70:
                run.problems.append(f"exit {p.returncode}: {err.strip()[-300:]}")
            run.detail = f"exit {p.returncode}: {lines[-1][:100] if lines else ''}"
        elif fault in ("target-exit", "target-exec") and ("Traceback" in err or p.returncode not in (0, 1)):
            run.problems.append(f"exit {p.returncode}: {err.strip()[-300:]}")
        check_after(run, server, capture, target_may_exit=fault in ("target-exit", "target-exec"))
    except Exception as e:        # the campaign itself never stops at one run
        run.problems.append(f"campaign error: {type(e).__name__}: {e}")
    finally:
        if server is not None:
            server.close()
        if mounted:
            subprocess.run(["umount", "-l", mounted], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)
    run.outcome = "ok" if not run.problems else "FAILED"
    return run


def table(runs: list[Run]) -> str:
    by = Counter((r.fault, r.mode, r.outcome) for r in runs)
    keys = sorted({(r.fault, r.mode) for r in runs})
    lines = [f"{'fault':18s} {'mode':8s} {'runs':>5s} {'ok':>5s} {'failed':>7s}"]
    for f, m in keys:
        ok, bad = by[(f, m, "ok")], by[(f, m, "FAILED")]
        lines.append(f"{f:18s} {m:8s} {ok + bad:5d} {ok:5d} {bad:7d}")
    total_bad = sum(1 for r in runs if r.outcome != "ok")
    lines.append(f"{len(runs)} runs, {len(runs) - total_bad} as required, {total_bad} failed")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kill9-runs", type=int, default=50, help="kill -9 runs in all (half eBPF, half strace)")
    ap.add_argument("--seed", type=int, default=20261203)
    ap.add_argument("--table", default=None, help="also write the table to this file")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("faults: run as root (diag attaches to another process; tmpfs mounts)", file=sys.stderr)
        return 2
    if not shutil.which("bpftool"):
        print("faults: bpftool is not installed (make setup installs it): cannot check loaded programs",
              file=sys.stderr)
        return 2
    rng = random.Random(a.seed)
    work = tempfile.mkdtemp(prefix="diag-faults-", dir="/var/tmp")
    plan = [("kill9", "auto")] * (a.kill9_runs // 2) + [("kill9", "strace")] * (a.kill9_runs - a.kill9_runs // 2)
    plan += [(f, m) for f in ("ctrl-c-startup", "target-exit", "target-exec", "second-diag")
             for m in ("auto", "strace") for _ in range(3)]
    plan += [("disk-full", "auto")] * 2 + [("unwritable-out", "auto")] * 2
    rng.shuffle(plan)
    runs = []
    t0 = time.monotonic()
    for i, (fault, mode) in enumerate(plan, 1):
        r = one(fault, mode, rng, work)
        runs.append(r)
        print(f"[{i}/{len(plan)}] {fault:16s} {mode:7s} {r.outcome}{'  ' + r.detail if r.detail else ''}"
              + ("".join(f"\n      - {p}" for p in r.problems)), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    text = table(runs) + f"\n({time.monotonic() - t0:.0f} s, seed {a.seed})"
    print("\n" + text)
    if a.table:
        with open(a.table, "w") as f:
            f.write(text + "\n")
    return 1 if any(r.outcome != "ok" for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
