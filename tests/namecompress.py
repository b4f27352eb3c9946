"""A reference RFC 1035 §4.1.4 name compressor for tests.

The zone compiler (fastdns/zone/templates.py) compresses its templates in
place; tests rebuild the same templates with this independent, obviously
correct model and compare (tests/test_zone_compiler.py), so the compression
contract of docs/internals.md §1 stays pinned without product code that only
tests would use.
"""

from __future__ import annotations

from fastdns import errors

_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")


def _label_starts(wire: bytes) -> list[int]:
    """Label starts of an uncompressed wire name (root excluded); BadEncoding if it is not one."""
    starts = []
    pos = 0
    while True:
        if pos >= len(wire):
            raise errors.BadEncoding("name does not end with the root label")
        length = wire[pos]
        if length == 0:
            if pos + 1 != len(wire):
                raise errors.BadEncoding("octets after the root label")
            return starts
        if length > 63:
            raise errors.BadEncoding("label longer than 63 octets or a pointer")
        starts.append(pos)
        pos += 1 + length


class NameCompressor:
    """Name compression as the zone compiler does it (RFC 1035 §4.1.4).

    Offsets are positions in the message being built. `origin` is the lowest
    offset a pointer may target (the question, at 12, in a DNS message);
    suffixes at or beyond 0x4000 cannot be pointed at and are not registered.
    Matching is case-insensitive, the first registration of a suffix wins.
    """

    __slots__ = ("origin", "_table")

    def __init__(self, origin: int = 12) -> None:
        self.origin = origin
        self._table: dict[bytes, int] = {}

    def _register(self, wire: bytes, starts: list[int], offset: int, upto: int) -> None:
        lower = wire.translate(_LOWER)
        for s in starts[:upto]:
            at = offset + s
            if self.origin <= at < 0x4000:
                self._table.setdefault(lower[s:], at)

    def add(self, wire_lower: bytes, offset: int) -> None:
        """Register every suffix of a name written uncompressed at `offset`."""
        wire = bytes(wire_lower)
        starts = _label_starts(wire)
        self._register(wire, starts, offset, len(starts))

    def encode(self, wire: bytes, offset: int) -> bytes:
        """`wire` as written at `offset`: its longest known suffix becomes a pointer."""
        wire = bytes(wire)
        starts = _label_starts(wire)
        lower = wire.translate(_LOWER)
        for i, s in enumerate(starts):
            target = self._table.get(lower[s:])
            if target is not None:
                self._register(wire, starts, offset, i)
                return wire[:s] + (0xC000 | target).to_bytes(2, "big")
        self._register(wire, starts, offset, len(starts))
        return wire
