"""autopath's message surgery: the search-path names it tries, and CoreDNS's ``cnamer``.

Pure wire work, no dnspython (the image has none): a query renamed for one
search-path try, and the answer that try found turned into the answer to the
name asked (plugin/autopath/cname.go ``cnamer``): the question put back as
asked and, unless the first answer already has that owner, a CNAME from it
to the first answer's owner, with that record's TTL, in front. Names are
written uncompressed: the question's length changes, so the answer's
compression pointers would not hold (``fit`` truncates what is then too
large for UDP).
"""

from __future__ import annotations

import struct

from fastdns.codec import wire

LOWER_TABLE = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")
_RR = struct.Struct(">HHIH")
CNAME, OPT = 5, 41
# types whose RDATA holds names that may be compressed (RFC 3597 §4: the
# well-known ones), decoded name by name; (fixed octets before, names, after)
_NAMED = {2: (0, 1), 5: (0, 1), 12: (0, 1), 39: (0, 1), 6: (0, 2), 15: (2, 1), 33: (6, 1)}


def renamed(data: bytes, q: wire.Query, name: bytes) -> bytes:
    """``data`` asking ``name`` (wire) instead, same ID, flags, type and OPT."""
    return data[:12] + name + data[q.question_end - 4:]


def uncompressed_rdata(msg: bytes, rtype: int, pos: int, rdlen: int) -> bytes:
    """A record's RDATA with the names in it written out (dns64 copies records too)."""
    shape = _NAMED.get(rtype)
    if shape is None:
        return msg[pos:pos + rdlen]
    fixed, names = shape
    out = msg[pos:pos + fixed]
    p = pos + fixed
    for _ in range(names):
        n, p = wire.decode_name(msg, p)
        out += n
    return out + msg[p:pos + rdlen]


def cnamed(original: bytes, oq: wire.Query, found: bytes) -> bytes:
    """``found`` (an answer to a renamed query) as the answer to ``original``."""
    an, ns, ar = struct.unpack_from(">HHH", found, 6)
    _fname, pos = wire.decode_name(found, 12)
    pos += 4
    rrs: list[bytes] = []
    first: tuple[bytes, int] | None = None
    for i in range(an + ns + ar):
        owner, pos = wire.decode_name(found, pos)
        rtype, rclass, ttl, rdlen = _RR.unpack_from(found, pos)
        rdata = uncompressed_rdata(found, rtype, pos + 10, rdlen)
        if i == 0 and an:
            first = (owner, ttl)
        rrs.append(owner + _RR.pack(rtype, rclass, ttl, len(rdata)) + rdata)
        pos += 10 + rdlen
    asked = original[12:oq.question_end - 4]
    cname = b""
    if first is not None and first[0].translate(LOWER_TABLE) != asked.translate(LOWER_TABLE):
        cname = asked + _RR.pack(CNAME, 1, first[1], len(first[0])) + first[0]
        an += 1
    head = found[:2] + found[2:4] + struct.pack(">HHHH", 1, an, ns, ar)
    return head + original[12:oq.question_end] + cname + b"".join(rrs)
