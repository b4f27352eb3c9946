"""The next image as a patch of the one in force: only what changed is written.

A full assembly (`fragments.assemble`) lays out every fragment again and
rebuilds the whole slot table: ~20 ms per change at 10k Services and 150k
endpoints (a 51 MB image), most of event -> answer. In the control process
the image in force is mapped and its fragments lie in it (`Compiler.placed`),
so the next image can start as a copy of it (one memcpy into the segment
the workers just left) and then change only:

- the header and the zone table (generation, serial, size);
- the preamble (zone names, negative answers, the shared NODATA region, the
  apexes' SOA), rewritten where it lies: the same size whenever the zones are
  the same, so every offset into it stays valid;
- the slots of the fragments gone since: marked ``TOMBSTONE`` (2: never a
  stored hash, which is odd; a lookup probes past it as past any other
  entry, and an insertion may reuse it). Their blobs stay, unreferenced;
- the fragments compiled since: appended after the last octet, relocated
  there, their entries inserted by linear probing.

Unchanged fragments keep their offsets, so their slots and relocations hold
as they are. Answers are those of a full assembly of the same fragments
(tests/zone/test_compiler_patch.py compares every name and type); the layout
is not, so this is used only where an image is assembled in place. When the
garbage, the tombstones or the change grow too large, `patch` declines and
the caller assembles in full, which compacts.

docs/internals.md §10.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from fastdns.ipc import image as img
from fastdns.zone.fragments import SHARED, Buffer, Fragment

TOMBSTONE = img.TOMBSTONE
MAX_LOAD = 0.85  # live entries and tombstones of the slot table, at most
MAX_GARBAGE = 16  # dead blob octets at most 1/MAX_GARBAGE of the blob area
MAX_CHANGE = 8  # appended octets at most 1/MAX_CHANGE of the blob area per patch
_U32 = struct.Struct("<I")


@dataclass(frozen=True)
class Layout:
    """Where things lie in an image assembled in place (the one in force)."""

    nslots: int
    zones_off: int
    pre_at: int  # the preamble's offset: its fragment's relocations are relative to it
    pre_size: int
    pre_ents: bytes  # the preamble's entries: unchanged, or the patch is declined
    total: int  # octets of the image; appended fragments go here
    entries: int  # live entries in the slot table
    tombs: int
    garbage: int  # octets of blobs no entry refers to any more

    @property
    def blob_area(self) -> int:
        return self.total - self.pre_at - self.pre_size


def _home(h: int, n: int) -> int:
    return (h * n) >> 32  # image.home_slot


def patch(prev: Buffer, lay: Layout, into: Callable[[int], Buffer], header: bytes,
          zone_table: bytes, pre: Fragment, shared_base: int, fresh: Sequence[Fragment],
          dead: Sequence[tuple[int, int, bytes]]) -> tuple[Buffer, list[int], Layout] | None:
    """The next image in ``into(size)``: ``prev`` (laid out as ``lay``) less the
    ``dead`` fragments ((offset, length, entries) of each), plus ``fresh``
    ones appended, with ``header``, ``zone_table`` and ``pre`` rewritten.

    Returns (image, where each fresh fragment went, the new layout), or None
    when a full assembly should be done instead (``into`` is called again
    then, and that assembly writes every octet).
    """
    if len(pre.blob) != lay.pre_size or pre.ents != lay.pre_ents or pre.placed:
        return None  # the zones changed: offsets into the preamble would move
    dead_ents = sum(len(e) >> 4 for _a, _n, e in dead)
    fresh_ents = sum(f.count for f in fresh)
    grown = sum(len(f.blob) for f in fresh)
    garbage = lay.garbage + sum(n for _a, n, _e in dead)
    n = lay.nslots
    if (lay.entries + fresh_ents + lay.tombs + dead_ents > MAX_LOAD * n
            or garbage * MAX_GARBAGE > lay.blob_area + grown
            or grown * MAX_CHANGE > lay.blob_area):
        return None
    total = lay.total + grown
    if total > 0xFFFFFFFF:
        return None
    out = into(total)
    mv = memoryview(out).cast("B")
    with memoryview(prev).cast("B") as old:
        if mv.obj is old.obj:  # one mapping: the image would be copied onto itself
            mv.release()
            raise ValueError("into() gave the image the placed fragments are read from")
        mv[: lay.total] = old[: lay.total]
    mv[: len(header)] = header
    _U32.pack_into(mv, 24, total)
    mv[lay.zones_off : lay.zones_off + len(zone_table)] = zone_table
    _put(mv, pre, lay.pre_at)
    slots = mv[img.HEADER.size : img.HEADER.size + n * img.SLOT.size].cast("I")
    tombs = lay.tombs
    for at, _length, ents in dead:
        for h, koff, _aoff, _qk in struct.iter_unpack("<IIII", ents):
            i = _home(h, n)
            want = at + koff
            for _ in range(n):
                s = slots[4 * i]
                if s == 0:
                    _release(mv, slots)
                    return None
                if s == h and slots[4 * i + 1] == want:
                    slots[4 * i] = TOMBSTONE
                    tombs += 1
                    break
                i = i + 1 if i + 1 < n else 0
            else:
                _release(mv, slots)
                return None
    where = []
    cur = lay.total
    for f in fresh:
        where.append(cur)
        _put(mv, f, cur)
        for h, koff, aoff, qk in struct.iter_unpack("<IIII", f.ents):
            i = _home(h, n)
            while True:
                s = slots[4 * i]
                if s == 0 or s == TOMBSTONE:
                    break
                i = i + 1 if i + 1 < n else 0
            if s == TOMBSTONE:
                tombs -= 1
            j = 4 * i
            slots[j + 1] = cur + koff
            slots[j + 2] = shared_base + (aoff & ~SHARED) if aoff & SHARED else cur + aoff
            slots[j + 3] = qk
            slots[j] = h
        cur += len(f.blob)
    _release(mv, slots)
    return out, where, replace(lay, total=total, entries=lay.entries - dead_ents + fresh_ents,
                               tombs=tombs, garbage=garbage)


def _put(mv: memoryview, f: Fragment, at: int) -> None:
    """A fragment's blob at ``at``, its relocations moved there."""
    blob = f.blob
    mv[at : at + len(blob)] = blob
    for (r,) in struct.iter_unpack("<I", f.relocs):
        if r + 4 > len(blob):
            raise ValueError("relocation outside its fragment")
        (v,) = _U32.unpack_from(blob, r)
        _U32.pack_into(mv, at + r, (v + at) & 0xFFFFFFFF)


def _release(mv: memoryview, slots: memoryview) -> None:
    """A dead entry not where its fragment said (the layout is not what was
    recorded): let go of the views, and the caller declines."""
    slots.release()
    mv.release()
