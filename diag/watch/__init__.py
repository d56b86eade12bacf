"""`diag watch`: an always-on flight recorder that keeps what happened before latency crossed a line.

    watcher.py    the loop: stats every second, triggers, dumps in a worker thread, restarts
    agentproc.py  the eBPF agent in segment mode (a bounded ring of time segments on disk)
    hist.py       sliding windows over the agent's cumulative in-kernel histograms
    triggers.py   the gate grammar (diag/gates.py) as triggers: window, hold time, minimum slow count
    ringdump.py   the ring's segments of a window merged into an ordinary capture stream
    dump.py       one dump: ring window + full collectors for --after + report
    retention.py  dumps kept by count and disk use, oldest first; a free-space floor
    target.py     a pid, a port or a name, found again when the server restarts
    events.py     one line per event on stdout (text or JSON lines)

The ring is documented in docs/watch.md.
"""
