"""The response cache: what is stored, for how long, and how hits are rendered.

Unit tests feed the cache answers built by the test upstream's dnspython
answerer (no sockets) and drive time with an injectable clock; dnspython
parses every answer the cache renders.
"""

from __future__ import annotations

import random
import struct

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from fastdns.codec import wire
from fastdns.corefile.config import parse_corefile
from fastdns.corefile.model import CacheConfig
from fastdns.forward.cache import DENIAL, FRESH, MISS, STALE, SUCCESS, ResponseCache
from fastdns.testing.upstream import TestUpstream

RECORDS = {
    "www.example.test.": [("A", "192.0.2.1"), ("A", "192.0.2.2")],
    "mail.example.test.": [("MX", "10 mx.example.test.")],
    "big.example.test.": [("A", f"192.0.2.{i}") for i in range(1, 61)],
}


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_query(name="www.example.test.", rdtype="A", edns=True, do=False, cd=False, qid=1):
    m = dns.message.make_query(name, rdtype, use_edns=0 if edns else False, want_dnssec=do)
    m.id = qid
    if cd:
        m.flags |= dns.flags.CD
    data = m.to_wire()
    return data, wire.parse_query(data)


def upstream_answer(up: TestUpstream, data: bytes) -> bytes:
    return up.answer(dns.message.from_wire(data)).to_wire(max_size=65535)


try:
    from fastdns.server import _udp
except ImportError:  # pragma: no cover - no build
    _udp = None


@pytest.fixture(autouse=True, params=["local", "shared"])
def store(request, monkeypatch):
    """Every test twice: entries in the worker's own store, and in the shared C table
    (server/_udp_cache.pxi), which must behave the same."""
    if request.param == "shared":
        if _udp is None:
            pytest.skip("the _udp extension is not built")
        init = ResponseCache.__init__

        def shared_init(self, config, **kw):
            init(self, config, **kw)
            table = _udp.CacheTable()
            table.configure(config.success_capacity + config.denial_capacity)
            self.attach(table, 0)

        monkeypatch.setattr(ResponseCache, "__init__", shared_init)
    return request.param


def cache_for(**kw) -> tuple[ResponseCache, Clock]:
    clock = Clock()
    kw.setdefault("zones", (".",))
    return ResponseCache(CacheConfig(**kw), clock=clock, rng=random.Random(1)), clock


def ttls(answer: bytes) -> set[int]:
    m = dns.message.from_wire(answer)
    return {rrset.ttl for sec in (m.answer, m.authority, m.additional) for rrset in sec}


def test_hit_is_served_with_aged_ttl_client_id_and_question_case():
    up = TestUpstream(RECORDS, ttl=300)
    cache, clock = cache_for()
    data, q = make_query()
    assert cache.get(data, q) is None
    assert cache.put(upstream_answer(up, data), q)
    assert cache.entries(SUCCESS) == 1 and cache.entries(DENIAL) == 0
    clock.t += 10.7  # CoreDNS: whole seconds elapsed
    data2, q2 = make_query("WWW.Example.Test.", qid=999)
    ans = cache.get(data2, q2)
    m = dns.message.from_wire(ans)
    assert m.id == 999 and m.rcode() == dns.rcode.NOERROR and m.flags & dns.flags.AA
    assert str(m.question[0].name) == "WWW.Example.Test."
    assert ans[12:q2.question_end] == data2[12:q2.question_end]
    assert sorted(rd.address for rd in m.answer[0]) == ["192.0.2.1", "192.0.2.2"]
    assert ttls(ans) == {290}
    clock.t += 288.9
    assert ttls(cache.get(data2, q2)) == {1}
    clock.t += 1
    assert cache.get(data2, q2) is None  # expired, no serve_stale
    s = cache.stats
    assert (s.requests, s.hits[SUCCESS], s.misses) == (4, 2, 2)


def test_ttl_caps_and_minimum():
    up = TestUpstream(RECORDS, ttl=86400)
    cache, clock = cache_for(success_ttl=30)
    data, q = make_query()
    cache.put(upstream_answer(up, data), q)
    assert ttls(cache.get(data, q)) == {30}
    up = TestUpstream(RECORDS, ttl=1)
    cache, clock = cache_for(success_minttl=7)
    cache.put(upstream_answer(up, data), q)
    clock.t += 5
    assert ttls(cache.get(data, q)) == {2}  # stored for 7 s, not 1


def test_cache_ttl_argument_from_the_corefile_caps_both_types():
    cfg = parse_corefile(". {\n cache 30 {\n  success 100 20 3\n  denial 50\n }\n}\n", "C")
    c = cfg.servers[0].plugins["cache"]
    assert (c.success_capacity, c.success_ttl, c.success_minttl) == (100, 20, 3)
    assert (c.denial_capacity, c.denial_ttl) == (50, 30)
    cache = ResponseCache(c, clock=Clock())
    up = TestUpstream(RECORDS, ttl=3600, soa_ttl=3600, soa_minimum=3600)
    data, q = make_query()
    cache.put(upstream_answer(up, data), q)
    assert ttls(cache.get(data, q)) == {20}
    data, q = make_query("nope.example.test.")
    cache.put(upstream_answer(up, data), q)
    assert ttls(cache.get(data, q)) == {30}


def test_negative_answers_live_min_of_soa_ttl_and_minimum():
    up = TestUpstream(RECORDS, soa_ttl=3600, soa_minimum=60)
    cache, clock = cache_for()
    data, q = make_query("nope.example.test.")
    assert cache.put(upstream_answer(up, data), q)
    assert cache.entries(DENIAL) == 1
    clock.t += 20
    m = dns.message.from_wire(cache.get(data, q))
    assert m.rcode() == dns.rcode.NXDOMAIN and m.authority[0].rdtype == 6
    assert ttls(cache.get(data, q)) == {40}
    clock.t += 40
    assert cache.get(data, q) is None
    # NODATA (the name exists, not the type) is a denial too; SOA TTL below MINIMUM
    up = TestUpstream(RECORDS, soa_ttl=15, soa_minimum=600)
    data, q = make_query("www.example.test.", "TXT")
    assert cache.put(upstream_answer(up, data), q)
    m = dns.message.from_wire(cache.get(data, q))
    assert m.rcode() == dns.rcode.NOERROR and not m.answer and ttls(cache.get(data, q)) == {15}
    assert cache.stats.hits[DENIAL] == 4


def test_negative_answers_without_soa_are_not_cached():
    up = TestUpstream(RECORDS)
    up.negative_soa = False
    cache, _ = cache_for()
    for name, rdtype in (("nope.example.test.", "A"), ("www.example.test.", "TXT")):
        data, q = make_query(name, rdtype)
        assert not cache.put(upstream_answer(up, data), q)  # RFC 2308 §5
    assert cache.entries(DENIAL) == 0


def test_truncated_and_error_answers_are_not_cached():
    up = TestUpstream(RECORDS)
    cache, _ = cache_for()
    data, q = make_query()
    resp = up.answer(dns.message.from_wire(data))
    resp.flags |= dns.flags.TC
    assert not cache.put(resp.to_wire(), q)
    resp = dns.message.make_response(dns.message.from_wire(data))
    resp.set_rcode(dns.rcode.REFUSED)
    assert not cache.put(resp.to_wire(), q)
    # an answer to another question is never stored under this one
    other, _ = make_query("mail.example.test.", "MX")
    assert not cache.put(upstream_answer(up, other), q)
    assert cache.entries(SUCCESS) + cache.entries(DENIAL) == 0


def test_servfail_is_cached_for_the_servfail_ttl():
    up = TestUpstream(RECORDS)
    up.servfail = True
    data, q = make_query()
    cache, clock = cache_for()
    assert cache.put(upstream_answer(up, data), q)
    assert dns.message.from_wire(cache.get(data, q)).rcode() == dns.rcode.SERVFAIL
    clock.t += 5
    assert cache.get(data, q) is None
    cache, clock = cache_for(servfail_ttl=0)
    assert not cache.put(upstream_answer(up, data), q)
    cache, clock = cache_for(serve_stale=3600.0)
    assert cache.put(upstream_answer(up, data), q)
    clock.t += 6
    assert cache.lookup(q) == (None, MISS)  # a SERVFAIL is not served stale


def test_disable_success_and_denial_zones():
    up = TestUpstream(RECORDS)
    cache, _ = cache_for(disable_success=("example.test.",), disable_denial=("other.test.",))
    data, q = make_query()
    assert not cache.put(upstream_answer(up, data), q)
    data, q = make_query("nope.example.test.")
    assert cache.put(upstream_answer(up, data), q)


def test_names_outside_the_cache_zones_are_not_cached():
    up = TestUpstream(RECORDS)
    cache, _ = cache_for(zones=("other.test.",))
    data, q = make_query()
    assert not cache.covers(q)
    assert not cache.put(upstream_answer(up, data), q)


def test_key_has_qtype_qclass_do_and_cd_but_not_case():
    up = TestUpstream(RECORDS)
    cache, _ = cache_for()
    data, q = make_query()
    cache.put(upstream_answer(up, data), q)
    assert cache.get(*make_query("WWW.EXAMPLE.TEST.")) is not None
    assert cache.get(*make_query(do=True)) is None
    assert cache.get(*make_query(cd=True)) is None
    assert cache.get(*make_query(rdtype="AAAA")) is None
    m = dns.message.make_query("www.example.test.", "A", rdclass="CH")
    d = m.to_wire()
    assert cache.get(d, wire.parse_query(d)) is None
    assert len({ResponseCache.key(make_query(do=a, cd=b)[1]) for a in (0, 1) for b in (0, 1)}) == 4


def test_opt_follows_the_client_not_the_stored_answer():
    up = TestUpstream(RECORDS)
    cache, _ = cache_for()
    data, q = make_query(edns=True)
    cache.put(upstream_answer(up, data), q)
    plain_data, plain_q = make_query(edns=False)
    m = dns.message.from_wire(cache.get(plain_data, plain_q))
    assert m.edns < 0 and len(m.answer[0]) == 2  # no OPT to a client that sent none
    m = dns.message.from_wire(cache.get(data, q))
    assert m.edns == 0 and m.payload == 1232


def test_ad_bit_is_cleared_unless_the_client_asked_for_it():
    up = TestUpstream(RECORDS)
    cache, _ = cache_for()
    data, q = make_query()
    resp = up.answer(dns.message.from_wire(data))
    resp.flags |= dns.flags.AD
    cache.put(resp.to_wire(), q)
    assert not dns.message.from_wire(cache.get(data, q)).flags & dns.flags.AD  # RFC 6840 §5.8
    m = dns.message.from_wire(data)
    m.flags |= dns.flags.AD
    d = m.to_wire()
    assert dns.message.from_wire(cache.get(d, wire.parse_query(d))).flags & dns.flags.AD


def test_large_cached_answer_is_truncated_for_a_small_udp_client_only():
    up = TestUpstream(RECORDS)
    cache, _ = cache_for()
    data, q = make_query("big.example.test.")
    cache.put(upstream_answer(up, data), q)
    small_data, small_q = make_query("big.example.test.", edns=False)
    m = dns.message.from_wire(cache.get(small_data, small_q))
    assert m.flags & dns.flags.TC and not m.answer
    m = dns.message.from_wire(cache.get(small_data, small_q, tcp=True))
    assert len(m.answer[0]) == 60 and not m.flags & dns.flags.TC


def test_keepttl_serves_the_original_ttl():
    up = TestUpstream(RECORDS, ttl=100)
    cache, clock = cache_for(keepttl=True)
    data, q = make_query()
    cache.put(upstream_answer(up, data), q)
    clock.t += 50
    assert ttls(cache.get(data, q)) == {100}


def test_serve_stale_window():
    up = TestUpstream(RECORDS, ttl=10)
    cache, clock = cache_for(serve_stale=60.0)
    data, q = make_query()
    cache.put(upstream_answer(up, data), q)
    clock.t += 30
    e, state = cache.lookup(q)
    assert state == STALE
    assert ttls(cache.render(e, data, q, stale=True)) == {0}
    assert cache.get(data, q) is None  # get() serves fresh entries only
    clock.t += 45
    assert cache.lookup(q) == (None, MISS)
    assert cache.entries(SUCCESS) == 0  # dropped once past the stale window


def test_prefetch_condition():
    """CoreDNS shouldPrefetch: AMOUNT hits without a gap over DURATION, and at most
    PERCENTAGE of the original TTL left (each check counts the current hit)."""
    up = TestUpstream(RECORDS, ttl=100)
    cache, clock = cache_for(prefetch=3, prefetch_duration=10.0, prefetch_percentage=20)
    data, q = make_query()
    cache.put(upstream_answer(up, data), q)
    e, state = cache.lookup(q)
    assert state == FRESH

    def hit_at(t):
        cache.hit(e, 1000 + t)
        return cache.should_prefetch(e, 1000 + t)

    assert [hit_at(t) for t in (0, 5, 10)] == [False, False, False]  # 90 s left
    assert not hit_at(79)  # 21 s left > 20 s, and the 69 s gap restarted the count
    assert not hit_at(81) and hit_at(82)  # 18 s left, 3 hits within 10 s of each other
    assert e.hits == 3


@pytest.mark.parametrize("kind", [SUCCESS, DENIAL])
def test_capacity_bounds_the_entries(kind):
    up = TestUpstream(RECORDS)
    cache, _ = cache_for(success_capacity=5, denial_capacity=3)
    cap = 5 if kind == SUCCESS else 3
    names = [f"n{i}.example.test." for i in range(50)]
    if kind == SUCCESS:
        up.set_records({n: [("A", "192.0.2.9")] for n in names})
    for n in names:
        data, q = make_query(n)
        assert cache.put(upstream_answer(up, data), q)
        assert cache.entries(kind) <= cap
    assert cache.entries(kind) == cap and cache.evictions(kind) == 50 - cap
    served = sum(cache.get(*make_query(n)) is not None for n in names)
    assert served == cap
    # replacing an entry does not evict
    data, q = make_query(names[-1])
    cache.put(upstream_answer(up, data), q)
    assert cache.evictions(kind) == 50 - cap


def test_stored_form_is_raw_bytes_offsets_and_expiry():
    up = TestUpstream(RECORDS, ttl=300)
    cache, clock = cache_for()
    data, q = make_query()
    raw = upstream_answer(up, data)
    cache.put(raw, q)
    e, _ = cache.lookup(q)
    assert isinstance(e.body, bytes) and e.body[:2] == b"\x00\x00"
    assert e.expires == clock.t + 300 and e.ttl == 300
    assert len(e.offsets) == 2
    assert all(struct.unpack_from(">I", e.body, off)[0] == 300 for off in e.offsets)
    assert len(e.body) == len(raw) - 11  # the OPT RR (11 octets) is not stored
