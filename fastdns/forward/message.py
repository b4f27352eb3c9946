"""Byte-level helpers shared by the forwarder and the response cache.

Everything here works on DNS wire bytes (RFC 1035 §4.1) with fixed offsets,
so that the later Cython cache fast path can do the same steps without
Python objects: patch the ID, copy the query's opcode/RD/CD bits and
question bytes, write one TTL at a list of offsets, append or drop an OPT.
Messages reaching these helpers were validated by ``wire.parse_response``.
"""

from __future__ import annotations

import struct

from fastdns.constants import QUERY_COPIED_BITS, Flag, Qtype
from fastdns.names import is_subdomain
from fastdns.wirescan import skip_name

_HEADER = struct.Struct(">HHHHHH")
_RR_FIXED = struct.Struct(">HHIH")
EDNS_PAYLOAD = 1232  # what we advertise (DNS flag day 2020), as wire.error_response does
MIN_UDP = 512
MAX_UDP = 4096  # wire.SLOT: the largest UDP answer one worker slot holds
# plain ints: IntFlag arithmetic costs about a microsecond per operation
_COPIED = int(QUERY_COPIED_BITS)
_KEEP = 0xFFFF & ~_COPIED
_QR = int(Flag.QR)
_TC = int(Flag.TC)

def in_any_zone(key: bytes, zones: tuple[bytes, ...]) -> bool:
    return any(is_subdomain(key, z) for z in zones)


def with_id(data: bytes, qid: int) -> bytes:
    return qid.to_bytes(2, "big") + data[2:]


def matches(resp, qid: int, q) -> bool:
    """RFC 5452 §9.1: accept only an answer with our ID and our question.

    The name is compared case-insensitively (RFC 4343); ``resp`` is a parsed
    ``wire.Response``.
    """
    return (resp.id == qid and resp.flags & _QR != 0 and resp.key == q.key
            and resp.qtype == q.qtype and resp.qclass == q.qclass)


_OPT = (struct.pack(">BHHBBHH", 0, Qtype.OPT, EDNS_PAYLOAD, 0, 0, 0, 0),
        struct.pack(">BHHBBHH", 0, Qtype.OPT, EDNS_PAYLOAD, 0, 0, 0x8000, 0))


def opt_rr(do: bool) -> bytes:
    """Our OPT (RFC 6891 §6.1.2): root owner, payload 1232, version 0, DO echoed."""
    return _OPT[1 if do else 0]


def udp_limit(q) -> int:
    """RFC 6891 §6.2.5: the client's payload (never below 512), capped at one slot."""
    return min(q.payload if q.edns else MIN_UDP, MAX_UDP)


def truncated(answer: bytes, query: bytes, q) -> bytes:
    """RFC 2181 §9: TC set, the question only (and our OPT): the client retries over TCP."""
    flags = ((answer[2] << 8) | answer[3]) | _TC
    head = _HEADER.pack(0, flags, 1, 0, 0, 1 if q.edns else 0)
    return query[:2] + head[2:] + query[12:q.question_end] + (opt_rr(q.do) if q.edns else b"")


def fit(answer: bytes, query: bytes, q, tcp: bool) -> bytes:
    """The answer as sent over the client's transport (UDP answers truncated to its limit)."""
    if tcp or len(answer) <= udp_limit(q):
        return answer
    return truncated(answer, query, q)


def adapt(raw: bytes, query: bytes, q) -> bytes:
    """An upstream answer for another client that asked the same question.

    Client ID, the client's opcode/RD/CD bits and its question bytes (its
    0x20 case; the lengths are equal because the question matched); the rest
    (TTLs, OPT) as the upstream sent it.
    """
    flags = (((raw[2] << 8) | raw[3]) & _KEEP) | (((query[2] << 8) | query[3]) & _COPIED)
    return (query[:2] + flags.to_bytes(2, "big") + raw[4:12] + query[12:q.question_end]
            + raw[q.question_end:])


def strip_opt(data: bytes, question_end: int) -> bytes | None:
    """The message without its OPT RR, for storage (the OPT is rebuilt per client).

    Returns ``data`` unchanged when there is no OPT, and None when the OPT is
    not the last RR (cutting it out of the middle could break compression
    pointers into what follows, and no sane server sends that) or carries
    extended rcode bits (RFC 6891 §6.1.3: they would be lost).
    """
    _id, _flags, _qd, an, ns, ar = _HEADER.unpack_from(data)
    pos = question_end
    total = an + ns + ar
    for i in range(total):
        start = pos
        pos = skip_name(data, pos)
        rtype, _cls, _ttl, rdlen = _RR_FIXED.unpack_from(data, pos)
        pos += 10 + rdlen
        if rtype == Qtype.OPT and i >= an + ns:
            if i != total - 1 or data[pos - 10 - rdlen + 4] != 0:
                return None
            return data[:10] + (ar - 1).to_bytes(2, "big") + data[12:start]
    return data


def reopt(raw: bytes, query: bytes, q) -> bytes:
    """``adapt`` with the upstream's OPT replaced by ours (or none, as the client asked).

    The upstream's EDNS options answer the client whose query went upstream
    (a DNS cookie, RFC 7873, would be wrong for every other client).
    """
    body = strip_opt(raw, q.question_end)
    if body is None:
        return adapt(raw, query, q)
    out = adapt(body, query, q)
    if not q.edns:
        return out
    ar = ((out[10] << 8) | out[11]) + 1
    return out[:10] + ar.to_bytes(2, "big") + out[12:] + opt_rr(q.do)
