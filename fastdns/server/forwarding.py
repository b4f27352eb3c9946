"""A worker's forwarders and caches: one resolver per Corefile server block.

``BlockRouter(config)`` builds, per server block that has ``forward``, a
``fastdns.forward.resolver.ForwardingResolver`` (its ``cache`` in front),
lazily and once per Corefile block (blocks split per port share one plugin
dict, so they share the resolver, as CoreDNS shares the plugin chain).
``route(block_index, qname, port)`` picks the block the way CoreDNS's
``ServeDNS`` does: the image zone's block when the fast path named one,
else the longest zone suffix among the blocks on the port.

The fast path's C cache table holds one key space for the whole worker, so
it is fed only when every listener serves the same blocks (the kubeadm and
NodeLocal DNSCache Corefiles both do): then a key can only ever belong to
one block's cache. Otherwise every cache hit is served by Python (still
correct, slower); ``c_cache`` says which.
"""

from __future__ import annotations

import logging
from typing import Any

from fastdns.forward.cache import DENIAL, SUCCESS
from fastdns.forward.resolver import ForwardingResolver, from_plugins
from fastdns.server import counters as ctr

log = logging.getLogger(__name__)


class BlockRouter:
    def __init__(self, config: Any) -> None:
        self.config = config
        self._by_plugins: dict[int, ForwardingResolver | None] = {}
        self._resolvers: list[ForwardingResolver] = []
        self.c_cache = False

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

    def caches(self) -> list:
        return [r.cache for r in self._resolvers if r.cache is not None]

    def unambiguous(self) -> bool:
        """Does every listener serve the same blocks (so a key has one owner)?"""
        groups = self.config.group_by_listen()
        shapes = {tuple(sorted(id(b.plugins) for b in blocks)) for blocks in groups.values()}
        return len(shapes) <= 1

    def attach_mirror(self, table: Any) -> None:
        """Feed the fast path's C table (``_udp.CacheTable``) from every cache."""
        self.build_all()
        caches = self.caches()
        if not caches or not self.unambiguous():
            if caches:
                log.info("listeners serve different blocks: cache hits are served by Python")
            return
        table.configure(sum(c.config.success_capacity + c.config.denial_capacity
                            for c in caches))
        for c in caches:
            c.mirror = table
        self.c_cache = True

    def export(self, counters: ctr.Counters) -> None:
        """Copy the Python caches' and forwarders' counters into the shm block."""
        w = counters.w
        caches = self.caches()
        w[ctr.W_CACHE_REQUESTS] = sum(c.stats.requests for c in caches)
        w[ctr.W_CACHE_MISSES] = sum(c.stats.misses for c in caches)
        w[ctr.W_CACHE_HITS_SUCCESS] = sum(c.stats.hits[SUCCESS] for c in caches)
        w[ctr.W_CACHE_HITS_DENIAL] = sum(c.stats.hits[DENIAL] for c in caches)
        w[ctr.W_CACHE_PREFETCH] = sum(c.stats.prefetch for c in caches)
        w[ctr.W_CACHE_SERVED_STALE] = sum(c.stats.served_stale for c in caches)
        w[ctr.W_CACHE_ENTRIES_SUCCESS] = sum(c.entries(SUCCESS) for c in caches)
        w[ctr.W_CACHE_ENTRIES_DENIAL] = sum(c.entries(DENIAL) for c in caches)
        w[ctr.W_CACHE_EVICTIONS_SUCCESS] = sum(c.evictions(SUCCESS) for c in caches)
        w[ctr.W_CACHE_EVICTIONS_DENIAL] = sum(c.evictions(DENIAL) for c in caches)
        w[ctr.W_FWD_MAX_CONCURRENT_REJECTS] = sum(
            r.forwarder.max_concurrent_rejects for r in self._resolvers)

    def close(self) -> None:
        for c in self.caches():
            c.mirror = None
        for r in self._resolvers:
            r.close()
        self._resolvers.clear()
        self._by_plugins.clear()
