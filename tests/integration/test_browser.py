"""The HTML report in a real browser (Debian's chromium, headless, driven over the DevTools protocol).

A real hostile Python program (function names, file names and argv full of HTML and script) is
captured with `diag run`, rendered with `--html`, and opened from disk: no dialog may open, no
console error may be logged, no request may leave the page, and the flame graph must be drawn.
Screenshots are kept under tests/artifacts/ (gitignored).
"""
from __future__ import annotations

import base64
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--disable-extensions", "--mute-audio"]

HOSTILE = ['<script>alert(1)</script>', '"><img src=x onerror=alert(2)>', "'><svg onload=alert(3)>",
           '</title><script>alert(4)</script>', '</script><script>alert(5)</script>', '{{7*7}}<b>bold</b>',
           '<iframe src="javascript:alert(6)">', '<a href=http://example.com/x>link</a>']

HOSTILE_PROGRAM = r'''
import os, sys, time
NAMES = %r
AFTER = 40            # rounds once py-spy samples: ~40 x 8 x 4 ms of CPU in the hostile functions
SRC = "def f(n):\n    t = 0\n    for i in range(n):\n        t += i * i\n    return t\n"
funcs = []
for i, name in enumerate(NAMES):
    ns = {}
    exec(compile(SRC, name + "_%%d.py" %% i, "exec"), ns)      # a hostile co_filename
    f = ns["f"]
    f.__code__ = f.__code__.replace(co_name=name, co_qualname=name)   # a hostile function name
    funcs.append(f)
try:
    with open("/proc/self/comm", "w") as c:
        c.write("<b>x</b>")
except OSError:
    pass
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), NAMES[1] + ".journal")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
# Loop until the test says py-spy samples us (it creates the file argv[1]), then AFTER more
# rounds: counted work, not a time window, each round mostly CPU in the hostile functions (a
# busy disk stretches the fsync, not the share of samples they get); bounded if the word never
# comes.
left, give_up = None, time.monotonic() + 120
while left is None or left > 0:
    for f in funcs:
        f(150000)
    os.write(fd, b"x" * 262144)
    os.fsync(fd)
    if left is None and (os.path.exists(sys.argv[1]) or time.monotonic() > give_up):
        left = AFTER
    elif left is not None:
        left -= 1
os.close(fd)
''' % (HOSTILE,)


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("chromium is not installed (make setup installs Debian's chromium as root)")
    try:
        import websocket  # noqa: F401
    except ImportError:
        pytest.skip("websocket-client is not installed (pip install -e '.[test]')")
    return exe


class Browser:
    """Headless Chromium with one page, over CDP; collects dialogs, console errors and requests."""

    def __init__(self, exe: str) -> None:
        import websocket

        self.profile = tempfile.mkdtemp(prefix="diag-chromium-")
        self.proc = subprocess.Popen([exe, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                                      "--remote-debugging-port=0", "--window-size=1400,1000", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                pytest.fail("chromium did not open its DevTools port within 30 s")
            time.sleep(0.05)
        port, path = port_file.read_text().split()[:2]
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)

    def call(self, method: str, session: bool = False, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._event(reply)

    def _event(self, ev: dict) -> None:
        if "method" not in ev:
            return
        self.events.append(ev)
        if ev["method"] == "Page.javascriptDialogOpening":
            # Dismiss it so the page goes on; the test fails on the recorded event.
            self.ws.send(json.dumps({"id": 10**9 + len(self.events), "method": "Page.handleJavaScriptDialog",
                                     "params": {"accept": False}, "sessionId": self.session}))

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        self.ws.settimeout(0.1)
        try:
            while time.monotonic() < end:
                try:
                    self._event(json.loads(self.ws.recv()))
                except Exception:
                    pass
        finally:
            self.ws.settimeout(30)

    def open(self, path: Path) -> str:
        url = path.resolve().as_uri()
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.pump(0.2)
            if any(e["method"] == "Page.loadEventFired" for e in self.events) and self.eval(
                    "document.documentElement.getAttribute('data-diag-ready')") == "1":
                break
        self.pump(0.8)   # late errors, transitions
        return url

    def open_static(self, path: Path) -> str:
        """A page without our script (the compare page): wait for the load event only."""
        url = path.resolve().as_uri()
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(e["method"] == "Page.loadEventFired" for e in self.events):
            self.pump(0.2)
        self.pump(0.5)
        return url

    def eval(self, expr: str):
        r = self.call("Runtime.evaluate", session=True, expression=expr, returnByValue=True)
        return r.get("result", {}).get("value")

    def screenshot(self, out: Path) -> None:
        h = int(self.eval("Math.min(document.documentElement.scrollHeight, 12000)") or 1000)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=1400, height=h, deviceScaleFactor=1,
                  mobile=False)
        self.pump(0.5)
        shot = self.call("Page.captureScreenshot", session=True, format="png")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(shot["data"]))

    def problems(self, page_url: str) -> dict:
        dialogs = [e["params"].get("message") for e in self.events if e["method"] == "Page.javascriptDialogOpening"]
        errors = [e["params"]["exceptionDetails"].get("text", "") + " " +
                  str(e["params"]["exceptionDetails"].get("exception", {}).get("description", ""))
                  for e in self.events if e["method"] == "Runtime.exceptionThrown"]
        errors += [" ".join(str(a.get("value", a.get("description", ""))) for a in e["params"].get("args", []))
                   for e in self.events if e["method"] == "Runtime.consoleAPICalled"
                   and e["params"].get("type") in ("error", "assert", "warning")]
        errors += [e["params"]["entry"].get("text", "") for e in self.events
                   if e["method"] == "Log.entryAdded" and e["params"]["entry"].get("level") in ("error", "warning")]
        requests = [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]
        return {"dialogs": dialogs, "errors": errors, "requests": [u for u in requests if u != page_url]}

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    b = Browser(chromium())
    yield b
    b.close()


def _injected(b: Browser) -> dict:
    """What a successful injection would have left in the DOM."""
    return b.eval("""(() => ({
        scripts: Array.from(document.scripts).filter(s => s.type !== 'application/json').length,
        imgs: document.querySelectorAll('img').length,
        iframes: document.querySelectorAll('iframe').length,
        bold: document.querySelectorAll('main b').length - document.querySelectorAll('.pcts b').length,
        links: Array.from(document.querySelectorAll('a')).filter(a => !a.getAttribute('href').startsWith('#')).length,
        svgOnload: document.querySelectorAll('svg[onload]').length,
        flameRects: document.querySelectorAll('.fg svg rect').length,
        text: document.body.innerText,
    }))()""")


def _assert_clean(b: Browser, url: str, scripts_expected: int) -> dict:
    p = b.problems(url)
    assert p["dialogs"] == [], f"a dialog opened: {p['dialogs']}"
    assert p["errors"] == [], f"console errors: {p['errors']}"
    assert p["requests"] == [], f"network requests: {p['requests']}"
    dom = _injected(b)
    assert dom["scripts"] == scripts_expected, "a script element was injected"
    assert dom["imgs"] == 0 and dom["iframes"] == 0 and dom["svgOnload"] == 0 and dom["links"] == 0
    assert dom["bold"] == 0, "target markup was interpreted"
    return dom


def _capture_hostile(tmp_path: Path) -> tuple[Path, Path, dict]:
    prog_dir = tmp_path / "prog"
    prog_dir.mkdir()
    prog = prog_dir / (HOSTILE[1] + ".py")   # a real file whose name is markup
    prog.write_text(HOSTILE_PROGRAM)
    collectors = "ebpf,py-spy,process" if os.geteuid() == 0 else "py-spy,process"
    cap, html, js = tmp_path / "hostile.diag", tmp_path / "hostile.html", tmp_path / "hostile.json"
    sampled = tmp_path / "py-spy-samples"
    d = subprocess.Popen([sys.executable, "-m", "diag", "run", "--collectors", collectors, "--out", str(cap),
                          "--html", str(html), "--json", str(js), "--quiet", "--",
                          sys.executable, str(prog), str(sampled), HOSTILE[0], HOSTILE[3]],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # `diag run` starts py-spy once the program has exec'd; when the manifest says py-spy samples
    # (or could not), the program is told to finish its counted rounds
    deadline = time.monotonic() + 120
    while d.poll() is None and time.monotonic() < deadline:
        try:
            entry = json.loads((cap / "manifest.json").read_text())["collectors"].get("py-spy") or {}
        except (OSError, ValueError):
            entry = {}
        if entry.get("status") not in (None, "pending"):
            break
        time.sleep(0.02)
    sampled.touch()
    try:
        _, err = d.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        d.kill()
        d.wait()
        pytest.fail("diag run did not end within 300 s")
    if d.returncode != 0 and not html.exists():
        pytest.fail(f"diag run failed ({d.returncode}): {err[-2000:]}")
    report = json.loads(js.read_text())
    pyspy = report["collectors"].get("py-spy") or {}
    if pyspy.get("status") in ("unavailable", "not-applicable"):
        pytest.skip(f"py-spy cannot run here: {pyspy.get('reason')}")
    # where it can run, it must have sampled: the program ran its rounds after py-spy started
    assert pyspy.get("status") == "ok", pyspy
    return html, js, report


def test_hostile_target_report_is_inert_in_chromium(browser, tmp_path):
    # GIVEN a real capture of a program whose names and argv are HTML/script
    html, js, report = _capture_hostile(tmp_path)
    frames = {f for st in report["flame"]["all"]["stacks"] for f in st["frames"]}
    assert any("<script>alert(1)</script>" in f for f in frames), "the hostile names were not sampled"
    assert HOSTILE[1] in " ".join(report["target"]["cmdline"])
    # WHEN it is opened from disk in Chromium
    url = browser.open(html)
    # THEN nothing runs, nothing loads, and the hostile names show as text
    dom = _assert_clean(browser, url, scripts_expected=3)
    assert dom["flameRects"] > 0, "the flame graph was not drawn"
    assert "<script>alert(1)</script>" in dom["text"]
    assert html.stat().st_size < 2_000_000
    browser.screenshot(ARTIFACTS / "hostile-report.png")


def _poison(obj, path=()):
    """Every string (and the names used as keys) of a report made hostile; structural enums kept."""
    keep = {"schema", "severity", "status", "family", "fd_kind", "source"}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            key = k + HOSTILE[len(out) % len(HOSTILE)] if path and path[-1] in ("families", "collectors",
                                                                                "breakdown") else k
            out[key] = v if k in keep else _poison(v, path + (k,))
        return out
    if isinstance(obj, list):
        return [_poison(v, path) for v in obj]
    if isinstance(obj, str):
        return obj + HOSTILE[len(obj) % len(HOSTILE)]
    return obj


def test_every_section_with_hostile_strings_and_requests_is_inert(browser, tmp_path):
    # GIVEN a real report (spike timelines when eBPF ran) with requests and slow-request stacks
    # added, and every string in it made hostile
    _, _, report = _capture_hostile(tmp_path)
    r = copy.deepcopy(report)
    stacks = r["flame"]["all"]["stacks"]
    r["flame"]["slow"] = {"total": sum(s["count"] for s in stacks[:5]), "dropped": 0, "stacks": stacks[:5]}
    t0 = r["window"]["start_ns"]
    tid = r["timelines"][0]["tid"] if r["timelines"] else 1
    r["requests"] = {"count": 100, "slow_threshold_ns": 5_000_000, "slow_count": 3,
                     "latency": {"p50_ns": 900_000, "p90_ns": 2_000_000, "p99_ns": 9_000_000, "max_ns": 20_000_000},
                     "histogram": [[2 ** k * 1000, max(1, 40 - abs(k - 9) * 6)] for k in range(4, 15)],
                     "breakdown": {"sync": 7_000_000, "cpu": 2_000_000, "other": 500_000},
                     "slowest": [{"start_ns": t0 + 1_000_000, "end_ns": t0 + 21_000_000, "latency_ns": 20_000_000,
                                  "tid": tid, "path": "/<script>alert(7)</script>", "method": "GET"}]}
    hostile = _poison(r)
    from diag import render
    from diag.render import html as html_render

    out = tmp_path / "poisoned.html"
    render.write(hostile, str(out), html_render)
    # WHEN opened
    url = browser.open(out)
    # THEN still inert, both flame graphs drawn
    dom = _assert_clean(browser, url, scripts_expected=3)
    assert browser.eval("document.querySelectorAll('.fg svg').length") == 2
    assert dom["flameRects"] > 0
    # clicking a stack sample fills the panel with text, not markup
    clicked = browser.eval("""(() => { const m = document.querySelector('svg.tl rect[data-i]');
        if (!m) return null; m.dispatchEvent(new MouseEvent('click', {bubbles: true}));
        const box = m.closest('article').querySelector('.stack.picked');
        return {hidden: box.hidden, items: box.querySelectorAll('li').length,
                elements: box.querySelectorAll('li *').length}; })()""")
    if clicked is not None:
        assert clicked["hidden"] is False and clicked["items"] > 0 and clicked["elements"] == 0
    p = browser.problems(url)
    assert p["dialogs"] == [] and p["errors"] == [] and p["requests"] == []
    browser.screenshot(ARTIFACTS / "poisoned-report.png")


def test_empty_report_renders_without_script_errors(browser, tmp_path):
    from diag.analyze.report import build_report
    from diag.model import Dataset
    from diag import render
    from diag.render import html as html_render

    out = tmp_path / "empty.html"
    render.write(build_report(Dataset()), str(out), html_render)
    url = browser.open(out)
    _assert_clean(browser, url, scripts_expected=1)
    assert "Nothing to diagnose" in browser.eval("document.body.innerText")


def test_compare_page_is_inert_in_chromium(browser, tmp_path):
    from diag import compare as cmp_mod
    from diag import gates

    base = {"schema": "diag.report/1", "target": {"comm": HOSTILE[0]}, "window": {"duration_s": 1.0},
            "latency": {"syscalls": [], "families": {"sync" + HOSTILE[1]: {"count": 1, "total_ns": 5, "p99_ns": 5,
                                                                          "max_ns": 5}}},
            "findings": [{"id": "disk-sync", "severity": "warning", "share": 0.5, "summary": HOSTILE[2]}]}
    cur = copy.deepcopy(base)
    cur["findings"] = [{"id": "file-io", "severity": "critical", "share": 0.7, "summary": HOSTILE[4]}]
    c = cmp_mod.compare(base, cur, HOSTILE[5], HOSTILE[6])
    out = tmp_path / "compare.html"
    cmp_mod.write_html(c, str(out), gates.evaluate_compare(gates.parse_all(["finding:new"]), base, cur))
    url = browser.open_static(out)
    _assert_clean(browser, url, scripts_expected=0)
    assert "1 of 1 gates failed" in browser.eval("document.body.innerText")
    browser.screenshot(ARTIFACTS / "compare.png")
