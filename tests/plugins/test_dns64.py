"""dns64 (fastdns/plugins/dns64.py, plugin/dns64/dns64_test.go): AAAA answers
synthesized from A records, for IPv6 clients only unless ``allow_ipv4``.

Served by a real `fastdns serve` on 127.0.0.1 and ::1 (the C fast path and
the pure-Python one), forwarding to a loopback test upstream, asked with
dnspython; the expected answers are CoreDNS's (dns64.go Synthesize).
"""

from __future__ import annotations

import ipaddress
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from fastdns.codec import NO_EXTENSIONS
from fastdns.corefile.config import parse_corefile
from fastdns.corefile.errors import CorefileError
from fastdns.ipc import readout, shm
from fastdns.plugins.dns64 import Dns64Config, to6
from tests.helpers import DEMO, HAS_IPV6, KUBERNETES, Server, free_port, scrape_metrics, wait_for
from tests.upstreams import UpstreamThread

RECORDS = {
    "v4only.example.test.": [("A", "192.0.2.33"), ("A", "192.0.2.34")],
    "dual.example.test.": [("A", "192.0.2.35"), ("AAAA", "2001:db8::35")],
    "www.example.com.": [("A", "192.0.2.7")],
}


@pytest.mark.parametrize("prefix, v6", [  # RFC 6052 §2.4's table, 192.0.2.33
    ("2001:db8::/32", "2001:db8:c000:221::"),
    ("2001:db8:100::/40", "2001:db8:1c0:2:21::"),
    ("2001:db8:122::/48", "2001:db8:122:c000:2:2100::"),
    ("2001:db8:122:300::/56", "2001:db8:122:3c0:0:221::"),
    ("2001:db8:122:344::/64", "2001:db8:122:344:c0:2:2100:0"),
    ("2001:db8:122:344::/96", "2001:db8:122:344::c000:221"),
    ("64:ff9b::/96", "64:ff9b::c000:221"),
])
def test_to6(prefix, v6):
    assert ipaddress.IPv6Address(to6(prefix, bytes([192, 0, 2, 33]))) == ipaddress.IPv6Address(v6)


@pytest.mark.parametrize("text, want", [
    ("dns64", Dns64Config()),
    ("dns64 64:1337::/96", Dns64Config(prefix="64:1337::/96")),
    ("dns64 {\n  prefix 64:1337::/96\n }", Dns64Config(prefix="64:1337::/96")),
    ("dns64 {\n  translate_all\n  allow_ipv4\n }",
     Dns64Config(translate_all=True, allow_ipv4=True)),
])
def test_parse(text, want):
    cfg = parse_corefile(f". {{\n {text}\n forward . 127.0.0.1\n}}\n", "C")
    assert cfg.servers[0].plugins["dns64"] == want


@pytest.mark.parametrize("text, message", [  # setup_test.go's failures
    ("dns64 64::/0", "invalid prefix length"),
    ("dns64 64::/33", "invalid prefix length"),
    ("dns64 64::/104", "invalid prefix length"),
    ("dns64 10.0.0.0/8", "invalid netmask 32 IPv6 address"),
    ("dns64 nonsense", "invalid CIDR address: nonsense"),
    ("dns64 64::/96 64::/96", "wrong argument count"),
    ("dns64 {\n  prefix\n }", "wrong argument count"),
    ("dns64 {\n  translate_all yes\n }", "wrong argument count"),
    ("dns64 {\n  frobnicate\n }", "unknown property 'frobnicate'"),
])
def test_parse_errors(text, message):
    with pytest.raises(CorefileError) as e:
        parse_corefile(f". {{\n {text}\n forward . 127.0.0.1\n}}\n", "C")
    line = 3 if "\n" in text else 2
    assert str(e.value).startswith(f"C:{line}: plugin dns64: ") and message in str(e.value), e
    assert "\n" not in str(e.value)




@pytest.fixture(scope="module", params=["c", "py"])
def server(request, tmp_path_factory):
    if not HAS_IPV6:
        pytest.skip("no IPv6 loopback (::1)")
    if request.param == "c" and NO_EXTENSIONS:
        pytest.skip("the Cython UDP path is not built")
    th = UpstreamThread()
    up = th.start(RECORDS, soa_ttl=120, soa_minimum=60)
    tmp = tmp_path_factory.mktemp(f"dns64-{request.param}")
    port = free_port()
    mport = free_port(v6=False)
    bind = "    bind 127.0.0.1 ::1\n"
    (tmp / "Corefile").write_text(
        f"cluster.local:{port} {{\n{bind}    dns64\n    kubernetes cluster.local\n"
        f"    prometheus 127.0.0.1:{mport}\n}}\n"
        f"example.test:{port} {{\n{bind}    dns64 2001:db8:64::/96\n    forward . {up.addr}\n}}\n"
        f"all.test:{port} {{\n{bind}    dns64 {{\n        translate_all\n        allow_ipv4\n"
        f"    }}\n    rewrite name suffix .all.test. .example.test. answer auto\n"
        f"    forward . {up.addr}\n}}\n"
        f".:{port} {{\n{bind}    forward . {up.addr}\n}}\n")
    mp = pytest.MonkeyPatch()
    mp.setenv("FASTDNS_NO_EXTENSIONS", "1" if request.param == "py" else "0")
    srv = Server(tmp, ["--corefile", str(tmp / "Corefile"), "--state", str(DEMO),
                       "--workers", "1"], port)
    mp.undo()
    srv.path = request.param
    srv.mport = mport
    try:
        srv.wait_answering()
        yield srv, up
    finally:
        srv.stop_and_sweep()
        th.close()


def ask(srv, name, rdtype="AAAA", v6=True, tcp=False):
    how = dns.query.tcp if tcp else dns.query.udp
    return how(dns.message.make_query(name, rdtype), "::1" if v6 else "127.0.0.1",
               port=srv.port, timeout=3)


def aaaa(r) -> list[tuple[str, int]]:
    return sorted((rd.address, rr.ttl) for rr in r.answer if rr.rdtype == dns.rdatatype.AAAA
                  for rd in rr)


def slow_count(srv) -> int:
    with shm.ControlSegment.attach(srv.instance) as ctl:
        return readout.read_counters(ctl.counters(0))["slow"]["total"]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_synthesized_for_an_ipv6_client(server, tcp):
    srv, up = server
    r = ask(srv, "v4only.example.test.", tcp=tcp)
    assert r.rcode() == dns.rcode.NOERROR
    # TTL: min(A 300, the NODATA's SOA 120)
    assert aaaa(r) == [("2001:db8:64::c000:221", 120), ("2001:db8:64::c000:222", 120)]
    assert not r.flags & dns.flags.AA and r.flags & dns.flags.RD  # SetReply
    assert str(r.question[0].name) == "v4only.example.test." and r.question[0].rdtype == 28
    assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.AAAA]
    assert up.count("v4only.example.test.") >= 2  # the AAAA, then the A


def test_not_for_an_ipv4_client(server):
    srv, _up = server
    r = ask(srv, "v4only.example.test.", v6=False)
    assert r.rcode() == dns.rcode.NOERROR and r.answer == []
    assert r.authority[0].rdtype == dns.rdatatype.SOA  # the upstream's NODATA as it is


def test_real_aaaa_stands_and_nxdomain_stays(server):
    srv, _up = server
    assert aaaa(ask(srv, "dual.example.test.")) == [("2001:db8::35", 300)]
    r = ask(srv, "nope.example.test.")
    assert r.rcode() == dns.rcode.NXDOMAIN and r.answer == []
    a = ask(srv, "v4only.example.test.", "A")  # other types: untouched
    assert sorted(rd.address for rr in a.answer for rd in rr) == ["192.0.2.33", "192.0.2.34"]


def test_cluster_names_in_the_kubernetes_block(server):
    srv, _up = server
    r = ask(srv, KUBERNETES)
    # kubernetes' NODATA SOA has TTL 5, its A TTL 5
    assert aaaa(r) == [("64:ff9b::a60:1", 5)]
    # an ExternalName to an outside name: the CNAME stays, its A turns AAAA
    r = ask(srv, "search.shop.svc.cluster.local.")
    assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.CNAME, dns.rdatatype.AAAA]
    assert str(r.answer[0][0].target) == "www.example.com."
    assert r.answer[1][0].address == "64:ff9b::c000:207"


def test_translate_all_and_allow_ipv4(server):
    """translate_all replaces a real AAAA; allow_ipv4 serves an IPv4 client. The
    A lookup goes down the block's chain from the top (rewrite included)."""
    srv, _up = server
    for v6 in (True, False):
        r = ask(srv, "dual.all.test.", v6=v6)
        assert aaaa(r) == [("64:ff9b::c000:223", 300)], r  # no SOA: min(300, 600)
        assert str(r.answer[0].name) == "dual.all.test."


def test_only_aaaa_from_translated_clients_leave_the_fast_path(server):
    srv, _up = server
    if srv.path != "c":
        pytest.skip("the pure-Python path answers every query in Python")
    ask(srv, KUBERNETES, "A")
    before = slow_count(srv)
    for _ in range(5):
        ask(srv, KUBERNETES, "A")  # IPv6 client, type A
        ask(srv, KUBERNETES, v6=False)  # AAAA from an IPv4 client, no allow_ipv4
    assert slow_count(srv) == before
    ask(srv, KUBERNETES)
    assert slow_count(srv) == before + 1


def translated(srv) -> float:
    key = ("coredns_dns64_requests_translated_total",
           frozenset({("server", f"dns://127.0.0.1:{srv.port}")}))
    return scrape_metrics(srv.mport).get(key, 0.0)


def test_translations_are_counted(server):
    """coredns_dns64_requests_translated_total{server}: one per synthesized
    answer, none for an IPv4 client, a real AAAA or an NXDOMAIN."""
    srv, _up = server
    time.sleep(0.7)  # earlier tests' counts reach the block (the 0.5 s export)
    before = translated(srv)
    ask(srv, "v4only.example.test.")
    ask(srv, "v4only.example.test.", tcp=True)
    ask(srv, "v4only.example.test.", v6=False)
    ask(srv, "dual.example.test.")
    ask(srv, "nope.example.test.")
    assert wait_for(lambda: translated(srv) - before >= 2, timeout=5)
    time.sleep(0.6)
    assert translated(srv) - before == 2
