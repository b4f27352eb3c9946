"""Wire core: golden messages both ways, one negative test per error, the API rules.

Every test runs against both implementations through the `wire` fixture
(ids `py` and `c`); goldens are hex grouped per field (dnspython's habit).
"""

import os
import struct
import zlib
from array import array

import pytest
from namecompress import NameCompressor
from wire_cases import (
    BIG,
    FORWARD_WIRE,
    HUGE,
    IP1,
    IP2,
    IP3,
    MULTI,
    REVERSE_WIRE,
    WEB,
    a_template,
    cluster_image,
    h,
    opt,
    query,
    wire_name,
    zone_index,
)

from fastdns import errors
from fastdns.ipc.image import ImageError, make_template
from fastdns.zone.imagebuilder import build_image

IMAGE = cluster_image()

# web.default.svc.cluster.local, one field per group
Q_WEB = "03 776562 07 64656661756c74 03 737663 07 636c7573746572 05 6c6f63616c 00"
Q_NOPE = "04 4e6f7065 07 44656661756c74 03 535643 07 436c7573746572 05 4c6f63616c 00"


def test_c_extension_loaded():
    """yarl's guard: the C core must not silently fall back to the twin."""
    if os.environ.get("FASTDNS_NO_EXTENSIONS", "") not in ("", "0"):
        pytest.skip("pure-Python run requested")
    from fastdns import _wire  # noqa: F401  (an ImportError here is the failure)
    from fastdns.codec import NO_EXTENSIONS, wire

    assert not NO_EXTENSIONS
    assert wire.__name__ == "fastdns._wire"


def test_crc32_equals_zlib(wire):
    for data in (b"", b"a", WEB + b"\x00\x01", bytes(range(256)) * 3):
        assert wire.crc32(data) == zlib.crc32(data)
        assert wire.crc32(data, 0x12345678) == zlib.crc32(data, 0x12345678)


# ---------------------------------------------------------------- goldens


def test_golden_query_fields(wire):
    data = h(f"04d2 0100 0001 0000 0000 0000 {Q_WEB} 0001 0001")
    q = wire.parse_query(data)
    assert (q.id, q.flags, q.opcode) == (0x04D2, 0x0100, 0)
    assert q.qname == q.key == WEB
    assert (q.qtype, q.qclass, q.question_end) == (1, 1, 12 + 31 + 4)
    assert (q.edns, q.edns_version, q.payload, q.do) == (False, 0, 512, False)
    # the other direction: the same fields written out give the same octets
    assert query("web.default.svc.cluster.local") == data


def test_golden_query_with_edns(wire):
    data = h(f"beef 0110 0001 0000 0000 0001 {Q_WEB} 001c 0001 00 0029 1000 00 00 8000 0000")
    q = wire.parse_query(data)
    assert (q.id, q.flags, q.qtype) == (0xBEEF, 0x0110, 28)
    assert (q.edns, q.edns_version, q.payload, q.do) == (True, 0, 4096, True)
    assert query(WEB, 28, qid=0xBEEF, flags=0x0110, edns=opt(4096, do=True)) == data


def test_golden_answer(wire):
    data = h(f"04d2 0100 0001 0000 0000 0000 {Q_WEB} 0001 0001")
    status, resp, zone = wire.answer(IMAGE, data)
    assert (status, zone) == (wire.ST_ANSWER, -1)
    assert resp == h(f"04d2 8580 0001 0001 0000 0000 {Q_WEB} 0001 0001"
                     "c00c 0001 0001 0000001e 0004 0a60000a")
    r = wire.parse_response(resp)
    assert (r.id, r.rcode, r.tc, r.qname, r.qtype, r.ancount) == (0x04D2, 0, False, WEB, 1, 1)
    assert (r.ttl_offsets, r.min_ttl, r.soa_minimum) == ([47 + 6], 30, -1)


def test_golden_answer_edns_do_and_cd(wire):
    data = h(f"04d2 0110 0001 0000 0000 0001 {Q_WEB} 0001 0001 00 0029 0200 00 00 8000 0000")
    _, resp, _ = wire.answer(IMAGE, data)
    assert resp == h(f"04d2 8590 0001 0001 0000 0001 {Q_WEB} 0001 0001"
                     "c00c 0001 0001 0000001e 0004 0a60000a"
                     "00 0029 04d0 00 00 8000 0000")


def test_golden_nxdomain_relocates_soa_into_the_question(wire):
    # Nope.Default.SVC.Cluster.Local: the zone suffix sits at 12 + 32 - 15 = 29 (0x1d)
    data = h(f"0001 0100 0001 0000 0000 0000 {Q_NOPE} 0001 0001")
    _, resp, _ = wire.answer(IMAGE, data)
    assert resp == h(f"0001 8583 0001 0000 0001 0000 {Q_NOPE} 0001 0001"
                     "c01d 0006 0001 0000001e 002a"
                     "02 6e73 03 646e73 c01d 0a 686f73746d6173746572 c01d"
                     "00000001 00001c20 00000708 00015180 0000001e")
    r = wire.parse_response(resp)
    assert (r.rcode, r.nscount, r.soa_minimum, r.min_ttl) == (3, 1, 30, 30)


def test_golden_formerr_header_only(wire):
    data = h("1234 0100 0002 0000 0000 0000")
    assert wire.answer(IMAGE, data) == (wire.ST_ANSWER, h("1234 8181 0000 0000 0000 0000"), -1)


def test_golden_notimp_echoes_question(wire):
    data = h(f"1234 2900 0001 0000 0000 0000 {Q_WEB} 0006 0001")  # opcode 5 (UPDATE), RD
    _, resp, _ = wire.answer(IMAGE, data)
    assert resp == h(f"1234 a984 0001 0000 0000 0000 {Q_WEB} 0006 0001")


def test_golden_badvers(wire):
    data = h(f"1234 0000 0001 0000 0000 0001 {Q_WEB} 0001 0001 00 0029 1000 00 01 0000 0000")
    _, resp, _ = wire.answer(IMAGE, data)
    # RFC 6891 §6.1.3: rcode 16 = header 0 + extended byte 1, version 0 in our OPT
    assert resp == h(f"1234 8080 0001 0000 0000 0001 {Q_WEB} 0001 0001"
                     "00 0029 04d0 01 00 0000 0000")
    assert wire.parse_response(resp).rcode == 16


def test_golden_truncated_without_edns(wire):
    data = query(BIG, qid=7)
    _, resp, _ = wire.answer(IMAGE, data)
    assert resp == h("0007 8780 0001 0000 0000 0000") + data[12:]
    assert wire.parse_response(resp).tc


# ---------------------------------------------------------------- one test per error class

NEGATIVE_QUERIES = [
    (errors.DropPacket, h("0001 0100 0001 0000 0000")),  # shorter than a header
    (errors.DropPacket, h(f"0001 8100 0001 0000 0000 0000 {Q_WEB} 0001 0001")),  # QR=1
    (errors.ShortMessage, h(f"0001 0100 0001 0000 0000 0000 {Q_WEB} 0001")),
    (errors.ShortMessage, h("0001 0100 0001 0000 0000 0000 03 7765")),
    (errors.QuestionCount, h("0001 0100 0000 0000 0000 0000")),
    (errors.QuestionCount, h(f"0001 0100 0002 0000 0000 0000 {Q_WEB} 0001 0001")),
    (errors.NameTooLong, h("0001 0100 0001 0000 0000 0000") + b"\x3f" + b"a" * 63 +
     b"\x3f" + b"b" * 63 + b"\x3f" + b"c" * 63 + b"\x3f" + b"d" * 63 + h("00 0001 0001")),
    (errors.BadLabelType, h("0001 0100 0001 0000 0000 0000 41 61 00 0001 0001")),
    (errors.BadLabelType, h("0001 0100 0001 0000 0000 0000 81 61 00 0001 0001")),
    (errors.CompressionInQuestion, h("0001 0100 0001 0000 0000 0000 03 616263 c00c 0001 0001")),
    (errors.BadPointer,  # additional owner pointing forward, at itself
     h(f"0001 0100 0001 0000 0000 0001 {Q_WEB} 0001 0001 c02f 0001 0001 00000000 0000")),
    (errors.BadRdata,
     h(f"0001 0100 0001 0000 0000 0001 {Q_WEB} 0001 0001 00 0001 0001 00000000 0005 00")),
    (errors.DuplicateOPT, query(WEB, edns=opt() + opt()).replace(
        h("0000 0000 0001"), h("0000 0000 0002"), 1)),
    (errors.BadOPT,  # OPT owner not the root
     h(f"0001 0100 0001 0000 0000 0001 {Q_WEB} 0001 0001 c00c 0029 0200 00000000 0000")),
    (errors.BadOPT, query(WEB, edns=opt(options=h("000a 0008 0102")))),  # option overruns rdata
    (errors.TrailingData, h(f"0001 0100 0001 0000 0000 0000 {Q_WEB} 0001 0001 00")),
]


def ptr_to(offset: int) -> bytes:
    return (0xC000 | offset).to_bytes(2, "big")


def pointer_chain_query(hops: int) -> bytes:
    """Query with an answer RR whose rdata holds a chain of `hops` pointers, and an
    additional RR whose owner enters the chain at its last pointer."""
    head = bytearray(query(WEB))
    head[6:8] = b"\x00\x01"  # ancount 1
    head[10:12] = b"\x00\x01"  # arcount 1
    rdata_at = len(head) + 1 + 10  # answer owner is the root octet
    chain = bytearray(b"\x00")
    for i in range(hops - 1):
        chain += ptr_to(rdata_at + (0 if i == 0 else 1 + 2 * (i - 1)))
    answer = b"\x00" + h("0010 0001 00000000") + len(chain).to_bytes(2, "big") + bytes(chain)
    last = rdata_at + len(chain) - 2 if hops > 1 else rdata_at
    additional = ptr_to(last) + h("0001 0001 00000000 0000")
    return bytes(head) + answer + additional


@pytest.mark.parametrize("expected,data", NEGATIVE_QUERIES,
                         ids=[f"{e.__name__}-{i}" for i, (e, _) in enumerate(NEGATIVE_QUERIES)])
def test_parse_query_errors(wire, expected, data):
    with pytest.raises(errors.WireError) as info:
        wire.parse_query(data)
    assert type(info.value) is expected
    assert str(info.value) == expected.__doc__


def test_pointer_chain_bounded(wire):
    assert wire.parse_query(pointer_chain_query(wire.MAX_POINTERS - 1)).id == 0x04D2
    with pytest.raises(errors.PointerLoop):
        wire.parse_query(pointer_chain_query(wire.MAX_POINTERS + 1))


def test_encode_name_errors(wire):
    with pytest.raises(errors.LabelTooLong):
        wire.encode_name("a" * 64 + ".local")
    with pytest.raises(errors.NameTooLong):
        wire.encode_name(".".join(["a" * 63] * 4))
    for bad in ("a..b", ".a", "", "bü.local", 42):
        with pytest.raises(errors.BadEncoding):
            wire.encode_name(bad)


def test_image_errors(wire):
    with pytest.raises(ImageError):
        wire.answer(b"FDNSIMG1" + b"\0" * 10, query(WEB))
    with pytest.raises(ImageError):
        wire.answer(b"NOTANIMG" + IMAGE[8:], query(WEB))
    q = wire.parse_query(query(WEB))
    with pytest.raises(ImageError):
        wire.respond(query(WEB), q, h("8400 0001 0000 0000"))  # shorter than its head
    with pytest.raises(ImageError):
        wire.respond(query(WEB), q, make_template(0x8400, 1, 0, 0, b"\xc0\x0c", [1]))


def test_parse_response_errors(wire):
    _, good, _ = wire.answer(IMAGE, query(WEB))
    with pytest.raises(errors.ShortMessage):
        wire.parse_response(good[:11])
    with pytest.raises(errors.ShortMessage):
        wire.parse_response(good[:-12])
    with pytest.raises(errors.TrailingData):
        wire.parse_response(good + b"\0")
    with pytest.raises(errors.QuestionCount):
        wire.parse_response(good[:4] + b"\x00\x00" + good[6:])
    _, neg, _ = wire.answer(IMAGE, query("nope.default.svc.cluster.local"))
    bad_soa = bytearray(neg)
    bad_soa[-43] -= 1  # shrink the SOA rdlength (0x2a) by one
    with pytest.raises(errors.BadRdata):
        wire.parse_response(bytes(bad_soa[:-1]))


# ---------------------------------------------------------------- names


def test_encode_decode_name(wire):
    assert wire.encode_name("web.Default.svc.cluster.local") == h(
        "03 776562 07 44656661756c74 03 737663 07 636c7573746572 05 6c6f63616c 00")
    assert wire.encode_name("a.B.c.") == wire.encode_name(b"a.B.c") == h("01 61 01 42 01 63 00")
    assert wire.encode_name(".") == b"\x00"
    assert wire.encode_name(".".join(["a" * 63] * 3) + "." + "b" * 61) == b"".join(
        [b"\x3f" + b"a" * 63] * 3) + b"\x3d" + b"b" * 61 + b"\x00"
    msg = b"\xff" * 12 + h("03 466f6f 03 636f6d 00 03 777777 c00c 02 6161 c015")
    assert wire.decode_name(msg, 12) == (h("03 466f6f 03 636f6d 00"), 21)
    assert wire.decode_name(msg, 21) == (h("03 777777 03 466f6f 03 636f6d 00"), 27)
    assert wire.decode_name(msg, 27) == (h("02 6161 03 777777 03 466f6f 03 636f6d 00"), 32)
    with pytest.raises(errors.BadPointer):
        wire.decode_name(b"\xff" * 12 + h("c00d 00"), 12)  # forward pointer
    for off in (-1, len(msg), 10**6):
        with pytest.raises(errors.ShortMessage):
            wire.decode_name(msg, off)


def test_name_compressor():
    c = NameCompressor()
    c.add(wire_name("web.default.svc.cluster.local"), 12)
    # owner equal to the question, in another case: a pointer to 12
    assert c.encode(wire_name("WEB.default.svc.cluster.local"), 47) == h("c00c")
    # a sibling: its first label, then the shared suffix at 12 + 4
    assert c.encode(wire_name("db.default.svc.cluster.local"), 60) == h("02 6462 c010")
    # the new name's own suffix is registered (db.default... at 60)
    assert c.encode(wire_name("x.db.default.svc.cluster.local"), 80) == h("01 78 c03c")
    # nothing in common: written out whole
    assert c.encode(wire_name("example.org"), 100) == wire_name("example.org")
    assert c.encode(wire_name("www.example.org"), 200) == h("03 777777 c064")
    assert c.encode(b"\x00", 300) == b"\x00"
    low = NameCompressor(origin=40)
    low.add(wire_name("a.b"), 12)  # below origin: never a target
    assert low.encode(wire_name("a.b"), 50) == wire_name("a.b")
    with pytest.raises(errors.BadEncoding):
        c.encode(b"\x03abc", 10)


# ---------------------------------------------------------------- responses


def test_error_response(wire):
    data = query(WEB, flags=0x0150, edns=opt(do=True))  # RD, Z, CD: Z is not copied
    q = wire.parse_query(data)
    assert wire.error_response(data, q, 5) == h("04d2 8195 0001 0000 0000 0001") + \
        data[12:47] + h("00 0029 04d0 00 00 8000 0000")
    assert wire.error_response(data, None, 2) == h("04d2 8192 0000 0000 0000 0000")
    assert wire.error_response(data, q, 16)[3] & 0xF == 0
    with pytest.raises(errors.DropPacket):
        wire.error_response(data[:11], None, 1)
    with pytest.raises(ValueError):
        wire.error_response(data, q, 4096)


def test_respond_relocation_and_flags(wire):
    data = query("Nope.Default.Svc.Cluster.Local", flags=0x0100)
    q = wire.parse_query(data)
    body = h("c000 0001 0001 00000005 0004 01020304")
    # opcode/RD/CD bits in a template are ignored: they come from the query
    tmpl = make_template(0x8403 | 0x7810, 0, 1, 0, body, [0])
    resp = wire.respond(data, q, tmpl, 0x1D)
    assert resp[:12] == h("04d2 8503 0001 0000 0001 0000")
    assert resp[12 + len(q.qname) + 4:] == h("c01d 0001 0001 00000005 0004 01020304")
    with pytest.raises(ValueError):
        wire.respond(data, q, tmpl, 0x4000)


def test_answer_rotation_and_counter(wire):
    seen = []
    for counter in range(4):
        _, resp, _ = wire.answer(IMAGE, query(MULTI), counter)
        seen.append(resp[-4:])
    assert seen == [IP3, IP1, IP2, IP3]
    _, resp, _ = wire.answer(IMAGE, query(MULTI), 2**32 + 1)  # counters wrap at 32 bits
    assert resp[-4:] == IP1


def test_answer_nodata_and_ent(wire):
    _, resp, _ = wire.answer(IMAGE, query(WEB, 16))
    assert resp[3] & 0xF == 0 and resp[6:10] == h("0000 0001")
    _, resp, _ = wire.answer(IMAGE, query("svc.cluster.local", 1))
    assert resp[3] & 0xF == 0 and resp[8:10] == h("0001")


def test_answer_slow_paths(wire):
    rev = zone_index(IMAGE, REVERSE_WIRE)
    fwd = zone_index(IMAGE, FORWARD_WIRE)
    assert wire.answer(IMAGE, query("4.3.2.1.in-addr.arpa", 12)) == (wire.ST_SLOW, None, rev)
    assert wire.answer(IMAGE, query("www.example.org")) == (wire.ST_SLOW, None, fwd)
    assert wire.answer(IMAGE, query("kubernetes.io")) == (wire.ST_SLOW, None, -1)
    assert wire.answer(IMAGE, query(WEB, qclass=3)) == (wire.ST_SLOW, None, -1)  # CH
    assert wire.answer(IMAGE, query(WEB, qclass=255))[0] == wire.ST_ANSWER
    # a zone only matches on a label boundary: "xcluster.local" is in no zone
    assert wire.answer(IMAGE, query("a.xcluster.local")) == (wire.ST_SLOW, None, -1)


def test_answer_drop_and_formerr_with_question(wire):
    assert wire.answer(IMAGE, b"\x00" * 11) == (wire.ST_DROP, None, -1)
    assert wire.answer(IMAGE, query(WEB, flags=0x8100)) == (wire.ST_DROP, None, -1)
    data = query(WEB, edns=opt()) + b"\x00"  # trailing octet: the question was read
    status, resp, _ = wire.answer(IMAGE, data)
    assert resp == h("04d2 8181 0001 0000 0000 0000") + data[12:47]


def test_answer_truncation_limits(wire):
    def size(data, **kw):
        return wire.answer(IMAGE, data, **kw)[1]

    assert len(size(query(BIG))) == 12 + 35 + 0  # TC without EDNS
    full = size(query(BIG, edns=opt(1232)))
    assert len(full) == 12 + 35 + 40 * 16 + 11 and not full[2] & 0x02
    assert size(query(BIG, edns=opt(100)))[2] & 0x02  # under 512 counts as 512
    huge = size(query(HUGE, edns=opt(65535)))  # capped at one 4096 slot
    assert huge[2] & 0x02 and len(huge) == 12 + 36 + 11
    tcp = size(query(HUGE), max_size=65535)  # TCP: the whole answer
    assert len(tcp) == 12 + 36 + 300 * 16 and not tcp[2] & 0x02
    assert size(query(BIG), max_size=600)[2] & 0x02
    with pytest.raises(ValueError):
        wire.answer(IMAGE, query(WEB), max_size=70000)


def test_answer_corrupt_image_servfail(wire):
    bad = bytearray(IMAGE)
    # point every slot's answer offset past the end: lookups must fail soft
    from fastdns.ipc.image import read_header
    hdr = read_header(IMAGE)
    for i in range(hdr.nslots):
        at = hdr.slots_off + 16 * i
        if bad[at : at + 4] != b"\0\0\0\0":
            bad[at + 8 : at + 12] = (len(bad) + 100).to_bytes(4, "little")
    status, resp, _ = wire.answer(bytes(bad), query(WEB, edns=opt()))
    assert status == wire.ST_ANSWER and resp[3] & 0xF == 2 and resp[-10:-8] == h("0029")


def test_answer_accepts_memoryview_image(wire):
    mv = memoryview(bytearray(IMAGE))
    assert wire.answer(mv, query(WEB)) == wire.answer(IMAGE, query(WEB))


def test_answer_batch(wire):
    packets = [query(WEB, qid=1), b"\0" * 5, query("x.example.org", qid=3),
               query(MULTI, qid=4), query(MULTI, qid=5), query(WEB, 16, qid=6)]
    n = len(packets)
    inbuf = bytearray(n * wire.SLOT)
    inlens = array("H", [0] * n)
    for i, p in enumerate(packets):
        inbuf[i * wire.SLOT : i * wire.SLOT + len(p)] = p
        inlens[i] = len(p)
    outbuf = bytearray(n * wire.SLOT)
    outlens = array("H", [9] * n)
    slow = wire.answer_batch(IMAGE, inbuf, inlens, outbuf, outlens, 7)
    assert slow == 1
    assert outlens[1] == 0 and outlens[2] == wire.STATUS_SLOW
    for i, p in enumerate(packets):
        if outlens[i] not in (0, wire.STATUS_SLOW):
            got = bytes(outbuf[i * wire.SLOT : i * wire.SLOT + outlens[i]])
            assert got == wire.answer(IMAGE, p, 7 + i)[1]
    last_ip = [outbuf[i * wire.SLOT + outlens[i] - 4 :][:4] for i in (3, 4)]
    assert last_ip[0] != last_ip[1]  # consecutive counters rotate
    with pytest.raises(ValueError):
        wire.answer_batch(IMAGE, inbuf, inlens, bytearray(10), outlens)
    assert wire.answer_batch(IMAGE, b"", array("H"), bytearray(), array("H")) == 0


def test_query_is_read_only(wire):
    q = wire.parse_query(query(WEB))
    with pytest.raises(AttributeError):
        q.id = 5
    assert "Query" in repr(q)


def test_parse_query_non_query_opcode(wire):
    q = wire.parse_query(query(WEB, flags=0x2000))  # opcode 4 NOTIFY
    assert (q.opcode, q.qname, q.qtype) == (4, WEB, 1)
    broken = h("1234 2000 0001 0000 0000 0000 c00c 0001 0001")  # unreadable question: ignored
    q = wire.parse_query(broken)
    assert (q.opcode, q.qname, q.question_end) == (4, b"", 12)
    assert wire.answer(IMAGE, broken)[1] == h("1234 a084 0000 0000 0000 0000")


def test_parse_response_fields(wire):
    _, resp, _ = wire.answer(IMAGE, query("Multi.Default.svc.cluster.local", edns=opt(4096)), 0)
    r = wire.parse_response(resp)
    q_end = 12 + len(MULTI) + 4
    assert r.ttl_offsets == [q_end + 6 + 16 * i for i in range(3)]
    assert (r.qname, r.key) == (wire_name("Multi.Default.svc.cluster.local"), MULTI)
    assert (r.ancount, r.nscount, r.arcount, r.min_ttl, r.rcode) == (3, 0, 1, 30, 0)
    ttl_at = r.ttl_offsets[1]
    lower = resp[:ttl_at] + struct.pack(">I", 7) + resp[ttl_at + 4:]
    assert wire.parse_response(lower).min_ttl == 7


def test_templates_for_other_sizes(wire):
    # a two-label key in a root zone: suffix at the question's root octet
    image = build_image([(wire_name("a.b"), 1, [a_template([IP1])])], [])
    assert wire.answer(image, query("A.B"))[1][-4:] == IP1
