"""Pooled, pipelined TCP to an upstream (``fastdns.forward.tcppool``), on real loopback sockets.

The test upstream (``fastdns.testing.upstream``) counts the connections it
accepted, can hold its answers until several queries are unanswered on one
connection (then answers newest first) and can close a connection when a
query arrives. Timeouts are shortened through the Forwarder's constructor.
"""

from __future__ import annotations

import asyncio

import dns.message
import pytest

from fastdns.codec import wire
from fastdns.corefile.model import ForwardConfig, Upstream
from fastdns.forward import Forwarder, tcppool
from fastdns.forward.upstream import UpstreamError, UpstreamTimeout
from fastdns.testing.upstream import TestUpstream

NAMES = [f"h{i}.example.test." for i in range(8)]
RECORDS = {n: [("A", f"192.0.2.{i + 1}")] for i, n in enumerate(NAMES)}
FAST = dict(read_timeout=0.3, timeout=1.5, health_timeout=0.1)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def forwarder(up: TestUpstream, **kw) -> Forwarder:
    cfg = ForwardConfig(".", (Upstream("dns", up.host, up.port),), force_tcp=True, **kw)
    return Forwarder(cfg, **FAST)


async def ask(fwd: Forwarder, name: str) -> str:
    data = dns.message.make_query(name, "A").to_wire()
    ans = await fwd.forward(data, wire.parse_query(data))
    assert ans is not None
    m = dns.message.from_wire(ans)
    return m.answer[0][0].address


def want(name: str) -> str:
    return RECORDS[name][0][1]


def test_sequential_queries_share_one_connection():
    async def main():
        async with TestUpstream(RECORDS) as up:
            fwd = forwarder(up)
            for name in NAMES:
                assert await ask(fwd, name) == want(name)
            u = fwd.upstreams[0]
            assert up.tcp_connections == 1 and up.counts == {"tcp": len(NAMES)}
            assert (u.tcp_opened, u.tcp_reused, u.idle_connections) == (1, len(NAMES) - 1, 1)
            fwd.close()
    run(main())


def test_concurrent_queries_are_pipelined_and_may_be_answered_out_of_order():
    async def main():
        async with TestUpstream(RECORDS) as up:
            up.tcp_hold = 5  # nothing is answered until 5 queries wait on one connection
            fwd = forwarder(up)
            names = NAMES[:5]
            got = await asyncio.gather(*(ask(fwd, n) for n in names))
            assert got == [want(n) for n in names]  # each client its own answer
            assert up.tcp_connections == 1 and up.tcp_max_pending == 5
            answered = [n for _p, n, _t, _id, _src in up.queries]
            assert answered == names[::-1]  # newest first: out of order
            u = fwd.upstreams[0]
            assert (u.tcp_opened, u.tcp_reused, u.mismatched) == (1, 4, 0)
            fwd.close()
    run(main())


def test_ids_are_unique_per_connection():
    async def main():
        async with TestUpstream(RECORDS) as up:
            up.tcp_hold = 3
            fwd = forwarder(up)
            u = fwd.upstreams[0]
            msgs = [dns.message.make_query(n, "A") for n in NAMES[:3]]
            for m in msgs:
                m.id = 4242  # the same ID asked for all three
            datas = [m.to_wire() for m in msgs]
            answers = await asyncio.gather(*(
                u.exchange(d, 4242, wire.parse_query(d), True, 1.0) for d in datas))
            ids = [i for _p, _n, _t, i, _src in up.queries]
            assert len(set(ids)) == 3 and up.tcp_connections == 1
            for m, a in zip(msgs, answers, strict=True):
                assert dns.message.from_wire(a).question == m.question
            fwd.close()
    run(main())


def test_idle_connection_expires_then_the_next_query_is_a_miss():
    async def main():
        async with TestUpstream(RECORDS) as up:
            fwd = forwarder(up, expire=0.2)
            u = fwd.upstreams[0]
            assert await ask(fwd, NAMES[0]) == want(NAMES[0])
            assert u.idle_connections == 1
            await asyncio.sleep(0.45)
            assert u.idle_connections == 0 and not up._writers  # closed on both ends
            assert await ask(fwd, NAMES[1]) == want(NAMES[1])
            assert (u.tcp_opened, u.tcp_reused, up.tcp_connections) == (2, 0, 2)
            fwd.close()
    run(main())


@pytest.mark.parametrize("max_idle, kept", [(1, 1), (0, 3)], ids=["max1", "unlimited"])
def test_max_idle_conns_bounds_the_idle_connections(monkeypatch, max_idle, kept):
    monkeypatch.setattr(tcppool, "PIPELINE", 1)  # one query per connection: 3 in flight, 3 dials
    async def main():
        async with TestUpstream(RECORDS) as up:
            up.tcp_hold = 1
            up.delay = 0.05
            fwd = forwarder(up, max_idle_conns=max_idle)
            got = await asyncio.gather(*(ask(fwd, n) for n in NAMES[:3]))
            assert got == [want(n) for n in NAMES[:3]]
            u = fwd.upstreams[0]
            assert u.tcp_opened == 3 and u.idle_connections == kept
            await asyncio.sleep(0.05)
            assert len(up._writers) == kept  # the others were closed, not just forgotten
            fwd.close()
    run(main())


def test_upstream_closing_the_connection_mid_flight_is_retried_on_a_new_one():
    async def main():
        async with TestUpstream(RECORDS) as up:
            fwd = forwarder(up)
            u = fwd.upstreams[0]
            assert await ask(fwd, NAMES[0]) == want(NAMES[0])
            up.tcp_close_after = 2  # the next query on that connection closes it, unanswered
            assert await ask(fwd, NAMES[1]) == want(NAMES[1])
            assert (u.tcp_opened, u.tcp_reused, fwd.failures) == (2, 1, 0)
            assert up.tcp_connections == 2
            fwd.close()
    run(main())


def test_all_queries_in_flight_on_a_closed_connection_are_retried():
    async def main():
        async with TestUpstream(RECORDS) as up:
            up.tcp_hold = 3
            up.tcp_close_after = 3  # three in flight, then the upstream hangs up
            fwd = forwarder(up)
            got = await asyncio.gather(*(ask(fwd, n) for n in NAMES[:3]))
            assert got == [want(n) for n in NAMES[:3]] and fwd.failures == 0
            assert up.tcp_connections == 2 and fwd.upstreams[0].tcp_opened == 2
            fwd.close()
    run(main())


def test_a_connection_closed_twice_under_a_query_is_an_error():
    async def hang_up(reader, writer):  # reads the query, answers nothing, closes
        await reader.readexactly(2)
        writer.close()

    async def main():
        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            cfg = ForwardConfig(".", (Upstream("dns", "127.0.0.1", port),), force_tcp=True)
            fwd = Forwarder(cfg, **FAST)
            u = fwd.upstreams[0]
            data = dns.message.make_query(NAMES[0], "A").to_wire()
            q = wire.parse_query(data)
            with pytest.raises(UpstreamError, match="TCP"):
                await u.exchange(data, q.id, q, True, 1.0)
            assert u.errors == 1 and u.tcp_opened == 2  # the first try and one retry
            fwd.close()
        finally:
            server.close()
            await server.wait_closed()
    run(main())


def test_a_stalled_connection_is_retired_after_a_timeout():
    async def main():
        async with TestUpstream(RECORDS) as up:
            fwd = forwarder(up)
            u = fwd.upstreams[0]
            assert await ask(fwd, NAMES[0]) == want(NAMES[0])
            up.drop = True
            data = dns.message.make_query(NAMES[1], "A").to_wire()
            q = wire.parse_query(data)
            with pytest.raises(UpstreamTimeout):
                await u.exchange(data, q.id, q, True, 0.2)
            up.drop = False
            assert await ask(fwd, NAMES[1]) == want(NAMES[1])  # not on the stalled one
            assert u.tcp_opened == 2 and up.tcp_connections == 2
            await asyncio.sleep(0.05)
            assert len(up._writers) == 1  # the retired one was closed
            fwd.close()
    run(main())


def test_close_fails_nothing_later_and_dials_anew():
    async def main():
        async with TestUpstream(RECORDS) as up:
            fwd = forwarder(up)
            assert await ask(fwd, NAMES[0]) == want(NAMES[0])
            fwd.close()
            assert fwd.upstreams[0].idle_connections == 0
            assert await ask(fwd, NAMES[1]) == want(NAMES[1])
            assert fwd.upstreams[0].tcp_opened == 2
            fwd.close()
    run(main())
