"""CoreDNS's ``server`` and ``zone`` labels per server block on the DNS metrics.

CoreDNS labels every ``coredns_dns_*`` series with the listener that read the
query (``server``) and the zone of the block that matched its name
(``zone``), and counts a name no block on the listener serves under
``zone="dropped"`` (``plugin/metrics/vars/report.go``, ``core/dnsserver/
server.go`` errorAndMetricsFunc). fastdns counts each query into a
per-(server, zone) row of its worker's counters block (``fastdns/ipc/tables.py``);
the C fast path matches the row with its own twin of the matcher.

The served test runs one Corefile of four blocks on two listeners
(``cluster.local`` with kubernetes, ``in-addr.arpa`` and ``example.test``
forwarding to a loopback test upstream on 127.0.0.1, ``example.test`` again
on 127.0.0.2, no ``.`` block), once on the Cython path and once with
``FASTDNS_NO_EXTENSIONS=1``, sends known numbers of queries over UDP and
TCP and compares the scrape's per-(server, zone) deltas exactly.
"""

from __future__ import annotations

import os
import random
import signal
import socket

import dns.message
import dns.rcode
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastdns.codec import NO_EXTENSIONS
from fastdns.control import metrics as m
from fastdns.control import metrics_labels as ml
from fastdns.corefile.config import parse_corefile
from fastdns.ipc import counters as ctr
from fastdns.ipc import layout, tables
from tests.helpers import DEMO, KUBERNETES, ROOT, Server, ask, free_port, http_get, wait_for
from tests.upstreams import UpstreamThread

try:
    from fastdns.server import _udp
except ImportError:  # pragma: no cover - the extension was not built
    _udp = None

NODELOCAL = (ROOT / "tests" / "corefiles" / "nodelocaldns.Corefile").read_text()
KUBEADM = (ROOT / "tests" / "corefiles" / "kubeadm.Corefile").read_text()
OTHER = "127.0.0.2"


def _block() -> memoryview:
    block = memoryview(bytearray(layout.COUNTERS_SIZE))
    block[:8].cast("Q")[0] = layout.MAGIC
    return block


def _query(name: str, rdtype: str = "A", **kw) -> bytes:
    return dns.message.make_query(name, rdtype, **kw).to_wire()


# -- layout, matching and export, no server ------------------------------------------


def test_row_region_follows_every_other_word():
    assert layout.W_ROWS_TABLE >= layout.FWD_END
    assert layout.W_ROWS_TABLE > layout.HOLD_LINGERING_WORD
    assert layout.ROWS_END * 8 <= layout.COUNTERS_SIZE
    assert (layout.W_ROWS * 8) % 64 == 0 and (layout.ROW_WORDS * 8) % 64 == 0  # whole cache lines


@pytest.mark.parametrize("text", [NODELOCAL, KUBEADM], ids=["nodelocal", "kubeadm"])
def test_exporter_and_workers_derive_the_same_rows(text):
    config = parse_corefile(text, "Corefile")
    collector = m.DnsCollector([], ml.blocks_from_config(config), process_metrics=False)
    assert collector.rows_table == tables.row_table(tables.listener_zones(config))


def test_nodelocal_rows():
    table = tables.row_table(tables.listener_zones(parse_corefile(NODELOCAL, "Corefile")))
    zones = ("cluster.local.", "in-addr.arpa.", "ip6.arpa.", ".", "dropped")
    assert table == tuple((f"dns://{a}:53", z) for a in ("169.254.20.10", "10.96.0.10")
                          for z in zones)


def test_longest_zone_wins_and_case_does_not_matter():
    lr = tables.listener_rows({"dns://:53": ("in-addr.arpa.", ".", "cluster.local.",
                                          "svc.cluster.local.")})["dns://:53"]
    assert lr.match(_query("A.Default.SVC.Cluster.Local.")) == 3
    assert lr.match(_query("cluster.local.", "SOA")) == 2
    assert lr.match(_query("xcluster.local.")) == 1  # a label boundary, not a string suffix
    assert lr.match(_query("1.0.96.10.in-addr.arpa.", "PTR")) == 0
    assert lr.match(b"\x00\x01\x01\x00\x00\x01") == lr.dropped  # no question: dropped
    lr2 = tables.listener_rows({"dns://:53": ("cluster.local.",)})["dns://:53"]
    assert lr2.match(_query("example.com.")) == lr2.dropped == 1


@pytest.mark.skipif(_udp is None, reason="the Cython extension is not built")
def test_c_rows_match_python_rows():
    lr = tables.listener_rows({"dns://:53": ("cluster.local.", "in-addr.arpa.", "ip6.arpa.",
                                          "svc.cluster.local.", ".")})["dns://:53"]
    names = ["a.b.svc.cluster.local.", "A.CLUSTER.LOCAL.", "cluster.local.", "xcluster.local.",
             "1.0.0.10.in-addr.arpa.", "x.ip6.arpa.", "example.com.", "."]
    rnd = random.Random(7)
    good = [_query(n, want_dnssec=bool(i % 2)) for i, n in enumerate(names)]
    packets = list(good)
    for _ in range(3000):  # damaged copies: every path through the name walk
        p = bytearray(rnd.choice(good))
        for _ in range(rnd.randint(1, 3)):
            p[rnd.randrange(len(p))] = rnd.getrandbits(8)
        packets.append(bytes(p[: rnd.randint(0, len(p))]))
    for pkt in packets:
        c_block, py_block = bytearray(layout.COUNTERS_SIZE), bytearray(layout.COUNTERS_SIZE)
        row = _udp.count_udp_row(c_block, lr.zones, lr.dropped, 2, pkt)
        assert row == lr.match(pkt), pkt
        ctr.Counters(memoryview(py_block)).query(0, 2, pkt, row)
        assert c_block == py_block, pkt


def test_exporter_reports_each_row_under_its_labels():
    config = parse_corefile(NODELOCAL, "Corefile")
    collector = m.DnsCollector([_block()], ml.blocks_from_config(config), process_metrics=False)
    c = ctr.Counters(collector.blocks[0])
    listeners = tables.listener_zones(config)
    c.take_rows(tables.row_table(listeners))
    lr = tables.listener_rows(listeners)["dns://10.96.0.10:53"]
    for name, n in (("a.cluster.local.", 3), ("1.0.96.10.in-addr.arpa.", 2), ("x.test.", 1)):
        for _ in range(n):
            q = _query(name, want_dnssec=True)
            row = lr.match(q)
            c.query(1, 1, q, row)
            c.response(1, q[:2] + b"\x81\x80" + q[4:], row)
            c.latency(0.001, 1, row)
    got = _samples(collector)
    srv = "dns://10.96.0.10:53"
    assert got[("coredns_dns_requests_total", srv, "cluster.local.")] == 3
    assert got[("coredns_dns_requests_total", srv, "in-addr.arpa.")] == 2
    assert got[("coredns_dns_requests_total", srv, ".")] == 1
    assert got[("coredns_dns_do_requests_total", srv, "cluster.local.")] == 3
    assert got[("coredns_dns_responses_total", srv, "in-addr.arpa.", "NOERROR", "cache")] == 2
    assert got[("coredns_dns_request_duration_seconds_count", srv, ".")] == 1
    assert not any(k[1] == "dns://169.254.20.10:53" for k in got if k[0].startswith("coredns_dns"))
    # a worker block that describes another row table is not read as this one:
    # what was last read from it stays, and nothing goes to the totals' fallback
    c.rows[0] = 12345
    c.query(0, 1, _query("a.cluster.local."), 0)
    assert _samples(collector) == got
    c.release()


def test_totals_under_the_first_block_while_no_worker_keeps_rows():
    config = parse_corefile(NODELOCAL, "Corefile")
    collector = m.DnsCollector([_block()], ml.blocks_from_config(config), process_metrics=False)
    c = ctr.Counters(collector.blocks[0])
    c.query(0, 1, _query("a.cluster.local."))  # no row: a worker without a Corefile
    got = {k: v for k, v in _samples(collector).items() if k[0] == "coredns_dns_requests_total"}
    assert got == {("coredns_dns_requests_total", "dns://169.254.20.10:53", "cluster.local.",
                    "udp"): 1,
                   ("coredns_dns_requests_total", "dns://169.254.20.10:53", "cluster.local."): 1}
    c.release()


def _samples(collector: m.DnsCollector) -> dict[tuple, float]:
    out: dict[tuple, float] = {}
    for fam in collector._dns_metrics(*collector.read()):
        for s in fam.samples:
            _add(out, s.name, s.labels, s.value)
    return out


def _add(out: dict, name: str, labels: dict, value: float) -> None:
    if not name.startswith("coredns_dns_") or "le" in labels:
        return
    key = (name, labels["server"], labels["zone"])
    if name == "coredns_dns_responses_total":
        key += (labels["rcode"], labels["plugin"])
    if name in ("coredns_dns_requests_total",):
        out[key + (labels["proto"],)] = out.get(key + (labels["proto"],), 0) + value
    out[key] = out.get(key, 0) + value


# -- served: real queries, scraped over HTTP --------------------------------------------


def _can_bind(host: str) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module", params=["c", "py"])
def served(request, tmp_path_factory):
    if request.param == "c" and (_udp is None or NO_EXTENSIONS):
        pytest.skip("the Cython extension is not built, or FASTDNS_NO_EXTENSIONS=1")
    if not _can_bind(OTHER):
        pytest.skip(f"cannot bind {OTHER}")
    tmp = tmp_path_factory.mktemp(f"blocks-{request.param}")
    th = UpstreamThread()
    up = th.start({"www.example.test.": [("A", "192.0.2.1")],
                   "1.0.96.10.in-addr.arpa.": [("PTR", "one.example.test.")]})
    port, mport = free_port(v6=False), free_port(v6=False)
    prom = f"    prometheus 127.0.0.1:{mport}\n"
    fwd = f"    forward . 127.0.0.1:{up.port}\n"
    (tmp / "Corefile").write_text(
        f"cluster.local:{port} {{\n    bind 127.0.0.1\n"
        f"    kubernetes cluster.local {{\n        ttl 30\n    }}\n{prom}}}\n"
        f"in-addr.arpa:{port} {{\n    bind 127.0.0.1\n{fwd}{prom}}}\n"
        f"example.test:{port} {{\n    bind 127.0.0.1 {OTHER}\n{fwd}{prom}}}\n")
    old = os.environ.get("FASTDNS_NO_EXTENSIONS")
    if request.param == "py":
        os.environ["FASTDNS_NO_EXTENSIONS"] = "1"
    try:
        srv = Server(tmp, ["--corefile", str(tmp / "Corefile"), "--state", str(DEMO),
                           "--workers", "2"], port)
    finally:
        if old is None:
            os.environ.pop("FASTDNS_NO_EXTENSIONS", None)
        else:
            os.environ["FASTDNS_NO_EXTENSIONS"] = old
    try:
        srv.wait_answering()
        path = "Cython" if request.param == "c" else "Python"
        assert wait_for(lambda: f"({path} UDP path)" in srv.log()), srv.log()
        url = f"http://127.0.0.1:{mport}/metrics"
        assert wait_for(lambda: http_get(url)[0] == 200), srv.log()
        yield srv, url, request.param
    finally:
        srv.stop_and_sweep(signal.SIGTERM)
        th.close()


def _scrape(url: str) -> dict[tuple, float]:
    status, text = http_get(url)
    assert status == 200
    out: dict[tuple, float] = {}
    for fam in text_string_to_metric_families(text):
        if not fam.name.startswith("coredns_dns_"):
            continue
        for s in fam.samples:
            _add(out, s.name, s.labels, s.value)
    return out


@pytest.mark.slow
def test_per_block_counts(served):
    srv, url, path = served
    port = srv.port
    s1, s2 = f"dns://127.0.0.1:{port}", f"dns://{OTHER}:{port}"
    before = _scrape(url)
    want: dict[tuple, int] = {}

    def send(name, rdtype, rcode, server, zone, where="127.0.0.1", tcp=False, n=1,
             plugin=None, **kw):
        for _ in range(n):
            r = ask(name, rdtype, port=port, where=where, tcp=tcp, timeout=2.0, **kw)
            assert r.rcode() == rcode, (name, path)
        proto = "tcp" if tcp else "udp"
        for key in (("coredns_dns_requests_total", server, zone),
                    ("coredns_dns_requests_total", server, zone, proto),
                    ("coredns_dns_responses_total", server, zone, dns.rcode.to_text(rcode),
                     plugin)):
            want[key] = want.get(key, 0) + n
        if kw.get("want_dnssec"):
            key = ("coredns_dns_do_requests_total", server, zone)
            want[key] = want.get(key, 0) + n

    send(KUBERNETES, "A", dns.rcode.NOERROR, s1, "cluster.local.", n=3, plugin="kubernetes")
    send(KUBERNETES, "A", dns.rcode.NOERROR, s1, "cluster.local.", tcp=True, n=2,
         plugin="kubernetes", want_dnssec=True)
    send("nope.default.svc.cluster.local.", "A", dns.rcode.NXDOMAIN, s1, "cluster.local.",
         n=2, plugin="kubernetes")
    send("1.0.96.10.in-addr.arpa.", "PTR", dns.rcode.NOERROR, s1, "in-addr.arpa.", n=2,
         plugin="forward")
    send("www.example.test.", "A", dns.rcode.NOERROR, s1, "example.test.", n=2,
         plugin="forward", want_dnssec=True)
    send("www.example.test.", "A", dns.rcode.NOERROR, s1, "example.test.", tcp=True,
         plugin="forward")
    send("www.example.test.", "A", dns.rcode.NOERROR, s2, "example.test.", where=OTHER, n=3,
         plugin="forward")
    # no block serves it: REFUSED by the server core, counted as zone "dropped"
    send("www.example.org.", "A", dns.rcode.REFUSED, s1, "dropped", n=2, plugin="")
    send("www.example.org.", "A", dns.rcode.REFUSED, s2, "dropped", where=OTHER, plugin="",
         tcp=True)

    def delta() -> dict[tuple, float]:
        after = _scrape(url)
        return {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)
                if after.get(k, 0) != before.get(k, 0)}

    def settled():
        d = delta()
        return d if all(d.get(k, 0) == v for k, v in want.items()) else None

    d = wait_for(settled, timeout=5) or delta()
    for k, v in want.items():
        assert d.get(k, 0) == v, (k, path, {x: y for x, y in d.items() if x[0] == k[0]})
    for k, v in d.items():  # nothing else moved: no count under another block
        if k[0] in ("coredns_dns_requests_total", "coredns_dns_responses_total",
                    "coredns_dns_do_requests_total"):
            assert k in want, (k, v, path)
    dur = [k for k in d if k[0] == "coredns_dns_request_duration_seconds_count"]
    assert {(k[1], k[2]) for k in dur} == {(k[1], k[2]) for k in want}
    for k in dur:
        assert d[k] == want[("coredns_dns_requests_total", k[1], k[2])], (k, path)


def test_pairs_past_row_max_share_the_catch_all():
    text = "".join(f"z{i}.test:53 {{\n    whoami\n}}\n" for i in range(20))
    config = parse_corefile(text, "Corefile")
    collector = m.DnsCollector([_block()], ml.blocks_from_config(config), process_metrics=False)
    listeners = tables.listener_zones(config)
    assert len(tables.row_table(listeners)) == 21  # 20 zones + dropped
    lr = tables.listener_rows(listeners)["dns://:53"]
    assert lr.zones == () and lr.dropped == layout.ROW_MAX  # the fast path's table holds 16
    c = ctr.Counters(collector.blocks[0])
    c.take_rows(collector.rows_table)
    q = _query("a.z3.test.")
    c.query(0, 1, q, lr.match(q))
    got = _samples(collector)
    assert got[("coredns_dns_requests_total", "other", "other")] == 1
    c.release()
