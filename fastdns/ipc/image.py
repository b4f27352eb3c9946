"""The snapshot image format: layout constants, templates, and the pure-Python reader.

The control process writes images and the workers read them in place, so
the format is a contract between processes and lives here, apart from both:
the wire core (``fastdns/wire.py``, ``fastdns/_wire.pyx``) and the slow path
import this module, never the zone compiler. The layout is specified in
docs/internals.md section 2. The readers are the reference the C code is
tested against, so they favour clarity. ``fastdns/zone/imagebuilder.py``
lays out an image from plain entries (tests, the reference for the
compiler's bulk paths, which must stay byte-identical).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from fastdns.constants import QT_NAME

MAGIC = b"FDNSIMG1"
FORMAT_VERSION = 2  # 2: any slot count, home slot by multiply-shift (issue 14)
HEADER = struct.Struct("<8sIIQIIIIII16x")  # 64 octets
SLOT = struct.Struct("<IIIHH")  # 16 octets
ZONE = struct.Struct("<IHHIIHH12x")  # 32 octets
TEMPLATE_HEAD = struct.Struct(">HHHHH")  # flags, an, ns, ar, nreloc

assert HEADER.size == 64 and SLOT.size == 16 and ZONE.size == 32

# header flags
IMG_SYNCED = 0x1

# zone flags
ZF_AUTH = 0x1
ZF_SLOW_MISS = 0x2
ZF_FALLTHROUGH = 0x4

# template flags: the Z bit (RFC 1035 §4.1.1: "must be zero in all queries and
# responses") marks an answer the server must complete in its slow path before
# sending: an ExternalName's CNAME to a name outside the cluster, whose A/AAAA
# records come from the forwarder (CoreDNS backend_lookup.go A(): b.Lookup).
# wire.answer copies it into the response; the worker diverts such answers.
TF_EXTERNAL = 0x0040

# zone kinds
ZK_KUBERNETES = 0
ZK_FORWARD = 1
ZK_POD = 2
ZK_HOSTS = 3

# lookup results
LK_ANSWER = 0  # (LK_ANSWER, answer_offset, suffix_pos)
LK_SLOW = 2  # (LK_SLOW, zone_index, 0); zone_index -1 = in no zone


def key_hash(key: bytes, qtype: int) -> int:
    """CRC-32 of key + qtype (big-endian), never 0 (0 marks an empty slot)."""
    return zlib.crc32(key + qtype.to_bytes(2, "big")) | 1


def home_slot(h: int, nslots: int) -> int:
    """The slot a hash starts probing at: its place in [0, nslots) by
    multiply-shift, so that any slot count works (a power of two wasted up
    to half the table: 16 MB where 11 do at 10k Services and 150k endpoints)."""
    return (h * nslots) >> 32


def make_template(flags: int, ancount: int, nscount: int, arcount: int, body: bytes,
                  relocs: Sequence[int] = ()) -> bytes:
    """Template bytes as `wire.respond` consumes them (docs/internals.md §1)."""
    head = TEMPLATE_HEAD.pack(flags, ancount, nscount, arcount, len(relocs))
    return head + b"".join(r.to_bytes(2, "big") for r in relocs) + body


class ImageError(ValueError):
    """A snapshot image that fails its header checks."""


@dataclass(frozen=True, slots=True)
class ImageHeader:
    flags: int
    generation: int
    size: int
    nslots: int
    slots_off: int
    nzones: int
    zones_off: int
    serial: int


def read_header(image: bytes | memoryview) -> ImageHeader:
    if len(image) < HEADER.size:
        raise ImageError("image shorter than its header")
    magic, version, flags, gen, size, nslots, soff, nz, zoff, serial = HEADER.unpack_from(image)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise ImageError(f"not a fastdns image of format version {FORMAT_VERSION}")
    if size > len(image) or nslots <= 0 or soff + nslots * SLOT.size > size:
        raise ImageError("image header inconsistent with its size")
    return ImageHeader(flags, gen, size, nslots, soff, nz, zoff, serial)


# A slot whose entry was removed in place (fastdns/zone/patch.py): never a
# stored hash (those are odd), so lookups probe past it like any other entry.
TOMBSTONE = 2


Contents = tuple[int, int, int, dict[tuple[bytes, int], tuple[bytes, ...]], list[tuple]]


def contents(image: bytes | memoryview) -> Contents:
    """What a reader of ``image`` can see, its layout aside: (flags, generation,
    serial, {(key, qtype): answer variants}, [(zone name, flags, negative
    variants, ttl, block, kind)]). Two images that answer alike have equal
    contents, however their fragments and slots are laid out."""
    h = read_header(image)
    entries: dict[tuple[bytes, int], tuple[bytes, ...]] = {}
    for sh, koff, aoff, qt, kl in SLOT.iter_unpack(
            image[h.slots_off : h.slots_off + h.nslots * SLOT.size]):
        if sh in (0, TOMBSTONE):
            continue
        key = bytes(image[koff : koff + kl])
        if key_hash(key, qt) != sh or (key, qt) in entries:
            raise ImageError(f"slot of {key!r}/{qt}: wrong hash, or a second entry")
        entries[key, qt] = tuple(answer_variants(image, aoff))
    zones = []
    for z in range(h.nzones):
        name, flags, neg, ttl, block, kind = zone_entry(image, z)
        zones.append((name, flags, tuple(answer_variants(image, neg)) if neg else (),
                      ttl, block, kind))
    return h.flags, h.generation, h.serial, entries, zones


def answer_variants(image: bytes | memoryview, ans_off: int) -> list[bytes]:
    n, _ = struct.unpack_from("<HH", image, ans_off)
    out = []
    for i in range(n):
        (voff,) = struct.unpack_from("<I", image, ans_off + 4 + 4 * i)
        (length,) = struct.unpack_from("<I", image, voff)
        out.append(bytes(image[voff + 4 : voff + 4 + length]))
    return out


def zone_entry(image: bytes | memoryview, index: int) -> tuple[bytes, int, int, int, int, int]:
    """(name, flags, negative_offset, ttl, block, kind) of zone `index`."""
    h = read_header(image)
    name_off, name_len, flags, neg, ttl, block, kind = ZONE.unpack_from(
        image, h.zones_off + index * ZONE.size)
    return bytes(image[name_off : name_off + name_len]), flags, neg, ttl, block, kind


def find(image: bytes | memoryview, h: ImageHeader, key: bytes, qtype: int) -> int:
    """The answer offset of the exact entry (key, qtype); 0 when there is none."""
    hv = key_hash(key, qtype)
    n = h.nslots
    i = home_slot(hv, n)
    for _ in range(n):
        sh, koff, aoff, sqt, klen = SLOT.unpack_from(image, h.slots_off + i * SLOT.size)
        if sh == 0:
            return 0
        if sh == hv and sqt == qtype and klen == len(key) and image[koff : koff + klen] == key:
            return aoff
        i = i + 1 if i + 1 < n else 0
    return 0


def label_starts(key: bytes) -> list[int]:
    """Offsets of every label start in an uncompressed wire name, root included."""
    out, p = [], 0
    while p < len(key):
        out.append(p)
        if key[p] == 0:
            break
        p += key[p] + 1
    return out


def lookup(image: bytes | memoryview, key: bytes, qtype: int) -> tuple[int, int, int]:
    """Resolve (key, qtype) per docs/internals.md §2: exact, name, zone, or slow."""
    h = read_header(image)
    off = find(image, h, key, qtype)
    if off:
        return (LK_ANSWER, off, 12)
    off = find(image, h, key, QT_NAME)
    if off:
        return (LK_ANSWER, off, 12)
    for zi in range(h.nzones):
        name_off, name_len, zflags, neg, _ttl, _blk, _kind = ZONE.unpack_from(
            image, h.zones_off + zi * ZONE.size)
        if name_len > len(key):
            continue
        start = len(key) - name_len
        if start not in label_starts(key):
            continue
        if image[name_off : name_off + name_len] != key[start:]:
            continue
        if zflags & ZF_SLOW_MISS or not neg:
            return (LK_SLOW, zi, 0)
        return (LK_ANSWER, neg, 12 + start)
    return (LK_SLOW, -1, 0)
