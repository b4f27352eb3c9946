"""A worker's forwarders and caches: one resolver per Corefile server block.

``BlockRouter(config)`` builds, per server block that has ``forward``, a
``fastdns.forward.resolver.ForwardingResolver`` (its ``cache`` in front),
lazily and once per Corefile block (blocks split per port share one plugin
dict, so they share the resolver, as CoreDNS shares the plugin chain).
``route(block_index, qname, port)`` picks the block the way CoreDNS's
``ServeDNS`` does: the image zone's block when the fast path named one,
else the longest zone suffix among the blocks on the port.

The response cache is one shared table for every worker of the host
(``attach_mirror``: ipc/cachetable.py's segment under server/_udp_cache.pxi's
``CacheTable``), each block's cache a numbered store in it. The table has one
key space, so it is used only when every listener serves the same blocks
(the kubeadm and NodeLocal DNSCache Corefiles both do): then a key can only
ever belong to one block's cache. Otherwise each worker keeps its own
caches and every hit is served by Python (still correct, slower);
``c_cache`` says which. The shared counts (entries, evictions) are every
worker's, so only worker 0 exports them.

``export`` also writes the per-upstream forward region of the counters
block (``layout.W_FWD``..): slot k = the k-th distinct ``to`` of the
Corefile (``counters.upstream_table``), summed over every forwarder that
sends to it. Reload rule: a new router (a reloaded Corefile, or a respawned
worker) whose slot table hashes like the block's ``W_FWD_TABLE`` keeps the
words as its base and adds its own counts (the counters stay monotonic and
keyed by position is safe: same table, same positions); with another table
it zeroes the region first and then stores the new hash, so no count is
ever read under the wrong ``to``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastdns.forward.cache import DENIAL, SUCCESS
from fastdns.forward.resolver import ForwardingResolver, from_plugins
from fastdns.ipc import cachetable, layout, tables
from fastdns.ipc import counters as ctr
from fastdns.names import forward_rcode_text

log = logging.getLogger(__name__)

# The forwarder's rcode label -> its index in a slot's duration histograms.
_RCODE_INDEX = {forward_rcode_text(i): i for i in range(layout.FWD_RCODES)}
_SLOTS = layout.W_FWD_SLOTS - layout.W_FWD  # region-relative offset of slot 0
_CONN_UDP_MISS = layout.FS_CONN + 1
_CONN_TCP_HIT = layout.FS_CONN + 2
_CONN_TCP_MISS = layout.FS_CONN + 3


class BlockRouter:
    def __init__(self, config: Any) -> None:
        self.config = config
        self._by_plugins: dict[int, ForwardingResolver | None] = {}
        self._resolvers: list[ForwardingResolver] = []
        self.c_cache = False
        self.segment: Any = None  # the shared table's mapping (kept open while in use)
        self._export_shared = True
        self.table = tables.upstream_table(tables.config_upstreams(config))
        self._slot = {to: _SLOTS + k * layout.FWD_SLOT_WORDS for k, to in enumerate(self.table)}
        self._other = _SLOTS + layout.FWD_MAX_UPSTREAMS * layout.FWD_SLOT_WORDS
        self._fwd_base: list[int] | None = None  # the region when this router took it
        self._cache_base: list[int] | None = None  # the cache rows, likewise
        self._exported_to: ctr.Counters | None = None
        # the fast path's C forwarder (server/cforward.py): its counts add to ours
        self.c_forward: Any = None

    def resolver_for(self, block: Any) -> ForwardingResolver | None:
        key = id(block.plugins)
        if key not in self._by_plugins:
            r = from_plugins(block.plugins)
            self._by_plugins[key] = r
            if r is not None:
                self._resolvers.append(r)
        return self._by_plugins[key]

    def build_all(self) -> None:
        """Create every resolver now (so the C table can be sized and fed)."""
        for b in self.config.servers:
            self.resolver_for(b)

    def route(self, block_index: int | None, qname: str, port: int) -> ForwardingResolver | None:
        servers = self.config.servers
        if block_index is not None and 0 <= block_index < len(servers):
            return self.resolver_for(servers[block_index])
        sel = self.config.select(port, qname) if port else None
        if sel is None and len({b.port for b in servers}) == 1:
            sel = self.config.select(servers[0].port, qname)
        return self.resolver_for(sel[0]) if sel is not None else None

    def slot_of(self, to: str) -> int:
        """The region-relative word where ``to``'s forward slot starts."""
        return self._slot.get(to, self._other)

    def caches(self) -> list:
        """Every cache, in cache-row order (tables.cache_blocks): cache k counts in
        row k and is number k of the shared table."""
        out = []
        for b in tables.cache_blocks(self.config):
            r = self.resolver_for(b)
            if r is not None and r.cache is not None:
                out.append(r.cache)
        return out

    def unambiguous(self) -> bool:
        """Does every listener serve the same blocks (so a key has one owner)?"""
        groups = self.config.group_by_listen()
        shapes = {tuple(sorted(id(b.plugins) for b in blocks)) for blocks in groups.values()}
        return len(shapes) <= 1

    def attach_mirror(self, table: Any, instance: str | None = None, index: int = 0) -> None:
        """Keep every cache in the host's shared table (``_udp.CacheTable``).

        ``instance``: the run's shm token (the segment is
        ``fastdns-<instance>-cache-<tag>``, ipc/cachetable.py); None: a table
        of this process alone (tests). ``index``: this worker's number.
        """
        self.build_all()
        caches = self.caches()
        self._export_shared = index == 0
        if not caches or not self.unambiguous():
            if caches:
                log.info("listeners serve different blocks: cache hits are served by Python")
            return
        shared = caches[:layout.CT_MAX_CACHES]  # any further one keeps its own store
        capacity = sum(c.config.success_capacity + c.config.denial_capacity for c in shared)
        if instance is None:
            table.configure(capacity)
        else:
            nb = cachetable.nbuckets_for(capacity)
            tag = cachetable.tag(nb, [c.config for c in shared])
            name, self.segment, created = cachetable.open_segment(instance, nb, tag)
            table.attach(self.segment)
            if created:
                cachetable.unlink_others(instance, name)
        # each cache's policy in C too: the C forwarder stores its answers (a key
        # has one owner, the block its name routes to, so one key space serves all)
        for i, c in enumerate(shared):
            c.attach(table, i)
            table.set_policy(i, *c.c_policy())
        self.c_cache = True

    def export(self, counters: ctr.Counters) -> None:
        """Copy the Python caches' and forwarders' counters into the shm block."""
        w = counters.w
        caches = self.caches()
        w[layout.W_CACHE_REQUESTS] = sum(c.stats.requests for c in caches)
        w[layout.W_CACHE_MISSES] = sum(c.stats.misses for c in caches)
        w[layout.W_CACHE_HITS_SUCCESS] = sum(c.stats.hits[SUCCESS] for c in caches)
        w[layout.W_CACHE_HITS_DENIAL] = sum(c.stats.hits[DENIAL] for c in caches)
        w[layout.W_CACHE_PREFETCH] = sum(c.stats.prefetch for c in caches)
        w[layout.W_CACHE_SERVED_STALE] = sum(c.stats.served_stale for c in caches)
        shared = self._export_shared
        w[layout.W_CACHE_ENTRIES_SUCCESS] = sum(c.entries(SUCCESS, shared) for c in caches)
        w[layout.W_CACHE_ENTRIES_DENIAL] = sum(c.entries(DENIAL, shared) for c in caches)
        w[layout.W_CACHE_EVICTIONS_SUCCESS] = sum(c.evictions(SUCCESS, shared) for c in caches)
        w[layout.W_CACHE_EVICTIONS_DENIAL] = sum(c.evictions(DENIAL, shared) for c in caches)
        w[layout.W_FWD_MAX_CONCURRENT_REJECTS] = sum(
            r.forwarder.max_concurrent_rejects for r in self._resolvers) + (
            self.c_forward.rejects() if self.c_forward is not None else 0)
        if counters.fwd is not None:
            self._export_forward(counters.fwd)
        if counters.caches is not None:
            self._export_caches(counters.caches, caches)
        self._exported_to = counters

    def _export_caches(self, region: memoryview, caches: list) -> None:
        """Each cache's row (layout.CR_*): its Python counts on top of the base the
        region held when this router took it (the reload rule of the forward
        region, keyed by tables.cache_table); the CR_C_* words are the C
        side's, counted live. Gauges and the shared table's evictions (already
        cumulative over workers and reloads) are written as they are."""
        if self._cache_base is None:
            self._cache_base = _take_region(
                region, tables.cache_hash(tables.cache_table(self.config)))
        base = self._cache_base
        shared = self._export_shared
        for k, c in enumerate(caches[:layout.CACHE_ROWS]):
            o = layout.W_CACHE_ROWS - layout.W_CACHE_TABLE + k * layout.CR_WORDS
            st = c.stats
            for word, n in ((layout.CR_REQUESTS, st.requests), (layout.CR_MISSES, st.misses),
                            (layout.CR_HITS_SUCCESS, st.hits[SUCCESS]),
                            (layout.CR_HITS_DENIAL, st.hits[DENIAL]),
                            (layout.CR_PREFETCH, st.prefetch),
                            (layout.CR_SERVED_STALE, st.served_stale)):
                region[o + word] = base[o + word] + n
            region[o + layout.CR_ENTRIES_SUCCESS] = c.entries(SUCCESS, shared)
            region[o + layout.CR_ENTRIES_DENIAL] = c.entries(DENIAL, shared)
            region[o + layout.CR_EVICTIONS_SUCCESS] = c.evictions(SUCCESS, shared)
            region[o + layout.CR_EVICTIONS_DENIAL] = c.evictions(DENIAL, shared)

    def forward_counts(self) -> dict[int, int]:
        """Region-relative word -> this router's count (summed over its forwarders)."""
        live: dict[int, int] = {}

        def add(word: int, n: int) -> None:
            if n:
                live[word] = live.get(word, 0) + n

        slot, other = self._slot, self._other
        for r in self._resolvers:
            f = r.forwarder
            add(layout.W_FWD_BROKEN - layout.W_FWD, f.healthcheck_broken)
            for (to, rc), h in f.durations.items():
                i = _RCODE_INDEX.get(rc)
                if i is None:  # not a 4-bit header rcode: the forwarder never records one
                    continue
                o = slot.get(to, other) + layout.FS_DURATIONS + i * layout.FWD_HIST
                for j, n in enumerate(h.counts):
                    add(o + j, n)
                add(o + layout.FWD_HIST - 1, int(h.sum * 1e9))
            for up in f.upstreams:
                o = slot.get(up.addr, other)
                add(o + layout.FS_HC_FAILURES, up.healthcheck_failures)
                # CoreDNS proxy.Connect: a cached connection is a hit, a dial a miss
                add(o + _CONN_TCP_HIT, up.tcp_reused)
                add(o + _CONN_TCP_MISS, up.tcp_opened)
            for to, n in f.udp_exchanges.items():
                add(slot.get(to, other) + _CONN_UDP_MISS, n)
        if self.c_forward is not None:
            for word, n in self.c_forward.counted().items():
                add(word, n)
        return live

    def _export_forward(self, fwd: memoryview) -> None:
        if self._fwd_base is None:
            self._fwd_base = _take_region(fwd, tables.table_hash(self.table))
        base = self._fwd_base
        for word, n in self.forward_counts().items():
            fwd[word] = base[word] + n

    def close(self) -> None:
        if self._exported_to is not None:  # what was counted since the last tick
            try:
                self.export(self._exported_to)
            except ValueError:  # the block's views were released first: nothing to keep
                pass
            self._exported_to = None
        for c in self.caches():
            c.detach()
        self.segment = None  # unmapped with the table's last view (the worker detaches it)
        for r in self._resolvers:
            r.close()
        self._resolvers.clear()
        self._by_plugins.clear()


def _take_region(region: memoryview, thash: int) -> list[int]:
    """The base a new router adds its counts to (see the module docstring): the
    region as it is when word 0 already says ``thash`` (the same table), else
    zeroed first and then marked ``thash``."""
    if region[0] == thash:
        return list(region)
    region[0] = 0  # readers ignore the region from here ...
    region[1:] = memoryview(bytes(8 * (len(region) - 1))).cast("Q")
    region[0] = thash  # ... to here
    return [0] * len(region)
