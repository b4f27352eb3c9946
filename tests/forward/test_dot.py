"""forward to DNS-over-TLS upstreams, and the newer forward options
(read_timeout, max_age, source_address), against real loopback upstreams.

The Corefile text goes through the real parser (parse_corefile), so each
test is the operator's block, not a hand-built config. The TLS upstream is
fastdns.testing.upstream with an ssl context from a throwaway CA
(fastdns.testing.pki, the openssl command line).
"""

from __future__ import annotations

import asyncio
import ssl
import time

import dns.message
import dns.rcode
import pytest

from fastdns.codec import wire
from fastdns.corefile.config import parse_corefile
from fastdns.corefile.errors import CorefileError
from fastdns.forward import Forwarder
from fastdns.testing.pki import make_pki
from fastdns.testing.upstream import TestUpstream

RECORDS = {"www.example.test.": [("A", "192.0.2.1")]}
FAST = dict(timeout=1.0, health_timeout=0.1)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("dot"), ips=("127.0.0.1",),
                    dns_names=("dns.test",), common_name="dns.test")


def server_ctx(pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    return ctx


def forwarder(block: str, **kw) -> Forwarder:
    cfg = parse_corefile(f". {{\n forward . {block}\n}}\n", "Corefile")
    return Forwarder(cfg.servers[0].plugins["forward"], **{**FAST, **kw})


def query(name="www.example.test."):
    data = dns.message.make_query(name, "A").to_wire()
    return data, wire.parse_query(data)


def answer(fwd: Forwarder, tcp: bool = False):
    async def go():
        data, q = query()
        return dns.message.from_wire(await fwd.forward(data, q, tcp=tcp))
    return go()


def addresses(m) -> list[str]:
    return sorted(rd.address for rrset in m.answer for rd in rrset)


def test_tls_upstream_with_block_servername_answers_over_tls(pki):
    async def main():
        async with TestUpstream(RECORDS, tls=server_ctx(pki)) as up:
            fwd = forwarder(f"tls://127.0.0.1:{up.port} {{\n  tls {pki.ca_cert}\n"
                            "  tls_servername dns.test\n }")
            for _ in range(3):  # a UDP client: still asked over TLS, one connection
                m = await answer(fwd)
                assert m.rcode() == dns.rcode.NOERROR and addresses(m) == ["192.0.2.1"]
            assert up.counts == {"tcp": 3} and up.tcp_connections == 1
            assert fwd.upstreams[0].tcp_reused == 2
            fwd.close()
    run(main())


def test_per_upstream_servername_and_ip_san(pki):
    async def main():
        async with TestUpstream(RECORDS, tls=server_ctx(pki)) as up:
            for to in (f"tls://127.0.0.1%dns.test:{up.port}", f"tls://127.0.0.1:{up.port}"):
                # the second: no name given, the IP is checked (the cert's IP SAN)
                fwd = forwarder(f"{to} {{\n  tls {pki.ca_cert}\n }}")
                m = await answer(fwd)
                assert addresses(m) == ["192.0.2.1"], to
                fwd.close()
    run(main())


@pytest.mark.parametrize("opts", ["tls_servername wrong.test", ""],
                         ids=["wrong servername", "system CAs"])
def test_unverifiable_upstream_is_never_asked_and_gives_servfail(pki, opts):
    async def main():
        async with TestUpstream(RECORDS, tls=server_ctx(pki)) as up:
            tls = f"tls {pki.ca_cert}" if opts else "tls"
            fwd = forwarder(f"tls://127.0.0.1:{up.port} {{\n  {tls}\n  {opts}\n"
                            "  max_fails 0\n }")
            m = await answer(fwd)
            assert m.rcode() == dns.rcode.SERVFAIL
            assert up.total() == 0  # the handshake failed: no query reached it
            assert fwd.upstreams[0].errors >= 1
            fwd.close()
    run(main())


def test_plain_dns_port_is_not_spoken_to_as_tls(pki):
    """A tls:// upstream that answers plain DNS fails the handshake: no
    silent fallback to cleartext."""
    async def main():
        async with TestUpstream(RECORDS) as up:
            fwd = forwarder(f"tls://127.0.0.1%dns.test:{up.port} {{\n  tls {pki.ca_cert}\n"
                            "  max_fails 0\n }")
            m = await answer(fwd)
            assert m.rcode() == dns.rcode.SERVFAIL and up.counts.get("udp", 0) == 0
            fwd.close()
    run(main())


def test_max_age_retires_old_connections():
    async def main():
        async with TestUpstream(RECORDS) as up:
            fwd = forwarder(f"{up.addr} {{\n  force_tcp\n  max_age 200ms\n }}")
            for _ in range(3):
                assert addresses(await answer(fwd)) == ["192.0.2.1"]
            assert up.tcp_connections == 1  # young: reused
            await asyncio.sleep(0.3)
            assert addresses(await answer(fwd)) == ["192.0.2.1"]
            assert up.tcp_connections == 2  # older than max_age: a new one
            fwd.close()
    run(main())


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_source_address_is_the_upstreams_peer(tcp):
    async def main():
        async with TestUpstream(RECORDS) as up:
            fwd = forwarder(f"{up.addr} {{\n  source_address 127.0.0.2\n }}")
            assert addresses(await answer(fwd, tcp=tcp)) == ["192.0.2.1"]
            assert {src[0] for *_rest, src in up.queries} == {"127.0.0.2"}
            fwd.close()
    run(main())


def test_read_timeout_moves_to_the_next_upstream_sooner():
    async def main():
        async with TestUpstream(RECORDS) as slow, TestUpstream(RECORDS) as live:
            slow.drop = True
            fwd = forwarder(f"{slow.addr} {live.addr} {{\n  policy sequential\n"
                            "  read_timeout 100ms\n }")
            t0 = time.monotonic()
            assert addresses(await answer(fwd)) == ["192.0.2.1"]
            took = time.monotonic() - t0
            assert 0.09 < took < 0.6, took  # 2 s without read_timeout
            assert fwd.upstreams[0].timeouts == 1 and live.counts == {"udp": 1}
            fwd.close()
    run(main())


def test_options_parse_as_coredns(pki):
    cfg = parse_corefile(". {\n forward . 127.0.0.1 {\n  read_timeout 750ms\n  max_age 30s\n"
                         "  source_address ::1\n }\n}\n", "C")
    f = cfg.servers[0].plugins["forward"]
    assert (f.read_timeout, f.max_age, f.source_address) == (0.75, 30.0, "::1")
    d = parse_corefile(". {\n forward . 127.0.0.1\n}\n", "C").servers[0].plugins["forward"]
    assert (d.read_timeout, d.max_age, d.source_address) == (None, 0.0, None)


@pytest.mark.parametrize("opt, message", [
    ("read_timeout 0s", "C:3: plugin forward: read_timeout must be positive: 0s"),
    ("max_age -1s", "C:3: plugin forward: max_age can't be negative: -1s"),
    ("max_age", "C:3: plugin forward: "),
    ("source_address 10.0.0", "C:3: plugin forward: invalid IP address: 10.0.0"),
    ("tls /nonexistent/ca.pem", "C:3: plugin forward: tls: no such file: /nonexistent/ca.pem"),
])
def test_bad_options_are_one_line_errors(opt, message):
    with pytest.raises(CorefileError) as e:
        parse_corefile(f". {{\n forward . tls://127.0.0.1 {{\n  {opt}\n }}\n}}\n", "C")
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)
