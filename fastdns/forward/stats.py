"""Plain counters for the forward and cache plugins.

Kept as Python ints and lists on the objects that count, so the hot path
pays one attribute add; the worker copies them into its shm counter block
every 0.5 s (``fastdns/server/forwarding.py``) and the metrics exporter
reports them with CoreDNS's names (``fastdns/control/metrics.py``).
"""

from __future__ import annotations

import bisect

# prometheus.ExponentialBuckets(0.00025, 2, 16): CoreDNS's duration buckets
# (plugin/pkg/... and plugin/forward/metrics.go use the same 16).
DURATION_BUCKETS = tuple(0.00025 * 2**k for k in range(16))


class Histogram:
    """One Prometheus histogram series: per-bucket counts (not cumulative), sum, count.

    ``counts[i]`` counts observations <= ``DURATION_BUCKETS[i]`` and above the
    previous bound; ``counts[-1]`` those above the last bound (+Inf only).
    """

    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(DURATION_BUCKETS, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[int]:
        out, run = [], 0
        for c in self.counts:
            run += c
            out.append(run)
        return out
