"""The Prometheus exporter: worker counter blocks in shared memory, summed at
scrape time, served over real HTTP and read back with prometheus-client's
own text parser. Expected values are computed from what each test wrote,
never from the exporter's reader."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
import urllib.request

import dns.flags
import dns.message
import dns.rcode
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastdns.control import httpd
from fastdns.control import metrics as m
from fastdns.control import metrics_labels as ml
from fastdns.control import metrics_process as mproc
from fastdns.control import metrics_values as mv
from fastdns.ipc import counters as ctr
from fastdns.ipc import layout, shm
from fastdns.ipc.stats import SharedStats
from tests.helpers import Server, free_port, http_get, wait_for

KUBEADM_PLUGINS = ("errors", "health", "ready", "kubernetes", "prometheus", "forward",
                   "cache", "loop", "reload", "loadbalance")
BASE = {"server": "dns://:53", "zone": ".", "view": ""}


@pytest.fixture
def ctl():
    instance = "tm" + secrets.token_hex(6)
    seg = shm.ControlSegment.create(instance, 3)
    yield seg
    seg.close()
    shm.sweep(instance)


@pytest.fixture
def serve():
    """Start the exporter for a collector on an ephemeral port; yields a scrape()."""
    started = []

    def start(collector: m.DnsCollector):
        eps = httpd.HttpEndpoints(httpd.HttpConfig(metrics_addrs=("127.0.0.1:0",)),
                                  m.make_registry(collector))
        eps.start()
        started.append(eps)

        def scrape() -> dict[tuple[str, frozenset], float]:
            with urllib.request.urlopen(eps.url("/metrics"), timeout=5) as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = r.read().decode()
            out = {}
            for fam in text_string_to_metric_families(text):
                for s in fam.samples:
                    out[(s.name, frozenset(s.labels.items()))] = s.value
            scrape.text = text
            return out

        return scrape

    yield start
    for eps in started:
        eps.stop()


def query(name: str, rdtype: str, *, do: bool = False, edns: bool = True) -> bytes:
    q = dns.message.make_query(name, rdtype, use_edns=0 if edns else False, want_dnssec=do)
    return q.to_wire()


def answer(q: bytes, rcode: int = dns.rcode.NOERROR) -> bytes:
    r = dns.message.make_response(dns.message.from_wire(q))
    r.set_rcode(rcode)
    return r.to_wire()


def key(name: str, **labels: str) -> tuple[str, frozenset]:
    return name, frozenset(labels.items())


def labels(**extra: str) -> dict[str, str]:
    return {**BASE, **extra}


def kubeadm_labels() -> list[ml.BlockLabels]:
    return [ml.BlockLabels(servers=(ml.server_label(53),), zones=(".",), plugins=KUBEADM_PLUGINS)]


def samples_named(scraped: dict, name: str) -> dict[frozenset, float]:
    return {lbl: v for (n, lbl), v in scraped.items() if n == name}


def test_requests_and_responses_are_summed_over_workers(ctl, serve):
    w0, w1, w2 = (ctr.Counters(ctl.counters(i)) for i in range(3))
    for i, w in enumerate((w0, w1, w2)):
        w.start(10_000 + i)
    qa = query("web.default.svc.cluster.local", "A")
    qaaaa_do = query("web.default.svc.cluster.local", "AAAA", do=True)
    qsrv = query("_http._tcp.web.default.svc.cluster.local", "SRV", edns=False)
    qhinfo = query("web.default.svc.cluster.local", "HINFO")
    sent = {  # (worker, proto, family, packet, rcode or None for dropped): times
        (w0, 0, 1, qa, dns.rcode.NOERROR): 5,
        (w1, 0, 1, qa, dns.rcode.NOERROR): 7,
        (w1, 1, 2, qaaaa_do, dns.rcode.NXDOMAIN): 3,
        (w2, 1, 1, qsrv, dns.rcode.NOERROR): 2,
        (w2, 0, 2, qhinfo, dns.rcode.REFUSED): 4,
        (w0, 0, 1, qa, None): 1,
    }
    for (w, proto, family, pkt, rcode), n in sent.items():
        for _ in range(n):
            w.query(proto, family, pkt)
            w.response(proto, None if rcode is None else answer(pkt, rcode))

    scraped = serve(m.DnsCollector([ctl.counters(i) for i in range(3)], kubeadm_labels(),
                                   process_metrics=False))()

    assert samples_named(scraped, "coredns_dns_requests_total") == {
        frozenset(labels(proto="udp", family="1", type="A").items()): 13.0,
        frozenset(labels(proto="tcp", family="2", type="AAAA").items()): 3.0,
        frozenset(labels(proto="tcp", family="1", type="SRV").items()): 2.0,
        frozenset(labels(proto="udp", family="2", type="other").items()): 4.0,
    }
    assert samples_named(scraped, "coredns_dns_do_requests_total") == {
        frozenset(BASE.items()): 3.0}
    assert samples_named(scraped, "coredns_dns_responses_total") == {
        frozenset(labels(rcode="NOERROR", plugin="kubernetes").items()): 14.0,
        frozenset(labels(rcode="NXDOMAIN", plugin="kubernetes").items()): 3.0,
        frozenset(labels(rcode="REFUSED", plugin="kubernetes").items()): 4.0,
    }
    assert samples_named(scraped, "fastdns_worker_requests_total") == {
        frozenset({"worker": "0"}.items()): 6.0,
        frozenset({"worker": "1"}.items()): 10.0,
        frozenset({"worker": "2"}.items()): 6.0,
    }
    # The dropped query is a request without a response, as in CoreDNS.
    assert scraped[key("fastdns_dns_dropped_total")] == 1.0
    # Request sizes per proto: count and the exact sum of octets sent.
    udp_octets = 13 * len(qa) + 4 * len(qhinfo)
    tcp_octets = 3 * len(qaaaa_do) + 2 * len(qsrv)
    assert scraped[key("coredns_dns_request_size_bytes_count", **labels(proto="udp"))] == 17
    assert scraped[key("coredns_dns_request_size_bytes_sum", **labels(proto="udp"))] == udp_octets
    assert scraped[key("coredns_dns_request_size_bytes_sum", **labels(proto="tcp"))] == tcp_octets
    resp_udp = 12 * len(answer(qa)) + 4 * len(answer(qhinfo, dns.rcode.REFUSED))
    assert scraped[key("coredns_dns_response_size_bytes_sum", **labels(proto="udp"))] == resp_udp
    assert scraped[key("coredns_dns_response_size_bytes_count", **labels(proto="tcp"))] == 5


def test_histogram_buckets_are_coredns_buckets(ctl, serve):
    w0, w1 = ctr.Counters(ctl.counters(0)), ctr.Counters(ctl.counters(1))
    w0.start(1)
    w1.start(2)
    observed = [0.0001, 0.0002, 0.0003, 0.003, 0.003, 9.0]
    for i, s in enumerate(observed):
        (w0 if i % 2 else w1).latency(s)
    big = query("x" * 63 + "." + "y" * 40 + ".example", "TXT")
    assert 100 < len(big) <= 200
    w0.query(0, 1, big)

    scrape = serve(m.DnsCollector([ctl.counters(i) for i in range(3)], kubeadm_labels(),
                                  process_metrics=False))
    scraped = scrape()

    dur = samples_named(scraped, "coredns_dns_request_duration_seconds_bucket")
    les = [dict(lbl)["le"] for lbl in dur]
    assert les == ["0.00025", "0.0005", "0.001", "0.002", "0.004", "0.008", "0.016", "0.032",
                   "0.064", "0.128", "0.256", "0.512", "1.024", "2.048", "4.096", "8.192",
                   "+Inf"]
    by_le = {dict(lbl)["le"]: v for lbl, v in dur.items()}
    assert by_le["0.00025"] == 2 and by_le["0.0005"] == 3 and by_le["0.004"] == 5
    assert by_le["8.192"] == 5 and by_le["+Inf"] == 6
    assert scraped[key("coredns_dns_request_duration_seconds_count", **BASE)] == 6
    assert scraped[key("coredns_dns_request_duration_seconds_sum", **BASE)] == pytest.approx(
        sum(observed), abs=1e-6)
    # Size buckets print as CoreDNS prints them (le="100", not "100.0").
    assert 'le="100"' in scrape.text and 'le="8291"' in scrape.text and 'le="64000"' in scrape.text
    size = {dict(lbl)["le"]: v for lbl, v in
            samples_named(scraped, "coredns_dns_request_size_bytes_bucket").items()}
    assert size["100"] == 0 and size["200"] == 1 and size["+Inf"] == 1


def test_badvers_is_reported_as_coredns_does(ctl, serve):
    w = ctr.Counters(ctl.counters(0))
    w.start(1)
    q = dns.message.make_query("a.example", "A", use_edns=1)
    r = dns.message.make_response(q)
    r.use_edns(0)
    r.set_rcode(dns.rcode.BADVERS)
    w.query(0, 1, q.to_wire())
    w.response(0, r.to_wire())
    scraped = serve(m.DnsCollector([ctl.counters(0)], kubeadm_labels(),
                                   process_metrics=False))()
    # miekg/dns names rcode 16 BADSIG, and the server core (no plugin) writes it.
    assert samples_named(scraped, "coredns_dns_responses_total") == {
        frozenset(labels(rcode="BADSIG", plugin="").items()): 1.0}


def test_plugin_enabled_lists_handlers_per_server_and_zone(ctl, serve):
    blocks = [
        ml.BlockLabels(servers=(ml.server_label(53),), zones=(".",), plugins=KUBEADM_PLUGINS),
        ml.BlockLabels(servers=(ml.server_label(53, "169.254.20.10"), ml.server_label(53, "::1")),
                      zones=("cluster.local.",), plugins=("errors", "bind", "cache", "forward")),
    ]
    scraped = serve(m.DnsCollector([ctl.counters(0)], blocks, process_metrics=False))()
    got = {(d["server"], d["zone"], d["name"]) for d in
           map(dict, samples_named(scraped, "coredns_plugin_enabled"))}
    assert got == {
        *(("dns://:53", ".", p) for p in
          ("errors", "kubernetes", "prometheus", "forward", "cache", "loop", "loadbalance")),
        *((s, "cluster.local.", p) for s in ("dns://169.254.20.10:53", "dns://[::1]:53")
          for p in ("errors", "cache", "forward")),
    }


def test_unstarted_blocks_read_as_zero_and_build_info(ctl, serve):
    # Garbage in a block whose worker never wrote its magic must not be exported.
    ctl.counters(1)[8 * layout.W_QUERIES:8 * layout.W_QUERIES + 8] = (12345).to_bytes(8, "little")
    scraped = serve(m.DnsCollector([ctl.counters(i) for i in range(3)], kubeadm_labels(),
                                   process_metrics=False))()
    assert samples_named(scraped, "coredns_dns_requests_total") == {}
    info = samples_named(scraped, "coredns_build_info")
    assert len(info) == 1
    (lbl, value), = info.items()
    assert value == 1 and set(dict(lbl)) == {"version", "revision", "goversion"}
    assert scraped[key("coredns_panics_total")] == 0
    assert scraped[key("fastdns_workers")] == 3


def test_counters_stay_monotonic_when_a_worker_block_restarts(ctl, serve):
    w0 = ctr.Counters(ctl.counters(0))
    w0.start(111)
    q = query("a.example", "A")
    for _ in range(6):
        w0.query(0, 1, q)
    w1 = ctr.Counters(ctl.counters(1))
    w1.start(222)
    w1.query(0, 1, q)
    scrape = serve(m.DnsCollector([ctl.counters(i) for i in range(2)], kubeadm_labels(),
                                  process_metrics=False))
    a = key("coredns_dns_requests_total", **labels(proto="udp", family="1", type="A"))
    assert scrape()[a] == 7
    # Worker 0 dies; its replacement starts from a zeroed block and counts 2.
    ctl.counters(0)[:] = bytes(len(ctl.counters(0)))
    w0 = ctr.Counters(ctl.counters(0))
    w0.start(333)
    for _ in range(2):
        w0.query(0, 1, q)
    assert scrape()[a] == 9
    w0.query(0, 1, q)
    assert scrape()[a] == 10


def test_shared_stats_cross_process_counters(ctl, serve):
    # The supervisor and the control process each map the stats area by name.
    supervisor_side = SharedStats.attach(ctl.instance)
    control_side = SharedStats.attach(ctl.instance)
    try:
        supervisor_side.worker_restarted()
        supervisor_side.worker_restarted()
        supervisor_side.control_restarted()
        control_side.reload_failed()
        supervisor_side.set(layout.S_SUPERVISOR_PID, os.getpid())
        scraped = serve(m.DnsCollector([ctl.counters(0)], kubeadm_labels(), stats=control_side,
                                       process_metrics=False))()
        assert scraped[key("fastdns_worker_restarts_total")] == 2
        assert scraped[key("fastdns_control_restarts_total")] == 1
        assert scraped[key("coredns_reload_failed_total")] == 1
    finally:
        supervisor_side.close()
        control_side.close()


def test_control_values(ctl, serve):
    values = mv.ControlValues()
    values.snapshot_published(7, 123_456, compile_seconds=0.012, publish_seconds=0.0007)
    values.snapshot_published(8, 130_000, compile_seconds=0.3)
    values.observe_programming_latency(0.004)
    values.observe_programming_latency(2.5)
    values.set_corefile(".:53 {\n    whoami\n}\n")
    scraped = serve(m.DnsCollector([ctl.counters(0)], kubeadm_labels(), values=values,
                                   process_metrics=False))()
    assert scraped[key("fastdns_snapshot_generation")] == 8
    assert scraped[key("fastdns_snapshot_image_bytes")] == 130_000
    assert scraped[key("fastdns_snapshot_compile_duration_seconds_count")] == 2
    assert scraped[key("fastdns_snapshot_compile_duration_seconds_sum")] == pytest.approx(0.312)
    assert scraped[key("fastdns_snapshot_publish_duration_seconds_count")] == 1
    prog = "coredns_kubernetes_dns_programming_duration_seconds"
    kind = {"service_kind": "headless_with_selector"}
    assert scraped[key(prog + "_count", **kind)] == 2
    assert scraped[key(prog + "_bucket", le="0.004", **kind)] == 1
    assert scraped[key(prog + "_bucket", le="2.048", **kind)] == 1
    assert scraped[key(prog + "_bucket", le="4.096", **kind)] == 2
    ver = samples_named(scraped, "coredns_reload_version_info")
    assert [dict(lbl)["hash"] for lbl in ver] == ["sha512"]
    assert len(dict(next(iter(ver)))["value"]) == 128


def test_process_metrics_sum_over_worker_pids(ctl, serve):
    worker = subprocess.Popen(["sleep", "30"])  # stands in for a worker process
    try:
        w = ctr.Counters(ctl.counters(0))
        w.start(worker.pid)
        scrape = serve(m.DnsCollector([ctl.counters(0)], kubeadm_labels()))
        sleep_stat = mproc.proc_stat(worker.pid)
        own = mproc.proc_stat(os.getpid())
        assert sleep_stat is not None and own is not None
        scraped = scrape()
        assert scraped[key("process_resident_memory_bytes")] >= sleep_stat[1] + own[1] * 0.9
        assert scraped[key("process_cpu_seconds_total")] >= own[0] + sleep_stat[0]
        assert scraped[key("process_open_fds")] >= own[4] // 2 + sleep_stat[4]
        assert scraped[key("process_start_time_seconds")] <= own[3]
        # A dead worker's pid is skipped, not an error.
        worker.kill()
        worker.wait()
        assert scrape()[key("process_resident_memory_bytes")] > 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


@pytest.mark.parametrize(("port", "host", "want"), [
    (53, "", "dns://:53"),
    (1053, "127.0.0.1", "dns://127.0.0.1:1053"),
    (53, "fd00::10", "dns://[fd00::10]:53"),
])
def test_server_label(port, host, want):
    assert ml.server_label(port, host) == want


def test_blocks_from_a_parsed_corefile():
    from fastdns.corefile import config as corefile

    config = corefile.parse_corefile(
        "cluster.local:5353 in-addr.arpa:5353 {\n  bind 127.0.0.1 ::1\n  errors\n"
        "  kubernetes\n  reload\n}\n"
        ".:5353 {\n  whoami\n}\n")
    first, second = ml.blocks_from_config(config)
    assert first.servers == ("dns://127.0.0.1:5353", "dns://[::1]:5353")
    assert first.zones == ("cluster.local.", "in-addr.arpa.")
    assert first.plugins == ("bind", "errors", "kubernetes", "reload")
    assert first.answering_plugin == "kubernetes"
    assert second.servers == ("dns://:5353",) and second.zones == (".",)
    assert second.answering_plugin == "whoami"


def test_health_self_check_feeds_coredns_health_metrics(ctl):
    values = mv.ControlValues()
    collector = m.DnsCollector([ctl.counters(0)], kubeadm_labels(), values=values,
                               process_metrics=False)
    eps = httpd.HttpEndpoints(
        httpd.HttpConfig(metrics_addrs=("127.0.0.1:0",), health_addrs=("127.0.0.1:0",)),
        m.make_registry(collector), health_probe=values.observe_health, probe_interval=0.02)
    eps.start()
    try:
        deadline = time.monotonic() + 5
        while values.health_seconds.cumulative()[0][-1][1] < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        with urllib.request.urlopen(eps.url("/metrics"), timeout=5) as r:
            text = r.read().decode()
    finally:
        eps.stop()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    dur = {s.name: s for s in fams["coredns_health_request_duration_seconds"].samples}
    assert dur["coredns_health_request_duration_seconds_count"].value >= 3
    les = [s.labels["le"] for s in fams["coredns_health_request_duration_seconds"].samples
           if s.name.endswith("_bucket")]
    assert les == ["0.00025", "0.0025", "0.025", "0.25", "2.5", "+Inf"]
    failures = fams["coredns_health_request_failures"].samples[0]
    assert failures.value == 0


# -- end to end: fastdns serve, real queries, a real scrape --------------------


@pytest.mark.slow
def test_end_to_end_counts_match_queries_sent(tmp_path):
    import collections
    import signal

    import dns.query

    dns_port, mport, hport, rport = (free_port(v6=False) for _ in range(4))
    corefile = tmp_path / "Corefile"
    corefile.write_text(f"""\
.:{dns_port} {{
    bind 127.0.0.1
    errors
    health 127.0.0.1:{hport} {{
        lameduck 1s
    }}
    ready 127.0.0.1:{rport}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    prometheus 127.0.0.1:{mport}
}}
""")
    srv = Server(tmp_path, ["--corefile", str(corefile), "--demo", "--workers", "2"], dns_port)
    try:
        ready = f"http://127.0.0.1:{rport}/ready"
        wait_for(lambda: srv.proc.poll() is not None or http_get(ready)[0] == 200, 30)
        assert srv.proc.poll() is None and http_get(ready)[0] == 200, srv.log()
        assert http_get(f"http://127.0.0.1:{hport}/health") == (200, "OK")

        # Exactly these queries, each from its own socket (so SO_REUSEPORT
        # spreads them over both workers), each answered.
        plan = ([("kubernetes.default.svc.cluster.local", "A", "udp")] * 30
                + [("kubernetes.default.svc.cluster.local", "AAAA", "udp")] * 10
                + [("nope.default.svc.cluster.local", "A", "udp")] * 5
                + [("kubernetes.default.svc.cluster.local", "TXT", "tcp")] * 4)
        rcodes: collections.Counter[str] = collections.Counter()
        for name, rdtype, proto in plan:
            q = dns.message.make_query(name, rdtype)
            send = dns.query.udp if proto == "udp" else dns.query.tcp
            r = send(q, "127.0.0.1", port=dns_port, timeout=3)
            rcodes[dns.rcode.to_text(r.rcode())] += 1

        status, text = http_get(f"http://127.0.0.1:{mport}/metrics")
        assert status == 200
        got: dict[tuple[str, frozenset], float] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                got[(s.name, frozenset(s.labels.items()))] = s.value
        base = {"server": f"dns://127.0.0.1:{dns_port}", "zone": ".", "view": ""}

        def lbl(**kw: str) -> frozenset:
            return frozenset({**base, **kw}.items())

        assert samples_named(got, "coredns_dns_requests_total") == {
            lbl(proto="udp", family="1", type="A"): 35.0,
            lbl(proto="udp", family="1", type="AAAA"): 10.0,
            lbl(proto="tcp", family="1", type="TXT"): 4.0,
        }
        assert samples_named(got, "coredns_dns_responses_total") == {
            lbl(rcode=rc, plugin="kubernetes"): float(n) for rc, n in rcodes.items()}
        assert got[("coredns_dns_request_duration_seconds_count", lbl())] == len(plan)
        per_worker = samples_named(got, "fastdns_worker_requests_total")
        assert sorted(dict(k)["worker"] for k in per_worker) == ["0", "1"]
        assert sum(per_worker.values()) == len(plan)
        assert all(v > 0 for v in per_worker.values()), per_worker  # both workers summed
        assert got[("fastdns_snapshot_generation", frozenset())] >= 1
        assert got[("fastdns_snapshot_image_bytes", frozenset())] > 0
        assert {dict(k)["name"] for k in samples_named(got, "coredns_plugin_enabled")} == {
            "errors", "kubernetes", "prometheus"}
    finally:
        returncode = srv.stop(signal.SIGTERM, timeout=15)
    assert returncode == 0, srv.log()
