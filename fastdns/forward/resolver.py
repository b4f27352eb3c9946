"""Cache in front of the forwarder: what a worker's slow path calls for forwarded names.

A hit is answered from the cache (the same bytes a later Cython fast path
will produce). A miss goes upstream, and concurrent misses for the same
question share one upstream query: the first creates a task in
``inflight`` and the others await it (CoreDNS gets the same effect from
``singleflight`` in newer versions; without it a popular name expiring
would send one upstream query per client). Each waiter gets the shared
answer with its own ID and question case, and our OPT in place of the
upstream's (``message.reopt``: the upstream's EDNS options, a cookie for
one, answer only the client whose query went upstream), as a cache hit
would.

Forwarder failures (all upstreams timed out: SERVFAIL; ``max_concurrent``:
REFUSED) are answered but not cached, as in CoreDNS, where the plugin's
error return never reaches the cache's response writer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from fastdns.codec import wire
from fastdns.constants import Rcode
from fastdns.forward.cache import FRESH, STALE, ResponseCache
from fastdns.forward.forwarder import Forwarder, ForwardError
from fastdns.forward.message import fit, reopt

log = logging.getLogger(__name__)

MAX_FAILED = 10000  # names remembered as failed for FAILURE_RECHECK, per worker and block


def _retrieve(task: asyncio.Task) -> None:
    """Mark a fetch's exception as seen even if every waiter went away."""
    if not task.cancelled():
        task.exception()


class ForwardingResolver:
    """``forward`` (+ optional ``cache``) of one server block, for one event loop."""

    def __init__(self, forwarder: Forwarder, cache: ResponseCache | None = None, *,
                 clock: Callable[[], float] | None = None) -> None:
        self.forwarder = forwarder
        self.cache = cache
        # only read with a cache; without one the fallback is never called
        self.clock: Callable[[], float] = clock or (
            cache.clock if cache is not None else time.monotonic)
        self.inflight: dict[bytes, asyncio.Task] = {}
        self._background: set[asyncio.Task] = set()
        self.upstream_queries = 0  # fetches started (shared misses count once)
        self.shared = 0  # misses that joined a fetch already in flight
        self._failed: dict[bytes, float] = {}  # key -> when its refresh failed (recheck)

    async def resolve(self, query: bytes, q, tcp: bool = False) -> bytes | None:
        """The answer to send, or None when the forwarder does not take this name."""
        fwd = self.forwarder
        if not fwd.handles(q):
            return None
        cache = self.cache
        if cache is None or not cache.covers(q):
            return await self._forward(query, q, tcp, None)
        now = self.clock()
        entry, state = cache.lookup(q, now)
        if entry is None:  # MISS (FRESH and STALE always come with their entry)
            return await self._forward(query, q, tcp, cache)
        if state == FRESH:
            cache.hit(entry, now)
            if cache.should_prefetch(entry, now) and self._refresh(query, q):
                cache.stats.prefetch += 1
            return cache.render(entry, query, q, now, tcp)
        if state == STALE:
            cfg = cache.config
            if self._rechecking(q, now):
                pass  # a refresh failed lately (FAILURE_RECHECK): stale, no upstream query
            elif cfg.serve_stale_verify:
                # RFC 8767 "verify": ask the upstream first, serve stale only if it fails
                raw = await self._verify(query, q, cfg.serve_stale_verify_timeout)
                if raw is not None:
                    return fit(reopt(raw, query, q), query, q, tcp)
            else:
                self._refresh(query, q)
            cache.stats.served_stale += 1
            return cache.render(entry, query, q, now, tcp, stale=True)
        return await self._forward(query, q, tcp, cache)

    async def _forward(self, query: bytes, q, tcp: bool, cache) -> bytes | None:
        try:
            if cache is None:  # the client's own exchange: passed through as is
                raw = await self.forwarder.exchange(query, q, tcp)
            else:
                raw = await self._fetch(query, q)
        except ForwardError as e:
            return wire.error_response(query, q, e.rcode)
        nxt = self.forwarder.config.next_rcodes
        if nxt and raw[3] & 0xF in nxt:
            return None
        if cache is not None:
            return self.cached_reply(raw, query, q, tcp)
        return fit(raw, query, q, tcp)

    def cached_reply(self, raw: bytes, query: bytes, q, tcp: bool = False) -> bytes:
        """The reply to ``query`` once the upstream answer ``raw`` went through the
        cache (stored or not): as a hit renders the entry, since CoreDNS cache.go
        WriteMsg gives the reply that filled the cache the capped TTL ("avoid
        jarring TTL experience 1799 -> 8"); not stored, the answer with our OPT.
        Also the C forwarder's (server/cforward.py) where C could not render it."""
        cache = self.cache
        if cache is not None:
            now = self.clock()
            peeked = cache.peek(q, now)
            if peeked is not None:
                return cache.render(peeked, query, q, now, tcp)
        return fit(reopt(raw, query, q), query, q, tcp)

    @staticmethod
    def _flight_key(q) -> bytes:
        return ResponseCache.key(q)

    async def _fetch(self, query: bytes, q) -> bytes:
        """The upstream answer for ``q``, shared with concurrent askers; cached on arrival."""
        key = self._flight_key(q)
        task = self.inflight.get(key)
        if task is None:
            self.upstream_queries += 1
            task = asyncio.get_running_loop().create_task(self._upstream(key, query, q))
            self.inflight[key] = task
            task.add_done_callback(_retrieve)
        else:
            self.shared += 1
        # shield: a waiter that goes away does not cancel the others' fetch
        return await asyncio.shield(task)

    async def _upstream(self, key: bytes, query: bytes, q) -> bytes:
        try:
            # UDP first whatever the client used (TC is retried over TCP), so the
            # answer is whole and cacheable and all waiters can share it.
            raw = await self.forwarder.exchange(query, q)
            if self.cache is not None:
                self.cache.put(raw, q, self.clock())  # one that does not parse is not stored
            return raw
        finally:
            del self.inflight[key]

    def _rechecking(self, q, now: float) -> bool:
        """A refresh of ``q`` is in flight, or failed less than FAILURE_RECHECK
        ago (only with one set: without, every stale hit may ask again)."""
        recheck = self.cache.config.serve_stale_recheck if self.cache is not None else 0.0
        if recheck <= 0:
            return False
        key = self._flight_key(q)
        failed = self._failed.get(key)
        if failed is not None and now - failed >= recheck:
            del self._failed[key]
            failed = None
        return failed is not None or key in self.inflight

    def _failed_refresh(self, q) -> None:
        if self.cache is not None and self.cache.config.serve_stale_recheck > 0:
            if len(self._failed) >= MAX_FAILED:
                self._failed.clear()  # bounded: a flood of failing names forgets
            self._failed[self._flight_key(q)] = self.clock()

    async def _verify(self, query: bytes, q, timeout: float) -> bytes | None:
        """The upstream's answer if it gives a usable one within ``timeout`` (0:
        its own); the fetch goes on after a timeout and refreshes the entry."""
        fetch = self._fetch(query, q)
        try:
            raw = await (asyncio.wait_for(fetch, timeout) if timeout > 0 else fetch)
        except ForwardError:
            raw = None
        except TimeoutError:
            return None  # the shielded fetch finishes alone (_upstream stores it)
        if raw is None or raw[3] & 0xF == Rcode.SERVFAIL:
            self._failed_refresh(q)
            return None
        return raw

    def _refresh(self, query: bytes, q) -> bool:
        """Prefetch / serve-stale refresh in the background; False if one is in flight."""
        if self._flight_key(q) in self.inflight:
            return False
        task = asyncio.get_running_loop().create_task(self._quiet_fetch(query, q))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return True

    async def _quiet_fetch(self, query: bytes, q) -> None:
        try:
            raw = await self._fetch(query, q)
            if raw[3] & 0xF == Rcode.SERVFAIL:
                self._failed_refresh(q)
        except ForwardError:
            self._failed_refresh(q)
        except Exception:  # never let a background refresh kill the worker
            log.exception("cache refresh failed")

    async def drain(self) -> None:
        """Wait for the background refreshes (tests, shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def close(self) -> None:
        for t in list(self._background):
            t.cancel()
        for t in list(self.inflight.values()):
            t.cancel()
        self.forwarder.close()


def from_plugins(plugins: Mapping[str, object], **forwarder_kw) -> ForwardingResolver | None:
    """The resolver of a server block's ``plugins`` (``ServerBlock.plugins``), or None
    when the block has no ``forward``; its ``cache``, if any, fronts the forwarder."""
    fwd = plugins.get("forward")
    if fwd is None:
        return None
    cache = plugins.get("cache")
    return ForwardingResolver(Forwarder(fwd, **forwarder_kw),  # type: ignore[arg-type]
                              ResponseCache(cache) if cache is not None else None)  # type: ignore[arg-type]
