"""Which requests the probe exports: all of them while the rate is modest, else the slow tail and
1 in N ordinary exemplars, steered every second from the in-kernel latency histogram.

Every request lands in the histograms (exact counts and percentiles to the histogram's 19 %
resolution); a record per request only matters for the slow ones the analysis explains, and for
a sample of the rest (what "typical" looks like). The threshold is the lower bound of the slot
holding a high quantile of the last second's latencies, never above p98, so the analysis's own
slow set (p99 of the whole capture, at least the 10 slowest) is exported even when the
distribution drifts between seconds; a user's --slow lowers it further.
"""
from __future__ import annotations

from dataclasses import dataclass

from diag.capture.ebpf_stream import loglinear_lower

DEFAULT_BUDGET = 2000          # records per second: ~0.4 MB/s of capture, negligible agent time
MAX_EXPORT_QUANTILE = 0.98


@dataclass(frozen=True)
class Export:
    threshold_ns: int          # export every request at least this slow
    mask: int                  # and 1 in (mask + 1) of the others
    rate: int                  # requests in the second it was decided on

    @property
    def every_request(self) -> bool:
        return self.threshold_ns == 0 and self.mask == 0


def decide(counts: list[int], sub_bits: int, budget: int = DEFAULT_BUDGET,
           slow_ns: int | None = None) -> Export:
    """From one second's histogram deltas (`counts[slot]`), the export for the next second."""
    n = sum(counts)
    if n <= budget:
        return Export(0, 0, n)
    q = max(MAX_EXPORT_QUANTILE, 1.0 - 0.5 * budget / n)
    want = q * n
    seen = 0
    thr = 0
    for slot, c in enumerate(counts):
        if seen + c > want:
            thr = loglinear_lower(slot, sub_bits)
            break
        seen += c
    if slow_ns is not None:
        thr = min(thr, slow_ns)
    ordinary = seen
    mask = 0
    while ordinary / (mask + 1) > budget / 2 and mask < (1 << 20):
        mask = mask * 2 + 1
    return Export(thr, mask, n)
