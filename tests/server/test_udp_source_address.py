"""UDP replies leave from the address the query was sent to, on a wildcard bind.

``.:PORT`` without ``bind``: the workers bind 0.0.0.0 and ::, so one socket
takes the queries for every local address. Every 127/8 address is local on
Linux (the ``local 127.0.0.0/8`` route), with 127.0.0.1 as the route's
preferred source: a query sent to 127.0.0.2 whose reply the kernel sources
by itself comes back from 127.0.0.1. The clients here do what glibc's stub
resolver does (``resolv/res_send.c`` connects its UDP socket to the
server): a UDP socket ``connect()``ed to 127.0.0.2 drops every datagram from
another source, so an answer only arrives when it leaves from 127.0.0.2, as
CoreDNS's does (miekg/dns ``udp.go`` ``correctSource``). dnspython's
``dns.query.udp`` raises UnexpectedSource for the same fault.

Every path that sends a UDP reply is asked: the fast path's image answer, a
synchronous slow-path answer (a synthesized pod name), a forwarded answer
sent later by the slow path, and its cache hit; both UDP implementations
(the Cython fast path and the pure-Python one, ``FASTDNS_NO_EXTENSIONS=1``),
one server each.
"""

from __future__ import annotations

import contextlib
import socket

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from fastdns.codec import NO_EXTENSIONS
from fastdns.server import udpsource
from tests.helpers import DEMO, HAS_IPV6, KUBERNETES, Server, a_records, free_port, wait_for
from tests.upstreams import UpstreamThread

WWW = "www.example.test."
WWW_A = "192.0.2.1"
WHOAMI = "whoami.test."  # answered in the batch (the slow path's whoami, no forward)
POD = "10-1-2-3.default.pod.cluster.local."  # `pods insecure`: the slow path synthesizes it


def _corefile(port: int, bound_port: int, upstream: str) -> str:
    """kubeadm's shape on a test port (no `bind`: every address is served),
    and a whoami zone on a second port bound to 127.0.0.1 only."""
    return (f".:{port} {{\n"
            "    kubernetes cluster.local in-addr.arpa ip6.arpa {\n"
            "        pods insecure\n"
            "        fallthrough in-addr.arpa ip6.arpa\n"
            "    }\n"
            f"    forward . {upstream}\n"
            "    cache 30\n"
            "}\n"
            f"{WHOAMI.removesuffix('.')}:{bound_port} {{\n"
            "    bind 127.0.0.1\n"
            "    whoami\n"
            "}\n")


def _c_path_available() -> bool:
    try:
        from fastdns.server import _udp  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module", params=["c", "py"])
def server(request, tmp_path_factory):
    """A wildcard-bound `fastdns serve` (one worker) forwarding to a loopback upstream."""
    if request.param == "c" and (NO_EXTENSIONS or not _c_path_available()):
        pytest.skip("the Cython UDP path is not built or FASTDNS_NO_EXTENSIONS is set")
    tmp = tmp_path_factory.mktemp(f"udpsrc-{request.param}")
    th = UpstreamThread()
    srv = None
    try:
        up = th.start({WWW: [("A", WWW_A)]})
        port = free_port()
        srv_bound = free_port()
        (tmp / "Corefile").write_text(_corefile(port, srv_bound, up.addr))
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("FASTDNS_NO_EXTENSIONS", "1" if request.param == "py" else "0")
            srv = Server(tmp, ["--corefile", str(tmp / "Corefile"), "--state", str(DEMO),
                               "--workers", "1"], port)
        srv.wait_answering()
        # the worker's own line says which UDP path serves (it may trail the first answer)
        marker = "(Cython UDP path)" if request.param == "c" else "(Python UDP path)"
        assert wait_for(lambda: marker in srv.log(), timeout=10), srv.log()
        srv.bound_port = srv_bound
        yield srv
    finally:
        if srv is not None:
            srv.stop_and_sweep()
        th.close()


def ask_connected(where: str, name: str, rdtype: str, port: int) -> dns.message.Message:
    """One query over a UDP socket connected to ``where`` (as glibc sends it)."""
    family = socket.AF_INET6 if ":" in where else socket.AF_INET
    q = dns.message.make_query(name, rdtype)
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.connect((where, port))
        s.send(q.to_wire())
        try:
            data = s.recv(65535)
        except TimeoutError:
            pytest.fail(f"{name} {rdtype} asked at {where}: no answer from {where} "
                        "(a reply from another source is dropped by a connected socket)")
    r = dns.message.from_wire(data)
    assert r.id == q.id
    return r


@pytest.mark.slow
def test_image_answer_comes_from_the_asked_address(server):
    for where in ("127.0.0.2", "127.0.0.3", "127.0.0.1"):
        r = ask_connected(where, KUBERNETES, "A", server.port)
        assert r.rcode() == dns.rcode.NOERROR and a_records(r), r


@pytest.mark.slow
def test_slow_path_answer_in_the_batch_comes_from_the_asked_address(server):
    r = ask_connected("127.0.0.2", POD, "A", server.port)
    assert r.rcode() == dns.rcode.NOERROR
    assert a_records(r) == {"10.1.2.3"}


@pytest.mark.slow
def test_forwarded_answer_and_its_cache_hit_come_from_the_asked_address(server):
    # first: forwarded, sent later by the slow path; then the cache's copy
    for where in ("127.0.0.2", "127.0.0.3"):
        r = ask_connected(where, WWW, "A", server.port)
        assert r.rcode() == dns.rcode.NOERROR
        assert a_records(r) == {WWW_A}


@pytest.mark.slow
def test_bound_socket_after_wildcard_batches(server):
    """One worker reads both sockets: an answer on the socket bound to
    127.0.0.1 carries nothing of the wildcard socket's batch before it
    (a stale source would send it from 127.0.0.2)."""
    for _ in range(3):
        r = ask_connected("127.0.0.2", KUBERNETES, "A", server.port)
        assert a_records(r)
        r = ask_connected("127.0.0.1", WHOAMI, "A", server.bound_port)
        assert r.rcode() == dns.rcode.NOERROR
        assert {rr.address for rrset in r.additional if rrset.rdtype == dns.rdatatype.A
                for rr in rrset} == {"127.0.0.1"}, r
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # the bind holds
        s.settimeout(0.5)
        s.sendto(dns.message.make_query(WHOAMI, "A").to_wire(),
                 ("127.0.0.2", server.bound_port))
        with pytest.raises(TimeoutError):
            s.recv(512)


@pytest.mark.slow
def test_dnspython_accepts_the_answer(server):
    """dnspython checks the source itself (UnexpectedSource unless it is the server)."""
    for name in (KUBERNETES, "other.example.test."):
        q = dns.message.make_query(name, "A")
        r = dns.query.udp(q, "127.0.0.4", port=server.port, timeout=3)
        assert r.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 on loopback here")
def test_ipv6_wildcard_answers(server):
    """:: has one loopback address only, so this shows the IPv6 packet-info
    path sends what the kernel accepts, for each kind of answer."""
    for name in (KUBERNETES, POD, WWW):
        r = ask_connected("::1", name, "A", server.port)
        assert r.rcode() == dns.rcode.NOERROR and a_records(r), r


# -- udpsource's own rules -------------------------------------------------------

def test_wildcard_addresses():
    assert udpsource.is_wildcard("0.0.0.0") and udpsource.is_wildcard("::")
    for address in ("127.0.0.1", "::1", "10.96.0.10", "fe80::1%lo", "localhost", ""):
        assert not udpsource.is_wildcard(address), address


def test_reply_ancillary_from_ipv4_pktinfo():
    """in_pktinfo (ifindex, spec_dst, addr) -> sent with ifindex 0 and spec_dst."""
    got = (7).to_bytes(4, "little") + socket.inet_aton("10.0.0.5") + socket.inet_aton("10.0.0.255")
    anc = udpsource.reply_ancillary([(socket.IPPROTO_IP, udpsource.IP_PKTINFO, got)])
    assert anc == [(socket.IPPROTO_IP, udpsource.IP_PKTINFO,
                    bytes(4) + socket.inet_aton("10.0.0.5") + socket.inet_aton("10.0.0.255"))]


def test_reply_ancillary_from_ipv6_pktinfo():
    addr = socket.inet_pton(socket.AF_INET6, "2001:db8::53")
    anc = udpsource.reply_ancillary(
        [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, addr + (3).to_bytes(4, "little"))])
    assert anc == [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, addr + bytes(4))]
    multicast = socket.inet_pton(socket.AF_INET6, "ff02::fb") + bytes(4)
    assert udpsource.reply_ancillary([(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO,
                                       multicast)]) == []
    assert udpsource.reply_ancillary([]) == []


def test_recvmsg_and_sendmsg_round_trip():
    """The module's two halves on a real wildcard socket: the reply to a query
    sent to 127.0.0.2 leaves from 127.0.0.2."""
    with contextlib.ExitStack() as stack:
        srv = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        udpsource.enable(srv)
        srv.bind(("0.0.0.0", 0))
        srv.settimeout(3)
        cli = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        cli.settimeout(3)
        cli.connect(("127.0.0.2", srv.getsockname()[1]))
        cli.send(b"ping")
        data, ancdata, _flags, addr = srv.recvmsg(512, udpsource.ANCBUFSIZE)
        anc = udpsource.reply_ancillary(ancdata)
        assert anc and anc[0][2][4:8] == socket.inet_aton("127.0.0.2")
        udpsource.send(srv, b"pong", addr, anc)
        assert cli.recv(512) == b"pong"
