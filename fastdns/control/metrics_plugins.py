"""The metrics the cache and forward plugins own (registry ``metrics``: coredns_cache_*,
coredns_proxy_*, coredns_forward_*), from the counters summed over workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from fastdns.control.metrics_labels import BlockLabels, server_label
from fastdns.control.metrics_values import hist_buckets
from fastdns.ipc import layout, readout

# -- forward and cache (issue 7): CoreDNS plugin/cache/metrics.go, plugin/forward ----


def cache_forward_metrics(c: dict, current: list[dict],
                          labels: Sequence[BlockLabels]) -> Iterator[Metric]:
    """``coredns_cache_*`` and ``coredns_forward_max_concurrent_rejects_total``.

    ``c`` is the monotonic sum over workers (counters), ``current`` each
    worker's block now (the entries gauge). Hits served by the fast path's
    C table (``c_hits``) are requests and hits too, as in CoreDNS where every
    query through the plugin is one, and the misses the C forwarder answered
    through the cache (``c_forwarded``) are requests and misses. Like the dns metrics, everything is
    reported under the first block's server label and zones ".".
    """
    cache = c.get("cache")
    if cache is None:
        return
    first = labels[0] if labels else None
    server = first.servers[0] if first else server_label(53)
    view = first.view if first else ""
    base = [server, ".", view]
    c_hits = cache["c_hits"]
    c_total = c_hits["success"] + c_hits["denial"]
    c_missed = cache.get("c_forwarded", 0)

    fam = CounterMetricFamily("coredns_cache_requests_total",
                              "The count of cache requests.", labels=["server", "zones", "view"])
    fam.add_metric(base, cache["requests"] + c_total + c_missed)
    yield fam
    fam = CounterMetricFamily("coredns_cache_hits_total", "The count of cache hits.",
                              labels=["server", "type", "zones", "view"])
    for kind in ("success", "denial"):
        fam.add_metric([server, kind, ".", view], cache["hits"][kind] + c_hits[kind])
    yield fam
    fam = CounterMetricFamily("coredns_cache_misses_total", "The count of cache misses.",
                              labels=["server", "zones", "view"])
    fam.add_metric(base, cache["misses"] + c_missed)
    yield fam
    for key, name, help_ in (
        ("prefetch", "coredns_cache_prefetch_total", "The number of times the cache has "
         "prefetched a cached item."),
        ("served_stale", "coredns_cache_served_stale_total", "The number of requests served "
         "from stale cache entries."),
    ):
        fam = CounterMetricFamily(name, help_, labels=["server", "zones", "view"])
        fam.add_metric(base, cache[key])
        yield fam
    fam = CounterMetricFamily("coredns_cache_evictions_total", "The count of cache evictions.",
                              labels=["server", "type", "zones", "view"])
    for kind in ("success", "denial"):
        fam.add_metric([server, kind, ".", view], cache["evictions"][kind])
    yield fam
    gauge = GaugeMetricFamily("coredns_cache_entries", "The number of elements in the cache.",
                              labels=["server", "type", "zones", "view"])
    for kind in ("success", "denial"):
        gauge.add_metric([server, kind, ".", view],
                         sum(w.get("cache", {}).get("entries", {}).get(kind, 0)
                             for w in current))
    yield gauge
    yield CounterMetricFamily(
        "coredns_forward_max_concurrent_rejects_total",
        "Counter of the number of queries rejected because the concurrent queries were at "
        "maximum.", value=c.get("forward_max_concurrent_rejects", 0))


# -- per-upstream forward: CoreDNS plugin/pkg/proxy/metrics.go, plugin/forward/metrics.go --

PROXY_NAME = "forward"  # the proxy_name label the forward plugin gives its proxies


def proxy_metrics(c: dict, table: tuple[str, ...]) -> Iterator[Metric]:
    """``coredns_proxy_*{proxy_name="forward",to}``, ``coredns_forward_healthcheck_broken_total``.

    ``c["forward"]`` is the summed per-upstream region (``ipc/layout.py``),
    ``table`` its slot table (the ``to`` of each slot). The histogram's
    ``_count`` per (to, rcode) is the number of answers from that upstream
    with that rcode, as in CoreDNS (one observation per ``proxy.Connect``).
    """
    fwd = readout.decode_forward(c.get("forward", readout.FWD_ZERO), table)
    ups = fwd["upstreams"]
    dur = HistogramMetricFamily(
        "coredns_proxy_request_duration_seconds", "Histogram of the time each request took.",
        labels=["proxy_name", "to", "rcode"])
    for to, u in ups.items():
        for rc, h in u["durations"].items():
            dur.add_metric([PROXY_NAME, to, proxy_rcode(rc)], hist_buckets(h), h["sum"])
    yield dur
    fails = CounterMetricFamily(
        "coredns_proxy_healthcheck_failures_total",
        "Counter of the number of failed healthchecks.", labels=["proxy_name", "to"])
    for to, u in ups.items():
        if u["healthcheck_failures"]:
            fails.add_metric([PROXY_NAME, to], u["healthcheck_failures"])
    yield fails
    for kind, help_ in (("hits", "Counter of connection cache hits per upstream and protocol."),
                        ("misses",
                         "Counter of connection cache misses per upstream and protocol.")):
        fam = CounterMetricFamily(f"coredns_proxy_conn_cache_{kind}_total", help_,
                                  labels=["proxy_name", "to", "proto"])
        for to, u in ups.items():
            for proto in layout.FWD_CONN_PROTOS:
                n = u["conn"][(proto, kind)]
                if n:
                    fam.add_metric([PROXY_NAME, to, proto], n)
        yield fam
    yield CounterMetricFamily(
        "coredns_forward_healthcheck_broken_total",
        "Counter of the number of complete failures of the healthchecks.",
        value=fwd["healthcheck_broken"])


def proxy_rcode(rcode: int) -> str:
    """CoreDNS proxy.Connect's rcode label: miekg ``RcodeToString``, else the number."""
    return _RCODE_TEXT.get(rcode, str(rcode))


_RCODE_TEXT = dict(enumerate(layout.RCODE_NAMES[:11]))
