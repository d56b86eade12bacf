"""Benchmarks for diag: the observer effect of each collector, latency at a constant rate, the
collector-defaults study and the analysis speed.

Run with `make bench` (full) or `make bench BENCH_ARGS=--quick` (for iteration); bench/run.py says
what each part does and how long it takes. Results go to bench/RESULTS.md; raw data, the compiled
load generator and large generated logs to bench/work/ (gitignored). Not part of the test suite:
no timing is asserted anywhere.
"""
