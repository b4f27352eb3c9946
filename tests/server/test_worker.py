"""End-to-end tests of worker processes over real sockets with dnspython.

Workers are started the way the supervisor starts them (spawn +
``worker_main``) against a control segment and images this module
publishes itself, on ephemeral ports of 127.0.0.1 and ::1.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import secrets
import signal
import socket
import struct
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from fastdns.codec import wire
from fastdns.constants import QT_NAME, Qtype
from fastdns.ipc import image as img
from fastdns.ipc import layout, readout, shm
from fastdns.server.worker import WorkerSpec, worker_main
from fastdns.zone.imagebuilder import ZoneSpec, build_image
from tests.helpers import HAS_IPV6, free_port

pytestmark = pytest.mark.slow

ZONE = "cluster.local."
POD_ZONE = "pod.cluster.local."
BIG_TXT = ["x" * 200 + str(i) for i in range(8)]  # ~1.7 kB: over 512 and over 1232


ADDRS = ["127.0.0.1", "::1"] if HAS_IPV6 else ["127.0.0.1"]


# -- a small image built by hand -----------------------------------------------

def _w(name: str) -> bytes:
    return wire.encode_name(name).lower()


def _rr(owner: bytes, rtype: int, rdata: bytes, ttl: int = 5) -> bytes:
    return owner + struct.pack(">HHIH", rtype, 1, ttl, len(rdata)) + rdata


def _ptr(pos: int) -> bytes:
    return (0xC000 | pos).to_bytes(2, "big")


def _soa_rdata() -> bytes:
    return (_w("ns.dns." + ZONE) + _w("hostmaster." + ZONE)
            + struct.pack(">IIIII", 12345, 7200, 1800, 86400, 5))


def build_test_image(generation: int, ip: str = "10.96.0.1") -> bytes:
    zone = _w(ZONE)
    entries = []

    def add_name(name: str, answers: dict[int, list[bytes]]) -> None:
        key = _w(name)
        for qtype, variants in answers.items():
            entries.append((key, qtype, variants))
        # NODATA: SOA of the zone in authority, owner compressed to the zone
        # suffix inside the question (fixed: the question is the key's length)
        soa = _rr(_ptr(12 + len(key) - len(zone)), Qtype.SOA, _soa_rdata())
        entries.append((key, QT_NAME, [img.make_template(0x8400, 0, 1, 0, soa)]))

    a = _rr(_ptr(12), Qtype.A, socket.inet_aton(ip))
    add_name("kubernetes.default.svc." + ZONE,
             {Qtype.A: [img.make_template(0x8400, 1, 0, 0, a)]})
    txt = b"".join(_rr(_ptr(12), Qtype.TXT, bytes([len(t)]) + t.encode()) for t in BIG_TXT)
    add_name("big." + ZONE, {Qtype.TXT: [img.make_template(0x8400, len(BIG_TXT), 0, 0, txt)]})
    srv = _rr(_ptr(12), Qtype.SRV, struct.pack(">HHH", 0, 100, 443)
              + _w("kubernetes.default.svc." + ZONE))
    add_name("_https._tcp.kubernetes.default.svc." + ZONE,
             {Qtype.SRV: [img.make_template(0x8400, 1, 0, 0, srv)]})
    add_name("default." + POD_ZONE, {})  # pods of namespace "default" are exposed
    # zone miss: NXDOMAIN + SOA whose owner is relocated to the zone suffix
    neg_body = b"\0\0" + _rr(b"", Qtype.SOA, _soa_rdata())
    negative = img.make_template(0x8403, 0, 1, 0, neg_body, relocs=[0])
    zones = [
        ZoneSpec(zone, img.ZF_AUTH, (negative,)),
        ZoneSpec(_w(POD_ZONE), img.ZF_AUTH | img.ZF_SLOW_MISS, (negative,),
                 kind=img.ZK_POD),
    ]
    return build_image(entries, zones, generation=generation, flags=img.IMG_SYNCED)


class Server:
    """A control segment, published images, and N spawned workers."""

    def __init__(self, nworkers: int, **spec_args) -> None:
        self.instance = "t" + secrets.token_hex(6)
        self.ctl = shm.ControlSegment.create(self.instance, nworkers)
        self.port = free_port()
        self.generation = 0
        self.images: list[shm.ImageSegment] = []
        self.spec_args = spec_args
        self.procs: list[multiprocessing.Process] = []
        self.nworkers = nworkers

    def publish(self, data: bytes) -> int:
        gen = self.generation + 1
        seg = shm.ImageSegment.create(self.instance, gen, data)
        self.images.append(seg)
        self.ctl.publish(seg.name, gen)
        self.generation = gen
        return gen

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        for i in range(self.nworkers):
            spec = WorkerSpec(index=i, instance=self.instance,
                              listen=tuple((a, self.port) for a in ADDRS), **self.spec_args)
            p = ctx.Process(target=worker_main, args=(spec,), daemon=True)
            p.start()
            self.procs.append(p)
        self.wait_mapped(self.generation)

    def wait_mapped(self, gen: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.ctl.mapped(i) >= gen for i in range(self.nworkers)):
                return
            for p in self.procs:
                assert p.is_alive(), f"worker exited with {p.exitcode}"
            time.sleep(0.02)
        raise AssertionError(f"workers did not map generation {gen}")

    def counters(self, i: int) -> dict:
        return readout.read_counters(self.ctl.counters(i))

    def total(self) -> dict:
        return readout.sum_counters([self.counters(i) for i in range(self.nworkers)])

    def stop(self) -> list[int | None]:
        for p in self.procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
        codes = []
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
            codes.append(p.exitcode)
        for seg in self.images:
            seg.close()
        self.ctl.close()
        shm.sweep(self.instance)
        return codes


@pytest.fixture(scope="module")
def server():
    srv = Server(2, tcp_idle_timeout=1.0)
    srv.publish(build_test_image(1))
    srv.start()
    yield srv
    assert srv.stop() == [0, 0]  # SIGTERM: exit status 0


def udp(q: dns.message.Message, where: str, port: int, **kw) -> dns.message.Message:
    return dns.query.udp(q, where, port=port, timeout=2, ignore_unexpected=True, **kw)


def tcp(q: dns.message.Message, where: str, port: int) -> dns.message.Message:
    return dns.query.tcp(q, where, port=port, timeout=2)


def a_of(r: dns.message.Message) -> list[str]:
    return sorted(rd.address for rrset in r.answer for rd in rrset if rrset.rdtype == 1)


# -- answers ----------------------------------------------------------------------

@pytest.mark.parametrize("where", ADDRS)
@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_answers(server, where, proto):
    ask = udp if proto == "udp" else tcp
    r = ask(dns.message.make_query("kubernetes.default.svc.cluster.local", "A"), where,
            server.port)
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert a_of(r) == ["10.96.0.1"]
    r = ask(dns.message.make_query("kubernetes.default.svc.cluster.local", "AAAA"), where,
            server.port)
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    assert r.authority[0].rdtype == dns.rdatatype.SOA
    r = ask(dns.message.make_query("nope.default.svc.cluster.local", "A"), where, server.port)
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert r.authority[0].name.to_text() == "cluster.local."
    r = ask(dns.message.make_query("example.com", "A"), where, server.port)
    assert r.rcode() == dns.rcode.REFUSED  # outside every zone, no forwarder yet
    r = ask(dns.message.make_query("_https._tcp.kubernetes.default.svc.cluster.local", "SRV",
                                   use_edns=0), where, server.port)
    assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].port == 443
    assert r.edns == 0


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_pod_names_go_through_the_slow_path(server, proto):
    ask = udp if proto == "udp" else tcp
    before = server.total()["slow"]
    r = ask(dns.message.make_query("10-1-2-3.default." + POD_ZONE, "A"), "127.0.0.1",
            server.port)
    assert r.rcode() == dns.rcode.NOERROR and a_of(r) == ["10.1.2.3"]
    r = ask(dns.message.make_query("10-1-2-3.hidden." + POD_ZONE, "A"), "127.0.0.1",
            server.port)
    assert r.rcode() == dns.rcode.NXDOMAIN  # namespace not exposed
    after = server.total()["slow"]
    assert after["total"] - before["total"] == 2
    assert after["pod"] - before["pod"] == 2


def test_0x20_case_echo(server):
    name = "KuBeRnEtEs.DeFaULT.sVc.ClUsTeR.lOcAl."
    for ask in (udp, tcp):
        r = ask(dns.message.make_query(name, "A"), "127.0.0.1", server.port)
        assert r.question[0].name.to_text() == name
        assert r.answer[0].name.to_text() == name  # owner compressed onto the question


def test_truncated_udp_is_complete_over_tcp(server):
    q = dns.message.make_query("big.cluster.local", "TXT")
    r = udp(q, "127.0.0.1", server.port)
    assert r.flags & dns.flags.TC and not r.answer
    r = udp(dns.message.make_query("big.cluster.local", "TXT", use_edns=0), "127.0.0.1",
            server.port)
    assert r.flags & dns.flags.TC and not r.answer  # 1232 < ~1.7 kB too
    r = tcp(q, "127.0.0.1", server.port)
    assert not r.flags & dns.flags.TC
    assert sorted(t.strings[0].decode() for t in r.answer[0]) == sorted(BIG_TXT)


def _frame(q: dns.message.Message) -> bytes:
    w = q.to_wire()
    return len(w).to_bytes(2, "big") + w


def _read_frames(sock: socket.socket, n: int) -> list[dns.message.Message]:
    buf, out = b"", []
    sock.settimeout(3)
    while len(out) < n:
        chunk = sock.recv(65536)
        assert chunk, "server closed the connection early"
        buf += chunk
        while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
            size = int.from_bytes(buf[:2], "big")
            out.append(dns.message.from_wire(buf[2 : 2 + size]))
            buf = buf[2 + size :]
    return out


@pytest.mark.parametrize("where", ADDRS)
def test_tcp_pipelining(server, where):
    names = ["kubernetes.default.svc.cluster.local", "big.cluster.local", "x.cluster.local",
             "example.org"] * 5
    qs = [dns.message.make_query(n, "TXT" if n.startswith("big") else "A") for n in names]
    with socket.create_connection((where, server.port), timeout=3) as s:
        # every query written before any answer is read, split at odd places
        data = b"".join(_frame(q) for q in qs)
        for i in range(0, len(data), 7):
            s.sendall(data[i : i + 7])
        got = {r.id: r for r in _read_frames(s, len(qs))}
    assert set(got) == {q.id for q in qs}
    for q in qs:
        r = got[q.id]
        assert r.question[0].name == q.question[0].name
        name = q.question[0].name.to_text()
        expect = {"k": dns.rcode.NOERROR, "b": dns.rcode.NOERROR, "x": dns.rcode.NXDOMAIN,
                  "e": dns.rcode.REFUSED}[name[0]]
        assert r.rcode() == expect
        if name.startswith("big"):
            assert len(r.answer[0]) == len(BIG_TXT)


def test_tcp_idle_timeout_closes(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(_frame(dns.message.make_query("kubernetes.default.svc.cluster.local", "A")))
        assert a_of(_read_frames(s, 1)[0]) == ["10.96.0.1"]
        t0 = time.monotonic()
        s.settimeout(5)
        assert s.recv(10) == b""  # the server closed: idle timeout 1 s
        assert 0.5 < time.monotonic() - t0 < 3.0


def test_generation_bump_serves_new_answers(server):
    q = dns.message.make_query("kubernetes.default.svc.cluster.local", "A")
    gen = server.publish(build_test_image(server.generation + 1, ip="10.96.0.2"))
    server.wait_mapped(gen, timeout=5)  # idle workers notice within GENERATION_POLL
    for i in range(16):  # several source ports: every worker gets some
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            r = udp(q, "127.0.0.1", server.port, sock=s)
            assert a_of(r) == ["10.96.0.2"], i
    assert a_of(tcp(q, "127.0.0.1", server.port)) == ["10.96.0.2"]
    # back to the first answer, mapped on the next batch by a busy worker
    gen = server.publish(build_test_image(server.generation + 1, ip="10.96.0.1"))
    assert a_of(udp(q, "127.0.0.1", server.port)) == ["10.96.0.1"]
    server.wait_mapped(gen, timeout=5)
    for i in range(server.nworkers):
        assert server.counters(i)["generation"] == gen


# -- counters -------------------------------------------------------------------------

def _sub(a, b):
    if isinstance(a, dict):
        return {k: _sub(a[k], b[k]) for k in a}
    if isinstance(a, list):
        return [(x[0], x[1] - y[1]) for x, y in zip(a, b, strict=True)]
    return a - b


def test_counters_count_exactly_the_queries_sent(server):
    before = server.total()
    plan = [  # (proto, address, qname, qtype, do, expected rcode name)
        ("udp", "127.0.0.1", "kubernetes.default.svc.cluster.local", "A", False, "NOERROR"),
        ("udp", "127.0.0.1", "x.cluster.local", "AAAA", True, "NXDOMAIN"),
        ("tcp", "127.0.0.1", "_https._tcp.kubernetes.default.svc.cluster.local", "SRV", False,
         "NOERROR"),
        ("udp", "127.0.0.1", "example.com", "MX", False, "REFUSED"),
        ("tcp", "127.0.0.1", "big.cluster.local", "TXT", True, "NOERROR"),
        ("udp", "127.0.0.1", "kubernetes.default.svc.cluster.local", "NAPTR", False, "NOERROR"),
    ]
    if HAS_IPV6:
        plan += [
            ("udp", "::1", "kubernetes.default.svc.cluster.local", "PTR", False, "NOERROR"),
            ("tcp", "::1", "kubernetes.default.svc.cluster.local", "A", True, "NOERROR"),
        ]
    plan = plan * 3
    expect_q: dict = {}
    expect_r: dict = {}
    for proto, where, name, qtype, do, rcode in plan:
        q = dns.message.make_query(name, qtype, want_dnssec=do)
        r = (udp if proto == "udp" else tcp)(q, where, server.port)
        assert dns.rcode.to_text(r.rcode()) == rcode
        bucket = qtype if qtype in layout.QTYPE_BUCKETS else "other"
        k = (proto, 2 if ":" in where else 1, bucket)
        expect_q[k] = expect_q.get(k, 0) + 1
        expect_r[rcode] = expect_r.get(rcode, 0) + 1
    deadline = time.monotonic() + 2
    while True:
        d = _sub(server.total(), before)
        if d["latency"]["count"] == len(plan) or time.monotonic() > deadline:
            break
        time.sleep(0.01)  # the batch's latency is stored right after its sendmmsg
    assert {k: v for k, v in d["queries"].items() if v} == expect_q
    assert {k: v for k, v in d["responses"].items() if v} == expect_r
    assert d["do_requests"] == sum(1 for p in plan if p[4])
    assert d["latency"]["count"] == len(plan)
    for proto in ("udp", "tcp"):
        n = sum(1 for p in plan if p[0] == proto)
        assert d["request_size"][proto]["count"] == n
        assert d["response_size"][proto]["count"] == n
    assert d["slow"]["refused"] == sum(1 for p in plan if p[5] == "REFUSED")


# -- robustness ---------------------------------------------------------------------

def _udp_path() -> bool:
    from fastdns.server import worker

    return worker._udp is not None


def _garbage(rng: random.Random, valid: list[bytes]) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 600))
    pkt = bytearray(rng.choice(valid))
    if kind == 1:  # flip bytes
        for _ in range(rng.randrange(1, 8)):
            pkt[rng.randrange(len(pkt))] = rng.randrange(256)
    elif kind == 2:  # truncate or extend
        pkt = pkt[: rng.randrange(len(pkt) + 1)] + rng.randbytes(rng.randrange(0, 4))
    else:  # header counts and flags
        pkt[2:12] = rng.randbytes(10)
    return bytes(pkt)


def test_garbage_leaves_every_worker_alive_and_answering(server):
    rng = random.Random(4)
    valid = [dns.message.make_query(n, t, want_dnssec=rng.random() < 0.5).to_wire()
             for n in ("kubernetes.default.svc.cluster.local", "big.cluster.local",
                       "a.b.pod.cluster.local", "example.com", "x.cluster.local")
             for t in ("A", "AAAA", "TXT", "SRV")]
    before = [server.counters(i)["responses"] for i in range(server.nworkers)]
    senders = []
    for k in range(32):
        where = ADDRS[k % len(ADDRS)]
        s = socket.socket(socket.AF_INET6 if ":" in where else socket.AF_INET,
                          socket.SOCK_DGRAM)
        s.bind((where, 0))
        s.setblocking(False)
        senders.append((s, where))
    sent = 0
    try:
        for i in range(10_000):
            s, where = senders[i % len(senders)]
            try:
                s.sendto(_garbage(rng, valid), (where, server.port))
                sent += 1
            except BlockingIOError:
                time.sleep(0.001)
            if i % 500 == 499:
                time.sleep(0.005)  # bounded rate: the point is content, not load
                for s2, _ in senders:  # drain answers so nothing backs up
                    try:
                        while s2.recv(65536):
                            pass
                    except BlockingIOError:
                        pass
    finally:
        for s, _ in senders:
            s.close()
    assert sent > 9_000
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as big:
        for size in (4097, 20_000, 65_000):  # larger than a receive slot: dropped
            big.sendto(rng.choice(valid) + bytes(size), ("127.0.0.1", server.port))
    time.sleep(0.2)
    for p in server.procs:
        assert p.is_alive()
    # every worker still answers: many source ports reach each of them
    q = dns.message.make_query("kubernetes.default.svc.cluster.local", "A")
    for _ in range(24):
        for where in ADDRS:
            assert a_of(udp(q, where, server.port)) == ["10.96.0.1"]
    after = [server.counters(i)["responses"] for i in range(server.nworkers)]
    for i in range(server.nworkers):
        answered = sum(v for k, v in after[i].items() if k != "dropped")
        assert answered > sum(v for k, v in before[i].items() if k != "dropped"), i
    tot = server.total()
    assert tot["responses"]["FORMERR"] > 0 and tot["responses"]["dropped"] > 0
    if _udp_path():
        assert tot["oversize"] == 3


# -- a worker of its own: connection cap, SIGTERM, waiting for the first image ----------

def test_connection_cap_and_sigterm():
    srv = Server(1, tcp_max_connections=3, tcp_idle_timeout=30.0)
    try:
        # started before the first publish: bound, but answering only once mapped
        ctx = multiprocessing.get_context("spawn")
        spec = WorkerSpec(index=0, instance=srv.instance,
                          listen=tuple((a, srv.port) for a in ADDRS),
                          tcp_max_connections=3, tcp_idle_timeout=30.0)
        p = ctx.Process(target=worker_main, args=(spec,), daemon=True)
        p.start()
        srv.procs.append(p)
        time.sleep(1.0)
        assert p.is_alive() and srv.ctl.mapped(0) == 0
        q = dns.message.make_query("kubernetes.default.svc.cluster.local", "A")
        early = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        early.sendto(q.to_wire(), ("127.0.0.1", srv.port))  # queued in the socket buffer
        srv.publish(build_test_image(1))
        srv.wait_mapped(1)
        early.settimeout(3)
        assert a_of(dns.message.from_wire(early.recv(4096))) == ["10.96.0.1"]
        early.close()
        conns = [socket.create_connection(("127.0.0.1", srv.port), timeout=3) for _ in range(3)]
        for c in conns:
            c.sendall(_frame(q))
            assert a_of(_read_frames(c, 1)[0]) == ["10.96.0.1"]
        # at the cap, the connection idle the longest is closed for the newcomer
        extra = socket.create_connection(("127.0.0.1", srv.port), timeout=3)
        extra.sendall(_frame(q))
        assert a_of(_read_frames(extra, 1)[0]) == ["10.96.0.1"]
        assert conns[0].recv(10) == b""
        conns.pop(0).close()
        # every connection mid-message (one octet of a length): the newcomer is refused
        conns.append(extra)
        for c in conns:
            c.sendall(b"\x00")
        time.sleep(0.2)
        refused = socket.create_connection(("127.0.0.1", srv.port), timeout=3)
        try:
            refused.sendall(_frame(q))
            assert refused.recv(10) == b""
        except ConnectionResetError:
            pass  # closed at once: over the cap, nothing idle
        refused.close()
        for c in conns:
            c.close()
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=3) as again:
            again.sendall(_frame(q))
            assert a_of(_read_frames(again, 1)[0]) == ["10.96.0.1"]
        c = srv.counters(0)["tcp"]
        assert c["rejected"] == 1 and c["accepted"] == 5
    finally:
        codes = srv.stop()
    assert codes == [0]
