"""The two implementations agree: byte-identical outputs, identical exception classes.

yarl's habit (tests/test_quoting_hypothesis.py): Hypothesis drives both
the pure-Python twin and the Cython core with valid, mutated and random
input, and any difference at all is a failure.
"""

from array import array

import dns.message
import dns.rrset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire_cases import BIG, HUGE, MULTI, WEB, cluster_image, opt, query, wire_name

from fastdns import errors
from fastdns.ipc.image import read_header

IMAGE = cluster_image(extra_names=50)
SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

label = st.text(alphabet="abcXYZ09-_", min_size=1, max_size=12)
known = st.sampled_from([WEB, MULTI, BIG, HUGE, wire_name("svc.cluster.local"),
                         wire_name("nope.default.svc.cluster.local"),
                         wire_name("svc7.ns7.svc.cluster.local"),
                         wire_name("4.3.2.1.in-addr.arpa"), wire_name("www.example.org"),
                         wire_name("cluster.local"), b"\x00"])


@st.composite
def names(draw):
    if draw(st.booleans()):
        raw = draw(known)
        # 0x20 mixed case: flip the case of random letters
        flips = draw(st.lists(st.booleans(), min_size=len(raw), max_size=len(raw)))
        return bytes(b ^ 0x20 if f and chr(b).isalpha() else b for b, f in zip(raw, flips,
                                                                                 strict=True))
    labels = draw(st.lists(label, min_size=1, max_size=5))
    return wire_name(".".join(labels))


@st.composite
def options(draw):
    out = b""
    for code, data in draw(st.lists(st.tuples(st.integers(0, 65535), st.binary(max_size=8)),
                                    max_size=3)):
        out += code.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data
    return out


@st.composite
def valid_queries(draw):
    edns = None
    if draw(st.booleans()):
        edns = opt(draw(st.sampled_from([0, 512, 1232, 4096, 65535])),
                   draw(st.sampled_from([0, 0, 0, 1])), draw(st.booleans()), draw(options()))
    flags = draw(st.sampled_from([0x0100, 0x0000, 0x0110, 0x0150, 0x2100, 0x7800]))
    return query(draw(names()), draw(st.sampled_from([1, 28, 33, 16, 12, 0, 255, 41, 999])),
                 qid=draw(st.integers(0, 65535)), flags=flags,
                 qclass=draw(st.sampled_from([1, 1, 1, 255, 3, 254])), edns=edns)


@st.composite
def mutated(draw, base):
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 4))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == 0 and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == 1:
            del data[pos:]
        elif kind == 2:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=6))
        elif kind == 3 and len(data) >= 12:
            at = draw(st.sampled_from([4, 6, 8, 10]))
            data[at : at + 2] = draw(st.integers(0, 3)).to_bytes(2, "big")
        elif data:
            data[pos] = 0xC0 | draw(st.integers(0, 0x3F))
    return bytes(data)


packets = st.one_of(valid_queries(), mutated(valid_queries()), st.binary(max_size=80))


def outcome(fn, *args):
    try:
        return "ok", fn(*args)
    except errors.WireError as e:
        return "err", type(e)


def q_fields(q):
    return tuple(getattr(q, a) for a in ("id", "flags", "opcode", "qname", "key", "qtype",
                                         "qclass", "question_end", "edns", "edns_version",
                                         "payload", "do"))


def r_fields(r):
    return tuple(getattr(r, a) for a in ("id", "flags", "rcode", "tc", "qname", "key", "qtype",
                                         "qclass", "ancount", "nscount", "arcount",
                                         "ttl_offsets", "min_ttl", "soa_minimum"))


def lift(fn, conv):
    def run(*args):
        return conv(fn(*args))
    return run


@SETTINGS
@given(data=packets)
def test_parse_query_agrees(wire_pair, data):
    py, c = wire_pair
    assert outcome(lift(py.parse_query, q_fields), data) == outcome(
        lift(c.parse_query, q_fields), data)


@SETTINGS
@given(data=packets, counter=st.integers(0, 2**33))
def test_answer_agrees(wire_pair, data, counter):
    py, c = wire_pair
    assert py.answer(IMAGE, data, counter) == c.answer(IMAGE, data, counter)


@SETTINGS
@given(data=valid_queries(), max_size=st.sampled_from([0, 0, 300, 700, 65535]))
def test_answer_max_size_agrees(wire_pair, data, max_size):
    py, c = wire_pair
    assert py.answer(IMAGE, data, 0, max_size) == c.answer(IMAGE, data, 0, max_size)


@SETTINGS
@given(data=st.one_of(valid_queries(), mutated(valid_queries())),
       rcode=st.sampled_from([1, 2, 3, 4, 5, 16, 23]))
def test_error_response_agrees(wire_pair, data, rcode):
    py, c = wire_pair
    pq, cq = outcome(py.parse_query, data), outcome(c.parse_query, data)
    assert pq[0] == cq[0]
    if pq[0] == "ok":
        assert outcome(py.error_response, data, pq[1], rcode) == outcome(
            c.error_response, data, cq[1], rcode)
    assert outcome(py.error_response, data, None, rcode) == outcome(
        c.error_response, data, None, rcode)


def _dnspython_responses(q: bytes) -> bytes:
    """A response with compression, an SOA, an OPT and glue, built by dnspython."""
    m = dns.message.from_wire(q)
    r = dns.message.make_response(m)
    r.answer.append(dns.rrset.from_text(m.question[0].name, 60, "IN", "CNAME",
                                        "target.example.org."))
    r.answer.append(dns.rrset.from_text("target.example.org.", 45, "IN", "A", "192.0.2.1"))
    r.authority.append(dns.rrset.from_text("example.org.", 300, "IN", "SOA",
                                           "ns.example.org. h.example.org. 1 2 3 4 20"))
    r.additional.append(dns.rrset.from_text("ns.example.org.", 7, "IN", "AAAA", "2001:db8::1"))
    return r.to_wire()


@st.composite
def responses(draw):
    q = query(draw(names()), 1, qid=draw(st.integers(0, 65535)),
              edns=opt(1232, do=draw(st.booleans())) if draw(st.booleans()) else None)
    if draw(st.booleans()):
        from fastdns import wire

        return wire.answer(IMAGE, q, draw(st.integers(0, 5)))[1] or _dnspython_responses(q)
    return _dnspython_responses(q)


@SETTINGS
@given(data=st.one_of(responses(), mutated(responses()), st.binary(max_size=60)))
def test_parse_response_agrees(wire_pair, data):
    py, c = wire_pair
    assert outcome(lift(py.parse_response, r_fields), data) == outcome(
        lift(c.parse_response, r_fields), data)


@SETTINGS
@given(data=st.one_of(responses(), mutated(responses())), offset=st.integers(-2, 90))
def test_decode_name_agrees(wire_pair, data, offset):
    py, c = wire_pair
    assert outcome(py.decode_name, data, offset) == outcome(c.decode_name, data, offset)


@SETTINGS
@given(name=st.one_of(st.text(max_size=80), st.binary(max_size=80),
                      st.lists(st.text(alphabet="aB-", min_size=0, max_size=70), min_size=1,
                               max_size=6).map(".".join)))
def test_encode_name_agrees(wire_pair, name):
    py, c = wire_pair
    assert outcome(py.encode_name, name) == outcome(c.encode_name, name)


@SETTINGS
@given(batch=st.lists(packets, min_size=1, max_size=12), counter=st.integers(0, 2**32 - 1))
def test_answer_batch_equals_answer(wire_pair, batch, counter):
    for wire in wire_pair:
        n = len(batch)
        inbuf = bytearray(n * wire.SLOT)
        inlens = array("H", [len(p) for p in batch])
        for i, p in enumerate(batch):
            inbuf[i * wire.SLOT : i * wire.SLOT + len(p)] = p
        outbuf = bytearray(n * wire.SLOT)
        outlens = array("H", [0] * n)
        slow = wire.answer_batch(IMAGE, inbuf, inlens, outbuf, outlens, counter)
        expect_slow = 0
        for i, p in enumerate(batch):
            status, resp, _ = wire.answer(IMAGE, p, counter + i)
            if status == wire.ST_ANSWER:
                assert outbuf[i * wire.SLOT : i * wire.SLOT + outlens[i]] == resp
            elif status == wire.ST_DROP:
                assert outlens[i] == 0
            else:
                assert outlens[i] == wire.STATUS_SLOW
                expect_slow += 1
        assert slow == expect_slow


@st.composite
def corrupt_images(draw):
    """The test image with a few octets past the header overwritten."""
    image = bytearray(IMAGE)
    hdr = read_header(IMAGE)
    tables = st.one_of(st.integers(hdr.slots_off, hdr.slots_off + 16 * hdr.nslots - 1),
                       st.integers(hdr.zones_off, hdr.zones_off + 32 * hdr.nzones - 1))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.one_of(tables, st.integers(64, len(image) - 1)))
        image[at] = draw(st.sampled_from([0, 1, 0x7F, 0xFF, draw(st.integers(0, 255))]))
    return bytes(image)


@SETTINGS
@given(image=corrupt_images(), data=st.one_of(valid_queries(), mutated(valid_queries())),
       counter=st.integers(0, 5))
def test_corrupt_image_agrees(wire_pair, image, data, counter):
    """An inconsistent image never crashes either side, and both say the same."""
    py, c = wire_pair
    assert py.answer(image, data, counter) == c.answer(image, data, counter)
