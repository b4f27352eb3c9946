"""A NameSet compiled into one image fragment: the compiler's hot loop.

Every Service, namespace and apex is compiled through here (`Compiler`
keeps the fragments, `fragments.assemble` or `patch.patch` lays them out):
each name's key, one answer record per type (rotated variants with
`loadbalance`), the entries that index them, and the name's NODATA entry
pointing into the shared region; then the PTR answers of addresses.
"""

from __future__ import annotations

import zlib
from array import array
from collections.abc import Callable

from fastdns.ipc import image as img
from fastdns.zone.fragments import EMPTY, REC1, SHARED, Fragment
from fastdns.zone.records import AAAA, CNAME, A, NameSet
from fastdns.zone.templates import (
    CLASS_IN,
    HEAD_AN,
    PTR12,
    QT2,
    RR_HEAD,
    exact_template,
    rotations,
    variants_record,
)
from fastdns.zone.zonetable import ZoneEntry


def names_fragment(names: NameSet, shared: dict[bytes, dict[int, int]],
                   zone_of: Callable[[bytes], ZoneEntry | None], rotate: bool,
                   ttl: int) -> Fragment:
    """One fragment from a NameSet: FragmentWriter's layout, inlined (the hot loop).

    ``shared``: zone name -> question length -> offset of its NODATA answer in
    the shared region; ``zone_of``: the zone a key is in; ``rotate``: the
    block has ``loadbalance``; ``ttl``: of the PTR answers to addresses."""
    parts: list[bytes] = []
    ents = array("I")
    relocs = array("I")
    app, ext, rel = parts.append, ents.extend, relocs.append
    crc32, pack, qt2 = zlib.crc32, REC1.pack, QT2
    size = 0
    for key, (_wire, answers, nodata) in names.names.items():
        if len(key) > 255:
            continue  # cannot be asked (RFC 1035 §2.3.4); possible with very long zones
        koff = size
        app(key)
        size += len(key)
        kc = crc32(key)
        kl = len(key) << 16
        for qtype, ans in answers.items():
            if rotate and len(ans[0]) > 1 and qtype in (A, AAAA):
                rec, rs = variants_record(size, [exact_template(key, a)
                                                  for a in rotations(ans)])
                app(rec)
                relocs.extend(rs)
                ext((crc32(qt2[qtype], kc) | 1, koff, size, qtype | kl))
                size += len(rec)
                continue
            t = exact_template(key, ans)
            if qtype in (A, AAAA) and len(ans[0]) == 1 and ans[0][0][1] == CNAME:
                # a lone CNAME answering A/AAAA: only an ExternalName to an
                # outside name (an in-zone chase that finds nothing is dropped)
                t = (int.from_bytes(t[:2], "big") | img.TF_EXTERNAL).to_bytes(2, "big") + t[2:]
            app(pack(1, 0, size + 8, len(t)))
            app(t)
            rel(size + 4)
            ext((crc32(qt2[qtype], kc) | 1, koff, size, qtype | kl))
            size += 12 + len(t)
        if nodata:
            z = zone_of(key)
            if z is not None:
                ext((crc32(b"\0\0", kc) | 1, koff, SHARED | shared[z.name][len(key)], kl))
    if names.addr_names:
        heads = {4: HEAD_AN[1] + PTR12 + RR_HEAD.pack(1, CLASS_IN, ttl, 4),
                 16: HEAD_AN[1] + PTR12 + RR_HEAD.pack(28, CLASS_IN, ttl, 16)}
        qa = {4: (qt2[1], 1), 16: (qt2[28], 28)}
        z = None
        for key, packed in names.addr_names:
            if len(key) > 255:
                continue
            koff = size
            app(key)
            size += len(key)
            kc = crc32(key)
            kl = len(key) << 16
            t = heads[len(packed)] + packed
            app(pack(1, 0, size + 8, len(t)))
            app(t)
            rel(size + 4)
            q2, qt = qa[len(packed)]
            ext((crc32(q2, kc) | 1, koff, size, qt | kl))
            size += 12 + len(t)
            if z is None or not key.endswith(z.name):
                z = zone_of(key)
            if z is not None:
                ext((crc32(b"\0\0", kc) | 1, koff, SHARED | shared[z.name][len(key)], kl))
    if not parts:
        return EMPTY
    return Fragment(b"".join(parts), ents.tobytes(), relocs.tobytes())
