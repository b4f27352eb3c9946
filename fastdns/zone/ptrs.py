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

from fastdns.zone.fragments import EMPTY, REC1, Fragment
from fastdns.zone.naming import reverse_wire
from fastdns.zone.records import PTR
from fastdns.zone.templates import CLASS_IN, HEAD_AN, PTR12, QT2, RR_HEAD, exact_template

PTR_BUCKETS = 4096

Key = tuple[str, str]  # (namespace, Service name)
PtrRec = tuple[bytes, bytes, bool]  # (packed address, target name wire, from a ClusterIP)
Claim = tuple[Key, PtrRec] | dict[Key, list[PtrRec]]  # PtrTable.claims' values


class PtrTable:
    """Address -> the Services' PTR claims, and the bucket fragments they compile to.

    ``rev_zones`` are the reverse zones the kubernetes block serves (an
    address outside them gets no PTR); ``ttl`` is the records' TTL.
    """

    def __init__(self, rev_zones: list[bytes], ttl: int) -> None:
        self.rev_zones = rev_zones
        self.ttl = ttl
        # PTR answer template up to the rdata length: QR AA RA, 1 answer, owner = question
        self._head = HEAD_AN[1] + PTR12 + struct.pack(">HHI", PTR, CLASS_IN, ttl)
        self.by_service: dict[Key, list[PtrRec]] = {}
        # address -> the Services' PTR contributions (packed, target, from a ClusterIP).
        # Nearly every address has exactly one: that is stored as one (Service,
        # record) pair, a dict {Service: [records]} only when there are more
        # (a third of the compiler's memory at 10k Services went to one dict
        # and one list per address).
        self.claims: dict[bytes, Claim] = {}
        self._bucket_ips: dict[int, set[bytes]] = {}
        self._dirty: set[int] = set()

    def set_service(self, key: Key, ptrs: list[PtrRec], bulk: bool) -> bool:
        """Replace Service ``key``'s claims with ``ptrs``; True when they changed.

        With ``bulk`` (a full compile) the buckets of new claims are not
        marked here: ``index_all`` fills them once at the end.
        """
        old = self.by_service.get(key, [])
        if old == ptrs or not (self.rev_zones or old):  # no reverse zone: no PTR to track
            return False
        ptr = self.claims
        for packed, _t, _c in old:
            claims = ptr.get(packed)
            if claims is None:
                continue
            if isinstance(claims, tuple):
                if claims[0] == key:
                    del ptr[packed]
                    self._touch(packed)
            elif claims.pop(key, None) is not None:
                if not claims:  # this Service had claimed it twice
                    del ptr[packed]
                elif len(claims) == 1:
                    [(k, rs)] = claims.items()
                    if len(rs) == 1:
                        ptr[packed] = (k, rs[0])
                self._touch(packed)
        for rec in ptrs:
            packed = rec[0]
            claims = ptr.get(packed)
            if claims is None:
                ptr[packed] = (key, rec)
            elif isinstance(claims, tuple):
                k, r = claims
                ptr[packed] = {key: [r, rec]} if k == key else {k: [r], key: [rec]}
            else:
                mine = claims.get(key)
                if mine is None:
                    claims[key] = [rec]
                else:
                    mine.append(rec)
            if not bulk:
                self._touch(packed)
        if ptrs:
            self.by_service[key] = ptrs
        else:
            self.by_service.pop(key, None)
        return True

    def index_all(self) -> None:
        """Put every claimed address in its bucket and mark the bucket (after a bulk fill)."""
        mask = PTR_BUCKETS - 1
        for packed in self.claims:
            b = zlib.crc32(packed) & mask
            got = self._bucket_ips.get(b)
            if got is None:
                self._bucket_ips[b] = {packed}
                self._dirty.add(b)
            else:
                got.add(packed)

    def take_dirty(self) -> list[int]:
        """The buckets changed since the last call, in order; forgets them."""
        dirty, self._dirty = self._dirty, set()
        return sorted(dirty)

    def _touch(self, packed: bytes) -> None:
        b = zlib.crc32(packed) & (PTR_BUCKETS - 1)
        self._dirty.add(b)
        ips = self._bucket_ips.setdefault(b, set())
        if packed in self.claims:
            ips.add(packed)
        else:
            ips.discard(packed)

    def fragment(self, b: int) -> Fragment:
        """PTRs of one bucket of addresses (reverse.go serviceRecordForIP).

        A bucket holds ~1/4096 of the addresses (~30 at 10k Services), so its
        records are rebuilt whole when a Service touches one of them; caching
        them per address cost ~35 MB at that size for no measurable gain.
        """
        parts: list[bytes] = []
        ents = array("I")
        relocs = array("I")
        app, ext, rel, pack = parts.append, ents.extend, relocs.append, REC1.pack
        record = self._record
        size = 0
        ips = self._bucket_ips.get(b, set())
        for packed in sorted(ips):
            got = record(packed)
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
        if not ips:
            self._bucket_ips.pop(b, None)
        return Fragment(b"".join(parts), ents.tobytes(), relocs.tobytes()) if parts else EMPTY

    def _record(self, packed: bytes) -> tuple[bytes, bytes, int] | None:
        """(key, template, slot hash) of one address's PTR answer; None if not served."""
        claims = self.claims.get(packed)
        if not claims:
            return None
        key = reverse_wire(packed)
        for z in self.rev_zones:
            if key.endswith(z):
                break
        else:
            return None  # outside the reverse zones this block serves
        if isinstance(claims, tuple):
            targets = [claims[1]]
        elif len(claims) == 1:
            [targets] = claims.values()
        else:
            targets = [t for k in sorted(claims) for t in claims[k]]
        if len(targets) == 1:  # the common case, short
            t = targets[0][1]
            if len(t) > 255:
                return None
            tmpl = self._head + len(t).to_bytes(2, "big") + t
            return key, tmpl, zlib.crc32(QT2[PTR], zlib.crc32(key)) | 1
        if cluster := [t for _p, t, c in targets if c]:
            names = cluster[:1]  # a ClusterIP wins: the first Service's name only
        else:
            seen: set[bytes] = set()
            names = []
            for _p, t, _c in targets:
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
