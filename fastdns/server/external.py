"""ExternalName Services whose target is outside the cluster: CNAME + the target's records.

CoreDNS (``plugin/kubernetes`` via ``plugin/backend_lookup.go`` A()/AAAA()):
for a CNAME to a name outside the zone it looks the target up through the
server itself (``b.Lookup`` = ``upstream.Lookup``, i.e. the forwarder) and
appends what comes back to the CNAME. fastdns's compiler marks such
answers with ``image.TF_EXTERNAL`` (the header's Z bit, which the wire core
copies into the response); the worker diverts them here instead of
sending. Without a forwarder for the target, or when the lookup brings
nothing, the CNAME goes out alone, as it did before.
"""

from __future__ import annotations

import os
import struct

from fastdns import errors
from fastdns.codec import wire
from fastdns.forward.message import fit
from fastdns.ipc import image as img
from fastdns.names import key_text

_RR = struct.Struct(">HHIH")
_A, _CNAME, _AAAA = 1, 5, 28


def unmarked(resp: bytes) -> bytes:
    """The image's answer with the TF_EXTERNAL mark cleared (Z must be 0 on the wire)."""
    return resp[:3] + bytes([resp[3] & ~img.TF_EXTERNAL & 0xFF]) + resp[4:]


def cname_target(resp: bytes, q) -> tuple[bytes, int]:
    """(target wire, offset just past the CNAME RR) of the image's CNAME-only answer."""
    _owner, pos = wire.decode_name(resp, q.question_end)
    rtype, _cls, _ttl, rdlen = _RR.unpack_from(resp, pos)
    if rtype != _CNAME:
        raise ValueError("not a CNAME answer")
    target, _end = wire.decode_name(resp, pos + 10)
    return target, pos + 10 + rdlen


def target_query(target: bytes, qtype: int) -> bytes:
    """A plain recursive query for the target (random ID, no EDNS)."""
    qid = int.from_bytes(os.urandom(2), "big")
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + target + struct.pack(">HH", qtype, 1)


def answer_rrs(resp: bytes, q) -> list[bytes]:
    """The A/AAAA/CNAME RRs of an upstream answer, names uncompressed (movable)."""
    if len(resp) < 12 or resp[3] & 0x0F:
        return []
    ancount = resp[6] << 8 | resp[7]
    pos = q.question_end
    out = []
    for _ in range(ancount):
        owner, pos = wire.decode_name(resp, pos)
        rtype, rclass, ttl, rdlen = _RR.unpack_from(resp, pos)
        rdata = resp[pos + 10 : pos + 10 + rdlen]
        if rtype == _CNAME:
            rdata = wire.decode_name(resp, pos + 10)[0]
        if rtype in (_A, _AAAA, _CNAME):
            out.append(owner + _RR.pack(rtype, rclass, ttl, len(rdata)) + rdata)
        pos += 10 + rdlen
    return out


def merge(base: bytes, cname_end: int, rrs: list[bytes]) -> bytes:
    """``base`` (header, question, the CNAME, maybe our OPT) with ``rrs`` after the CNAME."""
    if not rrs:
        return base
    ancount = (base[6] << 8 | base[7]) + len(rrs)
    return (base[:6] + ancount.to_bytes(2, "big") + base[8:cname_end] + b"".join(rrs)
            + base[cname_end:])


async def complete(image, data: bytes, q, resolver_for, tcp: bool) -> bytes | None:
    """The whole answer to ``data``: the image's CNAME + the target's records.

    ``resolver_for(target_text)`` gives the ForwardingResolver of the block
    that serves the target (or None).
    """
    # the whole answer (no UDP limit): what goes out is fitted at the end
    status, resp, _zone = wire.answer(image, data, 0, 65535)
    if status != wire.ST_ANSWER or resp is None:
        return None
    base = unmarked(resp)
    try:
        target, cname_end = cname_target(base, q)
    except (ValueError, struct.error, errors.WireError):
        return fit(base, data, q, tcp)
    resolver = resolver_for(key_text(target))
    rrs: list[bytes] = []
    if resolver is not None:
        tdata = target_query(target, q.qtype)
        tq = wire.parse_query(tdata)
        got = await resolver.resolve(tdata, tq, True)
        if got is not None:
            rrs = answer_rrs(got, tq)
    return fit(merge(base, cname_end, rrs), data, q, tcp)

