"""``coredns_proxy_conn_cache_*`` from the /metrics of a running ``fastdns serve``.

One worker forwards with ``force_tcp`` (NodeLocal DNSCache's stanza toward
kube-dns) to a loopback test upstream: every query after the first rides the
one pooled connection, pipelined when the clients are concurrent, so the
scrape says one miss (one dial) and a hit for every other TCP query.
"""

from __future__ import annotations

import signal
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import dns.rcode
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import DEMO, Server, a_records, ask, free_port, wait_for
from tests.upstreams import UpstreamThread

NAMES = [f"h{i}.example.test." for i in range(16)]
RECORDS = {"www.example.test.": [("A", "192.0.2.1")],
           **{n: [("A", f"192.0.2.{i + 10}")] for i, n in enumerate(NAMES)}}


def _conn_cache(mport: int, to: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=2) as r:
        text = r.read().decode()
    out = {"hits": 0.0, "misses": 0.0}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            for kind in out:
                if s.name == f"coredns_proxy_conn_cache_{kind}_total" and s.labels == {
                        "proxy_name": "forward", "to": to, "proto": "tcp"}:
                    out[kind] += s.value
    return out


@pytest.mark.slow
def test_force_tcp_conn_cache_counts_one_dial_and_hits(tmp_path):
    th = UpstreamThread()
    up = th.start(RECORDS)
    port, mport = free_port(v6=False), free_port(v6=False)
    cf = tmp_path / "Corefile"
    cf.write_text(f".:{port} {{\n    bind 127.0.0.1\n    forward . {up.addr} {{\n"
                  f"        force_tcp\n    }}\n    prometheus 127.0.0.1:{mport}\n}}\n")
    srv = Server(tmp_path, ["--corefile", str(cf), "--state", str(DEMO), "--workers", "1"], port)
    try:
        srv.wait_answering(name="www.example.test.")
        for name in NAMES[:5]:  # sequential
            assert a_records(ask(name, port=port, timeout=3)) == set(
                a for _t, a in RECORDS[name])
        up.tcp_hold = 8  # concurrent: answered only once all 8 wait on one connection
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda n: ask(n, port=port, timeout=5), NAMES[5:13]))
        assert all(r.rcode() == dns.rcode.NOERROR for r in got)
        assert [a_records(r) for r in got] == [{RECORDS[n][0][1]} for n in NAMES[5:13]]
        assert up.tcp_max_pending == 8 and up.tcp_connections == 1, srv.log()[-2000:]
        sent = up.counts["tcp"]
        assert up.counts.get("udp", 0) == 0 and sent >= 13

        def counted():  # the worker exports every 0.5 s
            c = _conn_cache(mport, up.addr)
            return c if c["hits"] + c["misses"] == sent else None
        c = wait_for(counted, timeout=5)
        assert c == {"hits": sent - 1, "misses": 1}, _conn_cache(mport, up.addr)
    finally:
        srv.stop_and_sweep(signal.SIGTERM)
        th.close()
