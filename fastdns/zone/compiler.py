"""Records -> the snapshot image, incrementally, one fragment per Service.

`Compiler.full(state)` compiles everything; `Compiler.update(state, affected)`
recompiles only the fragments an event batch touched (`ClusterState.apply`
says which) and re-assembles the image from cached fragments with bulk
operations (`fragments.assemble`: blob joins plus a C index build). Both give
the same bytes for the same state, generation and serial.

Templates follow docs/internals.md §1: laid out for a message whose question
is the lookup key at offset 12, every owner and every compressible name
pointing into the question where it can (so answers echo the query's case).
SRV targets are never compressed (RFC 2782, RFC 3597 §4) but later names may
point at them. Everything that carries the SOA (serial!) lives in a small
region rebuilt at each assembly: zone-miss answers (SOA owner and rdata
zone suffix relocated onto the question), the apex SOA, and one NODATA
answer per (zone, name length) that every name of that zone and length
shares -- so a serial bump never invalidates the fragment cache.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import struct
import time
import zlib
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from fastdns.constants import Flag, Rcode
from fastdns.ipc import image as img
from fastdns.zone.fragments import (
    EMPTY,
    SHARED,
    Fragment,
    FragmentWriter,
    assemble,
    slot_count,
)
from fastdns.zone.imagebuilder import ZoneSpec
from fastdns.zone.records import (
    AAAA,
    CNAME,
    PTR,
    SOA,
    SOA_EXPIRE,
    SOA_REFRESH,
    SOA_RETRY,
    SRV,
    A,
    Answer,
    KubernetesOptions,
    NameSet,
    RecordBuilder,
    is_subdomain,
    name_wire,
    reverse_wire,
)
from fastdns.zone.state import Affected, ClusterState

FLAGS_ANSWER = Flag.QR | Flag.AA | Flag.RA
RR_HEAD = struct.Struct(">HHIH")  # type, class, ttl, rdlength
SOA_TAIL = struct.Struct(">IIIII")
CLASS_IN = 1
PTR_BUCKETS = 4096
_PTR12 = b"\xc0\x0c"
_REC1 = struct.Struct("<HHII")  # fragments.FragmentWriter.answer: one variant
_QT2 = {t: t.to_bytes(2, "big") for t in range(256)}
_NS_DNS = b"\x02ns\x03dns"
_HOSTMASTER = b"\x0ahostmaster"
# offsets inside a zone-miss SOA RR of the three pointers to the zone suffix
_SOA_RELOCS = (0, 12 + len(_NS_DNS), 12 + len(_NS_DNS) + 2 + len(_HOSTMASTER))

Key = tuple[str, str]


PtrRec = tuple[bytes, bytes, bool]  # (packed address, target name wire, from a ClusterIP)
Claim = tuple[Key, PtrRec] | dict[Key, list[PtrRec]]  # Compiler._ptr's values
Image = bytes | bytearray  # bytearray: reuse_buffer


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while compiling: the compiler allocates hundreds of
    thousands of small tuples but makes no cycles, and every generation-2 pass
    would walk the whole cluster state (a third of a full compile's time)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _ptr(off: int) -> bytes:
    return bytes((0xC0 | (off >> 8), off & 0xFF))


class _Heads(dict):
    """Template heads of plain answers (QR AA RA, n answers), made on first use."""

    def __missing__(self, n: int) -> bytes:
        self[n] = v = img.TEMPLATE_HEAD.pack(FLAGS_ANSWER, n, 0, 0, 0)
        return v


_HEAD_AN = _Heads()


def _qtable(key: bytes) -> dict[bytes, int]:
    """Suffixes of the question (the lowercased key, at offset 12) -> their offsets."""
    table = {}
    p = 0
    while key[p]:
        table[key[p:]] = 12 + p
        p += key[p] + 1
    return table


def _register(lower: bytes, starts: Iterable[int], table: dict[bytes, int], pos: int) -> None:
    for s in starts:
        if pos + s < 0x4000:
            table.setdefault(lower[s:], pos + s)


def _compress(name: bytes, table: dict[bytes, int], pos: int) -> bytes:
    """`name` written at `pos`, its longest known suffix a pointer (RFC 1035 §4.1.4)."""
    lower = name.lower()
    starts = []
    p = 0
    while name[p]:
        t = table.get(lower[p:])
        if t is not None:
            _register(lower, starts, table, pos)
            return name[:p] + _ptr(t)
        starts.append(p)
        p += name[p] + 1
    _register(lower, starts, table, pos)
    return name


def _starts(name: bytes) -> list[int]:
    out, p = [], 0
    while name[p]:
        out.append(p)
        p += name[p] + 1
    return out


def exact_template(key: bytes, ans: Answer) -> bytes:
    """The template answering `key` (lowercased wire) with `ans` (answer, additional)."""
    an, add = ans
    if not add and len(an) == 1 and an[0][0] is None and an[0][4] is None:
        _o, t, ttl, rd, _n = an[0]
        return _HEAD_AN[1] + _PTR12 + RR_HEAD.pack(t, CLASS_IN, ttl, len(rd)) + rd
    if not add and all(rr[0] is None and rr[4] is None for rr in an):
        # owners are the question, no names in rdata (A, AAAA, TXT): nothing to compress
        return _HEAD_AN[len(an)] + b"".join(
            _PTR12 + RR_HEAD.pack(t, CLASS_IN, ttl, len(rd)) + rd for _o, t, ttl, rd, _n in an)
    if an and an[0][1] == SRV:
        t = _srv_template(key, an, add)
        if t is not None:
            return t
    pos = 12 + len(key) + 4
    parts = []
    table = None
    for owner, rtype, ttl, prefix, name in (*an, *add):
        if owner is None:
            o = _PTR12
        else:
            if table is None:
                table = _qtable(key)
            o = _compress(owner, table, pos)
        pos += len(o) + 10
        if name is None:
            rdata = prefix
        else:
            if table is None:
                table = _qtable(key)
            npos = pos + len(prefix)
            if rtype == SRV:
                _register(name.lower(), _starts(name), table, npos)
                rdata = prefix + name
            else:
                rdata = prefix + _compress(name, table, npos)
        parts.append(o + RR_HEAD.pack(rtype, CLASS_IN, ttl, len(rdata)) + rdata)
        pos += len(rdata)
    return img.TEMPLATE_HEAD.pack(FLAGS_ANSWER, len(an), 0, len(add), 0) + b"".join(parts)


MAX_ROTATIONS = 8


def rotations(ans: Answer) -> list[Answer]:
    """Round-robin variants of an answer (CoreDNS `loadbalance` round_robin).

    The address records of the answer section rotate; at most MAX_ROTATIONS
    variants, spread over the set so every record leads in some variant of a
    small set and the lead moves evenly through a large one.
    """
    an, add = ans
    # loadbalance.go roundRobin: CNAMEs (and the rest) first, addresses shuffled after
    head = tuple(rr for rr in an if rr[1] not in (A, AAAA))
    addrs = tuple(rr for rr in an if rr[1] in (A, AAAA))
    n = len(addrs)
    if n < 2:
        return [ans]
    steps = range(n) if n <= MAX_ROTATIONS else [k * n // MAX_ROTATIONS
                                                 for k in range(MAX_ROTATIONS)]
    return [(head + addrs[k:] + addrs[:k], add) for k in steps]


def _variants_record(off: int, templates: list[bytes]) -> tuple[bytes, list[int]]:
    """An answer record of several variants placed at fragment offset `off`:
    (its bytes, relocation positions of its variant offsets)."""
    n = len(templates)
    table = [struct.pack("<HH", n, 0)]
    relocs = []
    pos = off + 4 + 4 * n
    for i, t in enumerate(templates):
        table.append(struct.pack("<I", pos))
        relocs.append(off + 4 + 4 * i)
        pos += 4 + len(t)
    for t in templates:
        table.append(struct.pack("<I", len(t)))
        table.append(t)
    return b"".join(table), relocs


def _srv_template(key: bytes, an: tuple, add: tuple) -> bytes | None:
    """exact_template for the usual SRV answer, without the general suffix table.

    Owners are the question; targets are written whole (RFC 2782) and each
    additional record's owner is a target: a pointer into the question when
    the target is a suffix of it, else to the target's first copy -- what the
    general compressor picks too (targets of one answer are never suffixes of
    each other: they are all endpoint names, or all the Service's name).
    None (use the general path) otherwise.
    """
    pos = 12 + len(key) + 4
    where = _qtable(key)  # a target that is a suffix of the question points there
    parts = []
    for owner, rtype, ttl, prefix, name in an:
        if owner is not None or rtype != SRV or name is None:
            return None
        rdata = prefix + name
        lower = name.lower()
        if lower not in where:
            where[lower] = pos + 12 + len(prefix)
        parts.append(_PTR12 + RR_HEAD.pack(SRV, CLASS_IN, ttl, len(rdata)) + rdata)
        pos += 12 + len(rdata)
    for owner, rtype, ttl, prefix, name in add:
        at = where.get(owner.lower()) if owner is not None and name is None else None
        if at is None or at >= 0x4000:
            return None
        parts.append(_ptr(at) + RR_HEAD.pack(rtype, CLASS_IN, ttl, len(prefix)) + prefix)
        pos += 12 + len(prefix)
    return img.TEMPLATE_HEAD.pack(FLAGS_ANSWER, len(an), 0, len(add), 0) + b"".join(parts)


def soa_rr(zone_ptr: bytes, ttl: int, serial: int, minimum: int) -> bytes:
    """The SOA of a zone whose name sits where `zone_ptr` points (backend_lookup.go SOA())."""
    rdata = (_NS_DNS + zone_ptr + _HOSTMASTER + zone_ptr
             + SOA_TAIL.pack(serial & 0xFFFFFFFF, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, minimum))
    return zone_ptr + RR_HEAD.pack(SOA, CLASS_IN, ttl, len(rdata)) + rdata


@dataclass(slots=True)
class _Zone:
    name: bytes  # lowercased wire
    flags: int
    kind: int
    ttl: int
    block: int
    kube: bool  # a zone of the kubernetes block (has an SOA and negative answers)
    forward: bool = True
    negative: tuple[bytes, ...] = ()  # zones_config only: its own zone-miss templates


class Compiler:
    """Compiles ClusterState into snapshot images, caching one fragment per Service.

    `options` is the kubernetes block (None: no kubernetes zones, only
    `zones_config`); `zones_config` holds extra zone table entries, e.g.
    forward-only zones of other server blocks (`image.ZoneSpec` with kind
    ZK_FORWARD and ZF_SLOW_MISS). `synced` (set by the control process; True
    for state files) picks NXDOMAIN or SERVFAIL for zone misses; `generation`
    is bumped before every image is stamped. `reuse_buffer` (the control
    loop sets it) makes every image the compiler's one bytearray, overwritten
    by the next compile: its pages stay faulted in between images.
    """

    def __init__(self, options: KubernetesOptions | None,
                 zones_config: Sequence[ZoneSpec] = ()) -> None:
        self.options = options
        self.builder = RecordBuilder(options) if options else None
        self.synced = True
        self.generation = 0
        self.serial = 0
        self.reuse_buffer = False
        self._buf = bytearray()
        self.zones = self._zone_table(options, zones_config)
        self._kzones = [z for z in self.zones if z.kube]
        self._last_zone: _Zone | None = None
        self._rev_zones = [z.name for z in self._kzones if not z.forward]
        # PTR answer template up to the rdata length: QR AA RA, 1 answer, owner = question
        self._ptr_head = _HEAD_AN[1] + _PTR12 + struct.pack(
            ">HHI", PTR, CLASS_IN, options.ttl if options else 5)
        self._nested = any(a is not b and is_subdomain(a.name, b.name)
                           for a in self._kzones for b in self._kzones)
        self._reset()
        self._prepare_shared()

    # -- zone table ------------------------------------------------------
    @staticmethod
    def _zone_table(opts: KubernetesOptions | None,
                    extra: Sequence[ZoneSpec]) -> list[_Zone]:
        zones: list[_Zone] = []
        if opts is not None:
            fall = [name_wire(f).lower() for f in opts.fallthrough]
            b = RecordBuilder(opts)
            for name in b.forward + b.reverse:
                flags = img.ZF_AUTH
                if any(is_subdomain(name, f) for f in fall):
                    flags |= img.ZF_SLOW_MISS | img.ZF_FALLTHROUGH
                zones.append(_Zone(name, flags, img.ZK_KUBERNETES, opts.ttl, opts.block, True,
                                   name in b.forward))
            for f in fall:
                # a fallthrough zone narrower than a kubernetes zone gets its own entry
                if any(is_subdomain(f, z.name) and f != z.name for z in zones if z.kube):
                    zones.append(_Zone(f, img.ZF_AUTH | img.ZF_SLOW_MISS | img.ZF_FALLTHROUGH,
                                       img.ZK_KUBERNETES, opts.ttl, opts.block, False))
            if opts.pods == "insecure":
                # misses below pod.ZONE go to podsynth.synthesize (a-b-c-d.ns.pod.ZONE)
                for name in b.forward:
                    zones.append(_Zone(b"\x03pod" + name, img.ZF_SLOW_MISS, img.ZK_POD,
                                       opts.ttl, opts.block, False))
        taken = {z.name for z in zones}
        for spec in extra:
            if spec.name.lower() in taken:
                continue
            taken.add(spec.name.lower())
            zones.append(_Zone(spec.name.lower(), spec.flags, spec.kind, spec.ttl, spec.block,
                               False, negative=tuple(spec.negative)))
        zones.sort(key=lambda z: len(z.name), reverse=True)  # longest first (image §2)
        return zones

    def _zone_of(self, key: bytes) -> _Zone | None:
        last = self._last_zone
        if last is not None and not self._nested and key.endswith(last.name):
            return last  # zones do not nest: the zone of the previous name still fits
        for z in self._kzones:
            if key.endswith(z.name):
                self._last_zone = z
                return z
        return None

    # -- caches ----------------------------------------------------------
    def _reset(self) -> None:
        self._frags: dict[tuple, Fragment] = {}
        self._order_dirty = True  # _keys/_list not built yet (full() sorts once)
        self._keys: list[tuple] = []
        self._list: list[Fragment] = []  # the fragments in _keys order
        self._nent = 0
        self._svc_ptrs: dict[Key, list[PtrRec]] = {}
        # address -> the Services' PTR contributions (packed, target, from a ClusterIP).
        # Nearly every address has exactly one: that is stored as one (Service,
        # record) pair, a dict {Service: [records]} only when there are more
        # (a third of the compiler's memory at 10k Services went to one dict
        # and one list per address).
        self._ptr: dict[bytes, Claim] = {}
        self._bucket_ips: dict[int, set[bytes]] = {}
        self._deps: dict[Key, set[Key]] = {}  # target service -> ExternalNames chasing it
        self._svc_deps: dict[Key, set[Key]] = {}
        self._serving: set[Key] = set()
        self._dirty_buckets: set[int] = set()
        self._apex_dirty = True
        self._bulk = False  # full(): buckets are filled once at the end

    def _set_frag(self, key: tuple, frag: Fragment) -> bool:
        """Store a fragment (EMPTY removes it); True when the image bytes change.

        `_keys`/`_list` stay sorted by key (bisect), so a Service added or
        removed costs no re-sort; only `full` sorts, once.
        """
        old = self._frags.get(key)
        if frag is EMPTY or not frag.ents and not frag.blob:
            if old is None:
                return False
            del self._frags[key]
            self._nent -= old.count
            if not self._order_dirty:
                i = bisect.bisect_left(self._keys, key)
                del self._keys[i]
                del self._list[i]
            return True
        self._frags[key] = frag
        self._nent += frag.count - (old.count if old is not None else 0)
        if not self._order_dirty:
            i = bisect.bisect_left(self._keys, key)
            if old is None:
                self._keys.insert(i, key)
                self._list.insert(i, frag)
            else:
                self._list[i] = frag
        return old != frag

    def _names_fragment(self, names: NameSet) -> Fragment:
        """One fragment from a NameSet: FragmentWriter's layout, inlined (the hot loop)."""
        parts: list[bytes] = []
        ents = array("I")
        relocs = array("I")
        app, ext, rel = parts.append, ents.extend, relocs.append
        crc32, pack, qt2 = zlib.crc32, _REC1.pack, _QT2
        shared, zone_of = self._shared_rel, self._zone_of
        rotate = self.options is not None and self.options.loadbalance
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
                    rec, rs = _variants_record(size, [exact_template(key, a)
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
            ttl = self.options.ttl if self.options else 5
            heads = {4: _HEAD_AN[1] + _PTR12 + RR_HEAD.pack(1, CLASS_IN, ttl, 4),
                     16: _HEAD_AN[1] + _PTR12 + RR_HEAD.pack(28, CLASS_IN, ttl, 16)}
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

    # -- compile units ---------------------------------------------------
    def _compile_service(self, state: ClusterState, key: Key) -> bool:
        assert self.builder is not None
        recs = self.builder.service(state, *key)
        changed = self._set_frag(("s", *key), self._names_fragment(recs.names))
        # PTR contributions
        old = self._svc_ptrs.get(key, [])
        if old != recs.ptrs and (self._rev_zones or old):  # no reverse zone: no PTR to track
            changed = True
            ptr = self._ptr
            for packed, _t, _c in old:
                claims = ptr.get(packed)
                if claims is None:
                    continue
                if type(claims) is tuple:
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
            bulk = self._bulk
            for rec in recs.ptrs:
                packed = rec[0]
                claims = ptr.get(packed)
                if claims is None:
                    ptr[packed] = (key, rec)
                elif type(claims) is tuple:
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
            if recs.ptrs:
                self._svc_ptrs[key] = recs.ptrs
            else:
                self._svc_ptrs.pop(key, None)
        # ExternalName dependencies
        old_deps = self._svc_deps.get(key, set())
        if old_deps != recs.depends_on:
            for d in old_deps - recs.depends_on:
                self._deps.get(d, set()).discard(key)
            for d in recs.depends_on - old_deps:
                self._deps.setdefault(d, set()).add(key)
            self._svc_deps[key] = set(recs.depends_on)
        if recs.serves_local != (key in self._serving):
            (self._serving.add if recs.serves_local else self._serving.discard)(key)
            self._apex_dirty = True
        elif key in self._serving:
            self._apex_dirty = True
        return changed

    def _touch(self, packed: bytes) -> None:
        b = zlib.crc32(packed) & (PTR_BUCKETS - 1)
        self._dirty_buckets.add(b)
        ips = self._bucket_ips.setdefault(b, set())
        if packed in self._ptr:
            ips.add(packed)
        else:
            ips.discard(packed)

    def _compile_bucket(self, b: int) -> bool:
        """PTRs of one bucket of addresses (reverse.go serviceRecordForIP).

        A bucket holds ~1/4096 of the addresses (~30 at 10k Services), so its
        records are rebuilt whole when a Service touches one of them; caching
        them per address cost ~35 MB at that size for no measurable gain.
        """
        parts: list[bytes] = []
        ents = array("I")
        relocs = array("I")
        app, ext, rel, pack = parts.append, ents.extend, relocs.append, _REC1.pack
        record = self._ptr_record
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
        frag = Fragment(b"".join(parts), ents.tobytes(), relocs.tobytes()) if parts else EMPTY
        return self._set_frag(("p", b), frag)

    def _ptr_record(self, packed: bytes) -> tuple[bytes, bytes, int] | None:
        """(key, template, slot hash) of one address's PTR answer; None if not served."""
        claims = self._ptr.get(packed)
        if not claims:
            return None
        key = reverse_wire(packed)
        for z in self._rev_zones:
            if key.endswith(z):
                break
        else:
            return None  # outside the reverse zones this block serves
        if type(claims) is tuple:
            targets = [claims[1]]
        elif len(claims) == 1:
            [targets] = claims.values()
        else:
            targets = [t for k in sorted(claims) for t in claims[k]]
        if len(targets) == 1:  # the common case, short
            t = targets[0][1]
            if len(t) > 255:
                return None
            tmpl = self._ptr_head + len(t).to_bytes(2, "big") + t
            return key, tmpl, zlib.crc32(_QT2[PTR], zlib.crc32(key)) | 1
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
        ttl = self.options.ttl if self.options else 5
        if len(names) == 1:
            t = names[0]
            tmpl = _HEAD_AN[1] + _PTR12 + RR_HEAD.pack(PTR, CLASS_IN, ttl, len(t)) + t
        else:
            tmpl = exact_template(key, (tuple((None, PTR, ttl, b"", t) for t in names), ()))
        return key, tmpl, zlib.crc32(_QT2[PTR], zlib.crc32(key)) | 1

    def _compile_namespace(self, state: ClusterState, ns: str) -> bool:
        assert self.builder is not None
        changed = self._set_frag(("n", ns), self._names_fragment(self.builder.namespace(state, ns)))
        pods = self._names_fragment(self.builder.verified_pods(state, ns))
        return self._set_frag(("q", ns), pods) or changed

    def _compile_apex(self, state: ClusterState) -> bool:
        assert self.builder is not None
        self._apex_dirty = False
        serving = sorted(self._serving)
        changed = False
        for z in self._kzones:
            names = self.builder.apex(state, z.name, serving, z.forward)
            changed |= self._set_frag(("a", z.name), self._names_fragment(names))
        return changed

    # -- public ----------------------------------------------------------
    def full(self, state: ClusterState, *, now: float | None = None) -> Image:
        """Compile every fragment from scratch and stamp a new image."""
        with _gc_paused():
            return self._full(state, now)

    def _full(self, state: ClusterState, now: float | None) -> Image:
        self._reset()
        # a relist's compile is the control process's peak: hand the last image
        # back first (the buffer is faulted in again once, ~2 ms)
        self._buf = bytearray()
        self._prepare_shared()
        if self.builder is not None:
            keys = set(state.services) | set(state.slice_groups())
            self._bulk = True
            for key in sorted(keys):
                self._compile_service(state, key)
            self._bulk = False
            mask = PTR_BUCKETS - 1
            for packed in self._ptr:
                b = zlib.crc32(packed) & mask
                got = self._bucket_ips.get(b)
                if got is None:
                    self._bucket_ips[b] = {packed}
                    self._dirty_buckets.add(b)
                else:
                    got.add(packed)
            for ns in sorted(state.all_namespaces()):
                self._compile_namespace(state, ns)
            for b in sorted(self._dirty_buckets):
                self._compile_bucket(b)
            self._compile_apex(state)
        self._dirty_buckets = set()
        self.serial = int(time.time() if now is None else now)
        return self.assemble()

    def update(self, state: ClusterState, affected: Affected, *,
               now: float | None = None) -> Image:
        """Recompile what `affected` names (and what depends on it); stamp a new image."""
        with _gc_paused():
            return self._update(state, affected, now)

    def _update(self, state: ClusterState, affected: Affected, now: float | None) -> Image:
        if not self._frags and not self._svc_ptrs:
            return self._full(state, now)
        if self.builder is None:
            return self.assemble()
        self._dirty_buckets = set()
        changed = False
        keys = set(affected.services)
        namespaces = set(affected.namespaces)
        for ns in namespaces:
            keys.update((ns, n) for n in state.services_in(ns))
        if self.options and self.options.pods == "verified":
            namespaces |= affected.pod_namespaces
        todo = list(keys)
        while todo:  # ExternalNames whose chased answers embed a changed Service
            for d in self._deps.get(todo.pop(), ()):
                if d not in keys:
                    keys.add(d)
                    todo.append(d)
        for key in sorted(keys):
            changed |= self._compile_service(state, key)
        for ns in sorted(namespaces):
            changed |= self._compile_namespace(state, ns)
        for b in sorted(self._dirty_buckets):
            changed |= self._compile_bucket(b)
        self._dirty_buckets = set()
        if self._apex_dirty:
            changed |= self._compile_apex(state)
        if changed:
            self.serial = int(time.time() if now is None else now)
        return self.assemble()

    # -- assembly --------------------------------------------------------
    def _prepare_shared(self) -> None:
        """Fixed layout of the shared NODATA region: zone by zone, name length by length."""
        self._shared_rel: dict[bytes, dict[int, int]] = {}
        off = 0
        size = 0
        for z in self._kzones:
            # answer record (12) + template head (10) + SOA RR with 2-octet pointers
            size = 12 + 10 + len(soa_rr(_PTR12, 0, 0, 0))
            self._shared_rel[z.name] = {n: off + (n - len(z.name)) * size
                                        for n in range(len(z.name), 256)}
            off += (256 - len(z.name)) * size
        self._shared_size = size

    def _pre(self) -> tuple[Fragment, int, dict[bytes, tuple[int, int]]]:
        """The region rebuilt every time: zone names, zone misses, shared NODATA, apex SOA.

        Returns (fragment, offset of the shared region in it, zone name ->
        (name offset, negative answer offset) in it).
        """
        opts = self.options
        soa_ttl = opts.soa_ttl if opts else 0
        minimum = opts.ttl if opts else 0
        w = FragmentWriter()
        where: dict[bytes, tuple[int, int]] = {}
        miss_rcode = Rcode.NXDOMAIN if self.synced else Rcode.SERVFAIL
        for z in self.zones:
            name_off = w.key(z.name)
            neg = 0
            if z.kube:
                body = soa_rr(_PTR12, soa_ttl, self.serial, minimum)
                t = img.make_template(FLAGS_ANSWER | miss_rcode, 0, 1, 0, body, _SOA_RELOCS)
                neg = w.answer(t)
            elif z.negative:  # a zones_config entry that brought its own
                neg = w.answer_variants(z.negative)
            where[z.name] = (name_off, neg)
        shared_off = w.size
        nodata_head = img.TEMPLATE_HEAD.pack(FLAGS_ANSWER, 0, 1, 0, 0)
        for z in self._kzones:
            # soa_rr(p, ...) unrolled: the pointer is the only part that varies
            tail = SOA_TAIL.pack(self.serial & 0xFFFFFFFF, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE,
                                 minimum)
            rr_head = RR_HEAD.pack(SOA, CLASS_IN, soa_ttl,
                                   len(_NS_DNS) + len(_HOSTMASTER) + 4 + len(tail))
            for n in range(len(z.name), 256):
                p = _ptr(12 + n - len(z.name))
                w.answer(b"".join((nodata_head, p, rr_head, _NS_DNS, p, _HOSTMASTER, p, tail)))
            assert w.size - shared_off == self._shared_rel[z.name][255] + self._shared_size
        for z in self._kzones:
            body = soa_rr(_PTR12, soa_ttl, self.serial, minimum)
            t = img.make_template(FLAGS_ANSWER, 1, 0, 0, body)
            w.entry(z.name, where[z.name][0], SOA, w.answer(t))
        return w.finish(), shared_off, where

    def assemble(self) -> Image:
        """Stamp a new image (generation + 1) from the cached fragments."""
        if self._order_dirty:
            self._keys = sorted(self._frags)
            self._list = [self._frags[k] for k in self._keys]
            self._order_dirty = False
        pre, shared_off, where = self._pre()
        n = pre.count + self._nent
        nslots = slot_count(n)
        slots_off = img.HEADER.size
        zones_off = slots_off + nslots * img.SLOT.size
        base = zones_off + len(self.zones) * img.ZONE.size
        zone_table = b"".join(
            img.ZONE.pack(base + where[z.name][0], len(z.name), z.flags,
                          base + where[z.name][1] if where[z.name][1] else 0,
                          z.ttl, z.block, z.kind)
            for z in self.zones)
        self.generation += 1
        flags = img.IMG_SYNCED if self.synced else 0
        header = img.HEADER.pack(img.MAGIC, img.FORMAT_VERSION, flags, self.generation, 0,
                                 nslots, slots_off, len(self.zones), zones_off, self.serial)
        frags = [pre, *self._list]
        if not self.reuse_buffer:
            return assemble(header, zone_table, nslots, frags, base + shared_off)
        try:
            return assemble(header, zone_table, nslots, frags, base + shared_off, self._buf)
        except BufferError:  # a view of the last image is still alive: let it have that one
            self._buf = bytearray()
            return assemble(header, zone_table, nslots, frags, base + shared_off, self._buf)

    def stats(self) -> dict[str, int]:
        return {"fragments": len(self._frags),
                "entries": sum(f.count for f in self._frags.values()),
                "ptr_addresses": len(self._ptr)}
