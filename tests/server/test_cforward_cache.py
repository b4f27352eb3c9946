"""The C forwarder in front of ``cache`` (issue 13): misses stored in the shared
table by the cache's policy, each waiter's reply rendered from it, concurrent
misses of one key sharing one upstream query.

One `fastdns serve` (one worker, so its shm counters say which path
answered) with a ``forward`` + ``cache`` block to a counting loopback
upstream. W_CFWD_JOINED and W_CC_FORWARDED prove the C path handled the
misses; the pure-Python build runs the same tests, where the same behaviour
comes from ForwardingResolver and those words stay 0.
"""

from __future__ import annotations

import concurrent.futures
import socket
import time

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from fastdns.codec import NO_EXTENSIONS
from fastdns.ipc import layout, readout, shm
from tests.helpers import a_records, ask, free_port, serving_corefile
from tests.upstreams import UpstreamThread

pytestmark = pytest.mark.slow

C_PATH = not NO_EXTENSIONS
BIG = 40  # A records in big.example.test.: over a table slot, under 1232 octets


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cfwdcache")
    th = UpstreamThread()
    records = {f"n{i}.example.test.": [("A", f"192.0.2.{i}")] for i in range(1, 40)}
    records["slow.example.test."] = [("A", "192.0.2.200")]
    records["big.example.test."] = [("A", f"198.51.100.{i}") for i in range(1, BIG + 1)]
    up = th.start(records, zone="example.test.", ttl=300)
    slow = th.start({"www.slow.test.": [("A", "192.0.2.201")]}, zone="slow.test.", ttl=300)
    slow.delay = 0.5
    port = free_port()
    corefile = (
        f"cluster.local:{port} {{\n    bind 127.0.0.1\n    kubernetes cluster.local\n}}\n"
        f".:{port} {{\n    bind 127.0.0.1\n    forward . {up.addr}\n    cache 30\n}}\n"
        f"slow.test:{port} {{\n    bind 127.0.0.1\n    forward . {slow.addr}\n}}\n")
    try:
        with serving_corefile(tmp, corefile, port) as srv:
            yield srv, up, slow
    finally:
        th.close()


def words(srv) -> dict[str, int]:
    with shm.ControlSegment.attach(srv.instance) as ctl:
        w = ctl.counters(0).cast("Q")
        out = {n: w[getattr(layout, n)] for n in (
            "W_CFWD_SENT", "W_CFWD_JOINED", "W_CFWD_HANDED", "W_CC_FORWARDED",
            "W_CC_HITS_SUCCESS")}
        w.release()
    return out


def cache_counts(srv) -> dict:
    with shm.ControlSegment.attach(srv.instance) as ctl:
        return readout.read_counters(ctl.counters(0))["cache"]


def _ask_raw(wire: bytes, port: int) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(wire, ("127.0.0.1", port))
        return s.recv(65535)


def test_miss_is_stored_and_the_next_ask_is_a_hit_with_aged_ttl(env):
    srv, up, _ = env
    before = words(srv)
    r1 = ask("n1.example.test.", port=srv.port)
    assert r1.rcode() == dns.rcode.NOERROR and a_records(r1) == {"192.0.2.1"}
    assert r1.answer[0].ttl == 30  # the cache's cap, on the reply that filled it
    time.sleep(1.2)
    r2 = ask("N1.example.TEST.", port=srv.port)
    assert a_records(r2) == {"192.0.2.1"}
    assert r2.answer[0].ttl in (28, 29)  # aged by the one clock
    assert str(r2.question[0].name) == "N1.example.TEST."
    assert up.count("n1.example.test.") == 1
    if C_PATH:
        after = words(srv)
        assert after["W_CFWD_SENT"] == before["W_CFWD_SENT"] + 1
        assert after["W_CC_FORWARDED"] == before["W_CC_FORWARDED"] + 1
        assert after["W_CC_HITS_SUCCESS"] == before["W_CC_HITS_SUCCESS"] + 1
        assert after["W_CFWD_HANDED"] == before["W_CFWD_HANDED"]


def test_concurrent_misses_share_one_upstream_query(env):
    srv, up, _ = env
    up.delay = 0.4  # every miss arrives while the first is still in flight
    try:
        before = words(srv)
        queries = []
        for i in range(20):
            name = "n2.example.test." if i % 2 else "N2.EXAMPLE.test."
            q = dns.message.make_query(name, "A", use_edns=0, payload=1232)
            q.id = 0x4000 + i
            queries.append(q)
        with concurrent.futures.ThreadPoolExecutor(20) as ex:
            replies = list(ex.map(lambda q: _ask_raw(q.to_wire(), srv.port), queries))
    finally:
        up.delay = 0.0
    for q, raw in zip(queries, replies, strict=True):
        r = dns.message.from_wire(raw)
        assert r.id == q.id
        assert r.question[0].name.to_text() == q.question[0].name.to_text()  # its case
        assert a_records(r) == {"192.0.2.2"}
        assert r.edns == 0 and r.payload == 1232  # our OPT, not the upstream's
    assert up.count("n2.example.test.") == 1
    if C_PATH:
        after = words(srv)
        assert after["W_CFWD_JOINED"] - before["W_CFWD_JOINED"] == 19
        assert after["W_CC_FORWARDED"] - before["W_CC_FORWARDED"] == 20


def test_an_answer_too_large_for_a_slot_stays_with_the_worker(env):
    srv, up, _ = env
    r1 = ask("big.example.test.", port=srv.port, payload=1232)
    assert len(a_records(r1)) == BIG and r1.answer[0].ttl == 30
    before = words(srv)
    time.sleep(1.1)
    r2 = ask("big.example.test.", port=srv.port, payload=1232)
    assert len(a_records(r2)) == BIG and r2.answer[0].ttl in (28, 29)
    assert up.count("big.example.test.") == 1
    if C_PATH:  # the second ask went to Python's store, not upstream
        assert words(srv)["W_CFWD_SENT"] == before["W_CFWD_SENT"]


def test_denial_is_cached_with_its_soa(env):
    srv, up, _ = env
    r1 = ask("nope.example.test.", port=srv.port)
    r2 = ask("nope.example.test.", port=srv.port)
    assert r1.rcode() == r2.rcode() == dns.rcode.NXDOMAIN
    assert r2.authority and r2.authority[0].rdtype == dns.rdatatype.SOA
    assert up.count("nope.example.test.") == 1


def test_uncached_block_passes_through_beside_a_cached_one(env):
    srv, _, slow = env
    for _ in range(2):
        r = ask("www.slow.test.", port=srv.port, timeout=3)
        assert a_records(r) == {"192.0.2.201"} and r.answer[0].ttl == 300
    assert slow.count("www.slow.test.") == 2


def test_cache_metrics_count_the_c_misses(env):
    srv, _, _ = env

    def totals() -> tuple[int, int]:
        c = cache_counts(srv)
        return (c["requests"] + c["c_hits"]["success"] + c["c_forwarded"],
                c["misses"] + c["c_forwarded"])

    before = totals()
    for i in range(10, 15):
        ask(f"n{i}.example.test.", port=srv.port)
    deadline = time.monotonic() + 5  # Python's counts reach shm on the export timer
    while True:
        after = totals()
        if after[0] - before[0] >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert (after[0] - before[0], after[1] - before[1]) == (5, 5)
