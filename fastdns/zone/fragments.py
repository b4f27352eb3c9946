"""Compiled pieces of a snapshot image, and their assembly into one image.

A *fragment* is the compiled form of one Service (or namespace, apex, PTR
bucket): a blob holding its keys and answer records, the slot entries that
index them, and the positions of the absolute offsets inside the blob that
must be moved when the blob is placed. Fragments are cached by the compiler;
re-assembling an image is then a join of blobs plus an index build, done by
`_index.assemble` (Cython) or `assemble_py` (the reference, same bytes).

Entry layout (16 octets, little-endian, the image slot layout with
fragment-relative offsets): u32 hash, u32 key offset, u32 answer offset,
u16 qtype, u16 key length. An answer offset with bit 31 set refers to the
shared region (NODATA answers common to all names of a zone and length).
Relocations: u32 positions of u32 fields in the blob that get the blob's
image offset added (the variant offsets of answer records).
"""

from __future__ import annotations

import os
import struct
import zlib
from array import array
from collections.abc import Callable
from typing import NamedTuple

from fastdns.ipc import image as img

# an assembled image: bytes, the compiler's reused bytearray, or a writable
# view of the segment it was assembled in (`Compiler.out_buffer`)
Buffer = bytes | bytearray | memoryview

SHARED = 0x80000000
REC1 = struct.Struct("<HHII")  # nvariants=1, reserved, variant offset, template length


class Fragment(NamedTuple):
    """A fragment's blob is its bytes until the compiler places it
    (`Compiler.placed`): then ``blob`` is empty and the blob is the
    ``length`` octets the image in force holds it in, relocated there already
    (where: the compiler's array of positions, which the assembler writes);
    ``crc`` is the CRC-32 of the blob as it was compiled, so that a
    recompiled fragment can be told equal to its placed self."""

    blob: bytes
    ents: bytes
    relocs: bytes
    placed: bool = False
    length: int = 0
    crc: int = 0

    @property
    def size(self) -> int:
        """Octets of the blob, wherever it lies."""
        return self.length if self.placed else len(self.blob)

    def same(self, other: Fragment) -> bool:
        """The same compiled fragment, placed or not."""
        if not self.placed and not other.placed:
            return self == other
        if self.ents != other.ents or self.relocs != other.relocs or self.size != other.size:
            return False
        return _crc(self) == _crc(other)

    def place(self) -> Fragment:
        """This fragment, its blob left in the image it was laid out in."""
        return place(self)

    @property  # shadows tuple.count on purpose: a Fragment is never searched
    def count(self) -> int:  # type: ignore[override]
        return len(self.ents) >> 4


EMPTY = Fragment(b"", b"", b"")


_new = tuple.__new__


def place(f: Fragment) -> Fragment:
    """`Fragment.place` (tuple.__new__: a full compile places ~14k at once)."""
    if f[3]:
        return f
    return _new(Fragment, (b"", f[1], f[2], True, len(f[0]), zlib.crc32(f[0])))


def _crc(f: Fragment) -> int:
    return f.crc if f.placed else zlib.crc32(f.blob)


class FragmentWriter:
    """Accumulates one fragment: keys, single-variant answer records, entries."""

    __slots__ = ("parts", "size", "ents", "relocs")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.ents = array("I")
        self.relocs = array("I")

    def key(self, key: bytes) -> int:
        off = self.size
        self.parts.append(key)
        self.size += len(key)
        return off

    def answer(self, template: bytes) -> int:
        off = self.size
        self.parts.append(REC1.pack(1, 0, off + 8, len(template)))
        self.parts.append(template)
        self.relocs.append(off + 4)
        self.size += 12 + len(template)
        return off

    def answer_variants(self, templates: tuple[bytes, ...] | list[bytes]) -> int:
        """An answer record with several variants (loadbalance rotation, image §2)."""
        if len(templates) == 1:
            return self.answer(templates[0])
        if not templates:
            raise ValueError("an answer needs at least one template")
        off = self.size
        table = [struct.pack("<HH", len(templates), 0)]
        pos = off + 4 + 4 * len(templates)
        for i, t in enumerate(templates):
            table.append(struct.pack("<I", pos))
            self.relocs.append(off + 4 + 4 * i)
            pos += 4 + len(t)
        self.parts.extend(table)
        for t in templates:
            self.parts.append(struct.pack("<I", len(t)))
            self.parts.append(t)
        self.size = pos
        return off

    def entry(self, key: bytes, key_off: int, qtype: int, ans: int) -> None:
        h = zlib.crc32(qtype.to_bytes(2, "big"), zlib.crc32(key)) | 1  # crc32(key + qtype)
        self.ents.extend((h, key_off, ans, qtype | (len(key) << 16)))

    def finish(self) -> Fragment:
        if not self.size and not self.ents:
            return EMPTY
        return Fragment(b"".join(self.parts), self.ents.tobytes(), self.relocs.tobytes())


def slot_count(n: int) -> int:
    """Slots for n entries: a load factor <= 0.75 (short linear-probe chains),
    a multiple of 8, at least 8 (any count works: `image.home_slot`)."""
    need = (n * 4 + 2) // 3  # ceil(4n / 3): more slots than entries for any n >= 1
    return max(8, (need + 7) // 8 * 8)


BLOCK_BITS = 12


def block_shift(nslots: int) -> int:
    bits = nslots.bit_length() - 1
    return bits - BLOCK_BITS if bits > BLOCK_BITS else 0


def assemble_py(header: bytes, zone_table: bytes, nslots: int, frags: list[Fragment],
                shared_base: int, out: bytearray | None = None,
                into: Callable[[int], Buffer] | None = None,
                prev: Buffer | None = None, at: array | None = None) -> Buffer:
    """Reference assembly: header (size filled in), slots, zone table, then the fragments.

    A new bytes, or ``out`` replaced by the image (the Cython build reuses
    its allocation: the control loop's buffer, see `_index.assemble`), or
    the writable buffer of the image's size that ``into(size)`` gives, filled
    (the publisher's next segment: `Compiler.out_buffer`). Placed fragments
    are read from ``prev``, the image they were placed in, at ``at[i]`` for
    fragment i; ``at`` (an array("q") with one entry per fragment) is then
    overwritten with where each fragment lies in the new image.

    Slot insertion order: entries sorted (stably, fragment order within) by
    the block of 2^BLOCK_BITS their home slot falls in, so the C build fills
    the table almost sequentially; linear probing from the home slot.
    """
    if nslots <= 0:
        raise ValueError("nslots must be positive")
    if sum(f.count for f in frags) >= nslots:
        raise ValueError("more entries than slots")
    slots_off = img.HEADER.size
    base = slots_off + nslots * img.SLOT.size + len(zone_table)
    total = base + sum(f.size for f in frags)
    old = memoryview(prev).cast("B") if prev is not None else None
    data = bytearray(total)
    data[0 : len(header)] = header
    struct.pack_into("<I", data, 24, total)  # header: total size
    zt = slots_off + nslots * img.SLOT.size
    data[zt : zt + len(zone_table)] = zone_table
    shift = block_shift(nslots)
    pending: list[tuple[int, int, int, int]] = []
    cur = base
    if at is not None and len(at) != len(frags):
        raise ValueError("one position per fragment")
    for i, f in enumerate(frags):
        placed = 0
        if f.placed:
            placed = at[i] if at is not None else -1
            if old is None or placed < 0 or placed + f.length > len(old):
                raise ValueError("a placed fragment outside the image it was placed in")
            data[cur : cur + f.length] = old[placed : placed + f.length]
        else:
            data[cur : cur + len(f.blob)] = f.blob
        for (r,) in struct.iter_unpack("<I", f.relocs):
            if r + 4 > f.size:
                raise ValueError("relocation outside its fragment")
            (v,) = struct.unpack_from("<I", data, cur + r)
            struct.pack_into("<I", data, cur + r, (v + cur - placed) & 0xFFFFFFFF)
        for h, koff, aoff, qk in struct.iter_unpack("<IIII", f.ents):
            aoff = shared_base + (aoff & ~SHARED) if aoff & SHARED else aoff + cur
            pending.append((h, koff + cur, aoff, qk))
        if at is not None:
            at[i] = cur
        cur += f.size
    pending.sort(key=lambda e: img.home_slot(e[0], nslots) >> shift)  # stable
    occupied = bytearray(nslots)
    for h, koff, aoff, qk in pending:
        i = img.home_slot(h, nslots)
        while occupied[i]:
            i = i + 1 if i + 1 < nslots else 0
        occupied[i] = 1
        struct.pack_into("<IIII", data, slots_off + i * 16, h, koff, aoff, qk)
    if into is not None:
        target = into(total)
        with memoryview(target) as mv:
            if mv.nbytes != total:
                raise ValueError(f"into({total}) gave a buffer of {mv.nbytes} octets")
            if old is not None and mv.obj is old.obj:  # one mapping: where the fragments lie
                raise ValueError("into() gave the image the placed fragments are read from")
            mv.cast("B")[:] = data
        return target
    if out is not None:
        out[:] = data
        return out
    return bytes(data)


assemble_c: Callable[..., Buffer] | None
if os.environ.get("FASTDNS_NO_EXTENSIONS", "") in ("", "0"):
    try:  # the Cython build of the same function (fastdns/zone/_index.pyx)
        from fastdns.zone._index import assemble as assemble_c
    except ImportError:  # pragma: no cover - no extension built
        assemble_c = None
else:  # FASTDNS_NO_EXTENSIONS=1 forces the reference, as fastdns.codec does
    assemble_c = None

assemble = assemble_c or assemble_py
