"""Cache + forwarder together (ForwardingResolver) against real upstreams on loopback.

The cache's clock is injected; network timeouts are real but short. These
run on uvloop, the workers' event loop (tests/forward/test_forwarder.py uses asyncio's).
"""

from __future__ import annotations

import asyncio
import random
import time

import dns.asyncquery
import dns.message
import dns.rcode
import uvloop

from fastdns.codec import wire
from fastdns.corefile.config import parse_corefile
from fastdns.corefile.model import CacheConfig, ForwardConfig, Upstream
from fastdns.forward import Forwarder, ForwardingResolver, ResponseCache, from_plugins
from fastdns.forward.cache import DENIAL, SUCCESS
from fastdns.testing.upstream import TestUpstream

RECORDS = {"www.example.test.": [("A", "192.0.2.1")]}
FAST = dict(read_timeout=0.15, timeout=0.6, health_timeout=0.1)


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def run(coro):
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
        return runner.run(asyncio.wait_for(coro, 20))


def resolver_for(*ups: TestUpstream, fwd_kw=None, timeouts=None, **cache_kw):
    clock = Clock()
    cache_kw.setdefault("zones", (".",))
    fwd = Forwarder(ForwardConfig(".", tuple(Upstream("dns", u.host, u.port) for u in ups),
                                  **(fwd_kw or {})), **dict(FAST, **(timeouts or {})))
    cache = ResponseCache(CacheConfig(**cache_kw), clock=clock, rng=random.Random(3))
    return ForwardingResolver(fwd, cache), clock


def make_query(name="www.example.test.", rdtype="A", edns=True, qid=1):
    m = dns.message.make_query(name, rdtype, use_edns=0 if edns else False)
    m.id = qid
    data = m.to_wire()
    return data, wire.parse_query(data)


def summary(answer: bytes):
    m = dns.message.from_wire(answer)
    addrs = sorted(rd.address for rrset in m.answer for rd in rrset if rrset.rdtype == 1)
    ttls = {rrset.ttl for sec in (m.answer, m.authority) for rrset in sec}
    return m.rcode(), addrs, ttls


def test_miss_then_hit_with_aged_ttl():
    async def main():
        async with TestUpstream(RECORDS, ttl=120) as up:
            res, clock = resolver_for(up)
            data, q = make_query()
            assert summary(await res.resolve(data, q)) == (0, ["192.0.2.1"], {120})
            clock.t += 30
            data, q = make_query("WWW.example.TEST.", qid=55)
            ans = await res.resolve(data, q)
            assert summary(ans) == (0, ["192.0.2.1"], {90})
            assert dns.message.from_wire(ans).id == 55
            assert up.total() == 1 and res.cache.stats.hits[SUCCESS] == 1
            res.close()
    run(main())


def test_negative_answer_is_cached_with_the_soa_minimum_and_without_soa_not_at_all():
    async def main():
        async with TestUpstream(RECORDS, soa_ttl=3600, soa_minimum=45) as up:
            res, clock = resolver_for(up)
            data, q = make_query("gone.example.test.")
            assert summary(await res.resolve(data, q))[0] == dns.rcode.NXDOMAIN
            clock.t += 40
            assert summary(await res.resolve(data, q)) == (dns.rcode.NXDOMAIN, [], {5})
            assert up.total() == 1
            clock.t += 5
            await res.resolve(data, q)
            assert up.total() == 2  # expired after min(3600, 45) s
            up.negative_soa = False
            data, q = make_query("alsogone.example.test.")
            for _ in range(2):
                assert summary(await res.resolve(data, q))[0] == dns.rcode.NXDOMAIN
            assert up.total() == 4 and res.cache.entries(DENIAL) == 1
            res.close()
    run(main())


def test_concurrent_misses_share_one_upstream_query():
    async def main():
        async with TestUpstream(RECORDS) as up:
            # The upstream holds its answer while all 20 arrive; the read timeout
            # is far above that so a slow CI machine cannot turn it into retries.
            up.delay = 0.1
            res, _ = resolver_for(up, timeouts=dict(read_timeout=2.0, timeout=4.0))
            names = ["www.example.test.", "WWW.EXAMPLE.TEST.", "wWw.ExAmPlE.tEsT."]
            queries = [make_query(names[i % 3], edns=i % 2 == 0, qid=100 + i)
                       for i in range(20)]
            answers = await asyncio.gather(*(res.resolve(d, q) for d, q in queries))
            assert up.total() == 1
            assert res.upstream_queries == 1 and res.shared == 19
            for (data, q), ans in zip(queries, answers, strict=True):
                m = dns.message.from_wire(ans)
                assert m.id == q.id and ans[12:q.question_end] == data[12:q.question_end]
                assert (m.edns == 0) == q.edns  # our OPT, or none, as each client asked
                if q.edns:
                    assert m.payload == 1232 and not m.options
                assert summary(ans)[:2] == (0, ["192.0.2.1"])
            assert not res.inflight
            res.close()
    run(main())


def test_upstream_failure_is_servfail_and_not_cached():
    async def main():
        async with TestUpstream(RECORDS) as up:
            up.drop = True
            res, _ = resolver_for(up, fwd_kw=dict(max_fails=0))
            data, q = make_query()
            assert summary(await res.resolve(data, q))[0] == dns.rcode.SERVFAIL
            up.drop = False
            assert summary(await res.resolve(data, q))[:2] == (0, ["192.0.2.1"])
            assert res.cache.entries(DENIAL) == 0
            res.close()
    run(main())


def test_serve_stale_immediate_while_the_upstream_is_down():
    async def main():
        async with TestUpstream(RECORDS, ttl=10) as up:
            res, clock = resolver_for(up, serve_stale=3600.0,
                                      timeouts=dict(read_timeout=1.0, timeout=2.0))
            data, q = make_query()
            await res.resolve(data, q)
            up.drop = True
            clock.t += 60
            t0 = time.monotonic()
            ans = await res.resolve(data, q)
            assert time.monotonic() - t0 < 0.5  # immediate: no 1 s wait for the upstream
            assert summary(ans) == (0, ["192.0.2.1"], {0})
            assert res.cache.stats.served_stale == 1
            await res.drain()  # the background refresh tried (and failed)
            assert up.count("www.example.test.") == 3  # one fetch: two attempts, one upstream
            assert summary(await res.resolve(data, q))[2] == {0}  # still stale
            await res.drain()
            up.drop = False
            await res.resolve(data, q)  # stale once more; its refresh now succeeds
            await res.drain()
            assert summary(await res.resolve(data, q)) == (0, ["192.0.2.1"], {10})
            res.close()
    run(main())


def test_serve_stale_verify_asks_the_upstream_first():
    async def main():
        async with TestUpstream(RECORDS, ttl=10) as up:
            res, clock = resolver_for(up, serve_stale=3600.0, serve_stale_verify=True)
            data, q = make_query()
            await res.resolve(data, q)
            clock.t += 60
            up.set_records({"www.example.test.": [("A", "192.0.2.99")]}, ttl=10)
            assert summary(await res.resolve(data, q)) == (0, ["192.0.2.99"], {10})
            clock.t += 60
            up.drop = True
            t0 = time.monotonic()
            assert summary(await res.resolve(data, q)) == (0, ["192.0.2.99"], {0})
            assert time.monotonic() - t0 > 0.14  # it waited for the upstream's timeout
            assert res.cache.stats.served_stale == 1
            res.close()
    run(main())


def test_serve_stale_response_ttl_and_failure_recheck():
    """`serve_stale 1h immediate 30s 30s` (RFC 8767 §4's figures): stale answers
    carry TTL 30, and after a failed refresh the stale entry is served with no
    upstream query for 30 s, then a refresh is tried again."""
    async def main():
        async with TestUpstream(RECORDS, ttl=10) as up:
            res, clock = resolver_for(up, serve_stale=3600.0, serve_stale_ttl=30,
                                      serve_stale_recheck=30.0)
            data, q = make_query()
            await res.resolve(data, q)
            up.drop = True
            clock.t += 60
            assert summary(await res.resolve(data, q)) == (0, ["192.0.2.1"], {30})
            await res.drain()  # the refresh failed
            asked = up.count("www.example.test.")
            for _ in range(5):
                clock.t += 5
                assert summary(await res.resolve(data, q))[2] == {30}
            await res.drain()
            assert up.count("www.example.test.") == asked  # rechecked: nothing asked
            up.drop = False
            clock.t += 6  # 31 s after the failure
            assert summary(await res.resolve(data, q))[2] == {30}  # stale, and a refresh
            await res.drain()
            assert up.count("www.example.test.") == asked + 1
            assert summary(await res.resolve(data, q)) == (0, ["192.0.2.1"], {10})
            res.close()
    run(main())


def test_serve_stale_verify_timeout_serves_stale_and_the_fetch_refreshes():
    """`serve_stale 1h verify 100ms`: a slow upstream is waited for 0.1 s, then
    the stale entry goes out, and the fetch, left running, refreshes the cache."""
    async def main():
        async with TestUpstream(RECORDS, ttl=10) as up:
            res, clock = resolver_for(up, serve_stale=3600.0, serve_stale_verify=True,
                                      serve_stale_verify_timeout=0.1,
                                      timeouts=dict(read_timeout=2.0, timeout=3.0))
            data, q = make_query()
            await res.resolve(data, q)
            clock.t += 60
            up.set_records({"www.example.test.": [("A", "192.0.2.77")]}, ttl=10)
            up.delay = 0.4
            t0 = time.monotonic()
            assert summary(await res.resolve(data, q)) == (0, ["192.0.2.1"], {0})
            assert 0.08 < time.monotonic() - t0 < 0.35
            await asyncio.sleep(0.6)  # the verify fetch lands
            up.delay = 0.0
            assert summary(await res.resolve(data, q)) == (0, ["192.0.2.77"], {10})
            res.close()
    run(main())


def test_prefetch_refreshes_a_popular_entry_before_it_expires():
    async def main():
        async with TestUpstream(RECORDS, ttl=100) as up:
            res, clock = resolver_for(up, prefetch=2, prefetch_duration=60.0,
                                      prefetch_percentage=10)
            data, q = make_query()
            await res.resolve(data, q)
            clock.t += 50
            await res.resolve(data, q)
            clock.t += 41  # 9 s left <= 10% of 100; 2 hits within 60 s
            assert summary(await res.resolve(data, q))[2] == {9}  # served from cache ...
            await res.drain()
            assert up.total() == 2 and res.cache.stats.prefetch == 1  # ... and refreshed
            assert summary(await res.resolve(data, q))[2] == {100}
            res.close()
    run(main())


def test_max_concurrent_refused_and_except_zones_pass_through():
    async def main():
        async with TestUpstream(RECORDS) as up:
            up.delay = 0.1
            res, _ = resolver_for(up, fwd_kw=dict(max_concurrent=1,
                                                  except_zones=("internal.test.",)),
                                  timeouts=dict(read_timeout=2.0, timeout=4.0))
            a = make_query()
            b = make_query("other.example.test.")
            ra, rb = await asyncio.gather(res.resolve(*a), res.resolve(*b))
            assert summary(ra)[0] == 0 and summary(rb)[0] == dns.rcode.REFUSED
            assert res.forwarder.max_concurrent_rejects == 1
            assert res.cache.entries(DENIAL) == 0  # REFUSED is never cached
            assert await res.resolve(*make_query("x.internal.test.")) is None
            res.close()
    run(main())


class _Front(asyncio.DatagramProtocol):
    """The minimum a worker does: parse, await the resolver, send."""

    def __init__(self, resolver: ForwardingResolver) -> None:
        self.resolver = resolver
        self.tasks: set[asyncio.Task] = set()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        t = asyncio.get_running_loop().create_task(self._answer(data, addr))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def _answer(self, data: bytes, addr) -> None:
        q = wire.parse_query(data)
        ans = await self.resolver.resolve(data, q)
        self.transport.sendto(ans or wire.error_response(data, q, dns.rcode.REFUSED), addr)


def test_dnspython_client_through_a_udp_front():
    async def main():
        async with TestUpstream(RECORDS, ttl=60) as up:
            res, clock = resolver_for(up)
            loop = asyncio.get_running_loop()
            transport, front = await loop.create_datagram_endpoint(
                lambda: _Front(res), local_addr=("127.0.0.1", 0))
            port = transport.get_extra_info("sockname")[1]
            try:
                for i in range(3):
                    clock.t += 5
                    q = dns.message.make_query("www.example.test.", "A")
                    r = await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=2)
                    assert r.rcode() == dns.rcode.NOERROR and r.id == q.id
                    assert r.answer[0].ttl == (60 if i == 0 else 60 - 5 * i)
                q = dns.message.make_query("nope.example.test.", "A")
                r = await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=2)
                assert r.rcode() == dns.rcode.NXDOMAIN and r.authority[0].rdtype == 6
                assert up.total() == 2
            finally:
                transport.close()
                res.close()
    run(main())


def test_resolver_from_a_nodelocal_style_corefile_block():
    async def main():
        records = {"www.cluster.local.": [("A", "192.0.2.1")]}
        async with TestUpstream(records, zone="cluster.local.", ttl=3600) as up:
            text = (f"cluster.local:53 {{\n cache {{\n  success 9984 30\n  denial 9984 5\n }}\n"
                    f" forward . {up.addr} {{\n  force_tcp\n }}\n}}\n"
                    f".:53 {{\n errors\n}}\n")
            cfg = parse_corefile(text, "Corefile")
            blocks = {b.zones[0]: b for b in cfg.servers}
            assert from_plugins(blocks["."].plugins) is None
            res = from_plugins(blocks["cluster.local."].plugins, **FAST)
            data, q = make_query("www.cluster.local.")
            # the reply that fills the cache already has the capped TTL (CoreDNS
            # cache.go WriteMsg: "avoid jarring TTL experience 1799 -> 8")
            assert summary(await res.resolve(data, q)) == (0, ["192.0.2.1"], {30})
            assert summary(await res.resolve(data, q)) == (0, ["192.0.2.1"], {30})
            assert up.counts == {"tcp": 1}
            res.close()
    run(main())
