"""The ``cache`` plugin: upstream answers kept for every worker and served with aged TTLs.

Semantics follow CoreDNS ``plugin/cache`` (``cache.go``, ``handler.go``,
``item.go``):

- Key: lowercased qname wire, qtype, qclass, DO bit, CD bit.
- Two stores: *success* (NOERROR with answers, and referrals) and *denial*
  (NXDOMAIN, NODATA, and SERVFAIL for ``servfail`` seconds, default 5, 0 =
  off), each bounded by its capacity. A full store evicts an entry chosen
  at random, as CoreDNS's ``plugin/pkg/cache`` shards do (O(1), no
  per-hit bookkeeping, which also suits a later Cython fast path).
- Duration: success = the smallest TTL in the message, clamped to
  [success MINTTL, success TTL]; denial = min(SOA TTL, SOA MINIMUM) (and
  any smaller RR TTL), clamped to [denial MINTTL, denial TTL] (RFC 2308 §5).
- Never cached: truncated answers (CoreDNS ``key()``: "We don't store
  truncated responses"), negative answers without an SOA in authority
  (RFC 2308 §5: "Negative responses without SOA records SHOULD NOT be
  cached"), other rcodes, names outside the cache's zones, and types under
  ``disable success|denial ZONES``.
- A hit is the stored message with the client's ID, opcode/RD/CD bits and
  question bytes, AA set (CoreDNS ``item.toMsg`` sets it: some clients drop
  non-authoritative answers), AD kept only when the client set DO or AD
  (RFC 6840 §5.8), and every TTL set to the entry's remaining time
  (``origTTL - whole seconds elapsed``; ``keepttl``: the original), an OPT
  appended when the client sent one.
- ``serve_stale DURATION``: an expired entry is still served, TTL 0 as
  CoreDNS does (RESPONSE_TTL when given; RFC 8767 §4 recommends 30), for
  DURATION after expiry (RFC 8767; a cached SERVFAIL is not worth serving
  stale); ``immediate`` serves it and refreshes in the background,
  ``verify`` asks the upstream first (at most VERIFY_TIMEOUT; the fetch
  goes on and refreshes the entry), and FAILURE_RECHECK serves it without
  asking again while a refresh of it failed less than that long ago
  (forward/resolver.py).
- ``prefetch AMOUNT DURATION PERCENTAGE``: an entry hit AMOUNT times with
  no gap longer than DURATION is refreshed in the background once its
  remaining TTL is at most PERCENTAGE of its original.

Stored form (``Entry``), chosen so a Cython fast path can serve it without
Python objects: ``body`` = the answer bytes without its OPT (ID zero),
``offsets`` = ``array('H')`` of the 32-bit TTL fields in ``body``,
``stored``/``expires`` = clock seconds, ``ttl`` = original TTL.

Where entries live: in the server, the host's one shared table
(``attach``: server/_udp_cache.pxi ``CacheTable`` over the segment of
ipc/cachetable.py), which every worker's UDP fast path, its TCP and Python
paths and the C forwarder read and write, so a name is fetched once per TTL
whatever the worker count, with one clock (CLOCK_MONOTONIC, the default
``clock``) for every worker's remaining TTLs. An entry larger than a
slot stays in this worker's own ``_Store`` (one the table has no room for
at that moment, every slot of its bucket held by writers or its store full
with nothing of its own in reach to evict, is not stored), and so does
everything when no table is attached (pure mode, ``FASTDNS_NO_EXTENSIONS=1``,
and listeners that serve different blocks: per-worker caches, the limit of
those modes). Capacities
bound each part: the table's counts are its header's (shared by all).
"""

from __future__ import annotations

import math
import random
import struct
import time
from array import array
from collections.abc import Callable
from typing import Protocol

from fastdns import errors
from fastdns.codec import wire
from fastdns.constants import QUERY_COPIED_BITS, Flag, Rcode
from fastdns.corefile.model import CacheConfig
from fastdns.forward.message import fit, in_any_zone, opt_rr, strip_opt
from fastdns.names import zone_key

SUCCESS = "success"
DENIAL = "denial"
MISS, FRESH, STALE = 0, 1, 2
MINIMAL_DEFAULT_TTL = 5  # CoreDNS dnsutil.MinimalDefaultTTL: a message without RRs
STALE_TTL = 0  # CoreDNS serves stale items with TTL 0 (RFC 8767 §4 suggests 30)
_TTL = struct.Struct(">I")
# plain ints: IntFlag arithmetic costs about a microsecond per operation
_COPIED = int(QUERY_COPIED_BITS)
_AA = int(Flag.AA)
_AD = int(Flag.AD)
_CD = int(Flag.CD)
_KEEP = 0xFFFF & ~_COPIED
_SERVFAIL = int(Rcode.SERVFAIL)


class Entry:
    """One cached answer; see the module docstring for the stored form."""

    __slots__ = ("key", "kind", "body", "offsets", "rcode", "stored", "ttl", "expires",
                 "hits", "last_hit", "slot")

    def __init__(self, key: bytes, kind: str, body: bytes, offsets: array, rcode: int,
                 stored: float, ttl: int, lifetime: float) -> None:
        self.key = key
        self.kind = kind
        self.body = body
        self.offsets = offsets
        self.rcode = rcode
        self.stored = stored
        self.ttl = ttl
        self.expires = stored + lifetime
        self.hits = 0
        self.last_hit = -math.inf
        self.slot = -1

    def remaining(self, now: float) -> int:
        """CoreDNS ``item.ttl``: original TTL minus the whole seconds elapsed."""
        return self.ttl - int(now - self.stored)

    def __repr__(self) -> str:
        return f"<Entry {self.kind} rcode={self.rcode} ttl={self.ttl} len={len(self.body)}>"


class _Store:
    """A dict bounded by ``capacity``, evicting a random entry when full (O(1))."""

    def __init__(self, capacity: int, rng: random.Random,
                 on_remove: Callable[[bytes], object] | None = None) -> None:
        self.capacity = capacity
        self._rng = rng
        self._map: dict[bytes, Entry] = {}
        self._keys: list[bytes] = []
        self.evictions = 0
        self.on_remove = on_remove

    def __len__(self) -> int:
        return len(self._map)

    def get(self, key: bytes) -> Entry | None:
        return self._map.get(key)

    def add(self, entry: Entry) -> None:
        old = self._map.get(entry.key)
        if old is not None:
            entry.slot = old.slot
            self._map[entry.key] = entry
            return
        if self.capacity <= 0:
            return
        if len(self._keys) >= self.capacity:
            self._remove_at(self._rng.randrange(len(self._keys)))
            self.evictions += 1
        entry.slot = len(self._keys)
        self._keys.append(entry.key)
        self._map[entry.key] = entry

    def remove(self, key: bytes) -> None:
        e = self._map.get(key)
        if e is not None:
            self._remove_at(e.slot)

    def _remove_at(self, i: int) -> None:
        key = self._keys[i]
        last = self._keys.pop()
        if i < len(self._keys):
            self._keys[i] = last
            self._map[last].slot = i
        del self._map[key]
        if self.on_remove is not None:
            self.on_remove(key)


class CacheStats:
    """Counters with CoreDNS's meaning (``coredns_cache_*``), per type where CoreDNS has one."""

    __slots__ = ("requests", "misses", "hits", "prefetch", "served_stale")

    def __init__(self) -> None:
        self.requests = 0
        self.misses = 0
        self.hits = {SUCCESS: 0, DENIAL: 0}
        self.prefetch = 0
        self.served_stale = 0


class SharedTable(Protocol):
    """What the cache needs of the shared C table (server/_udp_cache.pxi CacheTable):
    declared here so this module types it without importing the data plane."""

    def lookup(self, key: bytes, cache: int) -> tuple | None: ...

    def put(self, key: bytes, cache: int, denial: bool, body: bytes, offsets: array,
            rcode: int, ttl: int, stored_ns: int, until_ns: int, expires_ns: int,
            dead_ns: int, keepttl: bool = False, prefetch_ns: int = 0) -> int: ...

    def remove(self, key: bytes, cache: int = -1) -> bool: ...

    def touch(self, key: bytes, now_ns: int) -> int: ...

    def counts(self, cache: int) -> tuple[int, int]: ...

    def evictions(self, cache: int) -> tuple[int, int]: ...

    def set_capacity(self, cache: int, success: int, denial: int) -> None: ...

    def set_policy(self, cache: int, *args: object) -> None: ...


SHARED = -2  # Entry.slot of an entry read from the shared table


class ResponseCache:
    """One ``cache`` stanza for one worker; ``clock`` is injectable for tests."""

    def __init__(self, config: CacheConfig, *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.clock = clock
        rng = rng or random.Random()
        self.zones = tuple(zone_key(z) for z in config.zones)
        self.disable_success = tuple(zone_key(z) for z in config.disable_success)
        self.disable_denial = tuple(zone_key(z) for z in config.disable_denial)
        self._stores = {SUCCESS: _Store(config.success_capacity, rng),
                        DENIAL: _Store(config.denial_capacity, rng)}
        self.stats = CacheStats()
        # The host's shared table and this cache's number in it, or None (module
        # docstring: where entries live).
        self.shared: SharedTable | None = None
        self.index = -1

    def attach(self, table: SharedTable, index: int) -> None:
        """Keep entries in the shared ``table`` as its cache number ``index``."""
        cfg = self.config
        table.set_capacity(index, cfg.success_capacity, cfg.denial_capacity)
        self.shared, self.index = table, index

    def detach(self) -> None:
        self.shared, self.index = None, -1

    def c_policy(self) -> tuple:
        """The arguments of ``CacheTable.set_policy`` after the index: this policy in C."""
        cfg = self.config
        return (self.zones, self.disable_success, self.disable_denial, cfg.success_ttl,
                cfg.success_minttl, cfg.denial_ttl, cfg.denial_minttl, cfg.servfail_ttl,
                cfg.serve_stale, cfg.prefetch, cfg.prefetch_duration,
                cfg.prefetch_percentage, cfg.keepttl)

    def _until(self, e: Entry) -> float:
        """Until when the C path may serve ``e``: while fresh and before its prefetch window."""
        until = e.expires
        cfg = self.config
        if cfg.prefetch > 0 and e.rcode != _SERVFAIL:
            until = min(until, e.stored + e.ttl - math.ceil(cfg.prefetch_percentage / 100 * e.ttl))
        return until

    def _share(self, table: SharedTable, e: Entry) -> int:
        cfg = self.config
        dead = e.expires
        if cfg.serve_stale > 0 and e.rcode != _SERVFAIL:
            dead += cfg.serve_stale
        return table.put(e.key, self.index, e.kind == DENIAL, e.body, e.offsets, e.rcode,
                         e.ttl, int(e.stored * 1e9), int(self._until(e) * 1e9),
                         int(e.expires * 1e9), int(dead * 1e9), cfg.keepttl,
                         int(cfg.prefetch_duration * 1e9))

    def _shared_entry(self, key: bytes) -> Entry | None:
        table = self.shared
        rec = table.lookup(key, self.index) if table is not None else None
        if rec is None:
            return None
        denial, body, offs, rcode, ttl, stored_ns, expires_ns, hits, last_ns = rec
        offsets = array("H")
        offsets.frombytes(offs)
        e = Entry(key, DENIAL if denial else SUCCESS, body, offsets, rcode, stored_ns / 1e9,
                  ttl, 0.0)
        e.expires = expires_ns / 1e9
        e.hits, e.last_hit, e.slot = hits, last_ns / 1e9, SHARED
        return e

    # -- counters

    def entries(self, kind: str, shared: bool = True) -> int:
        """``coredns_cache_entries{type}`` (``shared``: with the shared table's, every
        worker's)."""
        n = len(self._stores[kind])
        if shared and self.shared is not None:
            n += self.shared.counts(self.index)[kind == DENIAL]
        return n

    def evictions(self, kind: str, shared: bool = True) -> int:
        """``coredns_cache_evictions_total{type}`` (``shared`` as for ``entries``)."""
        n = self._stores[kind].evictions
        if shared and self.shared is not None:
            n += self.shared.evictions(self.index)[kind == DENIAL]
        return n

    # -- keys

    def covers(self, q) -> bool:
        """Is ``q`` inside the cache's zones (CoreDNS passes other names through)."""
        return in_any_zone(q.key, self.zones)

    @staticmethod
    def key(q) -> bytes:
        bits = (1 if q.do else 0) | (2 if q.flags & _CD else 0)
        return q.key + struct.pack(">HHB", q.qtype, q.qclass, bits)

    # -- reading

    def lookup(self, q, now: float | None = None) -> tuple[Entry | None, int]:
        """(entry, FRESH | STALE) or (None, MISS); counts requests, hits and misses."""
        if now is None:
            now = self.clock()
        self.stats.requests += 1
        key = self.key(q)
        stale_for = self.config.serve_stale
        e = self._shared_entry(key)
        if e is not None:
            if now < e.expires:
                self.stats.hits[e.kind] += 1
                return e, FRESH
            if stale_for > 0 and now - e.expires < stale_for and e.rcode != _SERVFAIL:
                self.stats.hits[e.kind] += 1
                return e, STALE
            if self.shared is not None:
                self.shared.remove(key, self.index)  # past any use: free the slot now
        for kind in (DENIAL, SUCCESS):  # CoreDNS looks in ncache first
            store = self._stores[kind]
            e = store.get(key)
            if e is None:
                continue
            if now < e.expires:
                self.stats.hits[kind] += 1
                return e, FRESH
            if stale_for > 0 and now - e.expires < stale_for and e.rcode != _SERVFAIL:
                self.stats.hits[kind] += 1
                return e, STALE
            store.remove(key)  # past any use: free the slot now
        self.stats.misses += 1
        return None, MISS

    def holds_private(self, q) -> bool:
        """Does this worker's own store hold ``q`` (an entry too large for the table)?"""
        key = self.key(q)
        return any(store.get(key) is not None for store in self._stores.values())

    def peek(self, q, now: float) -> Entry | None:
        """The fresh entry for ``q`` without counting anything (a miss just stored)."""
        key = self.key(q)
        e = self._shared_entry(key)
        if e is not None and now < e.expires:
            return e
        for kind in (DENIAL, SUCCESS):
            e = self._stores[kind].get(key)
            if e is not None and now < e.expires:
                return e
        return None

    def get(self, query: bytes, q, now: float | None = None, tcp: bool = False) -> bytes | None:
        """The cached answer for ``query`` if fresh, else None (stale entries are the
        resolver's business: see ``lookup``)."""
        if now is None:
            now = self.clock()
        e, state = self.lookup(q, now)
        if state != FRESH or e is None:  # FRESH always comes with its entry
            return None
        self.hit(e, now)
        return self.render(e, query, q, now, tcp)

    def render(self, e: Entry, query: bytes, q, now: float | None = None, tcp: bool = False,
               stale: bool = False) -> bytes:
        """``e`` as the answer to ``query`` (module docstring: what is patched)."""
        if now is None:
            now = self.clock()
        if stale:
            ttl = self.config.serve_stale_ttl or STALE_TTL
        elif self.config.keepttl:
            ttl = e.ttl
        else:
            ttl = max(0, e.remaining(now))
        out = bytearray(e.body)
        out[0:2] = query[0:2]
        flags = ((e.body[2] << 8 | e.body[3]) & _KEEP) | ((query[2] << 8 | query[3]) & _COPIED)
        flags |= _AA
        if not q.do and not query[3] & _AD:
            flags &= ~_AD
        out[2:4] = flags.to_bytes(2, "big")
        out[12:q.question_end] = query[12:q.question_end]
        ttl_bytes = _TTL.pack(ttl)
        for off in e.offsets:
            out[off:off + 4] = ttl_bytes
        if q.edns:
            ar = (out[10] << 8 | out[11]) + 1
            out[10:12] = ar.to_bytes(2, "big")
            out += opt_rr(q.do)
        return fit(bytes(out), query, q, tcp)

    def hit(self, e: Entry, now: float) -> None:
        """Count a served hit for prefetch (CoreDNS ``freq.Update``).

        A shared entry counts in its slot, with every worker's and the C
        path's hits, so prefetch sees them all.
        """
        if e.slot == SHARED and self.shared is not None:
            hits = self.shared.touch(e.key, int(now * 1e9))
            if hits >= 0:
                e.hits, e.last_hit = hits, now
                return
        if now - e.last_hit > self.config.prefetch_duration:
            e.hits = 1
        else:
            e.hits += 1
        e.last_hit = now

    def should_prefetch(self, e: Entry, now: float) -> bool:
        """CoreDNS ``shouldPrefetch``: hit often enough and close enough to expiry."""
        amount = self.config.prefetch
        if amount <= 0 or e.rcode == _SERVFAIL:
            return False
        threshold = math.ceil(self.config.prefetch_percentage / 100 * e.ttl)
        return e.hits >= amount and e.remaining(now) <= threshold

    # -- writing

    def classify(self, resp) -> tuple[str | None, float]:
        """(SUCCESS | DENIAL | None, lifetime in seconds) for a parsed response."""
        cfg = self.config
        if resp.tc:
            return None, 0  # CoreDNS cache.go key(): we don't store truncated responses
        if resp.rcode == Rcode.SERVFAIL:
            return (DENIAL, cfg.servfail_ttl) if cfg.servfail_ttl > 0 else (None, 0)
        negative = resp.rcode == Rcode.NXDOMAIN or (
            resp.rcode == Rcode.NOERROR and resp.ancount == 0 and (
                resp.soa_minimum >= 0 or resp.nscount == 0))
        if resp.rcode == Rcode.NOERROR and not negative:
            # an answer, or a referral (NS in authority: CoreDNS's Delegation)
            ttl = resp.min_ttl if resp.min_ttl >= 0 else MINIMAL_DEFAULT_TTL
            return SUCCESS, min(max(ttl, cfg.success_minttl), cfg.success_ttl)
        if negative:
            if resp.soa_minimum < 0:
                # RFC 2308 §5: negative responses without SOA records SHOULD NOT be cached.
                return None, 0
            ttl = min(resp.soa_minimum, resp.min_ttl)
            return DENIAL, min(max(ttl, cfg.denial_minttl), cfg.denial_ttl)
        return None, 0  # REFUSED, FORMERR, NOTIMP ...: CoreDNS OtherError

    def put(self, response: bytes, q, now: float | None = None, resp=None) -> bool:
        """Store the upstream ``response`` to ``q``; True when it was stored."""
        if now is None:
            now = self.clock()
        if not self.covers(q):
            return False
        if resp is None:
            try:
                resp = wire.parse_response(response)
            except errors.WireError:
                return False
        if resp.key != q.key or resp.qtype != q.qtype or resp.qclass != q.qclass:
            return False
        kind, lifetime = self.classify(resp)
        if kind is None or lifetime <= 0:
            return False
        disabled = self.disable_success if kind == SUCCESS else self.disable_denial
        if disabled and in_any_zone(q.key, disabled):
            return False
        if self._stores[kind].capacity <= 0:
            return False
        qend = 12 + len(resp.qname) + 4
        body = strip_opt(response, qend)
        if body is None:
            return False
        key = self.key(q)
        e = Entry(key, kind, b"\x00\x00" + body[2:], array("H", resp.ttl_offsets),
                  resp.rcode, now, int(lifetime), lifetime)
        other = self._stores[DENIAL if kind == SUCCESS else SUCCESS]
        other.remove(key)
        old = self._stores[kind].get(key)
        if old is not None:  # a refresh keeps the hit history (CoreDNS doPrefetch)
            e.hits, e.last_hit = old.hits, old.last_hit
        if self.shared is not None:
            # the table keeps a refreshed key's hit history in its slot
            stored = self._share(self.shared, e)
            if stored == 1:
                self._stores[kind].remove(key)
                return True
            self.shared.remove(key, self.index)  # an older copy must not outlive this one
            if stored < 0:
                # no room: its bucket's slots are being written, or its store is
                # full with no entry of its own in reach to evict
                return False
            # larger than a slot: this worker keeps it (not shared)
        self._stores[kind].add(e)
        return True
