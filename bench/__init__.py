"""Benchmarks for diag: the observer effect of each collector and the analysis speed.

Run with `make bench` (full, < 20 min on the 2-core reference machine) or
`make bench BENCH_ARGS=--quick` (a few minutes, for iteration). Results go to bench/RESULTS.md;
raw data and large generated logs to bench/work/ (gitignored). Not part of the test suite: no
timing is asserted anywhere.
"""
