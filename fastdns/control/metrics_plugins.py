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


def cache_forward_metrics(c: dict, current: list[dict], labels: Sequence[BlockLabels],
                          cache_table: tuple[tuple[str, str, str], ...] = ()
                          ) -> Iterator[Metric]:
    """``coredns_cache_*`` and ``coredns_forward_max_concurrent_rejects_total``.

    ``c`` is the monotonic sum over workers (counters), ``current`` each
    worker's block now (the entries gauge). With ``cache_table`` (the
    workers carry its rows) each cache is reported with its own server,
    zones and view (CoreDNS plugin/cache/metrics.go; ipc/tables.py
    cache_table). Without, every cache's sum goes under the first block's
    server label and zones "." (workers that never took a Corefile with a
    cache). Hits served by the fast path's C table are requests and hits
    too, and the misses the C forwarder answered through the cache requests
    and misses, as in CoreDNS where every query through the plugin is one.
    """
    cache = c.get("cache")
    if cache is None:
        return
    if cache_table:
        rows = readout.decode_cache_rows(c["cache_rows"], len(cache_table))
        now = [readout.decode_cache_rows(w.get("cache_rows", readout.CACHE_ZERO),
                                         len(cache_table)) for w in current]
        for k, row in enumerate(rows):
            row["entries"] = {kind: sum(w[k]["entries"][kind] for w in now)
                              for kind in ("success", "denial")}
        series = [(list(lbl), row) for lbl, row in zip(cache_table, rows, strict=True)]
    else:
        first = labels[0] if labels else None
        server = first.servers[0] if first else server_label(53)
        view = first.view if first else ""
        c_hits = cache["c_hits"]
        c_missed = cache.get("c_forwarded", 0)
        series = [([server, ".", view], {
            "requests": cache["requests"] + c_hits["success"] + c_hits["denial"] + c_missed,
            "misses": cache["misses"] + c_missed,
            "hits": {k: cache["hits"][k] + c_hits[k] for k in ("success", "denial")},
            "prefetch": cache["prefetch"], "served_stale": cache["served_stale"],
            "evictions": cache["evictions"],
            "entries": {kind: sum(w.get("cache", {}).get("entries", {}).get(kind, 0)
                                  for w in current) for kind in ("success", "denial")},
        })]
    yield from _cache_families(series)
    yield from _rejects(c)


# (key, family, help, per type): CoreDNS plugin/cache/metrics.go, in its order
_CACHE_FAMILIES = (
    ("requests", "coredns_cache_requests_total", "The count of cache requests.", False),
    ("hits", "coredns_cache_hits_total", "The count of cache hits.", True),
    ("misses", "coredns_cache_misses_total", "The count of cache misses.", False),
    ("prefetch", "coredns_cache_prefetch_total",
     "The number of times the cache has prefetched a cached item.", False),
    ("served_stale", "coredns_cache_served_stale_total",
     "The number of requests served from stale cache entries.", False),
    ("evictions", "coredns_cache_evictions_total", "The count of cache evictions.", True),
    ("entries", "coredns_cache_entries", "The number of elements in the cache.", True),
)


def _cache_families(series: list[tuple[list[str], dict]]) -> Iterator[Metric]:
    """The coredns_cache_* families of ``[([server, zones, view], counts)]``."""
    for key, name, help_, typed in _CACHE_FAMILIES:
        kind = GaugeMetricFamily if key == "entries" else CounterMetricFamily
        if not typed:
            fam = kind(name, help_, labels=["server", "zones", "view"])
            for lbl, row in series:
                fam.add_metric(lbl, row[key])
        else:
            fam = kind(name, help_, labels=["server", "type", "zones", "view"])
            for (server, zones, view), row in series:
                for t in ("success", "denial"):
                    fam.add_metric([server, t, zones, view], row[key][t])
        yield fam


def _rejects(c: dict) -> Iterator[Metric]:
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


# -- the plugins' own counters (plugins/counting.py) ---------------------------------

#: family -> (help, label names), as the plugins' metrics.go declare them
PLUGIN_FAMILIES: dict[str, tuple[str, list[str]]] = {
    "coredns_acl_blocked_requests_total": ("Counter of DNS requests being blocked.",
                                           ["server", "zone", "view"]),
    "coredns_acl_filtered_requests_total": ("Counter of DNS requests being filtered.",
                                            ["server", "zone", "view"]),
    "coredns_acl_allowed_requests_total": ("Counter of DNS requests being allowed.",
                                           ["server", "view"]),
    "coredns_acl_dropped_requests_total": ("Counter of DNS requests being dropped.",
                                           ["server", "zone", "view"]),
    "coredns_template_matches_total": ("Counter of template regex matches.",
                                       ["server", "zone", "view", "class", "type"]),
    "coredns_autopath_success_total": ("Counter of requests that did autopath.", ["server"]),
    "coredns_dns64_requests_translated_total": ("Counter of DNS requests translated by dns64.",
                                                ["server"]),
}


def plugin_metrics(counts: dict[tuple[str, ...], int]) -> Iterator[Metric]:
    """The plugin counters by family: only series that counted something, as a
    CounterVec shows only the label values it was asked for."""
    fams: dict[str, CounterMetricFamily] = {}
    for series, n in counts.items():
        name = series[0]
        spec = PLUGIN_FAMILIES.get(name)
        if spec is None or not n:
            continue
        fam = fams.get(name)
        if fam is None:
            fam = fams[name] = CounterMetricFamily(name, spec[0], labels=spec[1])
        fam.add_metric(list(series[1:]), n)
    yield from fams.values()
