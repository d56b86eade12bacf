"""Export to the observability stack people already run: OpenTelemetry (OTLP/HTTP) and Prometheus.

    summary.py     what is exported, from the watcher's stats or from a capture (backend-neutral)
    prometheus.py  `--metrics-port`: a scrape endpoint with classic histograms (prometheus-client)
    otlp.py        `--otlp-endpoint`: exponential histograms, counters and finding log records

The client libraries are an optional extra (`pip install 'diag[export]'`, installed by `make
setup`): diag runs without them, and a flag that needs them says so in one line (exit 2).
"""
from __future__ import annotations

from diag.errors import EXIT_BAD_INPUT, DiagError


def require(flag: str, modules: tuple[str, ...]) -> None:
    """One line and exit 2 when `flag` was given but its client library is not installed."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m.split(".")[0]) is None
               or _missing_sub(m)]
    if missing:
        raise DiagError(f"{flag} needs {', '.join(missing)}: pip install 'diag[export]' "
                        f"(opentelemetry-sdk, opentelemetry-exporter-otlp-proto-http, prometheus-client)",
                        EXIT_BAD_INPUT)


def _missing_sub(mod: str) -> bool:
    import importlib

    try:
        importlib.import_module(mod)
        return False
    except ImportError:
        return True


PROMETHEUS = ("prometheus_client",)
OTLP = ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")
