"""The fast path's C forwarder (server/_udp_forward.pxi, server/cforward.py), end to end.

One `fastdns serve` (one worker, so its shm counters say which path answered)
with one cache-less forward block per behaviour, each to its own loopback
upstream (fastdns.testing.upstream on a background loop). The W_CFWD_* words
prove the C path handled a query (they stay 0 on the pure-Python build, where
the same behaviour comes from the Python forwarder: the tests run there too).
"""

from __future__ import annotations

import concurrent.futures
import signal
import socket
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from fastdns.codec import NO_EXTENSIONS
from fastdns.ipc import layout, readout, shm, tables
from fastdns.testing.upstream import SPOOF_ADDR
from tests.helpers import DEMO, HAS_IPV6, Server, a_records, ask, free_port
from tests.upstreams import Blackhole, UpstreamThread

pytestmark = pytest.mark.slow

C_PATH = not NO_EXTENSIONS


def _block(zone: str, port: int, fwd: str, bind: bool = True) -> str:
    return (f"{zone}:{port} {{\n" + ("    bind 127.0.0.1\n" if bind else "")
            + f"    forward . {fwd}\n}}\n")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cfwd")
    th = UpstreamThread()
    dead, dead2 = Blackhole(), Blackhole()
    ups = {
        "main": th.start({"www.fwd.test.": [("A", "192.0.2.1")]}, zone="fwd.test."),
        "tc": th.start({"big.tc.test.": [("A", f"192.0.2.{i}") for i in range(1, 60)]},
                       zone="tc.test."),
        "spoof": th.start({"www.spoof.test.": [("A", "192.0.2.9")]}, zone="spoof.test."),
        "retry": th.start({"www.retry.test.": [("A", "192.0.2.10")]}, zone="retry.test."),
        "slow": th.start({"www.slow.test.": [("A", "192.0.2.11")]}, zone="slow.test."),
        "rr1": th.start({"www.rr.test.": [("A", "192.0.2.21")]}, zone="rr.test."),
        "rr2": th.start({"www.rr.test.": [("A", "192.0.2.22")]}, zone="rr.test."),
        "sq1": th.start({"www.sq.test.": [("A", "192.0.2.31")]}, zone="sq.test."),
        "sq2": th.start({"www.sq.test.": [("A", "192.0.2.32")]}, zone="sq.test."),
        "hc": th.start({"www.hc.test.": [("A", "192.0.2.41")]}, zone="hc.test."),
        "wild": th.start({"www.wild.test.": [("A", "192.0.2.51")]}, zone="wild.test."),
    }
    ups["tc"].tc_udp = True
    ups["spoof"].spoof = True
    ups["slow"].delay = 1.0
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    refused = f"127.0.0.1:{closed.getsockname()[1]}"
    closed.close()  # nothing listens there: the kernel answers ICMP port unreachable
    port, wport = free_port(), free_port(v6=HAS_IPV6)
    a = {k: u.addr for k, u in ups.items()}
    corefile = "".join([
        f"cluster.local:{port} {{\n    bind 127.0.0.1\n    kubernetes cluster.local\n}}\n",
        _block("fwd.test", port, a["main"]),
        _block("tc.test", port, a["tc"]),
        _block("spoof.test", port, a["spoof"]),
        _block("retry.test", port,
               f"{dead.addr} {a['retry']} {{\n        policy sequential\n"
               "        max_fails 0\n    }"),
        _block("dead.test", port, f"{dead.addr} {dead2.addr} {{\n        max_fails 0\n    }}"),
        _block("refused.test", port, f"{refused} {{\n        max_fails 0\n    }}"),
        _block("slow.test", port, f"{a['slow']} {{\n        max_concurrent 2\n    }}"),
        _block("rr.test", port, f"{a['rr1']} {a['rr2']} {{\n        policy round_robin\n    }}"),
        _block("sq.test", port, f"{a['sq1']} {a['sq2']} {{\n        policy sequential\n    }}"),
        _block("hc.test", port, f"{dead2.addr} {a['hc']} {{\n        policy sequential\n"
               "        max_fails 1\n        health_check 100ms\n    }"),
        _block(".", wport, a["wild"], bind=False),
    ])
    (tmp / "Corefile").write_text(corefile)
    srv = Server(tmp, ["--corefile", str(tmp / "Corefile"), "--state", str(DEMO),
                       "--workers", "1"], port)
    try:
        srv.wait_answering()
        yield srv, ups, wport
    finally:
        srv.stop_and_sweep(signal.SIGTERM)
        dead.close()
        dead2.close()
        th.close()


def cwords(srv) -> dict[str, int]:
    """The C forwarder's words (all 0 on the pure-Python build)."""
    names = ("SENT", "ANSWERED", "MISMATCHED", "TIMEOUTS", "SERVFAIL", "REFUSED", "HANDED",
             "PENDING")
    with shm.ControlSegment.attach(srv.instance) as ctl:
        block = ctl.counters(0)
        w = block.cast("Q")
        out = {n: w[getattr(layout, f"W_CFWD_{n}")] for n in names}
        w.release()
    return out


def counters(srv) -> dict:
    with shm.ControlSegment.attach(srv.instance) as ctl:
        return readout.read_counters(ctl.counters(0))


def test_answer_is_the_upstream_answer_apart_from_the_id(env):
    srv, ups, _ = env
    before = cwords(srv)
    q = dns.message.make_query("WWW.Fwd.TEST.", "A", use_edns=0, payload=1232)
    q.id = 0x1234
    wire = q.to_wire()
    answers = []
    for port in (srv.port, ups["main"].port):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(wire, ("127.0.0.1", port))
            answers.append(s.recv(65535))
    via, direct = answers
    assert via[:2] == b"\x12\x34"
    assert via[2:] == direct[2:]  # flags, counts, question (the client's case), EDNS
    r = dns.message.from_wire(via)
    assert a_records(r) == {"192.0.2.1"}
    if C_PATH:
        after = cwords(srv)
        assert after["SENT"] > before["SENT"]
        assert after["ANSWERED"] > before["ANSWERED"]
        assert after["HANDED"] == before["HANDED"]


def test_dig_style_query_without_edns(env):
    srv, _, _ = env
    r = ask("www.fwd.test.", port=srv.port)
    assert r.rcode() == dns.rcode.NOERROR and a_records(r) == {"192.0.2.1"}
    r = ask("nothing.fwd.test.", port=srv.port)
    assert r.rcode() == dns.rcode.NXDOMAIN  # the upstream's denial, passed through


def test_spoofed_answers_are_dropped(env):
    srv, ups, _ = env
    before = cwords(srv)
    r = ask("www.spoof.test.", port=srv.port, timeout=3)
    assert a_records(r) == {"192.0.2.9"}
    assert SPOOF_ADDR not in a_records(r)
    if C_PATH:
        # one with a wrong ID, one with the right ID and a wrong question
        assert cwords(srv)["MISMATCHED"] >= before["MISMATCHED"] + 2


def test_tc_answer_is_retried_over_tcp_for_the_client(env):
    srv, ups, _ = env
    before = cwords(srv)
    tcp_before = ups["tc"].counts["tcp"]
    r = ask("big.tc.test.", port=srv.port, timeout=3, use_edns=0, payload=4096)
    assert not r.flags & dns.flags.TC
    assert len(a_records(r)) == 59
    assert ups["tc"].counts["tcp"] > tcp_before
    if C_PATH:
        assert cwords(srv)["HANDED"] > before["HANDED"]


def test_silent_upstream_is_retried_on_the_next(env):
    srv, ups, _ = env
    t0 = time.monotonic()
    r = ask("www.retry.test.", port=srv.port, timeout=4)
    took = time.monotonic() - t0
    assert a_records(r) == {"192.0.2.10"}
    assert 1.5 < took < 3.5  # one read timeout (2 s) on the dead one first


def test_every_upstream_silent_is_servfail_within_the_deadline(env):
    srv, _, _ = env
    before = cwords(srv)
    t0 = time.monotonic()
    r = ask("www.dead.test.", port=srv.port, timeout=8)
    took = time.monotonic() - t0
    assert r.rcode() == dns.rcode.SERVFAIL
    assert 4.0 < took < 6.5  # the 5 s deadline (forwarder.TIMEOUT)
    if C_PATH:
        after = cwords(srv)
        assert after["SERVFAIL"] == before["SERVFAIL"] + 1
        assert after["TIMEOUTS"] >= before["TIMEOUTS"] + 3  # 2 s, 2 s, the last 1 s


def test_refused_upstream_fails_fast(env):
    srv, _, _ = env
    before = cwords(srv)
    t0 = time.monotonic()
    r = ask("www.refused.test.", port=srv.port, timeout=4)
    assert r.rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - t0 < 1.5  # ICMP, not the read timeout
    if C_PATH:
        after = cwords(srv)
        assert after["SERVFAIL"] == before["SERVFAIL"] + 1, (before, after)


def test_max_concurrent_refuses_the_third(env):
    srv, _, _ = env
    before = cwords(srv)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futs = [pool.submit(ask, "www.slow.test.", port=srv.port, timeout=4)]
        time.sleep(0.1)
        futs.append(pool.submit(ask, "www.slow.test.", port=srv.port, timeout=4))
        time.sleep(0.1)
        futs.append(pool.submit(ask, "www.slow.test.", port=srv.port, timeout=4))
        rcodes = sorted(f.result().rcode() for f in futs)
    assert rcodes == sorted([dns.rcode.NOERROR, dns.rcode.NOERROR, dns.rcode.REFUSED])
    time.sleep(0.7)  # the worker's export tick
    assert counters(srv)["forward_max_concurrent_rejects"] >= 1
    if C_PATH:
        assert cwords(srv)["REFUSED"] == before["REFUSED"] + 1


def test_round_robin_alternates_and_sequential_keeps_the_first(env):
    srv, ups, _ = env
    rr = [ups["rr1"].total(), ups["rr2"].total()]
    sq = [ups["sq1"].total(), ups["sq2"].total()]
    for _ in range(4):
        assert ask("www.rr.test.", port=srv.port).rcode() == dns.rcode.NOERROR
        assert ask("www.sq.test.", port=srv.port).rcode() == dns.rcode.NOERROR
    assert [ups["rr1"].total() - rr[0], ups["rr2"].total() - rr[1]] == [2, 2]
    assert [ups["sq1"].total() - sq[0], ups["sq2"].total() - sq[1]] == [4, 0]


def test_unhealthy_upstream_is_skipped(env):
    srv, _, _ = env
    # the first query waits out the dead first upstream and starts its probes
    r = ask("www.hc.test.", port=srv.port, timeout=4)
    assert a_records(r) == {"192.0.2.41"}
    time.sleep(2.5)  # probes (1 s read timeout each, 100 ms apart) push fails past 1
    t0 = time.monotonic()
    r = ask("www.hc.test.", port=srv.port, timeout=4)
    assert a_records(r) == {"192.0.2.41"}
    assert time.monotonic() - t0 < 1.0  # the down one was skipped


@pytest.mark.parametrize("where", ["127.0.0.1", "127.0.0.2"])
def test_wildcard_listener_answers_from_the_asked_address(env, where):
    srv, _, wport = env
    q = dns.message.make_query("www.wild.test.", "A")
    # without ignore_unexpected dnspython rejects an answer from another source
    r = dns.query.udp(q, where, port=wport, timeout=2)
    assert a_records(r) == {"192.0.2.51"}


def test_metrics_move(env):
    srv, ups, _ = env
    before = counters(srv)
    for _ in range(3):
        ask("www.fwd.test.", port=srv.port)
    time.sleep(0.7)  # the worker's export tick
    after = counters(srv)
    assert after["forward_table"] == tables.table_hash(_table(srv))
    d0 = readout.decode_forward(before["forward"], _table(srv))
    d1 = readout.decode_forward(after["forward"], _table(srv))
    to = ups["main"].addr

    def count(d):
        up = d["upstreams"].get(to)
        return up["durations"][0]["count"] if up and 0 in up["durations"] else 0

    assert count(d1) >= count(d0) + 3
    assert after["responses"]["NOERROR"] >= before["responses"]["NOERROR"] + 3


def _table(srv) -> tuple[str, ...]:
    from fastdns.corefile.config import parse_corefile

    cfg = parse_corefile((srv.tmp / "Corefile").read_text())
    return tables.upstream_table(tables.config_upstreams(cfg))



@pytest.mark.skipif(not C_PATH, reason="the Python forwarder dials a fresh socket per query")
def test_upstream_sockets_rotate_to_fresh_source_ports(env):
    """RFC 5452 §10: the C forwarder's connected sockets are replaced after
    cforward.ROTATE_AFTER queries each, so the source ports change (the old
    sockets stay open a while to read late answers, so a port is never
    reused at once)."""
    from fastdns.server import cforward

    srv, ups, _ = env
    up = ups["main"]
    first = _ports(up, srv.port, 200)
    assert 0 < len(first) <= cforward.SOCKETS
    # more than ROTATE_AFTER per socket (each query picks one of them at random)
    _ports(up, srv.port, cforward.SOCKETS * cforward.ROTATE_AFTER * 5 // 4)
    time.sleep(3 * cforward.TICK)  # the expiry tick replaces what sent enough
    last = _ports(up, srv.port, 400)
    assert last and not last & first, (first, last)


def _ports(up, port: int, n: int, window: int = 64) -> set[int]:
    """Send ``n`` queries for www.fwd.test. from one socket, ``window`` in
    flight; the source ports the upstream saw for the last (at most 1000)."""
    q = dns.message.make_query("www.fwd.test.", "A")
    up.queries.clear()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        sent = got = 0
        while got < n:
            while sent < n and sent - got < window:
                q.id = sent & 0xFFFF
                s.sendto(q.to_wire(), ("127.0.0.1", port))
                sent += 1
            try:
                s.recv(512)
                got += 1
            except TimeoutError:
                got = sent  # lost ones must not stall the loop
    return {src[1] for _p, _n, _t, _id, src in list(up.queries)}


def test_errors_plugin_hears_of_the_c_forwarders_servfail(tmp_path):
    """`errors` (in kubeadm's and NodeLocal's Corefiles) no longer turns the C
    forwarder off: the SERVFAILs it answers are reported from its tick, one
    [ERROR] line each, as the Python path reports its own."""
    from tests.helpers import serving_corefile

    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    refused = f"127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    port = free_port()
    corefile = (f"cluster.local:{port} {{\n    bind 127.0.0.1\n    kubernetes cluster.local\n}}\n"
                f".:{port} {{\n    bind 127.0.0.1\n    errors\n"
                f"    forward . {refused} {{\n        max_fails 0\n    }}\n}}\n")
    with serving_corefile(tmp_path, corefile, port) as srv:
        before = cwords(srv)
        for name in ("a.refused.test.", "b.refused.test."):
            assert ask(name, port=srv.port, timeout=4).rcode() == dns.rcode.SERVFAIL
        want = ("[ERROR] plugin/errors: 2 a.refused.test. A: plugin/forward: "
                "no upstream answered", "[ERROR] plugin/errors: 2 b.refused.test. A:")
        deadline = time.monotonic() + 5
        while not all(w in srv.log() for w in want) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(w in srv.log() for w in want), srv.log()[-2000:]
        if C_PATH:
            after = cwords(srv)
            assert after["SERVFAIL"] == before["SERVFAIL"] + 2, (before, after)
            assert srv.log().count("2 a.refused.test. A:") == 1  # reported once
