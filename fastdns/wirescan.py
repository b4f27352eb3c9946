"""The octet readers under the pure-Python wire twin's two parsers.

``parse_query`` and ``parse_response`` (fastdns/wire.py) walk names, RRs and
the OPT record with these, so both parsers fail on the same octet for the
same reason, as the Cython core's shared cursor (_wire_cursor.pxi) does.
The order of checks is the contract (docs/internals.md §1).
"""

from __future__ import annotations

import struct

from fastdns import errors

# RFC 9267 §2: bound the pointers one name may follow. Pointers must also go
# strictly backwards (each target before the previous one), which alone
# rules out loops; the bound caps the work on long pointer chains.
MAX_POINTERS = 127

_U16 = struct.Struct(">H")
_RR_FIXED = struct.Struct(">HHIH")  # type, class, ttl, rdlength


def skip_name(data: bytes, pos: int) -> int:
    """Offset past the name at ``pos`` of a message already parsed once (a
    pointer ends it: two octets); ``len(data)`` when it runs off the end, so a
    caller's own bounds check stops it. The forwarder's OPT stripping and the
    query log's answer walk both step over names this way."""
    end = len(data)
    while pos < end:
        n = data[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0 == 0xC0:
            return pos + 2
        pos += n + 1
    return end


def read_name(data: bytes, pos: int, want: bool) -> tuple[bytes | None, int]:
    """Walk a possibly compressed name at `pos`: (uncompressed wire or None, end).

    `end` is the offset just past the name where it starts (after its first
    pointer). Pointers must land strictly before the previous jump target
    (dnspython's rule), so the walk ends; label types 0x40/0x80 are errors.
    """
    n = len(data)
    if pos < 0:
        raise errors.ShortMessage
    limit = pos
    end = -1
    total = 0
    hops = 0
    parts = []
    while True:
        if pos >= n:
            raise errors.ShortMessage
        length = data[pos]
        if length == 0:
            if end < 0:
                end = pos + 1
            if want:
                parts.append(b"\x00")
                return b"".join(parts), end
            return None, end
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= n:
                raise errors.ShortMessage
            ptr = ((length & 0x3F) << 8) | data[pos + 1]
            if ptr >= limit:
                raise errors.BadPointer
            hops += 1
            if hops > MAX_POINTERS:
                raise errors.PointerLoop
            if end < 0:
                end = pos + 2
            limit = pos = ptr
            continue
        if kind:
            raise errors.BadLabelType
        total += length + 1
        if total >= 255:  # no room left for the root octet (RFC 1035 §3.1)
            raise errors.NameTooLong
        if pos + 1 + length > n:
            raise errors.ShortMessage
        if want:
            parts.append(data[pos : pos + 1 + length])
        pos += 1 + length


def read_question_name(data: bytes) -> int:
    """End offset of the uncompressed question name at 12 (RFC 1035 §4.1.2)."""
    n = len(data)
    pos = 12
    total = 0
    while True:
        if pos >= n:
            raise errors.ShortMessage
        length = data[pos]
        if length == 0:
            return pos + 1
        kind = length & 0xC0
        if kind == 0xC0:
            raise errors.CompressionInQuestion
        if kind:
            raise errors.BadLabelType
        total += length + 1
        if total >= 255:
            raise errors.NameTooLong
        if pos + 1 + length > n:
            raise errors.ShortMessage
        pos += 1 + length


def walk_opt_options(data: bytes, pos: int, end: int) -> None:
    """RFC 6891 §6.1.2: {code, length, data} options must tile the rdata exactly."""
    while pos < end:
        if pos + 4 > end:
            raise errors.BadOPT
        (olen,) = _U16.unpack_from(data, pos + 2)
        pos += 4
        if pos + olen > end:
            raise errors.BadOPT
        pos += olen


def read_rr(data: bytes, pos: int, n: int) -> tuple[bool, int, int, int, int, int]:
    """The RR at ``pos``, bounds checked: (owner is the root, TYPE, CLASS, TTL,
    RDATA start, RDATA end). Queries and responses read their RRs alike."""
    name_start = pos
    _, pos = read_name(data, pos, False)
    root_owner = pos == name_start + 1
    if pos + 10 > n:
        raise errors.ShortMessage
    rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, pos)
    pos += 10
    if pos + rdlen > n:
        raise errors.BadRdata
    return root_owner, rtype, rclass, ttl, pos, pos + rdlen


def check_opt(data: bytes, root_owner: bool, seen_opt: bool, start: int, end: int) -> None:
    """RFC 6891 §6.1.1: at most one OPT, owned by the root (one 0 octet), with
    well-formed options."""
    if seen_opt:
        raise errors.DuplicateOPT
    if not root_owner:
        raise errors.BadOPT
    walk_opt_options(data, start, end)
