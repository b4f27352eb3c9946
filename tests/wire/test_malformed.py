"""Bounded fuzzing of the wire core: random octets and mutated real packets.

RFC 9267 lists the classic parser bugs (pointer loops, forward pointers,
label and name lengths, counts beyond the data); a worker must survive all
of them. Each run tries FASTDNS_FUZZ_CASES inputs (default 20000) from a
fixed seed (FASTDNS_FUZZ_SEED), stops early after FASTDNS_FUZZ_SECONDS, and
accepts only ``fastdns.errors`` exceptions. A hang fails through
pytest-timeout; a C crash takes the run down. Built with FASTDNS_DEBUG=1
the Cython core also checks its invariants (`assert`) on every packet.
"""

import os
import random
import time
from array import array

import pytest
from wire_cases import BIG, HUGE, MULTI, WEB, cluster_image, opt, query, wire_name

from fastdns import errors
from fastdns import wire as py_wire

CASES = int(os.environ.get("FASTDNS_FUZZ_CASES", "20000"))
SEED = int(os.environ.get("FASTDNS_FUZZ_SEED", "20260502"))
SECONDS = float(os.environ.get("FASTDNS_FUZZ_SECONDS", "20"))
IMAGE = cluster_image(extra_names=20)


def seeds() -> list[bytes]:
    """Real packets: queries of every shape and the answers they get."""
    qs = [query(WEB), query(MULTI, edns=opt(4096, do=True)), query(BIG, edns=opt(1232)),
          query(HUGE), query("Nope.Default.svc.cluster.local", 28, edns=opt()),
          query("4.3.2.1.in-addr.arpa", 12), query(WEB, flags=0x2100),
          query(WEB, edns=opt(1232, 1)),
          query(WEB, edns=opt(options=bytes.fromhex("000a0008" "0102030405060708")))]
    out = list(qs)
    for q in qs:
        for max_size in (0, 65535):
            status, resp, _ = py_wire.answer(IMAGE, q, 1, max_size)
            if resp:
                out.append(resp)
    # a pointer-heavy message: many owners compressed against one another
    chain = bytearray(query(WEB))
    chain[6:8] = (3).to_bytes(2, "big")
    for target in (12, 16, 47):
        chain += (0xC000 | target).to_bytes(2, "big") + bytes.fromhex(
            "0001 0001 00000005 0004 01020304")
    out.append(bytes(chain))
    two_opts = bytearray(query(WEB, edns=opt() + opt(4096)))
    two_opts[11] = 2
    out.append(bytes(two_opts))
    out.append(query(wire_name(".".join(["x" * 62] * 3) + ".abcdefgh")))  # 254 octets
    # a pointer chain 130 deep in an answer's rdata, entered from the additional owner
    deep = bytearray(query(WEB))
    deep[6:8], deep[10:12] = b"\0\1", b"\0\1"
    rd_at = len(deep) + 11
    links = b"\0" + b"".join((0xC000 | (rd_at if i == 0 else rd_at + 2 * i - 1)).to_bytes(2, "big")
                             for i in range(130))
    deep += b"\0\0\x10\0\1\0\0\0\0" + len(links).to_bytes(2, "big") + links
    deep += (0xC000 | (rd_at + len(links) - 2)).to_bytes(2, "big") + bytes(10)
    out.append(bytes(deep))
    return out


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(1 if rng.random() < 0.5 else rng.randint(2, 6)):
        op = rng.randrange(8)
        pos = rng.randrange(len(b)) if b else 0
        if op == 0 and b:
            b[pos] = rng.randrange(256)
        elif op == 1 and b:
            b[pos] ^= 1 << rng.randrange(8)
        elif op == 2:
            del b[pos:]
        elif op == 3:
            b[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 4 and len(b) >= 12:  # counts beyond the data (RFC 9267 §2)
            at = rng.choice((4, 6, 8, 10))
            b[at : at + 2] = rng.choice((0, 1, 2, 0xFF, 0xFFFF)).to_bytes(2, "big")
        elif op == 5 and b:  # a pointer anywhere, often backwards, sometimes at itself
            target = rng.choice((pos, max(0, pos - 2), rng.randrange(len(b) + 1), 12))
            b[pos : pos + 2] = (0xC000 | (target & 0x3FFF)).to_bytes(2, "big")
        elif op == 6 and b:  # a long label length or a reserved label type
            b[pos] = rng.choice((0x3F, 0x40, 0x80, 0xBF, 0xFF))
        elif op == 7 and len(b) > 4:
            start = rng.randrange(len(b) - 2)
            b[pos:pos] = b[start : start + rng.randint(1, 40)]
    return bytes(b[: 4096])


def inputs():
    rng = random.Random(SEED)
    pool = seeds()
    for i in range(CASES):
        if i % 4 == 0:
            raw = bytearray(rng.randbytes(rng.randint(0, 64)))
            if len(raw) > 2 and i % 3:
                raw[2] &= 0x7F  # mostly queries (QR=0), which get past the first check
            yield bytes(raw)
        elif i % 4 == 1:  # random octets behind a plausible header
            yield bytes.fromhex("abcd01000001") + rng.randbytes(rng.randint(0, 300))
        else:
            yield mutate(rng, rng.choice(pool))


def check_sent(wire, data: bytes, resp: bytes) -> None:
    """Everything we send is a well-formed response carrying the query's ID."""
    assert resp[:2] == data[:2] and resp[2] & 0x80
    if resp[4:6] == b"\0\0":  # FORMERR for an unreadable question: the header alone
        assert len(resp) == 12 and resp[3] & 0xF in (1, 4)
    else:
        wire.parse_response(resp)


def run_all(wire, data: bytes, counter: int) -> tuple:
    """Every entry point on one input; returns comparable outcomes."""
    results = []
    for fn, args in ((wire.parse_query, (data,)), (wire.parse_response, (data,)),
                     (wire.decode_name, (data, 12)), (wire.decode_name, (data, len(data) // 2))):
        try:
            r = fn(*args)
            results.append(("ok", r if isinstance(r, tuple) else r.qname))
        except errors.WireError as e:
            results.append(("err", type(e)))
    for max_size in (0, 65535):
        status, resp, zone = wire.answer(IMAGE, data, counter, max_size)
        if status == wire.ST_ANSWER:
            check_sent(wire, data, resp)
        results.append((status, resp, zone))
    return tuple(results)


@pytest.mark.timeout(300)
def test_fuzz_wire(wire):
    deadline = time.monotonic() + SECONDS
    n = 0
    for n, data in enumerate(inputs(), 1):  # noqa: B007  (n is the count reported below)
        run_all(wire, data, n)
        if time.monotonic() > deadline:
            break
    assert n >= min(CASES, 2000), f"only {n} cases ran in {SECONDS}s"


@pytest.mark.timeout(300)
def test_fuzz_c_matches_twin(wire_pair):
    """The fuzz inputs through both implementations: identical outcomes."""
    py, c = wire_pair
    deadline = time.monotonic() + SECONDS
    for n, data in enumerate(inputs(), 1):
        if n % 4:  # a quarter of the cases: the twin is the slow side
            continue
        assert run_all(py, data, n) == run_all(c, data, n), data.hex()
        if time.monotonic() > deadline:
            break


@pytest.mark.timeout(300)
def test_fuzz_answer_batch(wire):
    """Full batches of fuzzed packets through the batch entry point (the nogil loop in C)."""
    rng = random.Random(SEED + 1)
    pool = seeds()
    batch = 64
    inbuf = bytearray(batch * wire.SLOT)
    outbuf = bytearray(batch * wire.SLOT)
    outlens = array("H", [0] * batch)
    deadline = time.monotonic() + SECONDS / 2
    for round_ in range(max(1, CASES // batch // 4)):
        packets = [mutate(rng, rng.choice(pool)) if rng.random() < 0.8 else
                   rng.randbytes(rng.randint(0, 40)) for _ in range(batch)]
        inlens = array("H", [len(p) for p in packets])
        for i, p in enumerate(packets):
            inbuf[i * wire.SLOT : i * wire.SLOT + len(p)] = p
        slow = wire.answer_batch(IMAGE, inbuf, inlens, outbuf, outlens, round_)
        assert slow == sum(1 for v in outlens if v == wire.STATUS_SLOW)
        for i in range(batch):
            if outlens[i] not in (0, wire.STATUS_SLOW):
                check_sent(wire, packets[i],
                           bytes(outbuf[i * wire.SLOT : i * wire.SLOT + outlens[i]]))
        if time.monotonic() > deadline:
            break
