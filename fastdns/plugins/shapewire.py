"""The wire surgery of the plugins that shape an answer after it is made: header, minimal, nsid.

Pure wire work on a finished message (no dnspython: the image has none),
the same rules their C hooks (fastdns/plugins/_shape.pyx) apply to the
image's answers: header flags set or cleared, the authority and
additional sections dropped (``minimal``), an NSID option put in the OPT
record (``nsid``). A message that does not parse is passed on untouched.
"""

from __future__ import annotations

import struct

from fastdns.wirescan import skip_name

OPT, SOA, NS, NSID = 41, 6, 2, 3
AXFR, IXFR = 252, 251
_RR = struct.Struct(">HHIH")


def flags(msg: bytes, set_mask: int, clear_mask: int) -> bytes:
    """``msg`` with the header bits of ``set_mask`` set and ``clear_mask`` cleared."""
    if len(msg) < 12 or not (set_mask or clear_mask):
        return msg
    f = ((msg[2] << 8 | msg[3]) | set_mask) & ~clear_mask & 0xFFFF
    return msg[:2] + f.to_bytes(2, "big") + msg[4:]


def _sections(msg: bytes) -> tuple[int, list[tuple[int, int, int]]] | None:
    """(end of the question, [(start, type, end)] per record); None: it does not parse."""
    if len(msg) < 12:
        return None
    qd, an, ns, ar = struct.unpack_from(">HHHH", msg, 4)
    pos = 12
    for _ in range(qd):
        pos = skip_name(msg, pos) + 4
    qend = pos
    rrs = []
    for _ in range(an + ns + ar):
        start = pos
        pos = skip_name(msg, pos)
        if pos + 10 > len(msg):
            return None
        rtype, _c, _t, rdlen = _RR.unpack_from(msg, pos)
        pos += 10 + rdlen
        if pos > len(msg):
            return None
        rrs.append((start, rtype, pos))
    return (qend, rrs) if qd <= 1 and pos <= len(msg) else None


def minimal(msg: bytes) -> bytes:
    """minimal.go: a NOERROR answer (``response.Typify`` NoError: records, or
    no SOA and no NS in authority) without its authority and additional
    sections (the OPT record with them); anything else as it is."""
    got = _sections(msg)
    if got is None:
        return msg
    qend, rrs = got
    opcode = (msg[2] >> 3) & 0xF
    if opcode in (4, 5) or msg[3] & 0xF != 0:  # NOTIFY, UPDATE; errors and denials
        return msg
    if qend >= 16 and int.from_bytes(msg[qend - 4:qend - 2], "big") in (AXFR, IXFR):
        return msg
    an, ns = struct.unpack_from(">HH", msg, 6)
    if not an:
        types = [t for _s, t, _e in rrs[an:an + ns]]
        if SOA in types or NS in types:  # NODATA, a delegation: as it is
            return msg
    end = rrs[an - 1][2] if an else qend
    return msg[:8] + b"\x00\x00\x00\x00" + msg[12:end]


def query_wants_nsid(query: bytes) -> bool:
    """Whether the query's OPT carries an NSID option."""
    got = _sections(query)
    if got is None:
        return False
    for start, rtype, end in got[1]:
        if rtype == OPT:
            return NSID in [code for code, _d in _options(query, start, end)]
    return False


def _options(msg: bytes, start: int, end: int) -> list[tuple[int, bytes]]:
    pos = skip_name(msg, start) + 10
    out = []
    while pos + 4 <= end:
        code, length = struct.unpack_from(">HH", msg, pos)
        out.append((code, msg[pos + 4:pos + 4 + length]))
        pos += 4 + length
    return out


def with_nsid(msg: bytes, query: bytes, data: bytes) -> bytes:
    """nsid.go WriteMsg: the NSID option set to ``data`` in the answer's OPT
    (one added, size of the query's and DO set, when the answer has none)."""
    got, q = _sections(msg), _sections(query)
    if got is None or q is None:
        return msg
    opt_rr = next(((s, e) for s, t, e in got[1] if t == OPT), None)
    option = struct.pack(">HH", NSID, len(data)) + data
    if opt_rr is None:
        qopt = next(((s, e) for s, t, e in q[1] if t == OPT), None)
        if qopt is None:
            return msg
        size = int.from_bytes(query[skip_name(query, qopt[0]) + 2:][:2], "big")
        ar = int.from_bytes(msg[10:12], "big") + 1
        rr = b"\x00" + _RR.pack(OPT, size, 0x8000, len(option)) + option
        end = got[1][-1][2] if got[1] else got[0]  # the additional section is the last
        return msg[:10] + ar.to_bytes(2, "big") + msg[12:end] + rr
    start, end = opt_rr
    head = skip_name(msg, start)
    options = [(c, d) for c, d in _options(msg, start, end)]
    if any(c == NSID for c, _d in options):
        options = [(c, data if c == NSID else d) for c, d in options]
    else:
        options.append((NSID, data))
    rdata = b"".join(struct.pack(">HH", c, len(d)) + d for c, d in options)
    rr = msg[start:head + 8] + len(rdata).to_bytes(2, "big") + rdata
    return msg[:start] + rr + msg[end:]
