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
``zone="dropped"``). The ``coredns_cache_*`` series are still reported under
the first block's server and ``zones="."``.

Label values stay bounded: ``server`` and ``zone`` come from the Corefile's
server blocks, ``to`` from its ``forward`` TOs (at most
``counters.FWD_MAX_UPSTREAMS``, the rest as ``to="other"``), never from a
query name.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import platform
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

import fastdns
from fastdns.ipc import layout, readout, shm, tables
from fastdns.ipc.stats import SharedStats

# -- CoreDNS constants ----------------------------------------------------------

# plugin/plugin.go: TimeBuckets = prometheus.ExponentialBuckets(0.00025, 2, 16)
TIME_BUCKETS = tuple(0.00025 * 2**k for k in range(16))
# plugin/kubernetes/metrics.go: "From 1 millisecond to ~17 minutes."
PROGRAMMING_BUCKETS = tuple(0.001 * 2**k for k in range(20))
# plugin/plugin.go: SlimTimeBuckets = prometheus.ExponentialBuckets(0.00025, 10, 5)
SLIM_TIME_BUCKETS = tuple(0.00025 * 10**k for k in range(5))
# fastdns_snapshot_*_duration_seconds: 0.5 ms .. ~16 s.
SNAPSHOT_BUCKETS = tuple(0.0005 * 2**k for k in range(16))

# Plugins that never sit in CoreDNS's handler chain, so never show up in
# coredns_plugin_enabled (plugin/metrics/README.md "Bugs": reload and bind;
# health, ready and debug register no handler either).
NOT_HANDLERS = frozenset({"bind", "health", "ready", "reload", "debug"})

# Rcodes the server core writes in CoreDNS (no plugin ran): plugin label "".
_SERVER_RCODES = frozenset({"FORMERR", "NOTIMP", "BADSIG"})

# The plugins that answer from a block, in the order fastdns's data plane
# tries them; the first one a block has names the ``plugin`` label.
_ANSWERING = ("kubernetes", "hosts", "whoami", "cache", "forward")


def rcode_label(name: str) -> str:
    """CoreDNS's rcode label (``plugin/pkg/rcode.ToString`` over miekg/dns).

    miekg's ``RcodeToString`` maps 16 to ``BADSIG`` (BADVERS shares the
    number, RFC 6891 §9, and its entry is commented out), so CoreDNS reports
    a BADVERS answer as ``BADSIG``.
    """
    return "BADSIG" if name == "BADVERS" else name


server_label = tables.server_label  # dns://:53, dns://127.0.0.1:53, dns://[::1]:53


# -- what the Corefile tells the collector ---------------------------------------


@dataclass(frozen=True)
class BlockLabels:
    """The label values of one Corefile server block.

    ``servers``: one ``server`` label per listen address (``bind`` hosts x
    the block's port); ``zones``: the block keys' zones, normalised
    (``"."``, ``"cluster.local."``); ``plugins``: the directive names in the
    block; ``upstreams``: its ``forward`` TOs as CoreDNS's ``to`` label.
    """

    servers: tuple[str, ...]
    zones: tuple[str, ...]
    plugins: tuple[str, ...] = ()
    view: str = ""
    upstreams: tuple[str, ...] = ()

    @property
    def answering_plugin(self) -> str:
        for name in _ANSWERING:
            if name in self.plugins:
                return name
        return ""


def blocks_from_config(config: object) -> list[BlockLabels]:
    """BlockLabels of a parsed Corefile (``fastdns.corefile.Config``).

    A ``ServerBlock`` has ``zones``, ``port``, ``transport``, ``listen_hosts``
    (``bind`` addresses, or ``("",)``) and ``plugins`` (name -> config, in
    Corefile order). Read by attribute so a test can pass simple objects.
    """
    out = []
    for b in getattr(config, "servers", config):  # type: ignore[union-attr]
        port = int(getattr(b, "port", 53) or 53)
        transport = getattr(b, "transport", "dns") or "dns"
        hosts = tuple(getattr(b, "listen_hosts", ()) or ()) or ("",)
        plugins = getattr(b, "plugins", ())
        names = tuple(plugins) if isinstance(plugins, dict) else tuple(
            p if isinstance(p, str) else getattr(p, "name", str(p)) for p in plugins)
        out.append(BlockLabels(
            servers=tuple(dict.fromkeys(server_label(port, h, transport) for h in hosts)),
            zones=tuple(str(z) for z in getattr(b, "zones", (".",))),
            plugins=names,
            view=str(getattr(b, "view", "") or ""),
            upstreams=tuple(tables.config_upstreams([b])),
        ))
    return out


# -- histograms observed in the control process -----------------------------------


class _Histogram:
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
        return _buckets(self.bounds, counts), total


def _le(bound: float) -> str:
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


def _buckets(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    out, cum = [], 0
    for bound, c in zip((*bounds, float("inf")), counts, strict=True):
        cum += c
        out.append((_le(bound), cum))
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
    compile_seconds: _Histogram = field(default_factory=lambda: _Histogram(SNAPSHOT_BUCKETS))
    publish_seconds: _Histogram = field(default_factory=lambda: _Histogram(SNAPSHOT_BUCKETS))
    programming: dict[str, _Histogram] = field(default_factory=dict)
    health_seconds: _Histogram = field(default_factory=lambda: _Histogram(SLIM_TIME_BUCKETS))
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
                h = self.programming[service_kind] = _Histogram(PROGRAMMING_BUCKETS)
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
                 process_metrics: bool = True) -> None:
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

    @classmethod
    def for_segment(cls, ctl: shm.ControlSegment, labels: Sequence[BlockLabels],
                    values: ControlValues | None = None,
                    stats: SharedStats | None = None) -> DnsCollector:
        return cls([ctl.counters(i) for i in range(ctl.nworkers)], labels, values, stats)

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
        with self._lock:
            for i, cur in enumerate(current):
                last = self._last[i]
                if cur["forward_table"] != self.fwd_hash:
                    cur["forward"] = last["forward"] if last is not None else zero
                if cur["rows_table"] != self.rows_hash:  # the same rule for the rows
                    cur["rows"] = last["rows"] if last is not None else zero_rows
                if last is not None:
                    if _total_queries(cur) < _total_queries(last):
                        self._retired.append({**_strip(last), "forward": zero,
                                              "rows": zero_rows})
                        self._retired = [readout.sum_counters(self._retired)]
                    if readout.forward_sum(cur["forward"]) < readout.forward_sum(last["forward"]):
                        self._retired_fwd = readout.sum_counters(
                            [{"forward": self._retired_fwd}, {"forward": last["forward"]}]
                        )["forward"]
                    if readout.forward_sum(cur["rows"]) < readout.forward_sum(last["rows"]):
                        self._retired_rows = readout.sum_counters(
                            [{"rows": self._retired_rows}, {"rows": last["rows"]}])["rows"]
                self._last[i] = cur
            total = readout.sum_counters([_strip(c) for c in current] + self._retired)
            total["forward"] = readout.sum_counters(
                [{"forward": total["forward"]}, {"forward": self._retired_fwd}])["forward"]
            total["rows"] = readout.sum_counters(
                [{"rows": total["rows"]}, {"rows": self._retired_rows}])["rows"]
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
        yield from cache_forward_metrics(total, current, self.labels)
        yield from proxy_metrics(total, self.fwd_table)
        yield from self._process_level(total, current)
        if self.process_metrics:
            yield from _process_metrics(self._pids(current))

    def _dns_metrics(self, c: dict, current: Sequence[dict] = ()) -> Iterator[Metric]:
        series = self.series(c, current)

        req = CounterMetricFamily(
            "coredns_dns_requests_total",
            "Counter of DNS requests made per zone, protocol and family.",
            labels=["server", "zone", "view", "proto", "family", "type"])
        for base, _plugin, s in series:
            for (proto, family, qtype), n in s["queries"].items():
                if n:
                    req.add_metric([*base, proto, str(family), qtype], n)
        yield req

        do = CounterMetricFamily(
            "coredns_dns_do_requests_total",
            "Counter of DNS requests with DO bit set per zone.",
            labels=["server", "zone", "view"])
        for base, _plugin, s in series:
            if s["do_requests"]:
                do.add_metric(base, s["do_requests"])
        yield do

        resp = CounterMetricFamily(
            "coredns_dns_responses_total", "Counter of response status codes.",
            labels=["server", "zone", "view", "rcode", "plugin"])
        for base, answering, s in series:
            for name, n in s["responses"].items():
                if not n or name == "dropped":  # CoreDNS counts only responses written
                    continue
                rc = rcode_label(name)
                # a dropped-zone answer is the server core's (errorAndMetricsFunc)
                resp.add_metric([*base, rc, "" if rc in _SERVER_RCODES else answering], n)
        yield resp

        dur = HistogramMetricFamily(
            "coredns_dns_request_duration_seconds",
            "Histogram of the time (in seconds) each request took per zone.",
            labels=["server", "zone", "view"])
        for base, _plugin, s in series:
            lat = s["latency"]
            if lat["count"]:
                dur.add_metric(base, _hist_buckets(lat), lat["sum"])
        yield dur

        for key, name, help_ in (
            ("request_size", "coredns_dns_request_size_bytes",
             "Size of the EDNS0 UDP buffer in bytes (64K for TCP) per zone and protocol."),
            ("response_size", "coredns_dns_response_size_bytes",
             "Size of the returned response in bytes."),
        ):
            fam = HistogramMetricFamily(name, help_,
                                        labels=["server", "zone", "view", "proto"])
            for base, _plugin, s in series:
                for proto, h in s[key].items():
                    if h["count"]:
                        fam.add_metric([*base, proto], _hist_buckets(h), float(h["sum"]))
            yield fam

        yield CounterMetricFamily(
            "coredns_panics_total", "A metrics that counts the number of panics.",
            value=c["slow"]["servfail"])

        enabled = GaugeMetricFamily(
            "coredns_plugin_enabled", "A metric that monitors which plugin(s) is(are) enabled.",
            labels=["server", "zone", "view", "name"])
        for blk in self.labels:
            names = [p for p in dict.fromkeys(blk.plugins) if p not in NOT_HANDLERS]
            for srv in blk.servers:
                for z in blk.zones:
                    for p in names:
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
        health = HistogramMetricFamily("coredns_health_request_duration_seconds",
                                       "Histogram of the time (in seconds) each request took.")
        buckets, total = v.health_seconds.cumulative()
        health.add_metric([], buckets, total)
        yield health
        yield CounterMetricFamily("coredns_health_request_failures_total",
                                  "The number of times the health check failed.",
                                  value=v.health_failures)

        yield GaugeMetricFamily("fastdns_snapshot_generation",
                                "Generation of the snapshot image published last.",
                                value=v.generation)
        yield GaugeMetricFamily("fastdns_snapshot_image_bytes",
                                "Size of the snapshot image published last.",
                                value=v.image_bytes)
        yield GaugeMetricFamily("fastdns_snapshot_published_timestamp_seconds",
                                "Unix time the last snapshot was published.",
                                value=v.published_at)
        for name, help_, h in (
            ("fastdns_snapshot_compile_duration_seconds",
             "Time to compile cluster state into a snapshot image.", v.compile_seconds),
            ("fastdns_snapshot_publish_duration_seconds",
             "Time to write a snapshot image to shared memory and announce it.",
             v.publish_seconds),
        ):
            fam = HistogramMetricFamily(name, help_)
            buckets, total = h.cumulative()
            fam.add_metric([], buckets, total)
            yield fam

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


# -- forward and cache (issue 7): CoreDNS plugin/cache/metrics.go, plugin/forward ----


def cache_forward_metrics(c: dict, current: list[dict],
                          labels: Sequence[BlockLabels]) -> Iterator[Metric]:
    """``coredns_cache_*`` and ``coredns_forward_max_concurrent_rejects_total``.

    ``c`` is the monotonic sum over workers (counters), ``current`` each
    worker's block now (the entries gauge). Hits served by the fast path's
    C table (``c_hits``) are requests and hits too, as in CoreDNS where every
    query through the plugin is one. Like the dns metrics, everything is
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

    fam = CounterMetricFamily("coredns_cache_requests_total",
                              "The count of cache requests.", labels=["server", "zones", "view"])
    fam.add_metric(base, cache["requests"] + c_total)
    yield fam
    fam = CounterMetricFamily("coredns_cache_hits_total", "The count of cache hits.",
                              labels=["server", "type", "zones", "view"])
    for kind in ("success", "denial"):
        fam.add_metric([server, kind, ".", view], cache["hits"][kind] + c_hits[kind])
    yield fam
    fam = CounterMetricFamily("coredns_cache_misses_total", "The count of cache misses.",
                              labels=["server", "zones", "view"])
    fam.add_metric(base, cache["misses"])
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
            dur.add_metric([PROXY_NAME, to, proxy_rcode(rc)], _hist_buckets(h), h["sum"])
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


def _strip(d: dict) -> dict:
    return {k: v for k, v in d.items()
            if k not in ("pid", "generation", "forward_table", "rows_table")}


def _total_queries(d: dict) -> int:
    return sum(d["queries"].values())


def _hist_buckets(h: dict) -> list[tuple[str, float]]:
    return [(_le(bound), cum) for bound, cum in h["buckets"]]


def _revision() -> str:
    return os.environ.get("FASTDNS_REVISION", "")


_REVISION = _revision()


# -- process_* over all fastdns processes ----------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGESIZE = mmap.PAGESIZE


def _boot_time() -> float:
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


_BTIME = _boot_time()


def _proc_stat(pid: int) -> tuple[float, int, int, float, int] | None:
    """(cpu seconds, rss bytes, vsize bytes, start time, open fds) of a live process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        fields = raw[raw.rindex(b")") + 2:].split()
        # proc(5): fields from "state" (3rd) on; utime 14, stime 15, starttime 22,
        # vsize 23, rss 24 (pages).
        cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
        start = _BTIME + int(fields[19]) / _CLK_TCK
        vsize, rss = int(fields[20]), int(fields[21]) * _PAGESIZE
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError, IndexError):
        return None
    return cpu, rss, vsize, start, fds


def _process_metrics(pids: Iterable[int]) -> Iterator[Metric]:
    """The client libraries' ``process_*`` metrics, summed over fastdns's processes."""
    stats = [s for s in map(_proc_stat, pids) if s is not None]
    if not stats:
        return
    yield CounterMetricFamily("process_cpu_seconds_total",
                              "Total user and system CPU time spent in seconds.",
                              value=sum(s[0] for s in stats))
    yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size in bytes.",
                            value=sum(s[1] for s in stats))
    yield GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                            value=sum(s[2] for s in stats))
    yield GaugeMetricFamily("process_start_time_seconds",
                            "Start time of the process since unix epoch in seconds.",
                            value=min(s[3] for s in stats))
    yield GaugeMetricFamily("process_open_fds", "Number of open file descriptors.",
                            value=sum(s[4] for s in stats))


# -- wiring --------------------------------------------------------------------------


def make_registry(collector: DnsCollector) -> CollectorRegistry:
    """A registry holding only fastdns's collector (no python_gc_* of one process)."""
    registry = CollectorRegistry()
    registry.register(collector)
    return registry
