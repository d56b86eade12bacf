"""`make fuzz`: thousands of hostile inputs through `diag replay`, and the figures by outcome.

    python tests/fuzz/campaign.py [--inputs 10000] [--seed 20261203] [--jobs 2] [--save DIR]

Inputs are derived from real traces and captures (tests/fuzz/corpus.py) by mutations that
hypothesis draws (tests/fuzz/mutate.py) from a fixed seed. Each one is replayed in-process
through the same entry point as the `diag` command (`diag.cli.main`: exit code, stdout, stderr as
a user sees them), with `--json` and, for one input in four, `--html` and `--markdown`; one in
`--subprocess-every` is also run as a real `python -m diag replay` and must agree. Outcomes:

    report    exit 0 and the requested reports written (no --fail-on is given: exit 1 is a failure)
    refused   exit 2 with exactly one line on stderr ("diag: error: ...")
    failures  internal-error (exit 70 or any other code), traceback, bad-refusal (exit 2 but not
              one line), timeout (> --timeout s), memory (MemoryError under the worker's address-
              space limit), stray-file (a file written or changed outside the requested outputs:
              in the input, the working directory or TMPDIR), leak (the content of a file outside
              the capture, reached through a link, appears in the output), crash (the worker
              died), subprocess-mismatch

Workers run with an address-space limit (RLIMIT_AS, --memory-mb) and with the stream-size limit
lowered (DIAG_MAX_STREAM_SIZE, --stream-limit) so that the archive bombs cross it cheaply; a real
gzip bomb (--bomb-gib of zeros) is also replayed once with the default limits. Exit status 1 when
any input failed; the failing inputs are kept under --save.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FAILURES = ("internal-error", "traceback", "bad-refusal", "timeout", "memory", "stray-file", "leak", "crash",
            "subprocess-mismatch")
# The content of a file beside each input that links point to: read through a link that leads
# outside a capture, it would show in an error line or a report.
SECRET = "a-secret-that-must-not-appear-in-a-report"
CHUNK = 500                      # inputs per worker process (see main)
KINDS = ["raw"] * 6 + ["junk"] + ["capture"] * 5 + ["archive"] * 4
KIND_LABELS = {"raw": "raw file, byte damage", "json-shape": "JSON document, wrong shape",
               "jsonl-shape": "JSON Lines record, wrong shape", "junk": "random bytes/text/JSON",
               "capture": "capture directory", "archive": "capture archive", "bomb": "gzip bomb, default limits"}


def _digest(case_dir: Path, fmt: str | None) -> str:
    """What makes an input distinct: every file's name, type and content (link targets too)."""
    import hashlib

    h = hashlib.sha256(str(fmt).encode())
    for d, dirs, files in sorted(os.walk(case_dir)):
        dirs.sort()
        for name in sorted(files + dirs):
            p = os.path.join(d, name)
            st = os.lstat(p)
            h.update(f"{os.path.relpath(p, case_dir)}\0{stat.S_IFMT(st.st_mode)}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(p).encode())
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
    return h.hexdigest()


class FuzzTimeout(BaseException):
    """Raised by SIGALRM in the worker: not an Exception, so diag's own handlers let it through."""


def _alarm(signum, frame):
    raise FuzzTimeout()


# ---------------------------------------------------------------- one input

def _snapshot(root: Path) -> set:
    out = set()
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            st = os.lstat(p)
            out.add((os.path.relpath(p, root), stat.S_IFMT(st.st_mode), st.st_size if stat.S_ISREG(st.st_mode) else 0,
                     st.st_mtime_ns if stat.S_ISREG(st.st_mode) else 0))
    return out


def invoke_in_process(argv: list[str]) -> tuple[int, str, str]:
    """`diag ARGV...` through the console entry point, in this process."""
    from diag import cli

    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = ["diag", *argv]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
    return code, out.getvalue(), err.getvalue()


def classify(code: int, out: str, err: str, outputs: dict[str, Path]) -> tuple[str, str]:
    if "Traceback (most recent call last)" in out + err:
        return "traceback", err.strip().splitlines()[-1][:300] if err.strip() else out[-300:]
    if code == 1:
        # no --fail-on gate is given: exit 1 is something else (click's "Aborted!" on an EOFError was)
        return "internal-error", "exit 1 without a --fail-on gate: " + " | ".join(err.strip().splitlines())[-300:]
    if code == 0:
        for kind, path in outputs.items():
            if not path.is_file() or path.stat().st_size == 0:
                return "internal-error", f"exit {code} but the {kind} report was not written"
        try:
            json.loads(outputs["json"].read_text())
        except ValueError as e:
            return "internal-error", f"JSON report is not JSON ({e})"
        return "report", ""
    lines = err.strip().splitlines()
    if code == 2:
        if len(lines) == 1 and lines[0].startswith("diag: error: ") and not out.strip():
            return "refused", lines[0][13:]
        return "bad-refusal", " | ".join(lines)[:300]
    if "MemoryError" in err:
        return "memory", " | ".join(lines)[:300]
    return "internal-error", f"exit {code}: " + " | ".join(lines)[:300]


def run_input(case_dir: Path, input_path: str, case, n: int, tmpdir: Path, cwd: Path, timeout: float,
              subprocess_check: bool, memory_bytes: int) -> tuple[str, str, float]:
    out_dir = case_dir.parent / f"{case_dir.name}-out"
    out_dir.mkdir()
    outputs = {"json": out_dir / "report.json"}
    if n % 4 == 0:
        outputs.update(html=out_dir / "report.html", markdown=out_dir / "report.md")
    argv = ["replay", str(case_dir / input_path)]
    for kind, path in outputs.items():
        argv += [f"--{kind}", str(path)]
    if case.fmt:
        argv += ["--format", case.fmt]
    before = _snapshot(case_dir)
    t0 = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        code, out, err = invoke_in_process(argv)
    except FuzzTimeout:
        return "timeout", f"no answer within {timeout:.0f} s", time.monotonic() - t0
    except MemoryError:
        return "memory", "MemoryError outside diag's handler", time.monotonic() - t0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    secs = time.monotonic() - t0
    outcome, detail = classify(code, out, err, outputs)
    stray = []
    if _snapshot(case_dir) != before:
        stray.append("the input changed")
    extra = {p.name for p in out_dir.iterdir()} - {p.name for p in outputs.values()}
    if extra:
        stray.append(f"unrequested outputs {sorted(extra)}")
    for d, what in ((tmpdir, "TMPDIR"), (cwd, "the working directory")):
        left = sorted(os.listdir(d))
        if left:
            stray.append(f"{what} has {left[:3]}")
            for x in left:
                p = d / x
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    for name in ("escaped.txt", "absolute-escape.txt"):
        if (case_dir.parent / name).exists() or (case_dir.parent.parent / name).exists():
            stray.append(f"{name} written outside the capture")
    if stray and outcome in ("report", "refused"):
        outcome, detail = "stray-file", "; ".join(stray)
    shown = [out, err] + [p.read_text(errors="replace") for p in outputs.values() if p.is_file()]
    if any(SECRET in text for text in shown) and outcome in ("report", "refused"):
        outcome, detail = "leak", "a file outside the input reached the output"
    if subprocess_check and outcome in ("report", "refused"):
        sub = _subprocess_agrees(argv, outputs, out_dir, code, err, timeout, memory_bytes, cwd)
        if sub:
            outcome, detail = "subprocess-mismatch", sub
    return outcome, detail, secs


def _limit_memory(memory_bytes: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, resource.RLIM_INFINITY))
    return apply


def _subprocess_agrees(argv, outputs, out_dir, code, err, timeout, memory_bytes, cwd) -> str:
    sub_dir = out_dir.parent / f"{out_dir.name}-sub"
    sub_dir.mkdir()
    sub_argv = [a.replace(str(out_dir), str(sub_dir)) for a in argv]
    try:
        r = subprocess.run([sys.executable, "-m", "diag", *sub_argv], capture_output=True, text=True, cwd=cwd,
                           timeout=timeout + 10, preexec_fn=_limit_memory(memory_bytes))
    except subprocess.TimeoutExpired:
        return "the subprocess timed out"
    if r.returncode != code:
        return f"in-process exit {code}, subprocess exit {r.returncode}: {r.stderr.strip()[-200:]}"
    if code == 2 and r.stderr.strip() != err.strip():
        return f"refusals differ: {err.strip()[:120]!r} vs {r.stderr.strip()[:120]!r}"
    return ""


# ---------------------------------------------------------------- a worker: a share of the inputs

def _save_failure(save: Path, case_dir: Path, record: dict) -> None:
    dest = save / f"w{record['worker']}-{record['i']:05d}"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "case.json").write_text(json.dumps(record, indent=2))
    for d, dirs, files in os.walk(case_dir):
        for name in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
            src = Path(d) / name
            rel = src.relative_to(case_dir)
            st = os.lstat(src)
            target = dest / "input" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if stat.S_ISLNK(st.st_mode):
                target.symlink_to(os.readlink(src))
            elif stat.S_ISREG(st.st_mode) and st.st_size < (64 << 20):
                shutil.copy2(src, target)
            else:
                target.with_name(target.name + ".what").write_text(f"mode {oct(st.st_mode)} size {st.st_size}\n")


def worker(a) -> int:
    from hypothesis import HealthCheck, Phase, given, reject, seed, settings
    from hypothesis import strategies as st

    import corpus

    resource.setrlimit(resource.RLIMIT_AS, (a.memory_mb << 20, resource.RLIM_INFINITY))
    signal.signal(signal.SIGALRM, _alarm)
    root = Path(a.root) / f"w{a.worker}"
    tmpdir, cwd, cases = root / "tmp", root / "cwd", root / "cases"
    for d in (tmpdir, cwd, cases):
        d.mkdir(parents=True)
    os.environ["TMPDIR"] = str(tmpdir)
    tempfile.tempdir = None
    os.chdir(cwd)
    import diag.cli  # noqa: F401  (imported once, before the clock of the first input starts)

    seeds = corpus.raw_seeds()
    bundles = corpus.build_capture_seeds(root / "seeds")
    outside = root / "outside-secret.txt"
    outside.write_text(f"root:$6${SECRET}\n")
    bomb_bytes = a.bomb_unit
    # kind and seed from one integer drawn over a wide range (near uniform: small values of a
    # sampled_from are favoured, and every seed must get its share); hypothesis draws the damage
    def strategy_for(pick: int):
        kind = KINDS[pick % len(KINDS)]
        turn = pick // len(KINDS)
        if kind == "raw":
            return corpus.raw_case(seeds[turn % len(seeds)])
        if kind == "junk":
            return corpus.junk_case()
        bundle = bundles[turn % len(bundles)]
        if kind == "capture":
            return st.tuples(st.just("capture"), corpus.capture_ops(bundle))
        return st.tuples(st.just("archive"), corpus.capture_ops(bundle), corpus.archive_ops())

    results = open(a.results, "a", buffering=1)

    def materialize(drawn, case_dir: Path):
        if isinstance(drawn, corpus.Case):
            return drawn, drawn.write(case_dir)
        kind, (seed_dir, manifest_bytes, actions, ops) = drawn[:2]
        if kind == "capture":
            corpus.apply_capture_ops(case_dir / seed_dir.name, seed_dir, manifest_bytes, actions, outside)
            return corpus.Case("capture", seed_dir.name, ops), seed_dir.name
        compression, tricks, cut, flips = drawn[2]
        work = case_dir.parent / f"{case_dir.name}-src"
        corpus.apply_capture_ops(work / seed_dir.name, seed_dir, manifest_bytes, actions, outside)
        suffix = {"gz": ".tar.gz", "bz2": ".tar.bz2", "xz": ".tar.xz", "": ".tar"}[compression]
        name = seed_dir.name + suffix
        corpus.write_archive(case_dir / name, work / seed_dir.name, compression, tricks, cut, flips, bomb_bytes,
                             outside)
        shutil.rmtree(work)
        return corpus.Case("archive", seed_dir.name, [*tricks, *ops]), name

    seen: set[str] = set()
    counter = {"n": 0, "attempts": 0, "duplicates": 0}

    def one(data):
        attempt = counter["attempts"] = counter["attempts"] + 1
        drawn = data.draw(strategy_for(data.draw(st.integers(0, 2**40))))
        case_dir = cases / f"a{attempt:06d}"
        case_dir.mkdir()
        try:
            case, input_path = materialize(drawn, case_dir)
            digest = _digest(case_dir, case.fmt)
            if digest in seen:
                # hypothesis drew an input it had already made: not counted (assume() rejects
                # the example, and max_examples counts only the others)
                counter["duplicates"] += 1
                reject()
            seen.add(digest)
            n = counter["n"] = counter["n"] + 1
            record = {"worker": a.worker, "i": n, "kind": case.kind, "seed": case.seed, "ops": case.ops[:8],
                      "format": case.fmt}
            results.write(json.dumps({**record, "started": True}) + "\n")
            check = bool(a.subprocess_every and n % a.subprocess_every == 0)
            outcome, detail, secs = run_input(case_dir, input_path, case, n, tmpdir, cwd, a.timeout, check,
                                              a.memory_mb << 20)
            record.update(outcome=outcome, detail=detail, secs=round(secs, 3), subprocess=check,
                          maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10)
            results.write(json.dumps(record) + "\n")
            if outcome in FAILURES and a.save:
                _save_failure(Path(a.save), case_dir, record)
        finally:
            for d in cases.iterdir():
                shutil.rmtree(d) if d.is_dir() and not d.is_symlink() else d.unlink()
            if attempt % 100 == 0:
                gc.collect()

    settings(max_examples=a.inputs, database=None, deadline=None, derandomize=False, print_blob=False,
             phases=[Phase.generate], suppress_health_check=list(HealthCheck))(
        seed(a.seed * 1000 + a.worker)(given(data=st.data())(one)))()
    results.write(json.dumps({"worker": a.worker, "duplicates": counter["duplicates"],
                              "attempts": counter["attempts"]}) + "\n")
    results.close()
    return 0


# ---------------------------------------------------------------- the campaign

def _bomb(root: Path, gib: float, memory_mb: int, timeout: float) -> dict:
    """A real gzip bomb, replayed by the real command with the default limits."""
    import corpus

    path = root / "bomb.diag.tar.gz"
    t0 = time.monotonic()
    corpus.gzip_bomb(path, int(gib * (1 << 30)))
    made = time.monotonic() - t0
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIAG_MAX_")}
    out = root / "bomb-out"
    out.mkdir()
    t0 = time.monotonic()
    try:
        r = subprocess.run([sys.executable, "-m", "diag", "replay", str(path), "--json", str(out / "r.json")],
                           capture_output=True, text=True, env=env, cwd=out, timeout=timeout * 4,
                           preexec_fn=_limit_memory(memory_mb << 20))
        outcome, detail = classify(r.returncode, r.stdout, r.stderr, {"json": out / "r.json"})
    except subprocess.TimeoutExpired:
        outcome, detail = "timeout", f"no answer within {timeout * 4:.0f} s"
    secs = time.monotonic() - t0
    return {"worker": -1, "i": 0, "kind": "bomb", "seed": f"{gib:g} GiB of zeros, {path.stat().st_size >> 20} MiB "
            f"compressed (made in {made:.1f} s)", "ops": [], "outcome": outcome, "detail": detail,
            "secs": round(secs, 3), "subprocess": True}


def table(records: list[dict], a, elapsed: float, crashed: list[dict]) -> str:
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        kind = r["kind"]
        by_kind[kind][r["outcome"]] += 1
    total = Counter()
    for c in by_kind.values():
        total.update(c)
    lines = [f"diag fuzz campaign: {len(records)} distinct inputs, seed {a.seed}, {a.jobs} worker(s), {elapsed:.0f} s "
             f"({len(records) / max(elapsed, 1e-9):.1f} inputs/s; {getattr(a, 'duplicates', 0)} repeated draws "
             f"skipped)",
             f"limits: {a.memory_mb} MiB of address space per worker, {a.timeout:.0f} s per input, "
             f"DIAG_MAX_STREAM_SIZE={a.stream_limit} (archive bombs: {a.bomb_unit >> 20} MiB members)", "",
             f"{'input':34} {'inputs':>7} {'report':>7} {'refused':>8} {'failed':>7}"]
    order = ["raw", "json-shape", "jsonl-shape", "junk", "capture", "archive", "bomb"]
    for kind in sorted(by_kind, key=lambda k: order.index(k) if k in order else 99):
        c = by_kind[kind]
        failed = sum(c[f] for f in FAILURES)
        lines.append(f"{KIND_LABELS.get(kind, kind):34} {sum(c.values()):>7} {c['report']:>7} {c['refused']:>8} "
                     f"{failed:>7}")
    failed = sum(total[f] for f in FAILURES)
    lines.append(f"{'total':34} {sum(total.values()):>7} {total['report']:>7} {total['refused']:>8} {failed:>7}")
    lines.append("")
    lines.append("failures by outcome: " + ", ".join(f"{f} {total[f]}" for f in FAILURES))
    sub = [r for r in records if r.get("subprocess")]
    agree = sum(1 for r in sub if r["outcome"] != "subprocess-mismatch")
    lines.append(f"subprocess sample: {len(sub)} inputs also run as `python -m diag replay`; {agree} agree")
    refusals = Counter(_refusal_kind(r["detail"]) for r in records if r["outcome"] == "refused")
    lines.append("most common refusals: " + "; ".join(f"{k} ({n})" for k, n in refusals.most_common(6)))
    peak = max((r.get("maxrss_mb") or 0 for r in records), default=0)
    lines.append(f"peak resident memory of a worker process (each runs {CHUNK} inputs in-process): {peak} MB")
    slow = max(records, key=lambda r: r.get("secs") or 0, default=None)
    if slow:
        lines.append(f"slowest input: {slow['secs']:.2f} s ({slow['kind']}: {', '.join(slow['ops'][:3]) or slow['seed']})")
    for r in records:
        if r["kind"] == "bomb":
            lines.append(f"gzip bomb with the default limits ({r['seed']}): {r['outcome']} in {r['secs']:.1f} s: "
                         f"{r['detail'][:160]}")
    for r in crashed:
        lines.append(f"CRASH: worker {r['worker']} died on input {r['i']} ({r['kind']} {r['seed']} {r['ops']})")
    bad = [r for r in records if r["outcome"] in FAILURES]
    for r in bad[:20]:
        lines.append(f"FAILED {r['outcome']}: w{r['worker']}-{r['i']:05d} {r['kind']} {r['seed']} "
                     f"{r['ops'][:4]} fmt={r.get('format')}: {r['detail'][:200]}")
    if len(bad) > 20:
        lines.append(f"... and {len(bad) - 20} more")
    return "\n".join(lines)


def _refusal_kind(detail: str) -> str:
    """A refusal without its file name and numbers, to count refusals by reason."""
    import re

    text = re.sub(r"^\S*?(:\d+)?: ", "", detail)
    text = re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "…", text)
    return text[:70]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=20261203)
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--memory-mb", type=int, default=1024)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--stream-limit", default="64M", help="DIAG_MAX_STREAM_SIZE for the workers")
    ap.add_argument("--subprocess-every", type=int, default=50)
    ap.add_argument("--bomb-gib", type=float, default=5.0, help="size of the real gzip bomb (0: none)")
    ap.add_argument("--save", default=None, help="keep failing inputs here (default: a temp dir, printed)")
    ap.add_argument("--results", default=None, help="also write the per-input records (JSON lines) here")
    ap.add_argument("--table", default=None, help="also write the table here (docs/fuzz-results.txt)")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--root", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--bomb-unit", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker is not None:
        return worker(a)
    from diag.units import parse_size

    a.bomb_unit = parse_size(a.stream_limit)
    root = Path(tempfile.mkdtemp(prefix="diag-fuzz-"))
    save = Path(a.save) if a.save else root.parent / (root.name + "-failures")
    t0 = time.monotonic()
    # one worker process per chunk of CHUNK inputs (its own hypothesis seed), --jobs at a time: a
    # worker's memory (hypothesis keeps every choice of its run; the allocator keeps what an input
    # took) never carries over to the next thousand inputs
    chunks = [(c, min(CHUNK, a.inputs - c * CHUNK)) for c in range((a.inputs + CHUNK - 1) // CHUNK)]
    env = {**os.environ, "DIAG_MAX_STREAM_SIZE": a.stream_limit, "PYTHONHASHSEED": "0"}
    records, crashed, running = [], [], []
    a.duplicates = 0

    def start(c: int, n: int):
        res = root / f"results-{c}.jsonl"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(c), "--root", str(root),
               "--inputs", str(n), "--seed", str(a.seed), "--memory-mb", str(a.memory_mb), "--timeout",
               str(a.timeout), "--subprocess-every", str(a.subprocess_every), "--save", str(save),
               "--results", str(res), "--bomb-unit", str(a.bomb_unit)]
        with open(root / f"w{c}.stderr", "w") as err:
            running.append((c, subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err), res))

    def collect(c: int, rc: int, res: Path) -> bool:
        started = {}
        if res.exists():
            for line in res.read_text().splitlines():
                r = json.loads(line)
                if "duplicates" in r:
                    a.duplicates += r["duplicates"]
                    continue
                if r.get("started"):
                    started[(r["worker"], r["i"])] = r
                else:
                    started.pop((r["worker"], r["i"]), None)
                    records.append(r)
        if rc != 0:
            for r in started.values():
                crashed.append(r)
                records.append({**r, "outcome": "crash", "detail": f"worker exit {rc}", "secs": 0})
            if not started:
                print(f"worker {c} exited {rc}:\n{(root / f'w{c}.stderr').read_text()[-2000:]}", file=sys.stderr)
                return False
        return True

    bomb = None
    pending = list(chunks)
    while pending or running:
        while pending and len(running) < a.jobs:
            start(*pending.pop(0))
        if bomb is None and a.bomb_gib > 0:
            bomb = _bomb(root, a.bomb_gib, a.memory_mb, a.timeout)
        time.sleep(0.2)
        for item in list(running):
            c, p, res = item
            rc = p.poll()
            if rc is not None:
                running.remove(item)
                if not collect(c, rc, res):
                    for _, q, _ in running:
                        q.kill()
                    return 2
    if bomb:
        records.append(bomb)
    elapsed = time.monotonic() - t0
    text = table(records, a, elapsed, crashed)
    print(text)
    if a.table:
        Path(a.table).write_text(f"$ make fuzz   # {time.strftime('%Y-%m-%d')}, {os.uname().release}\n{text}\n")
    if a.results:
        Path(a.results).write_text("".join(json.dumps(r) + "\n" for r in records))
    failed = [r for r in records if r["outcome"] in FAILURES]
    shutil.rmtree(root, ignore_errors=True)
    if failed:
        print(f"\nfailing inputs kept in {save}")
        return 1
    shutil.rmtree(save, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
