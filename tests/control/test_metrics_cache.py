"""``coredns_cache_*`` per cache stanza: its server, zones and view labels (issue 13).

CoreDNS labels each cache's series with the server that took the query and
the cache's zones joined by "," (plugin/cache/setup.go zonesMetricLabel).
Here each cache has a row in the worker's counters block (layout.CR_*,
keyed by tables.cache_table); the served test runs two cached blocks with
two workers and reads the scrape.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from fastdns.codec import NO_EXTENSIONS
from fastdns.corefile.config import parse_corefile
from fastdns.ipc import counters as ctr
from fastdns.ipc import layout, readout, tables
from fastdns.server.forwarding import BlockRouter
from tests.helpers import DEMO, Server, ask, free_port, scrape_metrics, wait_for
from tests.upstreams import UpstreamThread

NODELOCAL = Path(__file__).resolve().parents[1] / "corefiles" / "nodelocaldns.Corefile"


def test_cache_table_of_the_nodelocal_corefile():
    config = parse_corefile(NODELOCAL.read_text(), str(NODELOCAL))
    assert tables.cache_table(config) == (
        ("dns://169.254.20.10:53", "cluster.local.", ""),
        ("dns://169.254.20.10:53", "in-addr.arpa.", ""),
        ("dns://169.254.20.10:53", "ip6.arpa.", ""),
        ("dns://169.254.20.10:53", ".", ""),
    )


def test_stanza_zones_and_shared_blocks():
    config = parse_corefile(
        "a.test:53 b.test:53 {\n    cache 30\n    forward . 127.0.0.1:5300\n}\n"
        ".:5353 {\n    cache 30 example.org other.org\n    forward . 127.0.0.1:5300\n}\n"
        "c.test:53 {\n    cache 30\n    whoami\n}\n", "Corefile")
    # one row per Corefile block (keys share one cache); a cache without forward
    # has no ResponseCache here, so no row
    assert tables.cache_table(config) == (("dns://:53", "a.test.,b.test.", ""),
                                          ("dns://:5353", "example.org.,other.org.", ""))


def test_each_cache_exports_into_its_row_and_survives_a_reload():
    text = ("a.test:53 {\n    cache 30\n    forward . 127.0.0.1:5301\n}\n"
            "b.test:53 {\n    cache 30\n    forward . 127.0.0.1:5302\n}\n")
    block = memoryview(bytearray(layout.COUNTERS_SIZE))
    block[:8].cast("Q")[0] = layout.MAGIC
    counters = ctr.Counters(block)
    r1 = BlockRouter(parse_corefile(text, "Corefile"))
    ca, cb = r1.caches()
    ca.stats.requests, ca.stats.misses = 7, 2
    cb.stats.requests = 3
    r1.export(counters)
    r1.close()
    r2 = BlockRouter(parse_corefile(text, "Corefile"))  # the same table: counts go on
    r2.caches()[1].stats.requests = 1
    r2.export(counters)
    c = readout.read_counters(block)
    assert c["cache_table"] == tables.cache_hash(tables.cache_table(r2.config))
    rows = readout.decode_cache_rows(c["cache_rows"], 2)
    assert [r["requests"] for r in rows] == [7, 4] and rows[0]["misses"] == 2
    r2.close()


_metrics = scrape_metrics


def _c_forwarded(srv) -> int:
    """Misses the C forwarders answered through a cache, over every worker."""
    from fastdns.ipc import shm

    with shm.ControlSegment.attach(srv.instance) as ctl:
        return sum(readout.read_counters(ctl.counters(i))["cache"]["c_forwarded"]
                   for i in range(ctl.nworkers))


def _get(got: dict, name: str, **labels: str) -> float:
    return sum(v for (n, lbl), v in got.items()
               if n == name and all(dict(lbl).get(k) == x for k, x in labels.items()))


@pytest.mark.slow
def test_served_series_carry_each_caches_labels(tmp_path):
    th = UpstreamThread()
    a = th.start({f"n{i}.a.test.": [("A", f"192.0.2.{i}")] for i in range(1, 9)},
                 zone="a.test.")
    b = th.start({"www.b.test.": [("A", "192.0.2.100")]}, zone="b.test.")
    port, mport = free_port(v6=False), free_port(v6=False)
    (tmp_path / "Corefile").write_text(
        f"a.test:{port} {{\n    bind 127.0.0.1\n    cache 30\n    forward . {a.addr}\n"
        f"    prometheus 127.0.0.1:{mport}\n}}\n"
        f"b.test:{port} {{\n    bind 127.0.0.1\n    cache 20 b.test\n    forward . {b.addr}\n"
        f"    prometheus 127.0.0.1:{mport}\n}}\n")
    srv = Server(tmp_path, ["--corefile", str(tmp_path / "Corefile"), "--state", str(DEMO),
                            "--workers", "2"], port)
    server = f"dns://127.0.0.1:{port}"
    try:
        srv.wait_answering(name="n8.a.test.")
        assert wait_for(lambda: _metrics(mport), timeout=10)
        time.sleep(0.6)  # the readiness queries reach the scrape (0.5 s export)
        before = _metrics(mport)
        for i in range(1, 4):
            for _ in range(2):  # a miss, then a hit
                assert ask(f"n{i}.a.test.", port=port, timeout=3).answer
        assert ask("www.b.test.", port=port, timeout=3).answer

        def delta(got, name, **labels):
            return _get(got, name, **labels) - _get(before, name, **labels)

        def counted():
            got = _metrics(mport)
            # the C side counts live, the gauges come with the 0.5 s export
            return got if (delta(got, "coredns_cache_requests_total", zones="a.test.") == 6
                           and delta(got, "coredns_cache_requests_total", zones="b.test.") == 1
                           and _get(got, "coredns_cache_entries", zones="b.test.",
                                    type="success") == 1) else None

        got = wait_for(counted, timeout=5)
        assert got, {k: v for k, v in _metrics(mport).items() if "cache" in k[0]}
        misses = delta(got, "coredns_cache_misses_total", server=server, zones="a.test.")
        hits = delta(got, "coredns_cache_hits_total", server=server, zones="a.test.",
                     type="success")
        # one table for both workers; the pure-Python build keeps a cache per
        # worker, so a repeat that lands on the other worker misses there
        assert (misses, hits) == (3, 3) if not NO_EXTENSIONS else misses + hits == 6
        assert delta(got, "coredns_cache_misses_total", server=server, zones="b.test.") == 1
        assert _get(got, "coredns_cache_entries", zones="b.test.", type="success") == 1
        assert _get(got, "coredns_cache_entries", zones="a.test.", type="success") >= 3
        if not NO_EXTENSIONS:  # both blocks' misses were forwarded and stored by C
            assert _c_forwarded(srv) >= 4
        # nothing is reported under a label no cache has
        assert not any(n.startswith("coredns_cache_") and dict(lbl).get("zones") == "."
                       for n, lbl in got)
    finally:
        srv.stop_and_sweep(signal.SIGTERM)
        th.close()
