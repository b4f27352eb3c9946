"""Records -> the snapshot image, incrementally, one fragment per Service.

`Compiler.full(state)` compiles everything; `Compiler.update(state, affected)`
recompiles only the fragments an event batch touched (`ClusterState.apply`
says which) and re-assembles the image from cached fragments with bulk
operations (`fragments.assemble`: blob joins plus a C index build). Both give
the same bytes for the same state, generation and serial.

Answers are written as templates (`fastdns/zone/templates.py`), reverse
records through `ptrs.PtrTable`. Compiled plugins other than kubernetes add
their entries and zones through the `ImageContributor` interface
(`fastdns/zone/contributor.py`): the compiler calls them, they do not
extend it. Everything that carries the SOA (serial!) lives in a small
region rebuilt at each assembly: zone-miss answers (SOA owner and rdata
zone suffix relocated onto the question), the apex SOA, and one NODATA
answer per (zone, name length) that every name of that zone and length
shares -- so a serial bump never invalidates the fragment cache.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import time
from array import array
from collections.abc import Callable, Hashable, Iterator, Sequence

from fastdns.ipc import image as img
from fastdns.names import is_subdomain
from fastdns.zone.contributor import COMPILER_TAGS, ImageContributor
from fastdns.zone.fragments import (
    EMPTY,
    Buffer,
    Fragment,
    assemble,
    place,
    slot_count,
)
from fastdns.zone.imagebuilder import ZoneSpec
from fastdns.zone.namesfrag import names_fragment
from fastdns.zone.options import KubernetesOptions
from fastdns.zone.patch import Layout, patch
from fastdns.zone.preamble import preamble, shared_layout
from fastdns.zone.ptrs import Key, PtrTable
from fastdns.zone.records import (
    NameSet,
    RecordBuilder,
)
from fastdns.zone.state import Affected, ClusterState
from fastdns.zone.zonetable import ZoneEntry, zone_table

Image = Buffer  # bytearray: reuse_buffer; memoryview: out_buffer


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
    `out_buffer` (the control process sets it to `Publisher.buffer`) is
    where an image is assembled instead: a callable giving a writable buffer
    of the image's size, the next shared-memory segment itself, so that no
    copy of the image lives on the control process's heap (issue 14: at 10k
    Services and 150k endpoints that copy was 57 MB of a 170Mi pod).
    `contributors` are the compiled plugins' shares of the image
    (`contributor.ImageContributor`): their zones come first among the
    extra entries, their fragments survive `full`, `refresh` re-reads them.
    """

    def __init__(self, options: KubernetesOptions | None,
                 zones_config: Sequence[ZoneSpec] = (),
                 contributors: Sequence[ImageContributor] = ()) -> None:
        tags = [c.tag for c in contributors]
        if len(set(tags)) != len(tags) or COMPILER_TAGS.intersection(tags):
            raise ValueError(f"image contributors need tags of their own, not {tags}")
        self.contributors = list(contributors)
        self.options = options
        self.builder = RecordBuilder(options) if options else None
        self.synced = True
        self.generation = 0
        self.serial = 0
        self.reuse_buffer = False
        self.out_buffer: Callable[[int], Buffer] | None = None
        self._buf = bytearray()
        # the published image the placed fragments lie in (`placed`) and its
        # layout, and the last assembly in place: (generation, where each
        # fragment went or the indices of the fresh ones and where they went,
        # its layout), adopted by `placed` once it is published
        self._placed_in: Buffer | None = None
        self._lay: Layout | None = None
        self._pending: tuple[int, array | list[tuple[int, int]], Layout] | None = None
        extra = [z for c in self.contributors for z in c.zones()]
        self.zones = zone_table(options, [*extra, *zones_config])
        self._kzones = [z for z in self.zones if z.kube]
        self._last_zone: ZoneEntry | None = None
        self._rev_zones = [z.name for z in self._kzones if not z.forward]
        self._nested = any(a is not b and is_subdomain(a.name, b.name)
                           for a in self._kzones for b in self._kzones)
        self._reset()
        self._prepare_shared()

    # -- zone table ------------------------------------------------------
    def _zone_of(self, key: bytes) -> ZoneEntry | None:
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
        # where each placed fragment of _list lies in the image in force (-1:
        # not placed), and the keys of those not placed yet (Compiler.placed)
        self._at = array("q")
        self._fresh: set[tuple] = set()
        # placed fragments removed or replaced since the image in force:
        # (offset, length, entries), for the next patch to drop (zone/patch.py)
        self._dead: list[tuple[int, int, bytes]] = []
        self._nent = 0
        self._ptrs = PtrTable(self._rev_zones, self.options.ttl if self.options else 5)
        self._deps: dict[Key, set[Key]] = {}  # target service -> ExternalNames chasing it
        self._svc_deps: dict[Key, set[Key]] = {}
        self._serving: set[Key] = set()
        self._apex_dirty = True
        self._bulk = False  # full(): buckets are filled once at the end
        # tag -> the keys of that contributor's fragments stored here
        self._contributed: dict[str, set[Hashable]] = {}
        for c in self.contributors:
            self._put_contribution(c)

    def _put_contribution(self, c: ImageContributor) -> None:
        """Store contributor `c`'s fragments as they are now, dropping the ones it no longer has."""
        frags = c.fragments()
        for k in self._contributed.get(c.tag, set()) - frags.keys():
            self._set_frag((c.tag, k), EMPTY)
        for k, frag in frags.items():
            self._set_frag((c.tag, k), frag)
        self._contributed[c.tag] = set(frags)

    def refresh(self) -> bool:
        """Have every contributor re-read its sources; True when an entry changed
        (the image is then re-assembled: `assemble`)."""
        changed = False
        for c in self.contributors:
            if c.reload():
                changed = True
                self._put_contribution(c)
        return changed

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
            self._fresh.discard(key)
            if not self._order_dirty:
                i = bisect.bisect_left(self._keys, key)
                if old.placed:  # its slots go at the next patch (zone/patch.py)
                    self._dead.append((self._at[i], old.length, old.ents))
                del self._keys[i]
                del self._list[i]
                del self._at[i]
            return True
        if old is not None and old.placed and old.same(frag):
            return False  # keep it placed: its bytes are in the image in force
        self._frags[key] = frag
        self._fresh.add(key)
        self._nent += frag.count - (old.count if old is not None else 0)
        if not self._order_dirty:
            i = bisect.bisect_left(self._keys, key)
            if old is None:
                self._keys.insert(i, key)
                self._list.insert(i, frag)
                self._at.insert(i, -1)
            else:
                if old.placed:
                    self._dead.append((self._at[i], old.length, old.ents))
                self._list[i] = frag
                self._at[i] = -1
        return old is None or not old.same(frag)

    def _names_fragment(self, names: NameSet) -> Fragment:
        rotate = self.options is not None and self.options.loadbalance
        ttl = self.options.ttl if self.options else 5
        return names_fragment(names, self._shared_rel, self._zone_of, rotate, ttl)

    # -- compile units ---------------------------------------------------
    def _compile_service(self, state: ClusterState, key: Key) -> bool:
        assert self.builder is not None
        recs = self.builder.service(state, *key)
        changed = self._set_frag(("s", *key), self._names_fragment(recs.names))
        if self._ptrs.set_service(key, recs.ptrs, self._bulk):
            changed = True
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

    def _compile_bucket(self, b: int) -> bool:
        return self._set_frag(("p", b), self._ptrs.fragment(b))

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
            self._ptrs.index_all()
            for ns in sorted(state.all_namespaces()):
                self._compile_namespace(state, ns)
            for b in self._ptrs.take_dirty():
                self._compile_bucket(b)
            self._compile_apex(state)
        self.serial = int(time.time() if now is None else now)
        return self.assemble()

    def update(self, state: ClusterState, affected: Affected, *,
               now: float | None = None) -> Image:
        """Recompile what `affected` names (and what depends on it); stamp a new image."""
        with _gc_paused():
            return self._update(state, affected, now)

    def _update(self, state: ClusterState, affected: Affected, now: float | None) -> Image:
        if not self._frags and not self._ptrs.by_service:
            return self._full(state, now)
        if self.builder is None:
            return self.assemble()
        self._ptrs.take_dirty()
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
        for b in self._ptrs.take_dirty():
            changed |= self._compile_bucket(b)
        if self._apex_dirty:
            changed |= self._compile_apex(state)
        if changed:
            self.serial = int(time.time() if now is None else now)
        return self.assemble()

    # -- assembly --------------------------------------------------------
    def _prepare_shared(self) -> None:
        """Fixed layout of the shared NODATA region (zone/preamble.py)."""
        self._shared_rel, self._shared_size = shared_layout(self._kzones)

    def _pre(self) -> tuple[Fragment, int, dict[bytes, tuple[int, int]]]:
        """The region rebuilt every time (zone/preamble.py)."""
        return preamble(self.zones, self._kzones, self.options, self.serial, self.synced,
                        self._shared_rel, self._shared_size)

    def assemble(self) -> Image:
        """Stamp a new image (generation + 1) from the cached fragments."""
        fresh_start = self._order_dirty  # after a reset nothing is placed or recorded dead
        if self._order_dirty:
            self._keys = sorted(self._frags)
            self._list = [self._frags[k] for k in self._keys]
            # only after a reset (full): nothing is placed then
            self._at = array("q", [-1]) * len(self._list)
            self._order_dirty = False
        pre, shared_off, where = self._pre()
        if self.out_buffer is not None and self._lay is not None and not fresh_start:
            patched = self._patch(pre, shared_off, where, self._lay)
            if patched is not None:
                return patched
        n = pre.count + self._nent
        nslots = slot_count(n)
        slots_off = img.HEADER.size
        zones_off = slots_off + nslots * img.SLOT.size
        base = zones_off + len(self.zones) * img.ZONE.size
        zone_table = self._zone_table(base, where)
        self.generation += 1
        flags = img.IMG_SYNCED if self.synced else 0
        header = img.HEADER.pack(img.MAGIC, img.FORMAT_VERSION, flags, self.generation, 0,
                                 nslots, slots_off, len(self.zones), zones_off, self.serial)
        frags = [pre, *self._list]
        if self.out_buffer is not None:
            at = array("q", [-1])
            at.extend(self._at)  # in: where placed ones lie; out: where all now do
            image = assemble(header, zone_table, nslots, frags, base + shared_off,
                             into=self.out_buffer, prev=self._placed_in, at=at)
            lay = Layout(nslots, zones_off, base, len(pre.blob), pre.ents, len(image), n, 0, 0)
            self._pending = (self.generation, at, lay)
            return image
        prev = self._placed_in
        at = array("q", [-1])
        at.extend(self._at)
        if not self.reuse_buffer:
            return assemble(header, zone_table, nslots, frags, base + shared_off,
                            prev=prev, at=at)
        try:
            return assemble(header, zone_table, nslots, frags, base + shared_off, self._buf,
                            prev=prev, at=at)
        except BufferError:  # a view of the last image is still alive: let it have that one
            self._buf = bytearray()
            return assemble(header, zone_table, nslots, frags, base + shared_off, self._buf,
                            prev=prev, at=at)

    def _zone_table(self, base: int, where: dict[bytes, tuple[int, int]]) -> bytes:
        return b"".join(
            img.ZONE.pack(base + where[z.name][0], len(z.name), z.flags,
                          base + where[z.name][1] if where[z.name][1] else 0,
                          z.ttl, z.block, z.kind)
            for z in self.zones)

    def _patch(self, pre: Fragment, shared_off: int, where: dict[bytes, tuple[int, int]],
               lay: Layout) -> Image | None:
        """The next image as a patch of the one in force (zone/patch.py), or None."""
        keys, frags = self._keys, self._list
        idx = sorted(i for i in (bisect.bisect_left(keys, k) for k in self._fresh)
                     if not frags[i].placed and frags[i].blob)
        gen = self.generation + 1
        flags = img.IMG_SYNCED if self.synced else 0
        header = img.HEADER.pack(img.MAGIC, img.FORMAT_VERSION, flags, gen, 0, lay.nslots,
                                 img.HEADER.size, len(self.zones), lay.zones_off, self.serial)
        assert self._placed_in is not None and self.out_buffer is not None
        got = patch(self._placed_in, lay, self.out_buffer, header,
                    self._zone_table(lay.pre_at, where), pre, lay.pre_at + shared_off,
                    [frags[i] for i in idx], self._dead)
        if got is None:
            return None
        image, went, new = got
        self.generation = gen
        self._pending = (gen, list(zip(idx, went, strict=True)), new)
        return image

    def placed(self, image: Buffer) -> None:
        """``image``, the last one assembled, is published and stays mapped: let
        every cached fragment's blob be its bytes there instead of a copy on
        the heap (`Fragment.place`). The next assembly copies them from it.

        At 10k Services and 150k endpoints the blobs are 40 MB, the size of
        the image less its slot table, and held twice before (issue 14).
        Called by the control loop after the publish of an image assembled
        into its segment (`out_buffer`); an image not published (unchanged,
        or its publish failed) is not passed, so the fragments stay where
        they are, in the image in force.
        """
        pending, self._pending = self._pending, None
        if pending is None or pending[0] != self.generation:
            return  # not the last assembly: leave every fragment as it is
        _gen, went, self._lay = pending
        if isinstance(went, array):
            self._at = went[1:]  # the assembler wrote where each fragment went
        else:
            for i, pos in went:  # a patch: only the fresh ones moved, to the end
                self._at[i] = pos
        keys, frags, by_key = self._keys, self._list, self._frags
        for key in self._fresh:  # only those compiled since: a few per change
            i = bisect.bisect_left(keys, key)
            f = frags[i]
            if f[0]:
                frags[i] = by_key[key] = place(f)
        self._fresh.clear()
        self._dead.clear()
        self._placed_in = image

    def stats(self) -> dict[str, int]:
        return {"fragments": len(self._frags),
                "entries": sum(f.count for f in self._frags.values()),
                "ptr_addresses": len(self._ptrs.claims)}
