"""`fastdns serve` with forward + cache: real processes, loopback upstreams, dnspython.

One server (one worker, so its shm counters tell which path answered) with
one server block per behaviour, each forwarding to its own test upstream
(fastdns.testing.upstream on a background loop). Cache hits must come from
the Cython fast path's C table: the W_CC_HITS_* words count them there.
"""

from __future__ import annotations

import concurrent.futures
import signal
import ssl
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from fastdns.codec import NO_EXTENSIONS
from fastdns.ipc import readout, shm
from fastdns.testing.pki import make_pki
from fastdns.testing.upstream import SPOOF_ADDR
from tests.helpers import DEMO, Server, a_records, ask, free_port
from tests.upstreams import Blackhole, UpstreamThread

pytestmark = pytest.mark.slow

WWW = "www.example.test."
RECORDS = {WWW: [("A", "192.0.2.1")], "www.example.com.": [("A", "192.0.2.7")]}


def _corefile(port: int, ups: dict, ca: str) -> str:
    def block(zone: str, fwd: str, cache: str = "") -> str:
        return (f"{zone}:{port} {{\n    bind 127.0.0.1\n    forward . {fwd}\n{cache}}}\n")

    return "".join([
        f"cluster.local:{port} {{\n    bind 127.0.0.1\n"
        "    kubernetes cluster.local\n}\n",
        block("example.test", ups["main"], "    cache 30\n"),
        # everything else (www.example.com: the demo's ExternalName target)
        block(".", ups["main"], "    cache 30\n"),
        block("tc.test", ups["tc"]),
        block("spoof.test", ups["spoof"]),
        block("next.test", f"{ups['dead']} {ups['next']} {{\n        policy sequential\n    }}"),
        block("dead.test", f"{ups['dead']} {{\n        max_fails 0\n    }}"),
        block("slow.test", f"{ups['slow']} {{\n        max_concurrent 2\n    }}"),
        block("stale.test", ups["stale"],
              "    cache 30 {\n        success 100 1 1\n        serve_stale 1h\n    }\n"),
        block("prefetch.test", ups["prefetch"],
              "    cache 30 {\n        success 100 4 1\n        prefetch 1 10s 50%\n    }\n"),
        # DNS over TLS, verified against the test CA under the certificate's name
        block("dot.test", f"tls://{ups['dot']} {{\n        tls {ca}\n"
              "        tls_servername dns.test\n    }"),
    ])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fwd")
    th = UpstreamThread()
    hole = Blackhole()
    pki = make_pki(tmp / "pki", ips=("127.0.0.1",), dns_names=("dns.test",))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(pki.server_cert, pki.server_key)
    ups = {
        "main": th.start(RECORDS, soa_minimum=7),
        "tc": th.start({"big.tc.test.": [("A", f"192.0.2.{i}") for i in range(1, 60)]},
                       zone="tc.test."),
        "spoof": th.start({"www.spoof.test.": [("A", "192.0.2.9")]}, zone="spoof.test."),
        "next": th.start({"www.next.test.": [("A", "192.0.2.10")]}, zone="next.test."),
        "slow": th.start({"www.slow.test.": [("A", "192.0.2.11")]}, zone="slow.test."),
        "stale": th.start({"www.stale.test.": [("A", "192.0.2.12")]}, zone="stale.test."),
        "prefetch": th.start({"www.prefetch.test.": [("A", "192.0.2.13")]},
                             zone="prefetch.test."),
        "dot": th.start({"www.dot.test.": [("A", "192.0.2.14")]}, zone="dot.test.", tls=tls),
    }
    ups["tc"].tc_udp = True
    ups["spoof"].spoof = True
    ups["slow"].delay = 1.0
    port = free_port()
    addrs = {k: u.addr for k, u in ups.items()}
    addrs["dead"] = hole.addr
    (tmp / "Corefile").write_text(_corefile(port, addrs, pki.ca_cert))
    srv = Server(tmp, ["--corefile", str(tmp / "Corefile"), "--state", str(DEMO),
                       "--workers", "1"], port)
    try:
        srv.wait_answering()
        yield srv, ups
    finally:
        srv.stop_and_sweep(signal.SIGTERM)
        hole.close()
        th.close()


def words(srv) -> dict:
    with shm.ControlSegment.attach(srv.instance) as ctl:
        return readout.read_counters(ctl.counters(0))


def fast_hits(srv, kind: str) -> int:
    """Cache hits of the C table; on the pure-Python build (no C table) the
    Python cache's, which the worker exports on its 0.5 s timer."""
    if NO_EXTENSIONS:
        time.sleep(0.6)
        return words(srv)["cache"]["hits"][kind]
    return words(srv)["cache"]["c_hits"][kind]


def test_forward_udp_and_tcp(env):
    srv, ups = env
    for tcp in (False, True):
        r = ask("WWW.Example.TEST.", port=srv.port, tcp=tcp)
        assert r.rcode() == dns.rcode.NOERROR
        assert a_records(r) == {"192.0.2.1"}
        assert str(r.question[0].name) == "WWW.Example.TEST."  # the client's case
    assert ups["main"].count(WWW) >= 1
    assert words(srv)["forwarded"] >= 1


def test_dns_over_tls_upstream(env):
    """forward tls://: UDP and TCP clients alike are asked upstream over TLS."""
    srv, ups = env
    for tcp in (False, True):
        r = ask("www.dot.test.", port=srv.port, tcp=tcp)
        assert r.rcode() == dns.rcode.NOERROR and a_records(r) == {"192.0.2.14"}
    assert ups["dot"].counts.get("udp", 0) == 0 and ups["dot"].counts["tcp"] >= 1


def test_cache_hit_served_by_fast_path_with_aged_ttl(env):
    srv, ups = env
    name = "www.example.com."
    first = ask(name, port=srv.port)
    assert a_records(first) == {"192.0.2.7"}
    assert first.answer[0].ttl == 30  # upstream 300, capped by `cache 30`
    upstream_before = ups["main"].count(name)
    before = fast_hits(srv, "success")
    time.sleep(1.1)
    hit = ask(name, port=srv.port, use_edns=0, want_dnssec=False)
    assert a_records(hit) == {"192.0.2.7"}
    assert 28 <= hit.answer[0].ttl <= 29  # aged in place
    assert hit.flags & dns.flags.AA  # CoreDNS's cached answers are authoritative
    assert hit.opt is not None and hit.payload == 1232
    assert fast_hits(srv, "success") == before + 1
    assert ups["main"].count(name) == upstream_before


def test_negative_cache_uses_soa_minimum(env):
    srv, ups = env
    name = "nope.example.test."
    r = ask(name, port=srv.port)
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert r.authority[0].rdtype == dns.rdatatype.SOA
    n = ups["main"].count(name)
    before = fast_hits(srv, "denial")
    r2 = ask(name, port=srv.port)
    assert r2.rcode() == dns.rcode.NXDOMAIN
    assert r2.authority[0].ttl <= 7  # min(SOA TTL 3600, MINIMUM 7): RFC 2308 §5
    assert ups["main"].count(name) == n
    assert fast_hits(srv, "denial") == before + 1


def test_tc_is_retried_over_tcp(env):
    srv, ups = env
    r = ask("big.tc.test.", port=srv.port, tcp=True)
    assert len(a_records(r)) == 59
    assert ups["tc"].count("big.tc.test.", "tcp") >= 1
    udp = ask("big.tc.test.", port=srv.port)  # 512-octet client: truncated for it
    assert udp.flags & dns.flags.TC


def test_spoofed_answers_are_ignored(env):
    srv, _ = env
    r = ask("www.spoof.test.", port=srv.port)
    assert a_records(r) == {"192.0.2.9"}
    assert SPOOF_ADDR not in a_records(r)


def test_timeout_goes_to_next_upstream_then_servfail(env):
    srv, ups = env
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        nxt = ex.submit(ask, "www.next.test.", port=srv.port, timeout=8)
        dead = ex.submit(ask, "www.dead.test.", port=srv.port, timeout=8)
        assert a_records(nxt.result()) == {"192.0.2.10"}
        assert dead.result().rcode() == dns.rcode.SERVFAIL


def test_max_concurrent_refuses(env):
    srv, _ = env
    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        futs = [ex.submit(ask, f"q{i}.www.slow.test.", port=srv.port, timeout=5)
                for i in range(6)]
        rcodes = sorted(f.result().rcode() for f in futs)
    assert rcodes.count(dns.rcode.REFUSED) >= 3, rcodes
    time.sleep(0.6)
    assert words(srv)["forward_max_concurrent_rejects"] >= 3


def test_serve_stale_while_upstream_down(env):
    srv, ups = env
    name = "www.stale.test."
    assert a_records(ask(name, port=srv.port)) == {"192.0.2.12"}
    ups["stale"].drop = True
    try:
        time.sleep(1.3)  # the entry (success TTL cap 1 s) expired
        r = ask(name, port=srv.port, timeout=3)
        assert r.rcode() == dns.rcode.NOERROR
        assert a_records(r) == {"192.0.2.12"}
        assert r.answer[0].ttl == 0  # stale answers carry TTL 0, as CoreDNS's
    finally:
        ups["stale"].drop = False
    time.sleep(0.6)
    assert words(srv)["cache"]["served_stale"] >= 1


def test_prefetch_refreshes_before_expiry(env):
    srv, ups = env
    name = "www.prefetch.test."
    assert a_records(ask(name, port=srv.port)) == {"192.0.2.13"}
    assert ups["prefetch"].count(name) == 1
    time.sleep(2.1)  # TTL 4: remaining 2 <= 50%: the next hit prefetches
    r = ask(name, port=srv.port)
    assert a_records(r) == {"192.0.2.13"}
    deadline = time.monotonic() + 3
    while ups["prefetch"].count(name) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ups["prefetch"].count(name) == 2
    time.sleep(0.6)
    assert words(srv)["cache"]["prefetch"] >= 1


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_external_name_outside_cluster_gets_target_resolved(env, tcp):
    """CoreDNS backend_lookup.go: the CNAME, then the target's records via the forwarder."""
    srv, _ = env
    r = ask("Search.Shop.svc.cluster.local.", port=srv.port, tcp=tcp)
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA
    assert r.answer[0].rdtype == dns.rdatatype.CNAME
    assert str(r.answer[0][0].target) == "www.example.com."
    assert a_records(r) == {"192.0.2.7"}
    assert str(r.question[0].name) == "Search.Shop.svc.cluster.local."
    assert r.flags & 0x0040 == 0  # the image's TF_EXTERNAL mark never leaves the server
    cname = ask("search.shop.svc.cluster.local.", "CNAME", port=srv.port, tcp=tcp)
    assert [rr.rdtype for rr in cname.answer] == [dns.rdatatype.CNAME]


def test_responses_all_counted(env):
    srv, _ = env
    time.sleep(0.2)
    w = words(srv)
    queries = sum(w["queries"].values())
    responses = sum(w["responses"].values())
    assert queries == responses, (queries, responses)
