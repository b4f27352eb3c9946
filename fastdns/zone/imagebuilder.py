"""Lay out a snapshot image from plain (key, qtype, variants) entries.

The format itself is ``fastdns/ipc/image.py``. This builder is the simple,
obviously correct writer: tests build their images with it, and the zone
compiler's bulk assembly (``fastdns/zone/fragments.py``) must give the same
bytes for the same entries.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fastdns.ipc.image import (
    FORMAT_VERSION,
    HEADER,
    MAGIC,
    SLOT,
    ZK_KUBERNETES,
    ZONE,
    home_slot,
    key_hash,
)


@dataclass(frozen=True, slots=True)
class ZoneSpec:
    """One zone table entry a compile asks for (image §2), before it is laid out."""

    name: bytes  # lowercased wire, b"\x00" for the root
    flags: int
    negative: tuple[bytes, ...] = ()  # template variants of the zone-miss answer
    ttl: int = 5
    block: int = 0
    kind: int = ZK_KUBERNETES


Entry = tuple[bytes, int, Sequence[bytes]]  # (lowercased qname wire, qtype, template variants)


def _slots_for(n: int) -> int:
    size = 8
    while size < n * 2:  # load factor <= 0.5 keeps probe chains short
        size <<= 1
    return size


def build_image(entries: Iterable[Entry], zones: Sequence[ZoneSpec], generation: int = 0,
                flags: int = 0, serial: int = 0) -> bytes:
    """Lay out an image from (key, qtype, variants) entries and zone specs."""
    entries = list(entries)
    nslots = _slots_for(len(entries))
    zones = sorted(zones, key=lambda z: len(z.name), reverse=True)
    slots_off = HEADER.size
    zones_off = slots_off + nslots * SLOT.size
    data = bytearray(zones_off + len(zones) * ZONE.size)

    def put_answer(variants: Sequence[bytes]) -> int:
        if not variants:
            raise ValueError("an answer needs at least one template")
        off = len(data)
        table = bytearray(struct.pack("<HH", len(variants), 0))
        data.extend(b"\0" * (4 + 4 * len(variants)))
        for t in variants:
            table.extend(struct.pack("<I", len(data)))
            data.extend(struct.pack("<I", len(t)))
            data.extend(t)
        data[off : off + len(table)] = table
        return off

    slots: list[tuple[int, int, int, int, int] | None] = [None] * nslots
    seen = set()
    for key, qtype, variants in entries:
        if (key, qtype) in seen:
            raise ValueError(f"duplicate image entry {key!r}/{qtype}")
        seen.add((key, qtype))
        key_off = len(data)
        data.extend(key)
        ans_off = put_answer(variants)
        h = key_hash(key, qtype)
        i = home_slot(h, nslots)
        while slots[i] is not None:
            i = i + 1 if i + 1 < nslots else 0
        slots[i] = (h, key_off, ans_off, qtype, len(key))
    for i, s in enumerate(slots):
        if s is not None:
            SLOT.pack_into(data, slots_off + i * SLOT.size, *s)
    for zi, z in enumerate(zones):
        name_off = len(data)
        data.extend(z.name)
        neg_off = put_answer(z.negative) if z.negative else 0
        ZONE.pack_into(data, zones_off + zi * ZONE.size, name_off, len(z.name), z.flags, neg_off,
                       z.ttl, z.block, z.kind)
    HEADER.pack_into(data, 0, MAGIC, FORMAT_VERSION, flags, generation, len(data), nslots,
                     slots_off, len(zones), zones_off, serial)
    return bytes(data)
