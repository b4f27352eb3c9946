"""Forwarder and cache against a real authoritative server: Knot DNS on loopback.

Skipped when ``knotd`` is not installed. Knot answers negative queries with
the SOA TTL already lowered to MINIMUM (RFC 2308 §3), which the cache must
honour.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import time

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from fastdns.codec import wire
from fastdns.corefile.model import CacheConfig, ForwardConfig, Upstream
from fastdns.forward import Forwarder, ForwardingResolver, ResponseCache
from fastdns.forward.cache import DENIAL, SUCCESS
from tests.helpers import free_port

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("knotd") is None, reason="knotd not installed")]

ZONE = """$ORIGIN outside.test.
$TTL 300
@ 3600 IN SOA ns1 hostmaster 1 7200 1800 86400 30
@ IN NS ns1
ns1 IN A 192.0.2.53
www IN A 198.51.100.7
"""


@pytest.fixture
def knot(tmp_path):
    port = free_port(v6=False)
    (tmp_path / "outside.zone").write_text(ZONE)
    (tmp_path / "knot.conf").write_text(f"""server:
    listen: 127.0.0.1@{port}
    rundir: {tmp_path}
database:
    storage: {tmp_path}/db
zone:
  - domain: outside.test.
    file: {tmp_path}/outside.zone
log:
  - target: stderr
    any: error
""")
    proc = subprocess.Popen(["knotd", "-c", str(tmp_path / "knot.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        probe = dns.message.make_query("www.outside.test.", "A")
        while True:
            try:
                dns.query.udp(probe, "127.0.0.1", port=port, timeout=0.2)
                break
            except (dns.exception.Timeout, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"knotd did not start: {proc.stderr.read()!r}") from None
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


class Clock:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_query(name, rdtype="A", qid=7):
    m = dns.message.make_query(name, rdtype, use_edns=0)
    m.id = qid
    d = m.to_wire()
    return d, wire.parse_query(d)


def test_forward_and_cache_against_knot(knot):
    async def main():
        clock = Clock()
        up = (Upstream("dns", "127.0.0.1", knot),)
        res = ForwardingResolver(
            Forwarder(ForwardConfig(".", up), read_timeout=1.0, timeout=2.0),
            ResponseCache(CacheConfig(zones=(".",)), clock=clock, rng=random.Random(1)))
        d, q = make_query("WWW.outside.test.")
        m = dns.message.from_wire(await res.resolve(d, q))
        assert m.id == 7 and [rd.address for rd in m.answer[0]] == ["198.51.100.7"]
        assert m.answer[0].ttl == 300 and str(m.question[0].name) == "WWW.outside.test."
        clock.t += 100
        m = dns.message.from_wire(await res.resolve(*make_query("www.outside.test.", qid=8)))
        assert m.id == 8 and m.answer[0].ttl == 200
        d, q = make_query("nope.outside.test.")
        m = dns.message.from_wire(await res.resolve(d, q))
        assert m.rcode() == dns.rcode.NXDOMAIN and m.authority[0].ttl == 30
        clock.t += 29
        m = dns.message.from_wire(await res.resolve(d, q))
        assert m.rcode() == dns.rcode.NXDOMAIN and m.authority[0].ttl == 1
        assert res.cache.stats.hits == {SUCCESS: 1, DENIAL: 1} and res.upstream_queries == 2
        # over TCP, forced
        fwd = Forwarder(ForwardConfig(".", up, force_tcp=True), read_timeout=1.0, timeout=2.0)
        m = dns.message.from_wire(await fwd.forward(*make_query("www.outside.test.")))
        assert [rd.address for rd in m.answer[0]] == ["198.51.100.7"]
        assert fwd.upstreams[0].tcp_opened == 1 and fwd.upstreams[0].sent_udp == 0
        fwd.close()
        res.close()
    asyncio.run(asyncio.wait_for(main(), 20))
