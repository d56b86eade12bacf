"""diag: syscall-level latency diagnostics for Linux servers."""

__version__ = "0.1.0"
