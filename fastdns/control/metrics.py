"""CoreDNS's Prometheus metrics, computed at scrape time from shared memory.

Workers never call a metrics library: each one increments plain uint64
words in its own counter block (``fastdns/ipc/counters.py``). A scrape
reads every block and adds them up here, in a prometheus-client *custom
collector* (``registry.register(collector)``; ``collect()`` yields metric
families), so the per-query cost of metrics is a few memory increments.

Names, label names, help texts and buckets are CoreDNS's, because operators'
dashboards and alerts query them (``plugin/metrics/vars/vars.go``,
``plugin/metrics/README.md``, ``plugin/reload/metrics.go``,
``plugin/kubernetes/metrics.go``):

- ``coredns_dns_requests_total{server,zone,view,proto,family,type}``
- ``coredns_dns_responses_total{server,zone,view,rcode,plugin}``
- ``coredns_dns_request_duration_seconds{server,zone,view}`` (TimeBuckets)
- ``coredns_dns_request_size_bytes{server,zone,view,proto}`` and
  ``coredns_dns_response_size_bytes{server,zone,view,proto}``
- ``coredns_dns_do_requests_total{server,zone,view}``
- ``coredns_build_info``, ``coredns_panics_total``, ``coredns_plugin_enabled``,
  ``coredns_reload_failed_total``, ``coredns_reload_version_info``,
  ``coredns_kubernetes_dns_programming_duration_seconds{service_kind}``
- forward (``plugin/forward/metrics.go``, ``plugin/pkg/proxy/metrics.go``, 1.11+):
  ``coredns_proxy_request_duration_seconds{proxy_name,to,rcode}``,
  ``coredns_proxy_healthcheck_failures_total{proxy_name,to}``,
  ``coredns_proxy_conn_cache_hits_total`` / ``_misses_total{proxy_name,to,proto}``,
  ``coredns_forward_healthcheck_broken_total``,
  ``coredns_forward_max_concurrent_rejects_total``

plus ``fastdns_*`` for what only fastdns has (snapshot generation and size,
compile and publish time, worker restarts, slow-path and TCP counters, state
file versions refused and whether one is pending), and
``process_*`` summed over the supervisor, the control process and every
live worker (CoreDNS is one process; its dashboards chart these).

The ``coredns_dns_*`` series carry the ``server`` (listener) and ``zone``
that handled each query, from the workers' per-(server, zone) rows
(``counters.row_table``: at most ``counters.ROW_MAX`` pairs, the rest as
``server="other", zone="other"``; a name no zone on its listener matches is
``zone="dropped"``). The ``coredns_cache_*`` series carry each cache's own
``server``, ``zones`` and ``view`` from the workers' cache rows
(``tables.cache_table``: one row per cached block, at most
``layout.CACHE_ROWS``).

This module is the collector; beside it: ``metrics_labels`` (the label
values a Corefile gives), ``metrics_values`` (what the control process
observes itself, the buckets), ``metrics_plugins`` (the cache and forward
families) and ``metrics_process`` (``process_*``).
"""

from __future__ import annotations

import os
import platform
import threading
from collections.abc import Iterator, Sequence

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

import fastdns
from fastdns.control.metrics_labels import SERVER_RCODES, BlockLabels, rcode_label, server_label
from fastdns.control.metrics_plugins import cache_forward_metrics, plugin_metrics, proxy_metrics
from fastdns.control.metrics_process import process_metrics
from fastdns.control.metrics_values import ControlValues, Histogram, hist_buckets
from fastdns.ipc import layout, readout, shm, tables
from fastdns.ipc.stats import SharedStats
from fastdns.plugins.counting import decode as counting_decode
from fastdns.plugins.counting import plugin_hash

# -- the collector -------------------------------------------------------------------


class DnsCollector(Collector):
    """Sums every worker's counter block at scrape time into CoreDNS's metrics.

    ``blocks``: the counter blocks, one memoryview per worker slot (from
    ``ControlSegment.counters(i)``, taken once: that call keeps a view per
    call). ``labels``: the Corefile's server blocks. The DNS series are
    reported per (server, zone) from the workers' rows (ipc/tables.py); only
    while no worker block carries rows of this Corefile's table (workers
    that have not read a Corefile) are the totals reported under the first
    block's first server and zone.
    """

    def __init__(self, blocks: Sequence[memoryview], labels: Sequence[BlockLabels],
                 values: ControlValues | None = None, stats: SharedStats | None = None,
                 process_metrics: bool = True,
                 cache_table: tuple[tuple[str, str, str], ...] = (),
                 plugin_table: tuple[tuple[str, ...], ...] = ()) -> None:
        self.blocks = list(blocks)
        self.labels = list(labels) or [BlockLabels(servers=(server_label(53),), zones=(".",))]
        self.values = values if values is not None else ControlValues()
        self.stats = stats
        self.process_metrics = process_metrics
        # Counter monotonicity across worker restarts: a respawned worker
        # may start from a zeroed block; what its predecessor counted up to
        # the last scrape is carried here so sums never go backwards.
        self._last: list[dict | None] = [None] * len(self.blocks)
        self._retired: list[dict] = []
        self._lock = threading.Lock()
        # The forward slot table the workers' blocks must carry (ipc/tables.py):
        # derived from the same Corefile, in the same order, as the workers do.
        self.fwd_table = tables.upstream_table(u for b in self.labels for u in b.upstreams)
        self.fwd_hash = tables.table_hash(self.fwd_table)
        self._retired_fwd: list[tuple[int, int]] = list(readout.FWD_ZERO)
        # The (server, zone) row table, derived as the workers derive theirs
        # (counters.listener_zones over the same blocks), and each row's view
        # and answering plugin (the block that serves the zone on that server).
        listeners: dict[str, list[str]] = {}
        self._row_meta: dict[tuple[str, str], tuple[str, str]] = {}
        for blk in self.labels:
            for srv in blk.servers:
                listeners.setdefault(srv, []).extend(blk.zones)
                for z in blk.zones:
                    self._row_meta.setdefault((srv, z), (blk.view, blk.answering_plugin))
                self._row_meta.setdefault((srv, tables.ZONE_DROPPED), (blk.view, ""))
        self.rows_table = tables.row_table({k: tuple(dict.fromkeys(v))
                                         for k, v in listeners.items()})
        self.rows_hash = tables.rows_hash(self.rows_table)
        self._retired_rows: list[tuple[int, int]] = list(readout.ROWS_ZERO)
        # The cache rows' (server, zones, view), derived as the workers derive
        # theirs (tables.cache_table); () reports the caches' sum under the
        # first block, as before the rows existed.
        self.cache_table = tuple(cache_table)
        self.cache_hash = tables.cache_hash(self.cache_table)
        self._retired_cache: list[tuple[int, int]] = list(readout.CACHE_ZERO)
        # The plugins' series (plugins/counting.py), derived as the workers do.
        self.plugin_table = tuple(plugin_table)
        self.plugin_hash = plugin_hash(self.plugin_table)
        self._retired_plugin: list[tuple[int, int]] = list(readout.PLUGIN_ZERO)

    @classmethod
    def for_segment(cls, ctl: shm.ControlSegment, labels: Sequence[BlockLabels],
                    values: ControlValues | None = None,
                    stats: SharedStats | None = None,
                    cache_table: tuple[tuple[str, str, str], ...] = (),
                    plugin_table: tuple[tuple[str, ...], ...] = ()) -> DnsCollector:
        return cls([ctl.counters(i) for i in range(ctl.nworkers)], labels, values, stats,
                   cache_table=cache_table, plugin_table=plugin_table)

    # -- reading ------------------------------------------------------------

    def read(self) -> tuple[dict, list[dict]]:
        """(sum over all workers, ever, of their counters; each slot's current dict).

        The per-upstream ``forward`` words count only from a block whose
        slot table is ours; a block that does not (yet) carry it, e.g. a
        worker that has not taken a reloaded Corefile in, keeps the words
        last read from it. They are retired on their own when they go back.
        """
        current = [readout.read_counters(b) for b in self.blocks]
        zero = list(readout.FWD_ZERO)
        zero_rows = list(readout.ROWS_ZERO)
        zero_cache = list(readout.CACHE_ZERO)
        zero_plugin = list(readout.PLUGIN_ZERO)
        with self._lock:
            for i, cur in enumerate(current):
                last = self._last[i]
                if cur["forward_table"] != self.fwd_hash:
                    cur["forward"] = last["forward"] if last is not None else zero
                if cur["rows_table"] != self.rows_hash:  # the same rule for the rows
                    cur["rows"] = last["rows"] if last is not None else zero_rows
                if cur["cache_table"] != self.cache_hash:  # and for the cache rows
                    cur["cache_rows"] = last["cache_rows"] if last is not None else zero_cache
                if cur["plugin_table"] != self.plugin_hash:  # and the plugins' counters
                    cur["plugin_rows"] = last["plugin_rows"] if last is not None else zero_plugin
                if last is not None:
                    if _total_queries(cur) < _total_queries(last):
                        self._retired.append({**_strip(last), "forward": zero,
                                              "rows": zero_rows, "cache_rows": zero_cache,
                                              "plugin_rows": zero_plugin})
                        self._retired = [readout.sum_counters(self._retired)]
                    if readout.forward_sum(cur["forward"]) < readout.forward_sum(last["forward"]):
                        self._retired_fwd = readout.sum_counters(
                            [{"forward": self._retired_fwd}, {"forward": last["forward"]}]
                        )["forward"]
                    if readout.forward_sum(cur["rows"]) < readout.forward_sum(last["rows"]):
                        self._retired_rows = readout.sum_counters(
                            [{"rows": self._retired_rows}, {"rows": last["rows"]}])["rows"]
                    if readout.forward_sum(cur["cache_rows"]) < readout.forward_sum(
                            last["cache_rows"]):
                        self._retired_cache = readout.sum_counters(
                            [{"r": self._retired_cache}, {"r": last["cache_rows"]}])["r"]
                    if readout.forward_sum(cur["plugin_rows"]) < readout.forward_sum(
                            last["plugin_rows"]):
                        self._retired_plugin = readout.sum_counters(
                            [{"r": self._retired_plugin}, {"r": last["plugin_rows"]}])["r"]
                self._last[i] = cur
            total = readout.sum_counters([_strip(c) for c in current] + self._retired)
            total["forward"] = readout.sum_counters(
                [{"forward": total["forward"]}, {"forward": self._retired_fwd}])["forward"]
            total["rows"] = readout.sum_counters(
                [{"rows": total["rows"]}, {"rows": self._retired_rows}])["rows"]
            total["cache_rows"] = readout.sum_counters(
                [{"r": total["cache_rows"]}, {"r": self._retired_cache}])["r"]
            total["plugin_rows"] = readout.sum_counters(
                [{"r": total["plugin_rows"]}, {"r": self._retired_plugin}])["r"]
        return total, current

    def series(self, c: dict, current: Sequence[dict] = ()) -> list[tuple[list[str], str, dict]]:
        """([server, zone, view], answering plugin, DNS counts) per (server, zone).

        From the rows (counters.decode_rows); the totals under the first
        block only while no worker keeps rows at all (``current``: each
        block's read_counters; workers started without a Corefile). A worker
        whose rows describe another table (a reload in progress) is not
        reported under ours, nor as totals, until it takes ours.
        """
        out = []
        rows = readout.decode_rows(c["rows"], self.rows_table) if any(
            n for _, n in c["rows"]) else {}
        for (server, zone), counts in rows.items():
            view, plugin = self._row_meta.get((server, zone), ("", ""))
            out.append(([server, zone, view], plugin, counts))
        if not out and not any(cur.get("rows_table") for cur in current):
            first = self.labels[0]
            out.append(([first.servers[0], first.zones[0], first.view],
                         first.answering_plugin, c))
        return out

    # -- prometheus-client's Collector protocol -------------------------------

    def collect(self) -> Iterator[Metric]:
        total, current = self.read()
        yield from self._dns_metrics(total, current)
        carried = any(cur.get("cache_table") == self.cache_hash for cur in current)
        yield from cache_forward_metrics(total, current, self.labels,
                                         self.cache_table if carried else ())
        yield from proxy_metrics(total, self.fwd_table)
        yield from plugin_metrics(counting_decode(total["plugin_rows"], self.plugin_table))
        yield from self._process_level(total, current)
        if self.process_metrics:
            yield from process_metrics(self._pids(current))

    def _dns_metrics(self, c: dict, current: Sequence[dict] = ()) -> Iterator[Metric]:
        # One pass over the (server, zone) series fills every per-zone family;
        # they are yielded in the order the exposition has always had.
        zone = ["server", "zone", "view"]
        req = CounterMetricFamily(
            "coredns_dns_requests_total",
            "Counter of DNS requests made per zone, protocol and family.",
            labels=[*zone, "proto", "family", "type"])
        do = CounterMetricFamily(
            "coredns_dns_do_requests_total",
            "Counter of DNS requests with DO bit set per zone.", labels=zone)
        resp = CounterMetricFamily(
            "coredns_dns_responses_total", "Counter of response status codes.",
            labels=[*zone, "rcode", "plugin"])
        dur = HistogramMetricFamily(
            "coredns_dns_request_duration_seconds",
            "Histogram of the time (in seconds) each request took per zone.", labels=zone)
        sizes = {
            key: HistogramMetricFamily(name, help_, labels=[*zone, "proto"])
            for key, name, help_ in (
                ("request_size", "coredns_dns_request_size_bytes",
                 "Size of the EDNS0 UDP buffer in bytes (64K for TCP) per zone and protocol."),
                ("response_size", "coredns_dns_response_size_bytes",
                 "Size of the returned response in bytes."),
            )
        }
        for base, answering, s in self.series(c, current):
            for (proto, family, qtype), n in s["queries"].items():
                if n:
                    req.add_metric([*base, proto, str(family), qtype], n)
            if s["do_requests"]:
                do.add_metric(base, s["do_requests"])
            for name, n in s["responses"].items():
                if not n or name == "dropped":  # CoreDNS counts only responses written
                    continue
                rc = rcode_label(name)
                # a dropped-zone answer is the server core's (errorAndMetricsFunc)
                resp.add_metric([*base, rc, "" if rc in SERVER_RCODES else answering], n)
            lat = s["latency"]
            if lat["count"]:
                dur.add_metric(base, hist_buckets(lat), lat["sum"])
            for key, fam in sizes.items():
                for proto, h in s[key].items():
                    if h["count"]:
                        fam.add_metric([*base, proto], hist_buckets(h), float(h["sum"]))
        yield from (req, do, resp, dur, *sizes.values())

        yield CounterMetricFamily(
            "coredns_panics_total", "A metrics that counts the number of panics.",
            value=c["slow"]["servfail"])

        enabled = GaugeMetricFamily(
            "coredns_plugin_enabled", "A metric that monitors which plugin(s) is(are) enabled.",
            labels=["server", "zone", "view", "name"])
        for blk in self.labels:
            for srv in blk.servers:
                for z in blk.zones:
                    for p in blk.enabled:
                        enabled.add_metric([srv, z, blk.view, p], 1)
        yield enabled

    def _process_level(self, c: dict, current: list[dict]) -> Iterator[Metric]:
        v = self.values
        info = GaugeMetricFamily(
            "coredns_build_info",
            "A metric with a constant '1' value labeled by version, revision, and goversion "
            "from which CoreDNS was built.",
            labels=["version", "revision", "goversion"])
        info.add_metric([fastdns.__version__, _REVISION,
                         f"python{platform.python_version()}"], 1)
        yield info

        stats = self.stats
        yield CounterMetricFamily(
            "coredns_reload_failed_total", "Counter of the number of failed reload attempts.",
            value=stats.get(layout.S_RELOAD_FAILED) if stats else 0)
        if v.corefile_sha512:
            ver = GaugeMetricFamily(
                "coredns_reload_version_info",
                "A metric with a constant '1' value labeled by hash, and value which type of "
                "hash generated.", labels=["hash", "value"])
            ver.add_metric(["sha512", v.corefile_sha512], 1)
            yield ver

        prog = HistogramMetricFamily(
            "coredns_kubernetes_dns_programming_duration_seconds",
            "Histogram of the time (in seconds) it took to program a dns instance.",
            labels=["service_kind"])
        for kind, h in sorted(v.programming.items()):
            buckets, total = h.cumulative()
            prog.add_metric([kind], buckets, total)
        yield prog

        # plugin/health/overloaded.go; no server label: overload is process-wide.
        yield _histogram("coredns_health_request_duration_seconds",
                         "Histogram of the time (in seconds) each request took.",
                         v.health_seconds)
        yield CounterMetricFamily("coredns_health_request_failures_total",
                                  "The number of times the health check failed.",
                                  value=v.health_failures)

        for name, help_, value in (
            ("fastdns_snapshot_generation", "Generation of the snapshot image published last.",
             v.generation),
            ("fastdns_snapshot_image_bytes", "Size of the snapshot image published last.",
             v.image_bytes),
            ("fastdns_snapshot_published_timestamp_seconds",
             "Unix time the last snapshot was published.", v.published_at),
        ):
            yield GaugeMetricFamily(name, help_, value=value)
        for name, help_, h in (
            ("fastdns_snapshot_compile_duration_seconds",
             "Time to compile cluster state into a snapshot image.", v.compile_seconds),
            ("fastdns_snapshot_publish_duration_seconds",
             "Time to write a snapshot image to shared memory and announce it.",
             v.publish_seconds),
        ):
            yield _histogram(name, help_, h)

        src = v.state_source
        if src is not None:
            yield CounterMetricFamily(
                "fastdns_state_rejected_total",
                "State file versions refused (unreadable, gone, empty, cut short); the last "
                "good state stayed in force.", value=src.rejected)
            yield GaugeMetricFamily(
                "fastdns_state_pending_bad",
                "1 while the state file on disk is refused and an older state is served.",
                value=1 if src.pending_bad else 0)
        yield CounterMetricFamily("fastdns_worker_restarts_total",
                                  "Worker processes respawned by the supervisor.",
                                  value=stats.get(layout.S_WORKER_RESTARTS) if stats else 0)
        yield CounterMetricFamily("fastdns_control_restarts_total",
                                  "Control processes respawned by the supervisor.",
                                  value=stats.get(layout.S_CONTROL_RESTARTS) if stats else 0)
        yield GaugeMetricFamily("fastdns_workers", "Worker slots (the --workers setting).",
                                value=len(self.blocks))
        gen = GaugeMetricFamily("fastdns_worker_generation",
                                "Snapshot generation each worker serves.", labels=["worker"])
        per_worker = CounterMetricFamily(
            "fastdns_worker_requests_total",
            "DNS requests read by each worker slot (SO_REUSEPORT balance).", labels=["worker"])
        for i, cur in enumerate(current):
            gen.add_metric([str(i)], cur["generation"])
            per_worker.add_metric([str(i)], _total_queries(cur))
        yield gen
        yield per_worker

        slow = CounterMetricFamily(
            "fastdns_slow_path_total",
            "Queries the fast path handed to the Python slow path, by outcome.",
            labels=["result"])
        for result in ("pod", "refused", "servfail", "other"):
            slow.add_metric([result], c["slow"][result])
        yield slow
        tcp = CounterMetricFamily("fastdns_tcp_connections_total",
                                  "TCP connections by event.", labels=["event"])
        for event, n in c["tcp"].items():
            tcp.add_metric([event], n)
        yield tcp
        for name, help_, n in (
            ("fastdns_dns_dropped_total", "Queries read and never answered.",
             c["responses"].get("dropped", 0)),
            ("fastdns_send_errors_total", "Answers the kernel refused to send.",
             c["send_errors"]),
            ("fastdns_oversize_datagrams_total", "Datagrams larger than a receive slot.",
             c["oversize"]),
            ("fastdns_udp_batches_total", "UDP receive batches that returned packets.",
             c["batches"]),
            ("fastdns_worker_remaps_total", "Snapshot remaps by workers.", c["remaps"]),
        ):
            yield CounterMetricFamily(name, help_, value=n)

    def _pids(self, current: list[dict]) -> list[int]:
        pids = {os.getpid()}
        if self.stats is not None:
            pids.add(self.stats.get(layout.S_SUPERVISOR_PID))
        pids.update(cur["pid"] for cur in current)
        pids.discard(0)
        return sorted(pids)


def _histogram(name: str, help_: str, h: Histogram) -> HistogramMetricFamily:
    """A family of one unlabelled series: what the control process timed itself."""
    fam = HistogramMetricFamily(name, help_)
    buckets, total = h.cumulative()
    fam.add_metric([], buckets, total)
    return fam


def _strip(d: dict) -> dict:
    return {k: v for k, v in d.items()
            if k not in ("pid", "generation", "forward_table", "rows_table", "cache_table")}


def _total_queries(d: dict) -> int:
    return sum(d["queries"].values())


def _revision() -> str:
    return os.environ.get("FASTDNS_REVISION", "")


_REVISION = _revision()


# -- wiring --------------------------------------------------------------------------


def make_registry(collector: DnsCollector) -> CollectorRegistry:
    """A registry holding only fastdns's collector (no python_gc_* of one process)."""
    registry = CollectorRegistry()
    registry.register(collector)
    return registry
