"""Zone transfers (AXFR, IXFR) of cluster zones are refused, as CoreDNS refuses them.

CoreDNS without the ``transfer`` plugin: ``plugin/kubernetes/handler.go``
returns ``dns.RcodeRefused`` for ``dns.TypeAXFR, dns.TypeIXFR`` for every
name of its zones, before any lookup, sync check or fallthrough, and the
server writes a bare REFUSED (``core/dnsserver/server.go`` errorFunc:
``SetRcode(r, rc)``: question echoed, nothing else). Names outside the
kubernetes zones go on to the next plugin (here: forward).
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.xfr
import pytest

from fastdns.control.process import build_compiler
from fastdns.corefile import config as corefile
from fastdns.zone.state import demo_path, load_state
from tests.helpers import Server, ask, free_port, wait_for
from tests.upstreams import UpstreamThread
from tests.zonetests import compile_table, tables

ST_ANSWER, ST_SLOW = 0, 2

# kubeadm's kubernetes block plus pods insecure, a forward-only zone inside a
# reverse zone, and a forward-only block for another domain
COREFILE = """\
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {{
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    forward . 127.0.0.1:9
}}
10.10.in-addr.arpa:53 example.test:53 {{
    forward . 127.0.0.1:9
}}
"""


def demo_image() -> bytes:
    compiler = build_compiler(corefile.parse_corefile(COREFILE.format()))
    return bytes(compiler.full(load_state(demo_path())))


def xfr_query(name: str, rdtype: str, *, edns: bool = False, soa: bool = False) -> bytes:
    q = dns.message.make_query(name, rdtype, use_edns=0 if edns else None, want_dnssec=edns)
    if soa:  # RFC 1995 §3: an IXFR query carries the client's SOA in authority
        q.authority.append(dns.rrset.from_text(
            name, 0, "IN", "SOA", f"ns.dns.{name} hostmaster.{name} 7 7200 1800 86400 5"))
    return q.to_wire()


REFUSED_NAMES = [
    "cluster.local.",  # the apex
    "CLUSTER.local.",  # any case
    "svc.cluster.local.",
    "nginx.default.svc.cluster.local.",  # a name that exists
    "no-such.default.svc.cluster.local.",  # one that does not
    "deep.below.nothing.cluster.local.",
    "pod.cluster.local.",  # the pod zone (pods insecure)
    "1-2-3-4.default.pod.cluster.local.",
    "in-addr.arpa.",  # reverse zones, fallthrough or not
    "10.0.96.10.in-addr.arpa.",  # the PTR of a ClusterIP
    "ip6.arpa.",
]
PASSED_ON = [  # not the kubernetes plugin's: the next plugin (forward) decides
    "example.test.",
    "www.example.test.",
    "10.10.in-addr.arpa.",  # a forward block's zone inside in-addr.arpa
    "5.10.10.in-addr.arpa.",
    "example.com.",  # in no zone
]


@pytest.mark.parametrize("name", REFUSED_NAMES)
@pytest.mark.parametrize("rdtype", ["AXFR", "IXFR"])
@pytest.mark.parametrize("edns", [False, True], ids=["plain", "edns"])
def test_transfer_of_a_cluster_zone_is_refused(wire, name, rdtype, edns):
    image = demo_image()
    data = xfr_query(name, rdtype, edns=edns, soa=rdtype == "IXFR")
    for max_size in (0, 65535):  # UDP, TCP
        status, resp, _zone = wire.answer(image, data, 0, max_size)
        assert status == ST_ANSWER
        msg = dns.message.from_wire(resp)
        assert msg.rcode() == dns.rcode.REFUSED
        assert msg.flags & dns.flags.QR and msg.flags & dns.flags.RD
        assert not msg.flags & dns.flags.AA
        assert msg.question[0].name == dns.name.from_text(name)
        assert msg.question[0].rdtype == dns.rdatatype.from_text(rdtype)
        assert not msg.answer and not msg.authority  # the IXFR's SOA is not echoed
        assert (msg.edns == 0) == edns and bool(msg.ednsflags & dns.flags.DO) == edns


@pytest.mark.parametrize("name", PASSED_ON)
@pytest.mark.parametrize("rdtype", ["AXFR", "IXFR"])
def test_transfer_outside_the_cluster_zones_is_passed_on(wire, name, rdtype):
    status, resp, _zone = wire.answer(demo_image(), xfr_query(name, rdtype))
    assert status == ST_SLOW and resp is None


def test_other_types_unchanged(wire):
    """Only the two transfer types are refused: the apex's SOA and a miss as before."""
    image = demo_image()
    status, resp, _ = wire.answer(image, xfr_query("cluster.local.", "SOA"))
    assert status == ST_ANSWER and dns.message.from_wire(resp).rcode() == dns.rcode.NOERROR
    status, resp, _ = wire.answer(image, xfr_query("nope.cluster.local.", "A"))
    assert status == ST_ANSWER and dns.message.from_wire(resp).rcode() == dns.rcode.NXDOMAIN
    # MAILB (253) and MAILA (254), the other meta types, are not transfers
    status, resp, _ = wire.answer(image, xfr_query("cluster.local.", "MAILB"))
    assert status == ST_ANSWER and dns.message.from_wire(resp).rcode() == dns.rcode.NOERROR


def test_refused_before_the_first_sync_too(wire):
    """handler.go refuses before it looks at HasSynced: no SERVFAIL for a transfer."""
    table = next(t for t in tables() if t.file.endswith("unsynced.zt"))
    assert not table.synced
    image = compile_table(table)
    for name in ("cluster.local.", "nope.svc.cluster.local."):
        status, resp, _ = wire.answer(image, xfr_query(name, "AXFR"))
        assert status == ST_ANSWER and dns.message.from_wire(resp).rcode() == dns.rcode.REFUSED
    status, resp, _ = wire.answer(image, xfr_query("nope.svc.cluster.local.", "A"))
    assert dns.message.from_wire(resp).rcode() == dns.rcode.SERVFAIL


def test_both_cores_give_the_same_bytes(wire_pair):
    py, c = wire_pair
    images = [demo_image()] + [compile_table(t) for t in tables()]
    names = REFUSED_NAMES + PASSED_ON + ["svc1.testns.svc.cluster.local.", "example.org."]
    for image in images:
        for name in names:
            for rdtype in ("AXFR", "IXFR", "A"):
                for edns in (False, True):
                    data = xfr_query(name, rdtype, edns=edns, soa=rdtype == "IXFR")
                    for max_size in (0, 65535):
                        assert py.answer(image, data, 3, max_size) == \
                            c.answer(image, data, 3, max_size), (name, rdtype, edns)
    # a damaged zone table answers SERVFAIL in both, not a crash or a REFUSED
    image = bytearray(demo_image())
    image[40:44] = (len(image) - 8).to_bytes(4, "little")  # the zone table runs past the end
    data = xfr_query("cluster.local.", "AXFR")
    a, b = py.answer(bytes(image), data), c.answer(bytes(image), data)
    assert a == b and dns.message.from_wire(a[1]).rcode() == dns.rcode.SERVFAIL


# -- a served instance, over UDP and TCP, with dnspython's own transfer client ---------


@pytest.fixture
def served(tmp_path):
    th = UpstreamThread()
    up = th.start({"example.test.": [("A", "192.0.2.7")],
                   "www.example.test.": [("A", "192.0.2.8")]}, zone="example.test.")
    port = free_port(v6=False)
    cf = tmp_path / "Corefile"
    cf.write_text(f"""\
.:{port} {{
    bind 127.0.0.1
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    forward . {up.addr}
}}
""")
    srv = Server(tmp_path, ["--corefile", str(cf), "--demo", "--workers", "1"], port)
    try:
        srv.wait_answering(name="nginx.default.svc.cluster.local.")
        yield srv, up
    finally:
        srv.stop_and_sweep()
        th.close()


def test_served_transfers_refused_over_udp_and_tcp(served):
    srv, up = served
    for name in ("cluster.local.", "default.svc.cluster.local.",
                 "nginx.default.svc.cluster.local.", "nope.cluster.local.",
                 "in-addr.arpa.", "10.0.96.10.in-addr.arpa."):
        for rdtype in ("AXFR", "IXFR"):
            for tcp in (False, True):
                r = ask(name, rdtype, port=srv.port, tcp=tcp, timeout=3.0)
                assert r.rcode() == dns.rcode.REFUSED, (name, rdtype, tcp, r)
                assert not r.answer and not r.authority
    # dnspython's transfer client (TCP for AXFR; IXFR with a serial, also over UDP)
    for kw in ({}, {"rdtype": dns.rdatatype.IXFR, "serial": 1},
               {"rdtype": dns.rdatatype.IXFR, "serial": 1, "use_udp": True}):
        with pytest.raises(dns.xfr.TransferError) as info:
            list(dns.query.xfr("127.0.0.1", "cluster.local.", port=srv.port, timeout=3.0,
                               lifetime=10.0, **kw))
        assert info.value.rcode == dns.rcode.REFUSED, kw
    assert up.total() == 0  # a refused transfer is not forwarded
    # plain queries of the same zone are answered as before
    assert ask("cluster.local.", "SOA", port=srv.port).rcode() == dns.rcode.NOERROR
    assert ask("nope.cluster.local.", port=srv.port).rcode() == dns.rcode.NXDOMAIN


def test_served_transfer_of_another_zone_goes_to_the_next_plugin(served):
    srv, up = served
    for tcp in (False, True):
        r = ask("example.test.", "AXFR", port=srv.port, tcp=tcp, timeout=3.0)
        assert r.rcode() != dns.rcode.REFUSED, r
    assert wait_for(lambda: sum(1 for q in up.queries if q[2] == dns.rdatatype.AXFR) >= 1, 5)
