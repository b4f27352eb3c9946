"""What the control process observes itself for the metrics, and CoreDNS's buckets.

Histograms here are observed in the control process (compile and publish
time, DNS programming latency, the health self-check), not in workers; the
workers' histograms are counter words read at scrape time
(fastdns/ipc/readout.py). Both print ``le`` as CoreDNS does.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# plugin/plugin.go: TimeBuckets = prometheus.ExponentialBuckets(0.00025, 2, 16)
TIME_BUCKETS = tuple(0.00025 * 2**k for k in range(16))
# plugin/kubernetes/metrics.go: "From 1 millisecond to ~17 minutes."
PROGRAMMING_BUCKETS = tuple(0.001 * 2**k for k in range(20))
# plugin/plugin.go: SlimTimeBuckets = prometheus.ExponentialBuckets(0.00025, 10, 5)
SLIM_TIME_BUCKETS = tuple(0.00025 * 10**k for k in range(5))
# fastdns_snapshot_*_duration_seconds: 0.5 ms .. ~16 s.
SNAPSHOT_BUCKETS = tuple(0.0005 * 2**k for k in range(16))


class Histogram:
    """A minimal thread-safe histogram (prometheus_client's would add ``_created`` series)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        i = 0
        while i < len(self.bounds) and value > self.bounds[i]:
            i += 1
        with self._lock:
            self.counts[i] += 1
            self.sum += value

    def cumulative(self) -> tuple[list[tuple[str, float]], float]:
        with self._lock:
            counts, total = list(self.counts), self.sum
        return cumulative_buckets(self.bounds, counts), total


def le_label(bound: float) -> str:
    """The ``le`` label as CoreDNS prints it: "0.00025", "100", "+Inf".

    client_golang writes it with ``strconv.AppendFloat(f, 'g', -1, 64)``, so
    whole numbers carry no ".0" (prometheus_client's floatToGoString would
    print "100.0", which a query for ``le="100"`` does not match).
    """
    if bound == float("inf"):
        return "+Inf"
    if bound == int(bound) and abs(bound) < 1e21:
        return str(int(bound))
    return repr(float(bound))


def cumulative_buckets(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    cum = 0
    for bound, c in zip((*bounds, float("inf")), counts, strict=True):
        cum += c
        out.append((le_label(bound), cum))
    return out


@dataclass
class ControlValues:
    """What the control process reports about itself (thread-safe setters).

    The control process calls these; nothing here runs per query.
    """

    generation: int = 0
    image_bytes: int = 0
    zones: int = 0
    published_at: float = 0.0
    corefile_sha512: str = ""
    compile_seconds: Histogram = field(default_factory=lambda: Histogram(SNAPSHOT_BUCKETS))
    publish_seconds: Histogram = field(default_factory=lambda: Histogram(SNAPSHOT_BUCKETS))
    programming: dict[str, Histogram] = field(default_factory=dict)
    health_seconds: Histogram = field(default_factory=lambda: Histogram(SLIM_TIME_BUCKETS))
    health_failures: int = 0
    # the --state/--demo source (control/statefile.py StateFileSource): its
    # ``rejected`` and ``pending_bad``, read at scrape time; None: no state file
    state_source: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot_published(self, generation: int, image_bytes: int,
                           compile_seconds: float | None = None,
                           publish_seconds: float | None = None) -> None:
        """One snapshot went out: its generation, size, and how long it took."""
        with self._lock:
            self.generation = generation
            self.image_bytes = image_bytes
            self.published_at = time.time()
        if compile_seconds is not None:
            self.compile_seconds.observe(compile_seconds)
        if publish_seconds is not None:
            self.publish_seconds.observe(publish_seconds)

    def snapshot_adopted(self, generation: int, image_bytes: int, published_at: float) -> None:
        """A restarted control process found ``generation`` in force (published by
        its predecessor at ``published_at``, unix time): report it until it
        publishes one of its own."""
        with self._lock:
            self.generation = generation
            self.image_bytes = image_bytes
            self.published_at = published_at

    def observe_programming_latency(self, seconds: float,
                                    service_kind: str = "headless_with_selector") -> None:
        """Time from an EndpointSlice change (its ``endpoints.kubernetes.io/
        last-change-trigger-time``) to the snapshot that serves it being published."""
        with self._lock:
            h = self.programming.get(service_kind)
            if h is None:
                h = self.programming[service_kind] = Histogram(PROGRAMMING_BUCKETS)
        h.observe(seconds)

    def observe_health(self, seconds: float, ok: bool) -> None:
        """One self-check of ``/health`` (``httpd.HttpEndpoints(health_probe=...)``)."""
        self.health_seconds.observe(seconds)
        if not ok:
            with self._lock:
                self.health_failures += 1

    def set_corefile(self, text: str | bytes) -> None:
        """The Corefile in force (``coredns_reload_version_info``, plugin/reload)."""
        raw = text.encode() if isinstance(text, str) else text
        with self._lock:
            self.corefile_sha512 = hashlib.sha512(raw).hexdigest()


def hist_buckets(h: dict) -> list[tuple[str, float]]:
    """A histogram read from a counter block as (``le``, cumulative count) pairs."""
    return [(le_label(bound), cum) for bound, cum in h["buckets"]]
