"""The shared C cache table against the Python ResponseCache that stores in it.

``ResponseCache.render`` is the oracle: for the same entry, query and clock
the C table must produce the same octets, or miss (None) where it leaves
the answer to Python (expired, prefetch window, over the UDP limit).
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from fastdns.codec import wire
from fastdns.corefile.model import CacheConfig

try:
    from fastdns.server import _udp
except ImportError:  # pragma: no cover - no build
    _udp = None
from fastdns.forward.cache import ResponseCache

pytestmark = pytest.mark.skipif(_udp is None, reason="the _udp extension is not built")

NS = 1_000_000_000


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def upstream_answer(name: str, *, ttl: int = 300, n: int = 1, rcode: int = 0,
                    edns: bool = True, do: bool = False) -> tuple[bytes, bytes]:
    q = dns.message.make_query(name, "A", use_edns=0 if edns else None, want_dnssec=do)
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    if rcode == 0:
        r.answer.append(dns.rrset.from_text(name, ttl, "IN", "A",
                                            *[f"192.0.2.{i + 1}" for i in range(n)]))
    else:
        r.authority.append(dns.rrset.from_text(
            "example.test.", 3600, "IN", "SOA", "ns. host. 1 2 3 4 7"))
    return q.to_wire(), r.to_wire()


def make(config: CacheConfig | None = None, clock: Clock | None = None, size: int = 100):
    clock = clock or Clock()
    cache = ResponseCache(config or CacheConfig(zones=(".",)), clock=clock)
    table = _udp.CacheTable()
    table.configure(size)
    cache.attach(table, 0)
    return cache, table, clock


def store(cache, name: str, **kw) -> None:
    query, raw = upstream_answer(name, **kw)
    assert cache.put(raw, wire.parse_query(query))


def client(name: str, *, qid: int = 0x1234, edns: bool = True, do: bool = False,
           ad: bool = False, cd: bool = False, rd: bool = True) -> bytes:
    q = dns.message.make_query(name, "A", use_edns=0 if edns else None, want_dnssec=do)
    q.id = qid
    if ad:
        q.flags |= dns.flags.AD
    if not rd:
        q.flags &= ~dns.flags.RD
    if cd:
        q.flags |= dns.flags.CD
    return q.to_wire()


@pytest.mark.parametrize("opts", [
    {}, {"edns": False}, {"do": True}, {"ad": True}, {"rd": False}, {"qid": 0xFFFF},
])
@pytest.mark.parametrize("elapsed", [0.0, 1.5, 29.9])
def test_c_hit_equals_python_render(opts, elapsed):
    cache, table, clock = make()
    store(cache, "www.example.test.", ttl=30, n=3, do=opts.get("do", False))
    clock.t += elapsed
    query = client("WwW.ExAmple.TEST.", **opts)
    q = wire.parse_query(query)
    entry, _ = cache.lookup(q, clock.t)
    want = cache.render(entry, query, q, clock.t)
    got = table.serve(query, int(clock.t * NS))
    assert got == want
    assert dns.message.from_wire(got).answer[0].ttl == 30 - int(elapsed)


def test_negative_entry_and_denial_counted_apart():
    cache, table, clock = make()
    query, raw = upstream_answer("nope.example.test.", rcode=dns.rcode.NXDOMAIN)
    assert cache.put(raw, wire.parse_query(query))
    got = table.serve(client("nope.example.test."), int(clock.t * NS))
    r = dns.message.from_wire(got)
    assert r.rcode() == dns.rcode.NXDOMAIN and r.authority[0].ttl == 7  # SOA minimum


def test_misses_where_python_decides():
    cfg = CacheConfig(zones=(".",), prefetch=1, prefetch_percentage=50)
    cache, table, clock = make(cfg)
    store(cache, "www.example.test.", ttl=10)
    assert table.serve(client("www.example.test."), int(clock.t * NS)) is not None
    # remaining 5 of 10 = the prefetch window: Python must see it
    assert table.serve(client("www.example.test."), int((clock.t + 5) * NS)) is None
    cache2, table2, clock2 = make()
    store(cache2, "www.example.test.", ttl=10)
    assert table2.serve(client("www.example.test."), int((clock2.t + 10) * NS)) is None
    # other key bits: DO and CD are part of the key (CoreDNS cache.go key())
    assert table2.serve(client("www.example.test.", do=True), int(clock2.t * NS)) is None
    assert table2.serve(client("www.example.test.", cd=True), int(clock2.t * NS)) is None


def test_too_big_for_the_client_misses():
    cache, table, clock = make()
    store(cache, "big.example.test.", n=40)  # 40 A records: > 512 octets
    assert table.serve(client("big.example.test.", edns=False), int(clock.t * NS)) is None
    assert table.serve(client("big.example.test."), int(clock.t * NS)) is not None


def test_capacity_is_kept_in_the_shared_table():
    cfg = CacheConfig(zones=(".",), success_capacity=2)
    cache, table, clock = make(cfg, size=4)
    for i in range(5):
        store(cache, f"n{i}.example.test.")
    assert table.count == cache.entries("success") == 2
    assert cache.evictions("success") == 3
    served = [table.serve(client(f"n{i}.example.test."), int(clock.t * NS)) is not None
              for i in range(5)]
    assert sum(served) == 2


def test_hits_feed_prefetch_frequency():
    cfg = CacheConfig(zones=(".",), prefetch=3, prefetch_percentage=50)
    cache, table, clock = make(cfg)
    store(cache, "www.example.test.", ttl=10)
    for _ in range(3):
        assert table.serve(client("www.example.test."), int(clock.t * NS)) is not None
    clock.t += 6
    q = wire.parse_query(client("www.example.test."))
    entry, _ = cache.lookup(q, clock.t)
    cache.hit(entry, clock.t)
    assert entry.hits == 4  # the three C hits counted in the slot
    assert cache.should_prefetch(entry, clock.t)


def test_table_stays_consistent_under_churn():
    """Puts and removes in any order keep every remaining key findable."""
    table = _udp.CacheTable()
    table.configure(64)
    table.set_capacity(0, 64, 64)
    cache = ResponseCache(CacheConfig(zones=(".",)), clock=Clock())
    live = {}
    for i in range(400):
        name = f"k{i % 97}.example.test."
        query, raw = upstream_answer(name)
        q = wire.parse_query(query)
        key = cache.key(q)
        if i % 3 == 2 and live:
            victim = sorted(live)[i % len(live)]
            assert table.remove(victim)
            del live[victim]
        elif len(live) < 64:
            body = b"\x00\x00" + raw[2:]
            if table.put(key, 0, False, body, [], 0, 300, 0, 10**18, 10**18, 10**18) == 1:
                live[key] = True
    assert table.count == len(live) == table.counts(0)[0]
    for key in live:
        assert table.hits(key) is not None


@pytest.mark.parametrize("case", [
    {}, {"ttl": 1}, {"ttl": 99999}, {"n": 3, "do": True}, {"edns": False},
    {"rcode": dns.rcode.NXDOMAIN}, {"rcode": dns.rcode.SERVFAIL}, {"rcode": dns.rcode.REFUSED},
])
@pytest.mark.parametrize("prefetch", [0, 1])
def test_c_insert_matches_python_put(case, prefetch):
    """insert_response (the C forwarder's store) stores what ResponseCache.put would."""
    cfg = CacheConfig(zones=(".",), prefetch=prefetch, prefetch_percentage=10,
                      disable_denial=("off.test.",))
    query, raw = upstream_answer("www.example.test.", **case)
    q = wire.parse_query(query)
    py, table_py, clock = make(cfg)
    stored_py = py.put(raw, q)
    c, table_c, _ = make(cfg, clock)
    table_c.set_policy(0, *c.c_policy())
    raw_id = b"\xbe\xef" + raw[2:]  # the upstream's ID is any
    assert table_c.store_response(c.key(q), raw_id, int(clock.t * NS)) == 1
    assert (table_c.count == 1) == stored_py
    if stored_py:
        assert table_c.lookup(c.key(q), 0) == table_py.lookup(py.key(q), 0)
        for dt in (0.0, 0.5, 9.5, 29.0):
            assert table_c.serve(client("www.example.test."), int((clock.t + dt) * NS)) == \
                table_py.serve(client("www.example.test."), int((clock.t + dt) * NS))


def test_c_insert_policy_edges():
    cfg = CacheConfig(zones=("example.test.",), disable_denial=("off.example.test.",))
    cache, table, clock = make(cfg)
    table.set_policy(0, *cache.c_policy())
    now = int(clock.t * NS)
    for name, kw in (("www.other.test.", {}),  # outside the cache's zones
                     ("x.off.example.test.", {"rcode": dns.rcode.NXDOMAIN})):  # disabled
        query, raw = upstream_answer(name, **kw)
        assert table.store_response(cache.key(wire.parse_query(query)), raw, now) == 1
    tc = bytearray(upstream_answer("www.example.test.")[1])
    tc[2] |= 0x02  # TC: never cached
    q = wire.parse_query(upstream_answer("www.example.test.")[0])
    assert table.store_response(cache.key(q), bytes(tc), now) == 1
    assert table.count == 0
    # a question that is not the key's: C does not decide
    assert table.store_response(cache.key(q), upstream_answer("a.example.test.")[1], now) == 0
    assert table.count == 0
    noc = _udp.CacheTable()
    noc.configure(10)
    assert noc.store_response(cache.key(q), upstream_answer("www.example.test.")[1], now) == 0
