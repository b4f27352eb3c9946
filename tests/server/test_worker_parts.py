"""Unit tests of the worker's parts that need no process: counters, slow path."""

from __future__ import annotations

import errno
import mmap
import os
import random
import secrets
import socket
import time

import dns.message
import dns.rcode
import pytest
from test_worker import POD_ZONE, build_test_image, free_port

from fastdns.codec import NO_EXTENSIONS, wire
from fastdns.constants import Qtype
from fastdns.ipc import counters as ctr
from fastdns.ipc import image as img
from fastdns.ipc import layout, readout, shm
from fastdns.server import listeners
from fastdns.server import worker as wk
from fastdns.server.slowpath import SlowPath

try:
    from fastdns.server import _udp
except ImportError:  # pragma: no cover - pure-Python run
    _udp = None

needs_udp = pytest.mark.skipif(_udp is None, reason="fastdns.server._udp not built")


def test_udp_extension_loaded_when_extensions_are():
    # the Cython fast path must not silently fall back to the Python twin
    if not NO_EXTENSIONS:
        assert _udp is not None


@needs_udp
def test_udp_slot_is_the_wire_cores():
    assert _udp.SLOT_SIZE == wire.SLOT


@needs_udp
def test_fast_path_words_are_where_the_reader_reads_them(instance):
    """What the C fast path writes (offsets from the generated _layout.pxi) is
    read back by another mapping of the control segment through
    readout.read_counters (offsets from fastdns/ipc/layout.py)."""
    ctl = shm.ControlSegment.create(instance, 2)
    fd = os.open(shm.segment_path(ctl.name), os.O_RDONLY)
    try:
        gen_map = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ)
    finally:
        os.close(fd)
    block = ctl.counters(1)
    writer = ctr.Counters(block)
    writer.start(4242)
    image = build_test_image(1)
    fast = _udp.FastPath(memoryview(gen_map), block, lambda: None, None)
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    reader = shm.ControlSegment.attach(instance)
    try:
        fast.set_image(image, 7)
        srv.bind(("127.0.0.1", 0))
        srv.setblocking(False)
        query = dns.message.make_query("kubernetes.default.svc.cluster.local.", "A",
                                       want_dnssec=True).to_wire()
        cli.sendto(query, srv.getsockname())
        cli.sendto(bytes(wire.SLOT + 100), srv.getsockname())  # larger than a slot
        deadline = time.monotonic() + 5
        read = 0
        while read < 2 and time.monotonic() < deadline:
            read += fast.drain(srv.fileno(), 1)
        assert read == 2
        got = readout.read_counters(reader.counters(1))
        assert got["pid"] == 4242 and got["generation"] == 7
        assert got["batches"] >= 1 and got["oversize"] == 1 and got["do_requests"] == 1
        assert got["queries"][("udp", 1, "A")] == 1
        assert got["queries"][("udp", 1, "other")] == 1
        assert got["responses"]["NOERROR"] == 1 and got["responses"]["dropped"] == 1
        assert got["request_size"]["udp"]["count"] == 2
        assert got["response_size"]["udp"]["count"] == 1
        assert got["latency"]["count"] == 2
        assert readout.read_counters(reader.counters(0))["pid"] == 0  # the other block
    finally:
        fast.release()
        writer.release()
        srv.close()
        cli.close()
        reader.close()
        gen_map.close()
        ctl.close()


def _packets(n: int) -> list[bytes]:
    rng = random.Random(7)
    base = [dns.message.make_query(name, t, want_dnssec=d, use_edns=e).to_wire()
            for name in ("a.b.c", "kubernetes.default.svc.cluster.local", ".")
            for t in ("A", "AAAA", "SRV", "PTR", "TXT", "NS", "SOA", "CNAME", "MX", "NAPTR")
            for d in (False, True) for e in (None, 0)]
    out = list(base)
    while len(out) < n:
        p = bytearray(rng.choice(base))
        for _ in range(rng.randrange(4)):
            p[rng.randrange(len(p))] = rng.randrange(256)
        out.append(bytes(p[: rng.randrange(len(p) + 1)]) if rng.random() < 0.3 else bytes(p))
    return out


@needs_udp
def test_cython_counting_equals_python_counting():
    """The C twin in _udp.pyx and counters.Counters fill identical blocks."""
    blk_c = bytearray(layout.W_END * 8 + 64)
    blk_py = bytearray(layout.W_END * 8 + 64)
    py = ctr.Counters(memoryview(blk_py))
    py.start(1)
    starter = ctr.Counters(memoryview(blk_c))
    starter.start(1)
    starter.release()
    image = build_test_image(1)
    for i, pkt in enumerate(_packets(3000)):
        fam = 1 + i % 2
        _udp.count_udp_query(blk_c, fam, pkt)
        py.query(0, fam, pkt)
        status, resp, _ = wire.answer(image, pkt)
        if resp:
            _udp.count_udp_response(blk_c, resp)
            py.response(0, resp)
        ns = (i * 7919) % 80_000_000
        _udp.count_batch_latency(blk_c, ns, 1)
        py.latency(ns / 1e9)
    py.release()
    c, p = readout.read_counters(bytes(blk_c)), readout.read_counters(bytes(blk_py))
    # only the latency sum may differ by float rounding of ns -> s -> ns
    assert abs(c["latency"]["sum"] - p["latency"]["sum"]) < 1e-5
    c["latency"]["sum"] = p["latency"]["sum"] = 0
    assert c == p
    assert sum(c["queries"].values()) == 3000
    assert c["do_requests"] > 0 and c["responses"]["FORMERR"] > 0


def test_classify_query():
    q = dns.message.make_query("x.y", "SRV", want_dnssec=True).to_wire()
    assert ctr.classify_query(q) == (layout.QTYPE_BUCKETS.index("SRV"), True)
    q = dns.message.make_query("x.y", "NAPTR").to_wire()
    assert ctr.classify_query(q) == (layout.QT_OTHER, False)
    assert ctr.classify_query(b"\0" * 5) == (layout.QT_OTHER, False)


def test_response_bucket_badvers():
    q = dns.message.make_query("x.y", "A", use_edns=1)
    status, resp, _ = wire.answer(build_test_image(1), q.to_wire())
    assert status == wire.ST_ANSWER
    assert ctr.response_bucket(resp) == layout.R_BADVERS
    r = dns.message.make_response(dns.message.make_query("x.y", "A"))
    r.set_rcode(dns.rcode.NXDOMAIN)
    assert ctr.response_bucket(r.to_wire()) == 3


def test_histogram_buckets_and_sum():
    block = bytearray(layout.W_END * 8)
    c = ctr.Counters(memoryview(block))
    c.start(1)
    c.latency(0.0002)  # <= 0.00025
    c.latency(0.0003, 2)  # <= 0.0005
    c.latency(100.0)  # +Inf
    d = readout.read_counters(bytes(block))
    lat = d["latency"]
    assert lat["count"] == 4
    assert lat["buckets"][0] == (0.00025, 1) and lat["buckets"][1] == (0.0005, 3)
    assert lat["buckets"][-1] == (float("inf"), 4)
    assert abs(lat["sum"] - (0.0002 + 0.0006 + 100.0)) < 1e-6
    assert ctr.size_bucket(511) == 5 and ctr.size_bucket(512) == 6 and ctr.size_bucket(10**6) == 14


def test_read_counters_of_unstarted_block_is_zero():
    d = readout.read_counters(bytes([0xFF]) * (layout.W_END * 8))
    assert sum(d["queries"].values()) == 0 and d["pid"] == 0
    total = readout.sum_counters([d, d])
    assert total["latency"]["count"] == 0
    assert readout.sum_counters([])["responses"]["NOERROR"] == 0


# -- slow path ----------------------------------------------------------------

def _slow(synth=None):
    image = build_test_image(1)
    block = bytearray(layout.W_END * 8)
    c = ctr.Counters(memoryview(block))
    c.start(1)
    return image, c, SlowPath(lambda: image, c, synthesize=synth)


def _zone_index(image, name: str) -> int:
    h = img.read_header(image)
    key = wire.encode_name(name).lower()
    for i in range(h.nzones):
        if img.zone_entry(image, i)[0] == key:
            return i
    raise KeyError(name)


def test_slow_outside_every_zone_is_refused():
    image, c, slow = _slow()
    q = dns.message.make_query("example.com", "A")
    r = dns.message.from_wire(slow.answer(q.to_wire(), -1))
    assert r.rcode() == dns.rcode.REFUSED and r.id == q.id
    assert c.w[layout.W_SLOW_REFUSED] == 1


def test_slow_pod_zone_uses_synthesis():
    seen = []

    def synth(image, data, q):
        seen.append(q.key)
        if q.key.startswith(b"\x0810-1-2-3"):
            return wire.error_response(data, q, 0)  # stands in for a synthesized answer
        return None

    image, c, slow = _slow(synth)
    zi = _zone_index(image, POD_ZONE)
    q = dns.message.make_query("10-1-2-3.ns." + POD_ZONE, "A")
    r = dns.message.from_wire(slow.answer(q.to_wire(), zi))
    assert r.rcode() == dns.rcode.NOERROR and seen
    q = dns.message.make_query("NotAPod.ns." + POD_ZONE, "A")
    r = dns.message.from_wire(slow.answer(q.to_wire(), zi))
    assert r.rcode() == dns.rcode.NXDOMAIN  # the zone's negative answer, with SOA
    assert r.authority[0].rdtype == Qtype.SOA
    assert r.authority[0].name.to_text() == POD_ZONE  # relocated onto the zone suffix
    assert c.w[layout.W_SLOW_POD] == 1 and c.w[layout.W_SLOW_OTHER] == 1


def test_slow_internal_error_is_servfail():
    def synth(image, data, q):
        raise RuntimeError("boom")

    image, c, slow = _slow(synth)
    q = dns.message.make_query("a.ns." + POD_ZONE, "A")
    r = dns.message.from_wire(slow.answer(q.to_wire(), _zone_index(image, POD_ZONE)))
    assert r.rcode() == dns.rcode.SERVFAIL
    assert c.w[layout.W_SLOW_SERVFAIL] == 1


def test_slow_without_synthesis_is_servfail_and_garbage_is_safe():
    image, c, slow = _slow(None)
    slow._synthesize = None
    q = dns.message.make_query("a.ns." + POD_ZONE, "A")
    r = dns.message.from_wire(slow.answer(q.to_wire(), _zone_index(image, POD_ZONE)))
    assert r.rcode() == dns.rcode.SERVFAIL
    assert slow.answer(b"\x00\x01", -1) is None  # shorter than a header: dropped
    r = slow.answer(b"\x12\x34" + b"\x00" * 10 + b"\xff", -1)
    assert r is not None and r[3] & 0xF == dns.rcode.FORMERR


def test_bind_skips_the_ipv6_wildcard_without_ipv6(monkeypatch):
    real = listeners.bind_udp

    def no_v6(address, port):
        if ":" in address:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(address, port)

    monkeypatch.setattr(listeners, "bind_udp", no_v6)
    instance = "u" + secrets.token_hex(6)
    ctl = shm.ControlSegment.create(instance, 1)
    port = free_port()
    w = None
    try:
        w = wk.Worker(wk.WorkerSpec(0, instance, (("127.0.0.1", port), ("::", port))))
        w.bind()
        assert [s.getsockname()[:2] for s, _ in w.listeners.udp_socks] == [("127.0.0.1", port)]
        # a specific address that cannot be bound is an error, not a warning
        w2 = wk.Worker(wk.WorkerSpec(0, instance, (("127.0.0.1", free_port()), ("::1", port))))
        with pytest.raises(SystemExit) as exit_info:  # one log line, exit 1 (listeners.py)
            w2.bind()
        assert exit_info.value.code == 1
        for s, _ in w2.listeners.udp_socks + w2.listeners.tcp_socks:
            s.close()
        w2.counters.release()
        w2.ctl.close()
    finally:
        if w is not None:
            for s, _ in w.listeners.udp_socks + w.listeners.tcp_socks:
                s.close()
            w.counters.release()
            w.ctl.close()
        ctl.close()
        shm.sweep(instance)
