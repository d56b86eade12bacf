"""Bundled example targets: small real servers with known latency faults, for the demo and tests."""
