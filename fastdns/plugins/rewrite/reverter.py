"""rewrite's ``ResponseReverter`` on the wire: the answer to a rewritten query made the asked one's.

reverter.go WriteMsg: the question put back as the client asked it; each
record of the authority, answer and additional sections through the
response rules, last rule first: owner names (``name``), the name a CNAME,
SRV, MX, NS, DNAME, PTR or SOA (its MNAME) record points to (``value``),
TTLs clamped (``ttl``), the rcode swapped (``rcode``, once more when the
answer has no records). Names are compared and rewritten in presentation
form with their case, as Go does. The OPT record is left alone (a TTL
clamp would otherwise rewrite its flags).

Pure wire work, no dnspython. The message is written again with owner and
RFC 1035 record names compressed, then fitted to the client's UDP limit.
A message that does not parse is passed on untouched.
"""

from __future__ import annotations

import struct

from fastdns import errors as wire_errors
from fastdns.codec import wire
from fastdns.names import to_text, to_wire
from fastdns.plugins.rewrite.rules import Response

_RR = struct.Struct(">HHIH")
OPT = 41
#: the record types whose value the ``value`` rules rewrite, and where the
#: name sits: (fixed octets before it, names in the rdata)
_NAMED = {2: (0, 1), 5: (0, 1), 12: (0, 1), 39: (0, 1), 6: (0, 2), 15: (2, 1), 33: (6, 1)}
_COMPRESSED = frozenset((2, 5, 12, 6, 15))  # RFC 3597 §4: the RFC 1035 types


class _Writer:
    """A message written name by name, with RFC 1035 §4.1.4 compression."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.seen: dict[bytes, int] = {}

    def name(self, raw: bytes, compress: bool = True) -> None:
        pos = 0
        while raw[pos]:
            key = raw[pos:].lower()
            at = self.seen.get(key)
            if compress and at is not None:
                self.buf += (0xC000 | at).to_bytes(2, "big")
                return
            if len(self.buf) < 0x3FFF:
                self.seen.setdefault(key, len(self.buf))
            self.buf += raw[pos:pos + raw[pos] + 1]
            pos += raw[pos] + 1
        self.buf.append(0)


def _rewrite(raw: bytes, rewriter) -> bytes:
    text = to_text(raw)
    if "\\" in text:
        return raw  # an escaped name: left as it is
    new = rewriter(text)
    if new == text:
        return raw
    try:
        return to_wire(new)
    except wire_errors.WireError:
        return raw


def revert(original: bytes, oq: wire.Query, resp: bytes, responses: tuple[Response, ...],
           restore: bool, tcp: bool) -> bytes:
    """``resp`` (the answer to the rewritten query) as the answer to ``original``."""
    try:
        return _revert(original, oq, resp, responses, restore, tcp)
    except (wire_errors.WireError, struct.error, IndexError, AssertionError):
        return resp


def _revert(original: bytes, oq: wire.Query, resp: bytes, responses: tuple[Response, ...],
            restore: bool, tcp: bool) -> bytes:
    qd, an, ns, ar = struct.unpack_from(">HHHH", resp, 4)
    flags = resp[2] << 8 | resp[3]
    pos = 12
    questions: list[tuple[bytes, bytes]] = []
    for _ in range(qd):
        qname, pos = wire.decode_name(resp, pos)
        questions.append((qname, resp[pos:pos + 4]))
        pos += 4
    rrs: list[list] = []
    for _ in range(an + ns + ar):
        owner, pos = wire.decode_name(resp, pos)
        rtype, rclass, ttl, rdlen = _RR.unpack_from(resp, pos)
        pos += 10
        end = pos + rdlen
        if end > len(resp):
            raise wire_errors.ShortMessage
        shape = _NAMED.get(rtype)
        names: list[bytes] = []
        fixed, tail = resp[pos:end], b""
        if shape is not None:
            fixed = resp[pos:pos + shape[0]]
            p = pos + shape[0]
            for _ in range(shape[1]):
                n, p = wire.decode_name(resp, p)
                names.append(n)
            tail = resp[p:end]
        rrs.append([owner, rtype, rclass, ttl, fixed, names, tail])
        pos = end
    rules = list(reversed(responses))
    rcode = flags & 0xF
    for rr in rrs:
        if rr[1] == OPT:
            continue
        for rule in rules:
            if rule.kind == "name":
                rr[0] = _rewrite(rr[0], rule.rewriter)
            elif rule.kind == "value":
                if rr[5]:
                    rr[5][0] = _rewrite(rr[5][0], rule.rewriter)
            elif rule.kind == "ttl":
                rr[3] = rule.a if rr[3] < rule.a else rule.b if rr[3] > rule.b else rr[3]
            elif rule.kind == "rcode" and rcode == rule.a and rule.b <= 15:
                rcode = rule.b
    if not rrs:
        for rule in rules:
            if rule.kind == "rcode" and rcode == rule.a and rule.b <= 15:
                rcode = rule.b
    w = _Writer()
    w.buf += resp[:2] + ((flags & ~0xF) | rcode).to_bytes(2, "big")
    if restore:
        questions = [(original[12:oq.question_end - 4], original[oq.question_end - 4:
                                                                 oq.question_end])]
    w.buf += struct.pack(">HHHH", len(questions), an, ns, ar)
    for qname, tail in questions:
        w.name(qname)
        w.buf += tail
    for owner, rtype, rclass, ttl, fixed, names, tail in rrs:
        w.name(owner)
        at = len(w.buf)
        w.buf += _RR.pack(rtype, rclass, ttl, 0)
        start = len(w.buf)
        w.buf += fixed
        for n in names:
            w.name(n, rtype in _COMPRESSED)
        w.buf += tail
        struct.pack_into(">H", w.buf, at + 8, len(w.buf) - start)
    from fastdns.forward.message import fit  # the worker's code, loaded where a worker runs

    return fit(bytes(w.buf), original, oq, tcp)
