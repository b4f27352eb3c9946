"""Answer templates: the bytes of one answer, laid out for the question at offset 12.

Templates follow docs/internals.md §1: laid out for a message whose question
is the lookup key at offset 12, every owner and every compressible name
pointing into the question where it can (so answers echo the query's case).
SRV targets are never compressed (RFC 2782, RFC 3597 §4) but later names may
point at them. The zone compiler and every compiled plugin (hosts) write
their answers with these; they depend on nothing but the records' RR form.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from fastdns.constants import Flag
from fastdns.ipc import image as img
from fastdns.zone.records import (
    AAAA,
    SOA,
    SOA_EXPIRE,
    SOA_REFRESH,
    SOA_RETRY,
    SRV,
    A,
    Answer,
)

FLAGS_ANSWER = Flag.QR | Flag.AA | Flag.RA
RR_HEAD = struct.Struct(">HHIH")  # type, class, ttl, rdlength
SOA_TAIL = struct.Struct(">IIIII")
CLASS_IN = 1
PTR12 = b"\xc0\x0c"  # a pointer to the question name
QT2 = {t: t.to_bytes(2, "big") for t in range(256)}  # qtype -> its two wire octets
NS_DNS = b"\x02ns\x03dns"
HOSTMASTER = b"\x0ahostmaster"
# offsets inside a zone-miss SOA RR of the three pointers to the zone suffix
SOA_RELOCS = (0, 12 + len(NS_DNS), 12 + len(NS_DNS) + 2 + len(HOSTMASTER))


def name_pointer(off: int) -> bytes:
    """A compression pointer to message offset `off` (RFC 1035 §4.1.4)."""
    return bytes((0xC0 | (off >> 8), off & 0xFF))


class _Heads(dict):
    """Template heads of plain answers (QR AA RA, n answers), made on first use."""

    def __missing__(self, n: int) -> bytes:
        self[n] = v = img.TEMPLATE_HEAD.pack(FLAGS_ANSWER, n, 0, 0, 0)
        return v


HEAD_AN = _Heads()


def _qtable(key: bytes) -> dict[bytes, int]:
    """Suffixes of the question (the lowercased key, at offset 12) -> their offsets."""
    table = {}
    p = 0
    while key[p]:
        table[key[p:]] = 12 + p
        p += key[p] + 1
    return table


def _register(lower: bytes, starts: Iterable[int], table: dict[bytes, int], pos: int) -> None:
    for s in starts:
        if pos + s < 0x4000:
            table.setdefault(lower[s:], pos + s)


def _compress(name: bytes, table: dict[bytes, int], pos: int) -> bytes:
    """`name` written at `pos`, its longest known suffix a pointer (RFC 1035 §4.1.4)."""
    lower = name.lower()
    starts: list[int] = []
    p = 0
    while name[p]:
        t = table.get(lower[p:])
        if t is not None:
            _register(lower, starts, table, pos)
            return name[:p] + name_pointer(t)
        starts.append(p)
        p += name[p] + 1
    _register(lower, starts, table, pos)
    return name


def _starts(name: bytes) -> list[int]:
    out, p = [], 0
    while name[p]:
        out.append(p)
        p += name[p] + 1
    return out


def exact_template(key: bytes, ans: Answer) -> bytes:
    """The template answering `key` (lowercased wire) with `ans` (answer, additional)."""
    an, add = ans
    if not add and len(an) == 1 and an[0][0] is None and an[0][4] is None:
        _o, t, ttl, rd, _n = an[0]
        return HEAD_AN[1] + PTR12 + RR_HEAD.pack(t, CLASS_IN, ttl, len(rd)) + rd
    if not add and all(rr[0] is None and rr[4] is None for rr in an):
        # owners are the question, no names in rdata (A, AAAA, TXT): nothing to compress
        return HEAD_AN[len(an)] + b"".join(
            PTR12 + RR_HEAD.pack(t, CLASS_IN, ttl, len(rd)) + rd for _o, t, ttl, rd, _n in an)
    if an and an[0][1] == SRV:
        srv = _srv_template(key, an, add)
        if srv is not None:
            return srv
    pos = 12 + len(key) + 4
    parts = []
    table = None
    for owner, rtype, ttl, prefix, name in (*an, *add):
        if owner is None:
            o = PTR12
        else:
            if table is None:
                table = _qtable(key)
            o = _compress(owner, table, pos)
        pos += len(o) + 10
        if name is None:
            rdata = prefix
        else:
            if table is None:
                table = _qtable(key)
            npos = pos + len(prefix)
            if rtype == SRV:
                _register(name.lower(), _starts(name), table, npos)
                rdata = prefix + name
            else:
                rdata = prefix + _compress(name, table, npos)
        parts.append(o + RR_HEAD.pack(rtype, CLASS_IN, ttl, len(rdata)) + rdata)
        pos += len(rdata)
    return img.TEMPLATE_HEAD.pack(FLAGS_ANSWER, len(an), 0, len(add), 0) + b"".join(parts)


MAX_ROTATIONS = 8


def rotations(ans: Answer) -> list[Answer]:
    """Round-robin variants of an answer (CoreDNS `loadbalance` round_robin).

    The address records of the answer section rotate; at most MAX_ROTATIONS
    variants, spread over the set so every record leads in some variant of a
    small set and the lead moves evenly through a large one.
    """
    an, add = ans
    # loadbalance.go roundRobin: CNAMEs (and the rest) first, addresses shuffled after
    head = tuple(rr for rr in an if rr[1] not in (A, AAAA))
    addrs = tuple(rr for rr in an if rr[1] in (A, AAAA))
    n = len(addrs)
    if n < 2:
        return [ans]
    steps = range(n) if n <= MAX_ROTATIONS else [k * n // MAX_ROTATIONS
                                                 for k in range(MAX_ROTATIONS)]
    return [(head + addrs[k:] + addrs[:k], add) for k in steps]


def variants_record(off: int, templates: list[bytes]) -> tuple[bytes, list[int]]:
    """An answer record of several variants placed at fragment offset `off`:
    (its bytes, relocation positions of its variant offsets)."""
    n = len(templates)
    table = [struct.pack("<HH", n, 0)]
    relocs = []
    pos = off + 4 + 4 * n
    for i, t in enumerate(templates):
        table.append(struct.pack("<I", pos))
        relocs.append(off + 4 + 4 * i)
        pos += 4 + len(t)
    for t in templates:
        table.append(struct.pack("<I", len(t)))
        table.append(t)
    return b"".join(table), relocs


def _srv_template(key: bytes, an: tuple, add: tuple) -> bytes | None:
    """exact_template for the usual SRV answer, without the general suffix table.

    Owners are the question; targets are written whole (RFC 2782) and each
    additional record's owner is a target: a pointer into the question when
    the target is a suffix of it, else to the target's first copy -- what the
    general compressor picks too (targets of one answer are never suffixes of
    each other: they are all endpoint names, or all the Service's name).
    None (use the general path) otherwise.
    """
    pos = 12 + len(key) + 4
    where = _qtable(key)  # a target that is a suffix of the question points there
    parts = []
    for owner, rtype, ttl, prefix, name in an:
        if owner is not None or rtype != SRV or name is None:
            return None
        rdata = prefix + name
        lower = name.lower()
        if lower not in where:
            where[lower] = pos + 12 + len(prefix)
        parts.append(PTR12 + RR_HEAD.pack(SRV, CLASS_IN, ttl, len(rdata)) + rdata)
        pos += 12 + len(rdata)
    for owner, rtype, ttl, prefix, name in add:
        at = where.get(owner.lower()) if owner is not None and name is None else None
        if at is None or at >= 0x4000:
            return None
        parts.append(name_pointer(at) + RR_HEAD.pack(rtype, CLASS_IN, ttl, len(prefix)) + prefix)
        pos += 12 + len(prefix)
    return img.TEMPLATE_HEAD.pack(FLAGS_ANSWER, len(an), 0, len(add), 0) + b"".join(parts)


def soa_rr(zone_ptr: bytes, ttl: int, serial: int, minimum: int) -> bytes:
    """The SOA of a zone whose name sits where `zone_ptr` points (backend_lookup.go SOA())."""
    rdata = (NS_DNS + zone_ptr + HOSTMASTER + zone_ptr
             + SOA_TAIL.pack(serial & 0xFFFFFFFF, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, minimum))
    return zone_ptr + RR_HEAD.pack(SOA, CLASS_IN, ttl, len(rdata)) + rdata
