"""Reverse records of the kubernetes zones: which Services claim an address, as PTR fragments.

Every Service contributes the PTR records of its ClusterIPs and endpoint
addresses (``RecordBuilder.service``: ``ServiceRecords.ptrs``); an address
may be claimed by several Services, and the answer depends on all of them
(reverse.go serviceRecordForIP: a ClusterIP wins, else every endpoint
name). ``PtrTable`` keeps those claims and compiles them into
``PTR_BUCKETS`` fragments by address hash, so a Service change rebuilds
only the buckets its addresses fall in; the compiler stores the fragments
under ``("p", bucket)``.
"""

from __future__ import annotations

import struct
import zlib
from array import array
from bisect import bisect_left
from itertools import accumulate
from operator import itemgetter

from fastdns.zone.fragments import EMPTY, REC1, Fragment
from fastdns.zone.naming import reverse_wire
from fastdns.zone.records import PTR, PtrClaims
from fastdns.zone.templates import CLASS_IN, HEAD_AN, PTR12, QT2, RR_HEAD, exact_template

PTR_BUCKETS = 4096
_MASK = PTR_BUCKETS - 1

Key = tuple[str, str]  # (namespace, Service name)
# One Service's claims as PtrTable keeps them: (records, target suffix, index). A record
# is 0x80 (a ClusterIP) | len(address), the address, and for an endpoint its host label
# (self-delimiting wire); the index holds bucket << shift | record offset, sorted: array
# "I" with shift 20 while the records fit in 1 MiB, else "Q" with 32 (_shift).
Packed = tuple[bytes, bytes, array]


def _shift(index: array) -> int:
    return 20 if index.itemsize == 4 else 32


class _Claims:
    """``PtrTable.claims``: the number of claimed addresses (``len``) without a
    table of them; the count of a bucket is redone when the bucket changed."""

    __slots__ = ("_table",)

    def __init__(self, table: PtrTable) -> None:
        self._table = table

    def __len__(self) -> int:
        t = self._table
        for b in t._stale:
            n = len(t._rows(b))
            if n:
                t._counts[b] = n
            else:
                t._counts.pop(b, None)
        t._stale.clear()
        return sum(t._counts.values())

    def __bool__(self) -> bool:
        return len(self) > 0


class PtrTable:
    """Which Services claim which addresses, and the bucket fragments they compile to.

    ``rev_zones`` are the reverse zones the kubernetes block serves (an
    address outside them gets no PTR); ``ttl`` is the records' TTL.

    Kept per Service: its claims packed into one bytes object (~22 octets a
    claim) with an index of the record offsets by bucket; kept per bucket:
    the Services with a claim in it (one list entry per Service and bucket).
    A bucket's fragment is rebuilt from those Services' records in it. The
    per-address tuples, claim dict and bucket sets this replaces were ~50 MB
    of the control process at 10k Services / 160k endpoints.
    """

    def __init__(self, rev_zones: list[bytes], ttl: int) -> None:
        self.rev_zones = rev_zones
        self.ttl = ttl
        # PTR answer template up to the rdata length: QR AA RA, 1 answer, owner = question
        self._head = HEAD_AN[1] + PTR12 + struct.pack(">HHI", PTR, CLASS_IN, ttl)
        self.by_service: dict[Key, Packed] = {}
        self._bucket_keys: dict[int, list[Key]] = {}  # bucket -> Services, once per Service
        self._dirty: set[int] = set()
        self._bulk_buckets: set[int] = set()  # filled during a bulk load, marked by index_all
        self._counts: dict[int, int] = {}  # bucket -> claimed addresses, unless stale
        self._stale: set[int] = set()
        self.claims = _Claims(self)

    def set_service(self, key: Key, ptrs: PtrClaims, bulk: bool) -> bool:
        """Replace Service ``key``'s claims with ``ptrs``; True when they changed.

        With ``bulk`` (a full compile) the buckets of new claims are not
        marked here: ``index_all`` marks them once at the end.
        """
        old = self.by_service.get(key)
        if not (self.rev_zones or old):  # no reverse zone: no PTR to track
            return False
        flag = _FLAG
        recs = [flag[len(packed) | (0 if hl else 0x80)] + packed + hl
                for packed, hl in ptrs.items]
        blob = b"".join(recs)
        if (old[0] if old is not None else b"") == blob and (old is None or old[1] == ptrs.base):
            return False
        if old is not None:
            self._unindex(key, old)
        if not recs:
            self.by_service.pop(key, None)
            return True
        offs = accumulate(map(len, recs), initial=0)  # one more: the end
        crc, mask = zlib.crc32, _MASK
        buckets = [crc(packed) & mask for packed, _hl in ptrs.items]
        small = len(blob) <= 1 << 20
        shift = 20 if small else 32
        # by bucket, then by offset: a bucket's claims stay in claim order
        index = array("I" if small else "Q",
                      sorted([b << shift | o for b, o in zip(buckets, offs, strict=False)]))
        self.by_service[key] = (blob, ptrs.base, index)
        bkeys = self._bucket_keys
        distinct = set(buckets)
        for b in distinct:
            got = bkeys.get(b)
            if got is None:
                bkeys[b] = [key]
            else:
                got.append(key)
        (self._bulk_buckets if bulk else self._dirty).update(distinct)
        self._stale.update(distinct)
        return True

    def _unindex(self, key: Key, old: Packed) -> None:
        index = old[2]
        shift = _shift(index)
        bkeys = self._bucket_keys
        distinct = {v >> shift for v in index}
        for b in distinct:
            got = bkeys[b]
            got.remove(key)
            if not got:
                del bkeys[b]
        self._dirty.update(distinct)
        self._stale.update(distinct)

    def index_all(self) -> None:
        """Mark the buckets a bulk fill put claims in."""
        self._dirty |= self._bulk_buckets
        self._bulk_buckets = set()

    def take_dirty(self) -> list[int]:
        """The buckets changed since the last call, in order; forgets them."""
        dirty, self._dirty = self._dirty, set()
        return sorted(dirty)

    def _rows(self, b: int) -> list[tuple[bytes, list[tuple[bytes, bool]]]]:
        """The claims on bucket ``b``'s addresses, address by address in address order:
        (target wire, from a ClusterIP), Services in key order, each's in claim order."""
        keys = self._bucket_keys.get(b)
        if not keys:
            return []
        recs: list[tuple[bytes, bytes, bool]] = []
        app = recs.append
        by_service = self.by_service
        for key in sorted(keys):
            blob, base, index = by_service[key]
            shift = 20 if index.itemsize == 4 else 32  # _shift
            omask = (1 << shift) - 1
            i = bisect_left(index, b << shift)
            for v in index[i:bisect_left(index, (b + 1) << shift, i)]:
                o = v & omask
                flag = blob[o]
                end = o + 1 + (flag & 0x7F)
                if flag & 0x80:
                    app((blob[o + 1:end], base, True))
                else:
                    app((blob[o + 1:end], blob[end:end + 1 + blob[end]] + base, False))
        if len(recs) > 1:
            recs.sort(key=itemgetter(0))  # stable: Services and claims keep their order
        out: list[tuple[bytes, list[tuple[bytes, bool]]]] = []
        last = None
        cur: list[tuple[bytes, bool]] = []
        for packed, target, cluster in recs:
            if packed != last:
                last = packed
                cur = []
                out.append((packed, cur))
            cur.append((target, cluster))
        return out

    def fragment(self, b: int) -> Fragment:
        """PTRs of one bucket of addresses (reverse.go serviceRecordForIP).

        A bucket holds ~1/4096 of the addresses (~40 at 10k Services), so its
        records are rebuilt whole when a Service touches one of them; caching
        them per address cost ~35 MB at that size for no measurable gain.
        """
        parts: list[bytes] = []
        ents = array("I")
        relocs = array("I")
        app, ext, rel, pack = parts.append, ents.extend, relocs.append, REC1.pack
        record = self._record
        size = 0
        rows = self._rows(b)
        self._stale.discard(b)
        if rows:
            self._counts[b] = len(rows)
        else:
            self._counts.pop(b, None)
        for packed, targets in rows:
            got = record(packed, targets)
            if got is None:
                continue
            key, tmpl, h = got
            koff = size
            app(key)
            size += len(key)
            app(pack(1, 0, size + 8, len(tmpl)))
            app(tmpl)
            rel(size + 4)
            ext((h, koff, size, PTR | len(key) << 16))
            size += 12 + len(tmpl)
        return Fragment(b"".join(parts), ents.tobytes(), relocs.tobytes()) if parts else EMPTY

    def _record(self, packed: bytes, targets: list[tuple[bytes, bool]]
                ) -> tuple[bytes, bytes, int] | None:
        """(key, template, slot hash) of one address's PTR answer; None if not served.

        ``targets``: the claims on the address, (target wire, from a ClusterIP).
        """
        key = reverse_wire(packed)
        for z in self.rev_zones:
            if key.endswith(z):
                break
        else:
            return None  # outside the reverse zones this block serves
        if len(targets) == 1:  # the common case, short
            t = targets[0][0]
            if len(t) > 255:
                return None
            tmpl = self._head + len(t).to_bytes(2, "big") + t
            return key, tmpl, zlib.crc32(QT2[PTR], zlib.crc32(key)) | 1
        if cluster := [t for t, c in targets if c]:
            names = cluster[:1]  # a ClusterIP wins: the first Service's name only
        else:
            seen: set[bytes] = set()
            names = []
            for t, _c in targets:
                if t.lower() not in seen:  # the same address in two slices: one PTR
                    seen.add(t.lower())
                    names.append(t)
        names = [t for t in names if len(t) <= 255]  # over-long names cannot be written
        if not names:
            return None
        ttl = self.ttl
        if len(names) == 1:
            t = names[0]
            tmpl = HEAD_AN[1] + PTR12 + RR_HEAD.pack(PTR, CLASS_IN, ttl, len(t)) + t
        else:
            tmpl = exact_template(key, (tuple((None, PTR, ttl, b"", t) for t in names), ()))
        return key, tmpl, zlib.crc32(QT2[PTR], zlib.crc32(key)) | 1


_FLAG = [bytes((i,)) for i in range(256)]
