"""Pure-Python twin of the wire core: the oracle the Cython core is tested against.

Every function here has a twin of the same name in ``fastdns._wire`` that
returns the same bytes and raises the same ``fastdns.errors`` classes
(docs/internals.md §1). This module favours being obviously right over being
fast; where a rule is subtle, the order of checks is the contract, because
the C code must fail on the same octet for the same reason.
"""

from __future__ import annotations

import struct
import zlib

from fastdns import errors
from fastdns.constants import (
    EDNS_PAYLOAD,
    MIN_UDP_PAYLOAD,
    QUERY_COPIED_BITS,
    Flag,
    Qclass,
    Qtype,
    Rcode,
)
from fastdns.ipc import image as img
from fastdns.names import to_wire as encode_name
from fastdns.wirescan import (
    MAX_POINTERS,
    check_opt,
    read_name,
    read_question_name,
    read_rr,
)

__all__ = [
    "MAX_POINTERS",
    "SLOT",
    "STATUS_SLOW",
    "ST_ANSWER",
    "ST_DROP",
    "ST_SLOW",
    "Query",
    "Response",
    "answer",
    "answer_batch",
    "crc32",
    "decode_name",
    "encode_name",
    "error_response",
    "parse_query",
    "parse_response",
    "respond",
]

SLOT = 4096  # octets per packet slot in answer_batch's buffers; also the largest answer
STATUS_SLOW = 0xFFFF
ST_ANSWER = 0
ST_DROP = 1
ST_SLOW = 2

_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")
_HEADER = struct.Struct(">HHHHHH")
_TEMPLATE_HEAD = struct.Struct(">HHHHH")

# Plain ints: the IntFlag members would turn `~` into a complement over their own members only.
_COPIED = int(QUERY_COPIED_BITS)
_QR, _RA, _TC = int(Flag.QR), int(Flag.RA), int(Flag.TC)

crc32 = zlib.crc32  # the Cython core carries its own table-driven CRC-32, tested equal

# Zone transfers (IXFR RFC 1995, AXFR RFC 5936). CoreDNS's kubernetes plugin
# refuses both for any name in its zones (plugin/kubernetes/handler.go:
# `case dns.TypeAXFR, dns.TypeIXFR: return dns.RcodeRefused, nil`, before
# any lookup or fallthrough); the server then writes a bare REFUSED
# (core/dnsserver/server.go errorFunc). Only the `transfer` plugin would
# serve them, and fastdns has none.
_IXFR, _AXFR = 251, 252
_REFUSING_KINDS = (img.ZK_KUBERNETES, img.ZK_POD)


class _ReadOnly:
    """Base of the parsed messages: their slots are set once, by object.__setattr__."""

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__}.{name} is read-only")


class Query(_ReadOnly):
    """A parsed query (read-only); see docs/internals.md §1 for each field."""

    __slots__ = ("id", "flags", "opcode", "qname", "key", "qtype", "qclass", "question_end",
                 "edns", "edns_version", "payload", "do")
    # the slots' types, for mypy (set once by _new_query; fastdns/_wire.pyi declares the same)
    id: int
    flags: int
    opcode: int
    qname: bytes
    key: bytes
    qtype: int
    qclass: int
    question_end: int
    edns: bool
    edns_version: int
    payload: int
    do: bool

    def __repr__(self) -> str:
        return (f"<Query id={self.id} opcode={self.opcode} qname={self.qname!r} "
                f"qtype={self.qtype} qclass={self.qclass} edns={self.edns}>")


def _new_query(**fields: object) -> Query:
    q = Query.__new__(Query)
    for k, v in fields.items():
        object.__setattr__(q, k, v)
    return q


def _parse(data: bytes) -> tuple[dict, type[errors.WireError] | None]:
    """Parse a query: (fields so far, error class or None).

    `fields["question_end"] > 12` tells that the question was read, which
    decides whether a FORMERR echoes it.
    """
    n = len(data)
    if n < 12:
        return {}, errors.DropPacket
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if flags & _QR:  # RFC 1035/2181: never answer a response
        return {}, errors.DropPacket
    f = dict(id=qid, flags=flags, opcode=(flags >> 11) & 0xF, qname=b"", key=b"", qtype=0,
             qclass=0, question_end=12, edns=False, edns_version=0, payload=MIN_UDP_PAYLOAD,
             do=False)

    def question() -> None:
        qend = read_question_name(data)
        if qend + 4 > n:
            raise errors.ShortMessage
        qname = data[12:qend]
        qtype, qclass = struct.unpack_from(">HH", data, qend)
        f.update(qname=qname, key=qname.translate(_LOWER), qtype=qtype, qclass=qclass,
                 question_end=qend + 4)

    if f["opcode"] != 0:
        # RFC 8906 §3.1.4: unknown opcodes get NOTIMP; the question is echoed
        # when it can be read, and nothing past it is looked at.
        if qdcount == 1:
            try:
                question()
            except errors.WireError:
                pass
        return f, None
    if qdcount != 1:
        return f, errors.QuestionCount
    try:
        question()
        pos = f["question_end"]
        seen_opt = False
        first_additional = ancount + nscount
        for i in range(ancount + nscount + arcount):
            root_owner, rtype, rclass, ttl, pos, rd_end = read_rr(data, pos, n)
            if rtype == Qtype.OPT and i >= first_additional:
                check_opt(data, root_owner, seen_opt, pos, rd_end)
                seen_opt = True
                f.update(edns=True, edns_version=(ttl >> 16) & 0xFF,
                         payload=max(MIN_UDP_PAYLOAD, rclass), do=bool(ttl & 0x8000))
            pos = rd_end
        if pos != n:
            raise errors.TrailingData
    except errors.WireError as e:
        return f, type(e)
    return f, None


def parse_query(data: bytes) -> Query:
    """Parse a query per docs/internals.md §1; raises a ``WireError`` subclass."""
    data = bytes(data)
    fields, err = _parse(data)
    if err is not None:
        raise err
    return _new_query(**fields)


def decode_name(data: bytes, offset: int) -> tuple[bytes, int]:
    """(uncompressed wire, offset just past the name in `data`)."""
    wire, end = read_name(bytes(data), offset, True)
    assert wire is not None
    return wire, end


def _opt_rr(ext_rcode: int, do: bool) -> bytes:
    """Our OPT: root owner, payload 1232, version 0, DO echoed, no options (RFC 6891 §6.1.3)."""
    return struct.pack(">BHHBBHH", 0, Qtype.OPT, EDNS_PAYLOAD, ext_rcode, 0,
                       0x8000 if do else 0, 0)


def _query_flags(data: bytes) -> int:
    return ((data[2] << 8) | data[3]) & _COPIED


def error_response(data: bytes, q: Query | None, rcode: int) -> bytes:
    """An error answer (FORMERR, NOTIMP, BADVERS, SERVFAIL, REFUSED ...) to `data`."""
    data = bytes(data)
    if len(data) < 12:
        raise errors.DropPacket
    if not 0 <= rcode <= 0xFFF:
        raise ValueError("rcode out of range")
    flags = _query_flags(data) | _QR | _RA | (rcode & 0xF)
    if q is None or not q.qname:
        return data[:2] + _HEADER.pack(0, flags, 0, 0, 0, 0)[2:]
    if len(data) < q.question_end:
        raise errors.ShortMessage
    head = data[:2] + _HEADER.pack(0, flags, 1, 0, 0, 1 if q.edns else 0)[2:]
    out = head + data[12 : q.question_end]
    if q.edns:
        out += _opt_rr(rcode >> 4, q.do)
    return out


def _udp_limit(q: Query) -> int:
    # RFC 6891 §6.2.5: a payload under 512 means 512; SLOT caps what one
    # batch slot (and a single UDP answer of ours) can hold.
    return min(q.payload if q.edns else MIN_UDP_PAYLOAD, SLOT)


def respond(data: bytes, q: Query, template: bytes, suffix_pos: int = 12) -> bytes:
    """Assemble the answer to `data` from an image template (docs/internals.md §1)."""
    return _respond(data, q, template, suffix_pos, 0)


def _respond(data: bytes, q: Query, template: bytes, suffix_pos: int, max_size: int) -> bytes:
    """`respond` with the size limit replaced by `max_size` when it is > 0 (TCP)."""
    data = bytes(data)
    template = bytes(template)
    if not q.qname:
        raise ValueError("respond needs a query whose question was parsed")
    if not 0 <= suffix_pos < 0x4000:
        raise ValueError("suffix_pos must fit a 14-bit compression pointer")
    if len(data) < q.question_end:
        raise errors.ShortMessage
    if len(template) < _TEMPLATE_HEAD.size:
        raise img.ImageError("template shorter than its head")
    tflags, an, ns, ar, nreloc = _TEMPLATE_HEAD.unpack_from(template)
    head = _TEMPLATE_HEAD.size + 2 * nreloc
    if head > len(template):
        raise img.ImageError("template relocations overrun it")
    relocs = struct.unpack_from(f">{nreloc}H", template, _TEMPLATE_HEAD.size)
    body = bytearray(template[head:])
    for r in relocs:
        if r + 2 > len(body):
            raise img.ImageError("template relocation past its body")
    flags = (tflags & ~_COPIED & 0xFFFF) | _query_flags(data)
    question = data[12 : q.question_end]
    opt = _opt_rr(0, q.do) if q.edns else b""
    limit = max_size if max_size > 0 else _udp_limit(q)
    if 12 + len(question) + len(body) + len(opt) > limit:
        # RFC 1035 §4.2.1 / RFC 2181 §9: TC with the question only; the client retries over TCP.
        return (data[:2] + _HEADER.pack(0, flags | _TC, 1, 0, 0, 1 if q.edns else 0)[2:]
                + question + opt)
    ptr = (0xC000 | suffix_pos).to_bytes(2, "big")
    for r in relocs:
        body[r : r + 2] = ptr
    arcount = (ar + (1 if q.edns else 0)) & 0xFFFF
    return (data[:2] + _HEADER.pack(0, flags, 1, an, ns, arcount)[2:] + question + bytes(body)
            + opt)


def _template(image, ans_off: int, counter: int) -> bytes:
    """Template variant `counter % nvariants` of the answer record at `ans_off`."""
    n = len(image)
    if ans_off + 4 > n:
        raise img.ImageError("answer record past the image")
    (nvar,) = struct.unpack_from("<H", image, ans_off)
    if nvar == 0:
        raise img.ImageError("answer record without variants")
    p = ans_off + 4 + 4 * ((counter & 0xFFFFFFFF) % nvar)
    if p + 4 > n:
        raise img.ImageError("variant table past the image")
    (voff,) = struct.unpack_from("<I", image, p)
    if voff + 4 > n:
        raise img.ImageError("variant past the image")
    (tlen,) = struct.unpack_from("<I", image, voff)
    if voff + 4 + tlen > n:
        raise img.ImageError("template past the image")
    return bytes(image[voff + 4 : voff + 4 + tlen])


def _transfer_refused(image, key: bytes) -> bool:
    """Whether the most specific image zone holding `key` (zones are stored
    longest first) belongs to the kubernetes plugin, which refuses transfers."""
    h = img.read_header(image)
    starts = img.label_starts(key)
    for zi in range(h.nzones):
        name_off, name_len, _flags, _neg, _ttl, _blk, kind = img.ZONE.unpack_from(
            image, h.zones_off + zi * img.ZONE.size)
        start = len(key) - name_len
        if start < 0 or start not in starts:
            continue
        if image[name_off : name_off + name_len] != key[start:]:
            continue
        return kind in _REFUSING_KINDS
    return False


def answer(image, data: bytes, counter: int = 0,
           max_size: int = 0) -> tuple[int, bytes | None, int]:
    """The fast path for one packet: (status, response, zone_index); see docs/internals.md §1.

    `zone_index` is only meaningful for ST_SLOW; it is -1 otherwise. An image
    whose internal offsets do not hold up answers SERVFAIL rather than crash.
    `max_size` > 0 replaces the UDP size limit (TCP passes 65535, RFC 7766 §8).
    """
    if not 0 <= max_size <= 0xFFFF:
        raise ValueError("max_size must be 0 (UDP) or a message size up to 65535")
    img.read_header(image)
    data = bytes(data)
    fields, err = _parse(data)
    if err is errors.DropPacket:
        return ST_DROP, None, -1
    if err is not None:
        # The question is echoed when it was read; the OPT is not, since the
        # message around it is not trusted (RFC 6891 §7 makes it optional).
        fields["edns"] = False
        q = _new_query(**fields)
        return ST_ANSWER, error_response(data, q, Rcode.FORMERR), -1
    q = _new_query(**fields)
    if q.opcode != 0:
        return ST_ANSWER, error_response(data, q, Rcode.NOTIMP), -1
    if q.edns and q.edns_version:
        return ST_ANSWER, error_response(data, q, Rcode.BADVERS), -1  # RFC 6891 §6.1.3
    if q.qclass != Qclass.IN and q.qclass != Qclass.ANY:
        return ST_SLOW, None, -1
    try:
        if (q.qtype == _AXFR or q.qtype == _IXFR) and _transfer_refused(image, q.key):
            return ST_ANSWER, error_response(data, q, Rcode.REFUSED), -1
        kind, where, suffix_pos = img.lookup(image, q.key, q.qtype)
        if kind == img.LK_SLOW:
            return ST_SLOW, None, where
        template = _template(image, where, counter)
        return ST_ANSWER, _respond(data, q, template, suffix_pos, max_size), -1
    except (struct.error, img.ImageError):
        return ST_ANSWER, error_response(data, q, Rcode.SERVFAIL), -1


def answer_batch(image, inbuf, inlens, outbuf, outlens, counter: int = 0) -> int:
    """Answer `len(inlens)` packets held in SLOT-sized slots; returns the slow count.

    Packet i uses rotation counter `counter + i`.
    """
    img.read_header(image)
    inb = memoryview(inbuf).cast("B")
    outb = memoryview(outbuf).cast("B")
    n = len(inlens)
    if len(inb) < n * SLOT or len(outb) < n * SLOT or len(outlens) < n:
        raise ValueError("buffers too small for the batch")
    if outb.readonly:
        raise ValueError("outbuf must be writable")
    for i in range(n):
        if inlens[i] > SLOT:
            raise ValueError("a packet length exceeds SLOT")
    slow = 0
    for i in range(n):
        base = i * SLOT
        status, resp, _ = answer(image, bytes(inb[base : base + inlens[i]]), counter + i)
        if status == ST_ANSWER:
            assert resp is not None
            outb[base : base + len(resp)] = resp
            outlens[i] = len(resp)
        elif status == ST_DROP:
            outlens[i] = 0
        else:
            outlens[i] = STATUS_SLOW
            slow += 1
    return slow


class Response(_ReadOnly):
    """A parsed upstream response (read-only), for the forwarder and its cache."""

    __slots__ = ("id", "flags", "rcode", "tc", "qname", "key", "qtype", "qclass", "ancount",
                 "nscount", "arcount", "ttl_offsets", "min_ttl", "soa_minimum")

    id: int
    flags: int
    rcode: int
    tc: bool
    qname: bytes
    key: bytes
    qtype: int
    qclass: int
    ancount: int
    nscount: int
    arcount: int
    ttl_offsets: list[int]
    min_ttl: int
    soa_minimum: int

    def __repr__(self) -> str:
        return (f"<Response id={self.id} rcode={self.rcode} qname={self.qname!r} "
                f"qtype={self.qtype} an={self.ancount} ns={self.nscount} ar={self.arcount}>")


def parse_response(data: bytes) -> Response:
    """Parse an upstream answer: question, TTL positions, SOA minimum (RFC 2308 §5)."""
    data = bytes(data)
    n = len(data)
    if n < 12:
        raise errors.ShortMessage
    rid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if qdcount != 1:
        raise errors.QuestionCount
    qname, pos = read_name(data, 12, True)
    assert qname is not None
    if pos + 4 > n:
        raise errors.ShortMessage
    qtype, qclass = struct.unpack_from(">HH", data, pos)
    pos += 4
    rcode = flags & 0xF
    ttl_offsets: list[int] = []
    min_ttl = -1
    soa_minimum = -1
    seen_opt = False
    first_additional = ancount + nscount
    for i in range(ancount + nscount + arcount):
        root_owner, rtype, _rclass, ttl, pos, rd_end = read_rr(data, pos, n)
        ttl_at = pos - 6  # the TTL: 4 octets, then RDLENGTH (2), then RDATA at pos
        if rtype == Qtype.OPT and i >= first_additional:
            check_opt(data, root_owner, seen_opt, pos, rd_end)
            seen_opt = True
            rcode |= (ttl >> 24) << 4  # RFC 6891 §6.1.3: the upper 8 bits of the rcode
        else:
            ttl_offsets.append(ttl_at)
            if min_ttl < 0 or ttl < min_ttl:
                min_ttl = ttl
            if rtype == Qtype.SOA and ancount <= i < first_additional:
                # RFC 2308 §5: a negative answer lives min(SOA TTL, SOA MINIMUM).
                _, p = read_name(data, pos, False)
                _, p = read_name(data, p, False)
                if p + 20 != rd_end:
                    raise errors.BadRdata
                (minimum,) = struct.unpack_from(">I", data, p + 16)
                if soa_minimum < 0:
                    soa_minimum = min(ttl, minimum)
        pos = rd_end
    if pos != n:
        raise errors.TrailingData
    r = Response.__new__(Response)
    for k, v in dict(id=rid, flags=flags, rcode=rcode, tc=bool(flags & _TC), qname=qname,
                     key=qname.translate(_LOWER), qtype=qtype, qclass=qclass, ancount=ancount,
                     nscount=nscount, arcount=arcount, ttl_offsets=ttl_offsets,
                     min_ttl=min_ttl, soa_minimum=soa_minimum).items():
        object.__setattr__(r, k, v)
    return r
