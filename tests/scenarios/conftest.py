"""The scenario suite's score table, printed at the end of the run."""
from __future__ import annotations

SCORES: list[dict] = []


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not SCORES:
        return
    tr = terminalreporter
    tr.section("diag scenario scores")
    tr.write_line(f"{'scenario':22s} {'round':>5s} {'expected':20s} {'rank-1 (severity)':34s} {'share':>6s} "
                  f"{'report s':>8s}  result")
    ok = 0
    for s in SCORES:
        got = f"{s['got'] or '-'} ({s['severity'] or 'none'})"
        tr.write_line(f"{s['scenario']:22s} {s['round']:>5d} {s['expected'] or '(healthy)':20s} {got:34s} "
                      f"{s['share']:>6.0%} {s['seconds']:>8.1f}  {'PASS' if s['pass'] else 'FAIL'}")
        ok += s["pass"]
    tr.write_line(f"{ok} of {len(SCORES)} scenario runs as expected")
