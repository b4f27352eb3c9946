"""The forwarder against real upstreams on loopback (fastdns.testing.upstream).

Queries are built and answers read with dnspython; timeouts are shortened
through the Forwarder's constructor so the whole file runs in a few seconds.
"""

from __future__ import annotations

import asyncio
import errno
import random
import time

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest

from fastdns.codec import wire
from fastdns.corefile.config import parse_corefile
from fastdns.corefile.model import ForwardConfig, Upstream
from fastdns.forward import Forwarder, ForwardRefused, NoUpstream
from fastdns.forward.message import reopt
from fastdns.forward.policy import Random, RoundRobin, Sequential
from fastdns.testing.upstream import SPOOF_ADDR, TestUpstream

RECORDS = {
    "www.example.test.": [("A", "192.0.2.1")],
    "big.example.test.": [("A", f"192.0.2.{i}") for i in range(1, 61)],
}
FAST = dict(read_timeout=0.15, timeout=1.0, health_timeout=0.1)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def config(*ups: TestUpstream, **kw) -> ForwardConfig:
    return ForwardConfig(".", tuple(Upstream("dns", u.host, u.port) for u in ups), **kw)


def make_query(name="www.example.test.", rdtype="A", edns=True, qid=None):
    m = dns.message.make_query(name, rdtype, use_edns=0 if edns else False)
    if qid is not None:
        m.id = qid
    data = m.to_wire()
    return data, wire.parse_query(data)


def addresses(answer: bytes) -> list[str]:
    m = dns.message.from_wire(answer)
    return sorted(rd.address for rrset in m.answer for rd in rrset)


def test_udp_forwarding_restores_id_and_question_case():
    async def main():
        async with TestUpstream(RECORDS) as up:
            fwd = Forwarder(config(up), **FAST)
            ids = []
            for _ in range(20):
                data, q = make_query("WwW.Example.TEST.", qid=4242)
                ans = await fwd.forward(data, q)
                m = dns.message.from_wire(ans)
                assert m.id == 4242 and m.rcode() == dns.rcode.NOERROR
                assert ans[12:q.question_end] == data[12:q.question_end]
                assert addresses(ans) == ["192.0.2.1"]
                ids.append(up.queries[-1][3])
            fwd.close()
            assert up.counts == {"udp": 20}
            # RFC 5452: random IDs and source ports toward the upstream
            assert len(set(ids)) > 15 and ids.count(4242) < 3
            assert len({src[1] for _p, _n, _t, _i, src in up.queries}) > 15
            h = fwd.durations[(up.addr, "NOERROR")]
            assert h.count == 20 and sum(h.counts) == 20 and h.sum > 0
    run(main())


def test_tcp_client_is_forwarded_over_tcp_and_connections_are_reused():
    async def main():
        async with TestUpstream(RECORDS) as up:
            fwd = Forwarder(config(up), **FAST)
            for _ in range(3):
                data, q = make_query()
                ans = await fwd.forward(data, q, tcp=True)
                assert addresses(ans) == ["192.0.2.1"]
            assert up.counts == {"tcp": 3}
            u = fwd.upstreams[0]
            assert (u.tcp_opened, u.tcp_reused, u.idle_connections) == (1, 2, 1)
            fwd.close()
    run(main())


def test_expired_tcp_connection_is_not_reused():
    async def main():
        async with TestUpstream(RECORDS) as up:
            fwd = Forwarder(config(up, force_tcp=True, expire=0.1), **FAST)
            data, q = make_query()
            await fwd.forward(data, q)
            await asyncio.sleep(0.2)
            await fwd.forward(data, q)
            assert fwd.upstreams[0].tcp_opened == 2 and fwd.upstreams[0].tcp_reused == 0
            fwd.close()
    run(main())


def test_server_closing_a_cached_connection_is_retried_on_a_fresh_one():
    async def main():
        async with TestUpstream(RECORDS) as up:
            fwd = Forwarder(config(up, force_tcp=True), **FAST)
            data, q = make_query()
            await fwd.forward(data, q)
            for w in list(up._writers):  # the server drops its idle connection
                w.close()
            await asyncio.sleep(0.05)
            ans = await fwd.forward(data, q)
            assert addresses(ans) == ["192.0.2.1"]
            assert fwd.upstreams[0].tcp_opened == 2 and fwd.failures == 0
            fwd.close()
    run(main())


def test_force_tcp_and_prefer_udp():
    async def main():
        async with TestUpstream(RECORDS) as up:
            fwd = Forwarder(config(up, force_tcp=True), **FAST)
            data, q = make_query()
            assert addresses(await fwd.forward(data, q)) == ["192.0.2.1"]
            assert up.counts == {"tcp": 1}
            fwd.close()
            fwd = Forwarder(config(up, prefer_udp=True), **FAST)
            assert addresses(await fwd.forward(data, q, tcp=True)) == ["192.0.2.1"]
            assert up.counts == {"tcp": 1, "udp": 1}
            fwd.close()
    run(main())


def test_truncated_udp_answer_is_retried_over_tcp():
    async def main():
        async with TestUpstream(RECORDS) as up:
            up.tc_udp = True
            fwd = Forwarder(config(up), **FAST)
            data, q = make_query("big.example.test.")
            ans = await fwd.forward(data, q)  # EDNS 1232: the 60 A records fit
            assert len(addresses(ans)) == 60
            assert not dns.message.from_wire(ans).flags & dns.flags.TC
            assert up.counts == {"udp": 1, "tcp": 1} and fwd.tc_retries == 1
            # A client without EDNS (512 octets) gets TC and the question only ...
            data, q = make_query("big.example.test.", edns=False)
            small = dns.message.from_wire(await fwd.forward(data, q))
            assert small.flags & dns.flags.TC and not small.answer and small.edns < 0
            # ... and everything over TCP.
            assert len(addresses(await fwd.exchange(data, q, tcp=True))) == 60
            fwd.close()
    run(main())


def test_timeout_moves_to_the_next_upstream():
    async def main():
        async with TestUpstream(RECORDS) as dead, TestUpstream(RECORDS) as live:
            dead.drop = True
            fwd = Forwarder(config(dead, live, policy="sequential"), **FAST)
            data, q = make_query()
            t0 = time.monotonic()
            ans = await fwd.forward(data, q)
            assert addresses(ans) == ["192.0.2.1"]
            assert 0.14 < time.monotonic() - t0 < 0.9
            assert dead.count("www.example.test.") == 1 and live.counts["udp"] == 1
            assert fwd.upstreams[0].timeouts == 1
            fwd.close()
    run(main())


def test_every_upstream_timing_out_gives_servfail():
    async def main():
        async with TestUpstream(RECORDS) as a, TestUpstream(RECORDS) as b:
            a.drop = b.drop = True
            fwd = Forwarder(config(a, b, max_fails=0), **FAST)
            data, q = make_query(qid=777)
            t0 = time.monotonic()
            m = dns.message.from_wire(await fwd.forward(data, q))
            assert m.rcode() == dns.rcode.SERVFAIL and m.id == 777
            assert time.monotonic() - t0 < 1.2  # bounded by the overall timeout
            assert fwd.failures == 1 and a.counts["udp"] >= 1 and b.counts["udp"] >= 1
            with pytest.raises(NoUpstream):
                await fwd.exchange(data, q)
            fwd.close()
    run(main())


def test_connection_refused_fails_fast_to_servfail():
    async def main():
        up = await TestUpstream(RECORDS).start()
        port = up.port
        await up.close()  # nothing listens there any more: ICMP port unreachable
        fwd = Forwarder(ForwardConfig(".", (Upstream("dns", "127.0.0.1", port),)),
                        **dict(FAST, read_timeout=2.0, timeout=4.0))
        data, q = make_query()
        t0 = time.monotonic()
        m = dns.message.from_wire(await fwd.forward(data, q))
        # far under the 2 s read timeout: the ICMP error ended it, not the clock
        assert m.rcode() == dns.rcode.SERVFAIL and time.monotonic() - t0 < 1.0
        assert fwd.upstreams[0].errors >= 1
        fwd.close()
    run(main())


def test_max_concurrent_answers_refused_beyond_the_limit():
    async def main():
        async with TestUpstream(RECORDS) as up:
            up.delay = 0.2
            fwd = Forwarder(config(up, max_concurrent=2), **dict(FAST, read_timeout=1.0))
            data, q = make_query()
            answers = await asyncio.gather(*(fwd.forward(data, q) for _ in range(5)))
            rcodes = sorted(dns.message.from_wire(a).rcode() for a in answers)
            assert rcodes == [0, 0, 5, 5, 5]
            assert fwd.max_concurrent_rejects == 3 and up.counts["udp"] == 2
            with pytest.raises(ForwardRefused):
                await asyncio.gather(fwd.exchange(data, q), fwd.exchange(data, q),
                                     fwd.exchange(data, q))
            assert fwd.max_concurrent_rejects == 4
            await asyncio.sleep(0.3)
            fwd.close()
    run(main())


def test_dead_upstream_is_skipped_after_max_fails_and_returns_after_a_probe():
    async def main():
        async with TestUpstream(RECORDS) as a, TestUpstream(RECORDS) as b:
            a.drop = True
            # A read timeout well above the "skipped" bound below keeps the two apart
            # on a loaded machine.
            fwd = Forwarder(config(a, b, policy="sequential", max_fails=2, health_check=0.05),
                            **dict(FAST, read_timeout=3.0, timeout=6.0))
            ua = fwd.upstreams[0]
            data, q = make_query()
            assert addresses(await fwd.forward(data, q)) == ["192.0.2.1"]
            assert fwd.health.probing(ua)
            for _ in range(100):  # CoreDNS: down once fails > max_fails
                if ua.down(2):
                    break
                await asyncio.sleep(0.02)
            assert ua.down(2) and ua.fails == 3 and fwd.healthcheck_failures()[a.addr] >= 3
            # `. IN NS` probes, recursion desired
            assert {(n, t) for _p, n, t, _i, _s in a.queries} >= {(".", 2)}
            seen = a.count("www.example.test.")
            t0 = time.monotonic()
            assert addresses(await fwd.forward(data, q)) == ["192.0.2.1"]
            assert time.monotonic() - t0 < 1.5  # no 3 s read timeout: `a` was skipped
            assert a.count("www.example.test.") == seen
            a.drop = False  # it recovers: the next probe succeeds and it is used again
            for _ in range(100):
                if not fwd.health.probing(ua):
                    break
                await asyncio.sleep(0.02)
            assert ua.fails == 0 and not ua.down(2)
            await fwd.forward(data, q)
            assert a.count("www.example.test.") == seen + 1
            fwd.close()
    run(main())


def test_all_upstreams_down_picks_one_at_random_or_fails_fast():
    async def main():
        async with TestUpstream(RECORDS) as a, TestUpstream(RECORDS) as b:
            fwd = Forwarder(config(a, b, max_fails=1), **FAST)
            for u in fwd.upstreams:
                u.fails = 5  # both marked down, though both work
            data, q = make_query()
            assert addresses(await fwd.forward(data, q)) == ["192.0.2.1"]
            assert fwd.healthcheck_broken == 1
            fwd.close()
            fwd = Forwarder(config(a, b, max_fails=1, failfast_all_unhealthy_upstreams=True),
                            **FAST)
            for u in fwd.upstreams:
                u.fails = 5
            m = dns.message.from_wire(await fwd.forward(data, q))
            assert m.rcode() == dns.rcode.SERVFAIL and a.total() + b.total() == 1
            fwd.close()
    run(main())


def test_health_probes_use_tcp_with_force_tcp():
    async def main():
        async with TestUpstream(RECORDS) as up:
            up.drop = True
            fwd = Forwarder(config(up, force_tcp=True, health_check=0.05), **FAST)
            data, q = make_query()
            await fwd.forward(data, q)
            up.drop = False
            for _ in range(50):
                if not fwd.health.probing(fwd.upstreams[0]):
                    break
                await asyncio.sleep(0.02)
            probes = [p for p, n, t, _i, _s in up.queries if (n, t) == (".", 2)]
            assert probes and set(probes) == {"tcp"} and fwd.upstreams[0].fails == 0
            fwd.close()
    run(main())


def test_health_probes_take_no_pooled_connection():
    """CoreDNS's checker dials its own connection per probe (plugin/pkg/proxy/health.go):
    probes neither use nor count the connection cache."""
    async def main():
        async with TestUpstream(RECORDS) as up:
            fwd = Forwarder(config(up, force_tcp=True, health_check=0.05), **FAST)
            u = fwd.upstreams[0]
            data, q = make_query()
            await fwd.forward(data, q)  # one pooled connection
            opened, reused, conns = u.tcp_opened, u.tcp_reused, up.tcp_connections
            for _ in range(3):
                assert await fwd.health.check(u)
            assert (u.tcp_opened, u.tcp_reused) == (opened, reused)
            assert up.tcp_connections == conns + 3
            await fwd.forward(data, q)
            assert (u.tcp_opened, u.tcp_reused) == (opened, reused + 1)
            fwd.close()
    run(main())


def test_ipv6_upstream():
    async def main():
        try:
            up = await TestUpstream(RECORDS, host="::1").start()
        except OSError as e:
            pytest.skip(f"no IPv6 loopback: {e}")
        try:
            fwd = Forwarder(config(up), **FAST)
            assert fwd.upstreams[0].addr == f"[::1]:{up.port}"
            data, q = make_query()
            for tcp in (False, True):
                assert addresses(await fwd.forward(data, q, tcp=tcp)) == ["192.0.2.1"]
            assert up.counts == {"udp": 1, "tcp": 1}
            assert (f"[::1]:{up.port}", "NOERROR") in fwd.durations
            fwd.close()
        finally:
            await up.close()
    run(main())


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_spoofed_answers_are_ignored(tcp):
    async def main():
        async with TestUpstream(RECORDS) as up:
            up.spoof = True
            fwd = Forwarder(config(up, force_tcp=tcp), **FAST)
            data, q = make_query()
            ans = await fwd.forward(data, q)
            assert addresses(ans) == ["192.0.2.1"]
            assert SPOOF_ADDR not in addresses(ans)
            assert fwd.upstreams[0].mismatched == 2  # wrong ID, then wrong question
            fwd.close()
    run(main())


def test_only_spoofed_answers_time_out_to_servfail():
    async def main():
        async with TestUpstream(RECORDS) as up:
            up.spoof = "only"
            fwd = Forwarder(config(up, max_fails=0), **FAST)
            data, q = make_query()
            m = dns.message.from_wire(await fwd.forward(data, q))
            assert m.rcode() == dns.rcode.SERVFAIL and not m.answer
            assert fwd.upstreams[0].mismatched >= 2 and fwd.upstreams[0].timeouts >= 1
            fwd.close()
    run(main())


def test_policies_order_the_upstreams():
    async def main():
        async with TestUpstream(RECORDS) as a, TestUpstream(RECORDS) as b, \
                TestUpstream(RECORDS) as c:
            ups = (a, b, c)
            data, q = make_query()

            async def first_choices(fwd, n):
                out = []
                for _ in range(n):
                    before = [u.total() for u in ups]
                    await fwd.forward(data, q)
                    out.append([u.total() - x for u, x in zip(ups, before, strict=True)].index(1))
                fwd.close()
                return out

            assert await first_choices(Forwarder(config(*ups, policy="sequential"), **FAST),
                                       4) == [0, 0, 0, 0]
            assert await first_choices(Forwarder(config(*ups, policy="round_robin"), **FAST),
                                       6) == [0, 1, 2, 0, 1, 2]
            picks = await first_choices(Forwarder(config(*ups), policy=Random(random.Random(7)),
                                                  **FAST), 30)
            assert set(picks) == {0, 1, 2}
            assert picks != [i % 3 for i in range(30)]
    run(main())


def test_policy_units():
    assert Sequential().order([1, 2, 3]) == [1, 2, 3]
    rr = RoundRobin()
    assert [rr.order([1, 2, 3])[0] for _ in range(4)] == [1, 2, 3, 1]
    orders = {tuple(Random(random.Random(s)).order([1, 2, 3])) for s in range(40)}
    assert len(orders) == 6  # every permutation shows up


def test_from_and_except_zones_are_not_forwarded():
    async def main():
        async with TestUpstream(RECORDS) as up:
            cfg = ForwardConfig("example.test.", (Upstream("dns", up.host, up.port),),
                                except_zones=("skip.example.test.",))
            fwd = Forwarder(cfg, **FAST)
            for name in ("other.test.", "a.skip.example.test.", "SKIP.example.test.",
                         "xexample.test."):
                data, q = make_query(name)
                assert await fwd.forward(data, q) is None, name
            data, q = make_query("noskip.example.test.")
            m = dns.message.from_wire(await fwd.forward(data, q))
            assert m.rcode() == dns.rcode.NXDOMAIN
            assert up.total() == 1
            fwd.close()
    run(main())


def test_failover_rcodes_try_the_next_upstream():
    async def main():
        async with TestUpstream(RECORDS) as a, TestUpstream(RECORDS) as b:
            a.servfail = True
            data, q = make_query()
            fwd = Forwarder(config(a, b, policy="sequential", failover_rcodes=(2,)), **FAST)
            assert addresses(await fwd.forward(data, q)) == ["192.0.2.1"]
            fwd.close()
            fwd = Forwarder(config(a, b, policy="sequential"), **FAST)
            m = dns.message.from_wire(await fwd.forward(data, q))
            assert m.rcode() == dns.rcode.SERVFAIL  # without failover: a's answer stands
            assert fwd.durations[(a.addr, "SERVFAIL")].count == 1
            fwd.close()
    run(main())


def test_upstreams_from_a_resolv_conf_file(tmp_path):
    async def main():
        try:
            up = await TestUpstream(RECORDS, host="127.0.0.77", port=53).start()
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                pytest.skip(f"cannot bind 127.0.0.77:53: {e}")
            raise
        try:
            rc = tmp_path / "resolv.conf"
            rc.write_text("search example.test\nnameserver 127.0.0.77\noptions ndots:5\n")
            cfg = parse_corefile(f". {{\n forward . {rc}\n}}\n", "Corefile")
            fcfg = cfg.servers[0].plugins["forward"]
            fwd = Forwarder(fcfg, **FAST)
            assert [u.addr for u in fwd.upstreams] == ["127.0.0.77:53"]
            data, q = make_query()
            assert addresses(await fwd.forward(data, q)) == ["192.0.2.1"]
            fwd.close()
        finally:
            await up.close()
    run(main())



def test_reopt_replaces_the_upstream_edns_options_with_ours():
    up = TestUpstream(RECORDS)
    data, q = make_query(qid=9)
    resp = up.answer(dns.message.from_wire(data))
    resp.use_edns(0, payload=4096, options=[dns.edns.GenericOption(dns.edns.COOKIE, b"c" * 24)])
    raw = resp.to_wire()
    m = dns.message.from_wire(reopt(raw, data, q))
    assert m.id == 9 and m.payload == 1232 and not m.options and addresses(m.to_wire())
    plain, pq = make_query(edns=False, qid=10)
    m = dns.message.from_wire(reopt(raw, plain, pq))
    assert m.edns < 0 and m.id == 10 and addresses(m.to_wire()) == ["192.0.2.1"]
    resp.set_rcode(dns.rcode.BADCOOKIE)  # extended rcode bits live in the OPT: kept as is
    raw = resp.to_wire()
    assert reopt(raw, data, q)[2:] == raw[2:]
