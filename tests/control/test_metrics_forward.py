"""CoreDNS's per-upstream forward metrics: shm layout, export, reload, and `fastdns serve`.

The served tests run one server with two workers (so the scrape sums two
blocks) and three server blocks: ``a.test`` and ``b.test`` each forward to a
loopback test upstream, ``dead.test`` to two closed ports (every exchange
and health probe is refused at once). Counts are compared as deltas, since
the readiness probe is forwarded too.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import urllib.request

import dns.message
import dns.query
import dns.rcode
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastdns.control import metrics as m
from fastdns.control import metrics_labels as ml
from fastdns.control import metrics_plugins as mp
from fastdns.corefile.config import parse_corefile
from fastdns.ipc import counters as ctr
from fastdns.ipc import layout, readout, tables
from fastdns.names import forward_rcode_text
from fastdns.server.forwarding import BlockRouter
from tests.helpers import DEMO, Server, ask, free_port, wait_for
from tests.upstreams import UpstreamThread

DUR = "coredns_proxy_request_duration_seconds"


# -- layout and export, no server ------------------------------------------------------


def _config(*blocks: list[str]):
    text = "".join(f"z{i}.test:53 {{\n" + (f"    forward . {' '.join(tos)}\n" if tos else
                                           "    whoami\n") + "}\n"
                   for i, tos in enumerate(blocks))
    return parse_corefile(text, "Corefile")


def _block() -> memoryview:
    block = memoryview(bytearray(layout.COUNTERS_SIZE))
    block[:8].cast("Q")[0] = layout.MAGIC
    return block


def _fwd(router: BlockRouter, i: int = 0):
    return router._resolvers[i].forwarder


def _scrape(collector: m.DnsCollector) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in mp.proxy_metrics(collector.read()[0], collector.fwd_table)
            for s in fam.samples}


def test_region_sits_after_the_mirrored_words_and_inside_the_block():
    assert layout.W_END <= layout.W_FWD < layout.W_FWD_SLOTS
    assert layout.FWD_END * 8 <= layout.COUNTERS_SIZE
    assert layout.FWD_SLOT_WORDS == 1 + 4 + layout.FWD_RCODES * (len(layout.LATENCY_BUCKETS) + 2)
    # the exporter's rcode label is the forwarder's, for every 4-bit rcode
    assert [mp.proxy_rcode(i) for i in range(16)] == [forward_rcode_text(i) for i in range(16)]


def test_export_sums_per_to_and_overflow_goes_to_other():
    # 20 distinct TOs over two blocks (CoreDNS allows 15 per forward), one repeated
    tos = [f"127.0.0.{i}:53" for i in range(1, 21)]
    config = _config(tos[:12], [tos[0], *tos[12:]])
    router = BlockRouter(config)
    router.build_all()
    assert router.table == tuple(tos[:16])
    f0, f1 = _fwd(router, 0), _fwd(router, 1)
    f0._observe(tos[0], 0, 0.0003)
    f1._observe(tos[0], 0, 0.1)  # same `to` from the second block: same series
    f1._observe(tos[0], 3, 0.002)
    f1._observe(tos[17], 2, 0.01)
    f1._observe(tos[19], 2, 0.01)
    f1.upstreams[-1].healthcheck_failures = 4
    f1.healthcheck_broken = 2
    f0.udp_exchanges[tos[0]] = 7
    f0.upstreams[1].tcp_opened, f0.upstreams[1].tcp_reused = 1, 5
    block = _block()
    router.export(ctr.Counters(block))
    c = readout.read_counters(block)
    assert c["forward_table"] == tables.table_hash(router.table)
    d = readout.decode_forward(c["forward"], router.table)
    assert d["healthcheck_broken"] == 2
    first = d["upstreams"][tos[0]]
    assert {rc: h["count"] for rc, h in first["durations"].items()} == {0: 2, 3: 1}
    cum = [n for _le, n in first["durations"][0]["buckets"]]
    bounds = layout.LATENCY_BUCKETS  # 0.25 ms, 0.5 ms, ... 0.128 s (9), ...
    assert cum[0] == 0 and cum[1] == 1 and cum[8] == 1 and cum[9] == 2 and bounds[9] > 0.1
    assert first["durations"][0]["sum"] == pytest.approx(0.1003, abs=1e-6)
    assert first["conn"][("udp", "misses")] == 7
    assert d["upstreams"][tos[1]]["conn"] == {("udp", "hits"): 0, ("udp", "misses"): 0,
                                              ("tcp", "hits"): 5, ("tcp", "misses"): 1}
    other = d["upstreams"][tables.FWD_OTHER]  # TOs 17..20 share the catch-all slot
    assert other["durations"][2]["count"] == 2 and other["healthcheck_failures"] == 4
    assert set(d["upstreams"]) == {tos[0], tos[1], tables.FWD_OTHER}
    router.close()


def test_reload_keeps_counts_for_the_same_table_and_resets_for_another():
    block = _block()
    counters = ctr.Counters(block)
    a, b = "127.0.0.1:5301", "127.0.0.1:5302"
    r1 = BlockRouter(_config([a, b]))
    r1.build_all()
    r1.export(counters)
    _fwd(r1)._observe(b, 0, 0.001)
    r1.close()  # counted after the last tick: close() exports it
    assert readout.decode_forward(readout.read_counters(block)["forward"], (a, b))[
        "upstreams"][b]["durations"][0]["count"] == 1

    r2 = BlockRouter(_config([a, b], []))  # other text, same upstream table: carried over
    r2.build_all()
    _fwd(r2)._observe(b, 0, 0.001)
    r2.export(counters)
    assert readout.read_counters(block)["forward_table"] == tables.table_hash((a, b))
    assert readout.decode_forward(readout.read_counters(block)["forward"], (a, b))[
        "upstreams"][b]["durations"][0]["count"] == 2
    r2.close()

    r3 = BlockRouter(_config([b, a]))  # positions moved: the region starts again
    r3.build_all()
    _fwd(r3)._observe(a, 3, 0.001)
    r3.export(counters)
    c = readout.read_counters(block)
    assert c["forward_table"] == tables.table_hash((b, a))
    ups = readout.decode_forward(c["forward"], (b, a))["upstreams"]
    assert set(ups) == {a} and set(ups[a]["durations"]) == {3}
    r3.close()


def test_collector_counts_only_blocks_of_its_own_table():
    a, b = "127.0.0.1:5301", "127.0.0.1:5302"
    config = _config([a, b])
    blocks = [_block(), _block()]
    collector = m.DnsCollector(blocks, ml.blocks_from_config(config), process_metrics=False)
    assert collector.fwd_table == (a, b)
    ours, stale = BlockRouter(config), BlockRouter(_config([b, a]))
    for r, blk in ((ours, blocks[0]), (stale, blocks[1])):
        r.build_all()
        _fwd(r)._observe(a, 0, 0.001)
        r.export(ctr.Counters(blk))
    got = _scrape(collector)
    key = (f"{DUR}_count",
           frozenset({"proxy_name": "forward", "to": a, "rcode": "NOERROR"}.items()))
    assert got[key] == 1  # the block written for (b, a) is not read as (a, b)
    assert not any(k[0] == f"{DUR}_count" and dict(k[1])["to"] == b for k in got)
    # the second worker takes the collector's table in: its own counts start from 0
    stale.close()
    now = BlockRouter(config)
    now.build_all()
    _fwd(now)._observe(a, 0, 0.001)
    _fwd(now)._observe(a, 0, 0.001)
    now.export(ctr.Counters(blocks[1]))
    assert _scrape(collector)[key] == 3
    ours.close()
    now.close()


# -- `fastdns serve` ------------------------------------------------------------------


def _closed_port() -> int:
    """A loopback port nothing listens on: queries there are refused (ICMP / RST)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _corefile(port: int, mport: int, ups: dict[str, str], order=("a", "b", "dead")) -> str:
    stanza = {
        "a": f"forward . {ups['a']}",
        "b": f"forward . {ups['b']}",
        "dead": f"forward . {ups['d1']} {ups['d2']} {{\n        max_fails 1\n"
                "        health_check 0.1s\n    }",
    }
    return "".join(f"{z}.test:{port} {{\n    bind 127.0.0.1\n    {stanza[z]}\n"
                   f"    prometheus 127.0.0.1:{mport}\n    reload 2s 1s\n}}\n" for z in order)


def _metrics(mport: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=2) as r:
        text = r.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _series(got: dict, name: str, **labels: str) -> float:
    want = {"proxy_name": "forward", **labels} if name.startswith("coredns_proxy") else labels
    return sum(v for (n, lbl), v in got.items()
               if n == name and all(dict(lbl).get(k) == x for k, x in want.items()))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fwdmetrics")
    th = UpstreamThread()
    ups = {
        "a": th.start({"www.a.test.": [("A", "192.0.2.1")]}, zone="a.test.").addr,
        "b": th.start({"www.b.test.": [("A", "192.0.2.2")]}, zone="b.test.").addr,
        "d1": f"127.0.0.1:{_closed_port()}",
        "d2": f"127.0.0.1:{_closed_port()}",
    }
    port, mport = free_port(v6=False), free_port(v6=False)
    cf = tmp / "Corefile"
    cf.write_text(_corefile(port, mport, ups))
    srv = Server(tmp, ["--corefile", str(cf), "--state", str(DEMO), "--workers", "2"], port)
    srv.corefile, srv.mport, srv.ups = cf, mport, ups
    try:
        srv.wait_answering(name="www.a.test.")
        # the readiness queries were forwarded: let them reach the scrape (0.5 s ticks)
        assert wait_for(lambda: _series(_try_metrics(mport) or {}, f"{DUR}_count",
                                        to=ups["a"])), srv.log()
        time.sleep(0.6)
        yield srv
    finally:
        srv.stop_and_sweep(signal.SIGTERM)
        th.close()


def _try_metrics(mport: int):
    try:
        return _metrics(mport)
    except OSError:
        return None


@pytest.mark.slow
def test_request_duration_counts_per_upstream_and_rcode(env):
    a, b = env.ups["a"], env.ups["b"]
    before = _metrics(env.mport)
    plan = ([("www.a.test.", False, "NOERROR")] * 5 + [("nope.a.test.", False, "NXDOMAIN")] * 3
            + [("www.b.test.", False, "NOERROR")] * 4 + [("www.b.test.", True, "NOERROR")] * 2)
    for name, tcp, want in plan:
        assert dns.rcode.to_text(ask(name, port=env.port, tcp=tcp, timeout=3).rcode()) == want
    expect = {(a, "NOERROR"): 5, (a, "NXDOMAIN"): 3, (b, "NOERROR"): 6}

    def delta(got: dict, name: str, **labels: str) -> float:
        return _series(got, name, **labels) - _series(before, name, **labels)

    def counted():  # the workers export every 0.5 s
        got = _metrics(env.mport)
        ok = all(delta(got, f"{DUR}_count", to=to, rcode=rc) == n
                 for (to, rc), n in expect.items())
        return got if ok else None

    got = wait_for(counted, timeout=5)
    assert got, {k: v for k, v in _metrics(env.mport).items() if k[0] == f"{DUR}_count"}
    # nothing else was answered by these upstreams
    assert delta(got, f"{DUR}_count", to=a) == 8 and delta(got, f"{DUR}_count", to=b) == 6
    for (to, rc), n in expect.items():
        assert delta(got, f"{DUR}_bucket", to=to, rcode=rc, le="+Inf") == n
        assert delta(got, f"{DUR}_sum", to=to, rcode=rc) > 0
    # each UDP exchange dials a fresh socket (RFC 5452): a connection cache miss;
    # TCP to b reuses its connection within a worker
    assert delta(got, "coredns_proxy_conn_cache_misses_total", to=a, proto="udp") == 8
    assert delta(got, "coredns_proxy_conn_cache_misses_total", to=b, proto="udp") == 4
    assert delta(got, "coredns_proxy_conn_cache_hits_total", to=b, proto="tcp") + delta(
        got, "coredns_proxy_conn_cache_misses_total", to=b, proto="tcp") == 2
    assert _series(got, "coredns_proxy_healthcheck_failures_total", to=a) == 0


@pytest.mark.slow
def test_dead_upstreams_count_healthcheck_failures_then_broken(env):
    d1, d2 = env.ups["d1"], env.ups["d2"]

    def broken():
        r = ask("www.dead.test.", port=env.port, timeout=3)
        assert r.rcode() == dns.rcode.SERVFAIL
        got = _metrics(env.mport)
        return got if got[("coredns_forward_healthcheck_broken_total", frozenset())] else None

    # The first query fails on both (refused), starting their probes; each probe
    # fails (one more `fails` each 0.1 s) until both are down (fails > max_fails 1),
    # when a query finds every upstream down. Each worker has its own health state.
    got = wait_for(broken, timeout=8, step=0.2)
    assert got, env.log()[-2000:]
    for to in (d1, d2):
        assert _series(got, "coredns_proxy_healthcheck_failures_total", to=to) >= 2
        assert _series(got, f"{DUR}_count", to=to) == 0  # no answer ever came back
    for to in (env.ups["a"], env.ups["b"]):
        assert _series(got, "coredns_proxy_healthcheck_failures_total", to=to) == 0


@pytest.mark.slow
def test_reload_with_other_upstream_order_never_mixes_up_to(env):
    """After a reload that moves the upstreams' positions, nothing counted under
    the old table shows up under either `to`, and new answers land on the right one."""
    a, b = env.ups["a"], env.ups["b"]
    assert _series(_metrics(env.mport), f"{DUR}_count", to=a) > 0
    env.corefile.write_text(_corefile(env.port, env.mport, env.ups, order=("b", "a")))
    os.kill(env.proc.pid, signal.SIGUSR1)
    in_force = re.compile(r"worker (\d): Corefile version \d+ in force")
    assert wait_for(lambda: {m_.group(1) for m_ in in_force.finditer(env.log())} == {"0", "1"},
                    timeout=8), env.log()[-3000:]
    for _ in range(3):
        assert ask("www.a.test.", port=env.port, timeout=3).rcode() == dns.rcode.NOERROR

    def settled():
        got = _try_metrics(env.mport)
        return got if got and _series(got, f"{DUR}_count", to=a) == 3 else None

    got = wait_for(settled, timeout=8)
    assert got, {k: v for k, v in (_try_metrics(env.mport) or {}).items() if k[0].startswith(DUR)}
    assert _series(got, f"{DUR}_count", to=a, rcode="NOERROR") == 3
    assert _series(got, f"{DUR}_count", to=b) == 0
    time.sleep(0.6)  # one more export tick: still exact
    assert _series(_metrics(env.mport), f"{DUR}_count", to=a) == 3
