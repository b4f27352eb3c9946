# The response cache's C table: one table in shared memory for every worker.
#
# Included by _udp.pyx (one extension, split for reading). The segment is
# created, named and unlinked by fastdns/ipc/cachetable.py; its header and
# slots are ipc/layout.py's "cache segment" and "cache slot" regions (the
# CT_* and CS_* offsets of _layout.pxi). The Python ResponseCache
# (fastdns/forward/cache.py) owns every policy and uses this table as its
# store (lookup/peek/put/remove below); the UDP batch serves fresh hits from
# it (`answer`), and the C forwarder stores upstream answers (`insert_response`).
#
# Layout: CT_NBUCKETS buckets of CT_WAYS_N slots; a key lives in bucket
# hash % nbuckets only, so a lookup, an insert and an eviction each look at
# one bucket (a full store evicts from at most EVICT_PROBES buckets).
#
# Concurrency (a seqlock per slot, Linux's seqcount pattern across processes):
# - readers never write the guarded fields: load CS_SEQ (acquire); odd = a
#   writer holds it = miss; copy; acquire fence; load CS_SEQ again; a
#   changed word = miss. A torn copy is therefore never served.
# - a writer takes a slot by CAS of CS_SEQ from an even word to
#   (its pid << 32 | seq + 1), writes, and releases with a store of seq + 2
#   (pid 0). CS_HITS/CS_LAST_HIT_NS are advisory (prefetch frequency),
#   updated with relaxed atomics outside the seqlock.
# - a writer killed while it holds a slot leaves it odd: readers miss it,
#   and the next writer that finds it odd with a pid that no longer exists
#   (kill(pid, 0) == ESRCH) takes it over, as an empty slot.
# Counts: CT_COUNT[cache][kind] with atomic adds; an entry is counted just
# before CS_KIND publishes it and uncounted just after CS_KIND drops it, and
# the writer that takes over a dead writer's slot uncounts what CS_KIND says
# is there, so the counts equal the live entries at rest; a writer killed
# between a CS_KIND store and its add leaves one count over (never under: the
# capacity stays a bound). That window is short but not one instruction: a
# signal that arrives during the atomic add is taken right after it, inside
# the window (the stress test sees 0 to 4 over in 200 kills), so each writer
# death mid-insert may cost the store one entry of capacity until restart.
#
# Stored form = docs/internals.md section 12 (Entry): the upstream message
# without its OPT and with ID 0, the offsets of its TTL fields, the clock ns
# it was stored at (CLOCK_MONOTONIC: one clock for every worker, so each
# answers with the same remaining TTL) and its TTL. A hit is rendered
# exactly as ResponseCache.render does (client ID and question bytes, copied
# flag bits, AA, AD only for DO/AD clients, aged TTLs, our OPT); a hit that
# would not fit the client's UDP limit misses (Python truncates it). An
# entry larger than a slot's data (CS_DATA_MAX) is not shared: Python keeps
# it in its worker's own store and CT_TOOBIG counts it.

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t
from libc.math cimport ceil
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp

from fastdns._wire cimport CQuery, E_OK, parse_query_c

include "_udp_cache_slots.pxi"
include "_udp_cache_policy.pxi"


cdef inline Py_ssize_t cc_key(const CQuery* q, unsigned char* key) noexcept nogil:
    """ResponseCache.key in ``key`` (CC_KEY_MAX octets): the lowercased qname wire,
    qtype, qclass and a DO|CD octet (CoreDNS cache.go hash); returns its length."""
    cdef Py_ssize_t klen = q.qname_len
    memcpy(key, q.key, klen)
    key[klen] = q.qtype >> 8
    key[klen + 1] = q.qtype & 0xFF
    key[klen + 2] = q.qclass >> 8
    key[klen + 3] = q.qclass & 0xFF
    key[klen + 4] = (1 if q.do else 0) | (2 if q.flags & CC_CD else 0)
    return klen + 5


@cython.final
cdef class CacheTable:
    """The shared response cache (see the top of this file).

    ``attach(buf)`` maps it onto a formatted segment (ipc/cachetable.py);
    ``configure(n)`` makes a private one for ``n`` entries (tests, a lone
    worker), ``configure(0)`` and ``clear()`` detach it.
    """

    cdef unsigned char[::1] _mem
    cdef object _owner  # what the buffer came from (kept alive with it)
    cdef unsigned char* base
    cdef uint64_t nbuckets
    cdef uint64_t* w  # the worker's counters block, or NULL
    cdef uint32_t pid
    cdef CPolicy* policies[CT_MAX_CACHES]  # cache k's policy in C (set_policy), or NULL
    cdef CSlot tmp  # a reader's copy (one thread per process reads)

    def __cinit__(self):
        self.base = NULL
        self.nbuckets = 0
        self.w = NULL
        memset(self.policies, 0, sizeof(self.policies))

    def __dealloc__(self):
        self._free_policies()

    cdef void _free_policies(self) noexcept:
        cdef int i
        for i in range(CT_MAX_CACHES):
            free(self.policies[i])
            self.policies[i] = NULL

    # -- attaching ---------------------------------------------------------------

    def attach(self, buf):
        """Use the formatted table in ``buf`` (a writable buffer: the segment's mmap)."""
        cdef unsigned char[::1] mem = buf
        cdef uint64_t nb
        if mem.shape[0] < CT_SLOTS:
            raise ValueError("not a cache segment: too small")
        if (<uint32_t*>&mem[CT_WAYS])[0] != CT_WAYS_N or \
                (<uint32_t*>&mem[CT_SLOT_SIZE])[0] != CT_SLOT_OCTETS:
            raise ValueError("cache segment of another layout")
        nb = (<uint64_t*>&mem[CT_NBUCKETS])[0]
        if nb == 0 or <uint64_t>mem.shape[0] < CT_SLOTS + nb * CT_WAYS_N * CT_SLOT_OCTETS:
            raise ValueError("cache segment shorter than its buckets")
        self._mem = mem
        self._owner = buf
        self.base = &self._mem[0]
        self.nbuckets = nb
        self.pid = fdc_getpid()  # after a fork, the child's
        self._prefault()
        self._count_entries()

    def configure(self, size_t max_entries):
        """A private table for ``max_entries`` (0 = detach); forked children share it."""
        self.clear()
        if max_entries:
            from fastdns.ipc import cachetable
            self.attach(cachetable.anonymous(max_entries))

    def clear(self):
        """Detach (the segment and its entries stay for the other workers)."""
        self._mem = None
        self._owner = None
        self.base = NULL
        self.nbuckets = 0
        self._free_policies()
        self._count_entries()

    @property
    def attached(self):
        return self.base != NULL

    @property
    def buckets(self):
        return self.nbuckets

    def reset_pid(self):
        """Take this process's pid as the writer's (a forked child, before it writes)."""
        self.pid = fdc_getpid()
        self._prefault()

    cdef void _prefault(self) noexcept nogil:
        """Touch the header's count words for writing now. A process maps a shared
        page on first touch (fork does not copy those page tables): a fault inside
        an insert's count window (between a count and its publish) is where a
        SIGKILL is most likely to land, and each such kill leaves a count over."""
        cdef int i
        if self.base == NULL:
            return
        for i in range(2 * CT_MAX_CACHES):
            fdc_add(<uint64_t*>(self.base + CT_COUNT) + i, 0)
            fdc_add(<uint64_t*>(self.base + CT_EVICTIONS) + i, 0)

    # -- counts ------------------------------------------------------------------

    cdef inline uint64_t* _counts(self, int cache) noexcept nogil:
        return <uint64_t*>(self.base + CT_COUNT) + 2 * cache

    cdef uint64_t _total(self) noexcept nogil:
        cdef uint64_t n = 0
        cdef int i
        if self.base == NULL:
            return 0
        for i in range(2 * CT_MAX_CACHES):
            n += fdc_load((<uint64_t*>(self.base + CT_COUNT)) + i)
        return n

    cdef inline void _count_entries(self) noexcept nogil:
        if self.w != NULL:
            self.w[W_CC_ENTRIES] = self._total()

    @property
    def count(self):
        """Entries in the whole table (every worker's, every cache's)."""
        return self._total()

    def counts(self, int cache):
        """(success, denial) entries of cache ``cache``."""
        cdef uint64_t* c
        self._check(cache)
        c = self._counts(cache)
        return (fdc_load(c), fdc_load(c + 1))

    def evictions(self, int cache):
        """(success, denial) evictions of cache ``cache`` (every worker's)."""
        cdef uint64_t* c
        self._check(cache)
        c = <uint64_t*>(self.base + CT_EVICTIONS) + 2 * cache
        return (fdc_load(c), fdc_load(c + 1))

    @property
    def too_big(self):
        return fdc_load(self.base + CT_TOOBIG) if self.base != NULL else 0

    def set_capacity(self, int cache, unsigned long long success, unsigned long long denial):
        """Cache ``cache``'s capacities (every worker stores the same Corefile's)."""
        cdef uint64_t* c
        self._check(cache)
        c = <uint64_t*>(self.base + CT_CAPACITY) + 2 * cache
        fdc_store(c, success)
        fdc_store(c + 1, denial)

    cdef int _check(self, int cache) except -1:
        if self.base == NULL:
            raise ValueError("the cache table is not attached")
        if not 0 <= cache < CT_MAX_CACHES:
            raise ValueError(f"cache index {cache} out of range")
        return 0

    # -- slots -------------------------------------------------------------------

    cdef inline unsigned char* _slot(self, uint64_t bucket, int way) noexcept nogil:
        return self.base + CT_SLOTS + (bucket * CT_WAYS_N + way) * CT_SLOT_OCTETS

    cdef bint _read(self, const unsigned char* s, uint64_t h, const unsigned char* key,
                    Py_ssize_t klen, CSlot* out) noexcept nogil:
        """Copy slot ``s`` into ``out`` if it holds ``key`` (seqlock read)."""
        cdef uint64_t w1
        cdef int t
        cdef Py_ssize_t dlen
        for t in range(READ_TRIES):
            w1 = fdc_load_acq(s + CS_SEQ)
            if w1 & 1:
                return False
            if fdc_load(s + CS_HASH) != h:
                return False
            out.kind = s[CS_KIND]
            out.cache = s[CS_CACHE]
            out.keepttl = s[CS_KEEPTTL]
            out.rcode = _u16(s, CS_RCODE)
            out.keylen = _u16(s, CS_KEYLEN)
            out.bodylen = _u16(s, CS_BODYLEN)
            out.noffsets = _u16(s, CS_NOFFSETS)
            out.qend = _u16(s, CS_QEND)
            out.ttl = (<const uint32_t*>(s + CS_TTL))[0]
            out.stored_ns = _i64(s, CS_STORED_NS)
            out.until_ns = _i64(s, CS_UNTIL_NS)
            out.expires_ns = _i64(s, CS_EXPIRES_NS)
            out.dead_ns = _i64(s, CS_DEAD_NS)
            out.prefetch_ns = _i64(s, CS_PREFETCH_NS)
            dlen = out.keylen + out.bodylen + 2 * out.noffsets
            if out.keylen != klen or dlen > CS_DATA_MAX:
                dlen = 0  # a racing writer's lengths: the re-read decides
            memcpy(out.data, s + CS_DATA, dlen)
            fdc_fence_acq()
            if fdc_load(s + CS_SEQ) != w1:
                continue
            if dlen == 0 or out.kind == K_EMPTY:
                return False
            return memcmp(out.data, key, klen) == 0
        return False

    cdef bint _find(self, const unsigned char* key, Py_ssize_t klen, CSlot* out,
                    unsigned char** where) noexcept nogil:
        cdef uint64_t h, b
        cdef int way
        cdef unsigned char* s
        if self.base == NULL:
            return False
        h = cc_hash(key, klen)
        b = h % self.nbuckets
        for way in range(CT_WAYS_N):
            s = self._slot(b, way)
            if self._read(s, h, key, klen, out):
                if where != NULL:
                    where[0] = s
                return True
        return False

    cdef bint _lock(self, unsigned char* s, uint64_t* word) noexcept nogil:
        """Take slot ``s`` for writing; ``word`` gets the sequence to release with.

        An odd slot whose writer's process is gone is taken over (its content
        is then garbage: the caller treats it as empty, see ``_lock_empty``).
        """
        cdef uint64_t w = fdc_load_acq(s + CS_SEQ)
        cdef uint64_t seq = w & 0xFFFFFFFFULL
        if w & 1:
            if not fdc_pid_gone(<uint32_t>(w >> 32)):
                return False
            if not fdc_cas(s + CS_SEQ, w, (<uint64_t>self.pid << 32) | ((seq + 2) & 0xFFFFFFFFULL)):
                return False
            # a dead writer's slot: drop what it held (CS_KIND is K_EMPTY from
            # the moment _insert uncounted the old entry until the new one is counted)
            self._drop_locked(s, False)
            word[0] = (seq + 2) & 0xFFFFFFFFULL
            return True
        if not fdc_cas(s + CS_SEQ, w, (<uint64_t>self.pid << 32) | (seq + 1)):
            return False
        word[0] = (seq + 1) & 0xFFFFFFFFULL
        return True

    cdef inline void _unlock(self, unsigned char* s, uint64_t word) noexcept nogil:
        fdc_store_rel(s + CS_SEQ, (word + 1) & 0xFFFFFFFFULL)

    cdef void _drop_locked(self, unsigned char* s, bint evicted) noexcept nogil:
        """Empty the locked slot ``s``, taking its entry off its store's count."""
        cdef int kind = s[CS_KIND], cache = s[CS_CACHE]
        s[CS_KIND] = K_EMPTY  # unpublished, then uncounted (a kill between: one count over)
        fdc_store(s + CS_HASH, 0)
        if kind != K_EMPTY and cache < CT_MAX_CACHES:
            fdc_add(self._counts(cache) + kind - 1, -1)
            if evicted:
                fdc_add(<uint64_t*>(self.base + CT_EVICTIONS) + 2 * cache + kind - 1, 1)

    cdef bint _evict_one(self, uint64_t b0, int cache, int kind, unsigned char* skip
                         ) noexcept nogil:
        """Evict an entry of store (cache, kind) from bucket b0 or the next ones.

        The victim is the one of no use soonest (smallest CS_DEAD_NS), as
        CoreDNS evicts at random: either way O(1), and a bounded look.
        """
        cdef int p, way
        cdef uint64_t b, word
        cdef unsigned char* s
        cdef unsigned char* victim
        cdef int64_t best
        for p in range(EVICT_PROBES):
            b = (b0 + p) % self.nbuckets
            victim = NULL
            best = 0
            for way in range(CT_WAYS_N):
                s = self._slot(b, way)
                if s == skip or fdc_load(s + CS_SEQ) & 1:
                    continue
                if s[CS_KIND] == kind and s[CS_CACHE] == cache and (
                        victim == NULL or _i64(s, CS_DEAD_NS) < best):
                    victim, best = s, _i64(s, CS_DEAD_NS)
            if victim != NULL and self._lock(victim, &word):
                if victim[CS_KIND] == kind and victim[CS_CACHE] == cache:
                    self._drop_locked(victim, True)
                    self._unlock(victim, word)
                    return True
                self._unlock(victim, word)
            if p + 1 >= <int>self.nbuckets:
                break
        return False

    cdef int _insert(self, const unsigned char* key, Py_ssize_t klen, int cache, int kind,
                     const unsigned char* body, Py_ssize_t blen, const uint16_t* offs,
                     Py_ssize_t noff, unsigned int rcode, uint32_t ttl, int64_t stored,
                     int64_t until, int64_t expires, int64_t dead, bint keepttl,
                     int64_t prefetch, int arcount=-1) noexcept nogil:
        """Store one entry: 1 stored, 0 larger than a slot, -1 no room (or capacity 0).

        ``arcount`` >= 0 replaces the message's ARCOUNT (its OPT was left out).
        """
        cdef uint64_t h, b, word = 0, cap
        cdef int way, hits_kept = 0, tries = 0
        cdef unsigned char* s
        cdef unsigned char* target = NULL
        cdef unsigned char* empty = NULL
        cdef unsigned char* oldest = NULL
        cdef int64_t best = 0
        cdef uint64_t* count
        if self.base == NULL or cache < 0 or cache >= CT_MAX_CACHES or klen > CC_KEY_MAX:
            return -1
        if klen + blen + 2 * noff > CS_DATA_MAX:
            fdc_add(self.base + CT_TOOBIG, 1)
            return 0
        cap = fdc_load(<uint64_t*>(self.base + CT_CAPACITY) + 2 * cache + kind - 1)
        if cap == 0:
            return -1
        h = cc_hash(key, klen)
        b = h % self.nbuckets
        # the key's own slot (replaced in place, keeping its hit history), else a
        # free one, else the bucket's entry of no use soonest
        for way in range(CT_WAYS_N):
            s = self._slot(b, way)
            if self._read(s, h, key, klen, &self.tmp):
                if self._lock(s, &word):
                    if fdc_load(s + CS_HASH) == h and _u16(s, CS_KEYLEN) == klen and \
                            memcmp(s + CS_DATA, key, klen) == 0 and s[CS_KIND] != K_EMPTY:
                        target = s
                        hits_kept = 1
                        break
                    self._unlock(s, word)
                return -1  # a writer holds the key's slot right now: it is being stored
        if target == NULL:
            for way in range(CT_WAYS_N):
                s = self._slot(b, way)
                if s[CS_KIND] == K_EMPTY or fdc_load(s + CS_SEQ) & 1:
                    if self._lock(s, &word):
                        if s[CS_KIND] == K_EMPTY:
                            target = s
                            break
                        self._unlock(s, word)
                elif oldest == NULL or _i64(s, CS_DEAD_NS) < best:
                    oldest, best = s, _i64(s, CS_DEAD_NS)
        if target == NULL:
            if oldest == NULL or not self._lock(oldest, &word):
                return -1
            target = oldest
        # the old entry leaves its count first (a replaced one of another key is
        # evicted); then a full store makes room (CoreDNS: a full store evicts).
        # Writers racing past the capacity by one each are taken back by the
        # inserts after them (up to two victims each).
        self._drop_locked(target, not hits_kept)
        count = self._counts(cache) + kind - 1
        while fdc_load(count) >= cap and tries < 2:
            if not self._evict_one(b, cache, kind, target):
                if tries == 0:
                    self._unlock(target, word)
                    return -1  # full, and no entry of its own in reach
                break
            tries += 1
        fdc_store(target + CS_HASH, h)
        target[CS_CACHE] = cache
        target[CS_KEEPTTL] = keepttl
        _set_u16(target, CS_RCODE, rcode)
        _set_u16(target, CS_KEYLEN, klen)
        _set_u16(target, CS_BODYLEN, blen)
        _set_u16(target, CS_NOFFSETS, noff)
        _set_u16(target, CS_QEND, 12 + klen - 5 + 4)
        (<uint32_t*>(target + CS_TTL))[0] = ttl
        _set_i64(target, CS_STORED_NS, stored)
        _set_i64(target, CS_UNTIL_NS, until)
        _set_i64(target, CS_EXPIRES_NS, expires)
        _set_i64(target, CS_DEAD_NS, dead)
        _set_i64(target, CS_PREFETCH_NS, prefetch)
        memcpy(target + CS_DATA, key, klen)
        memcpy(target + CS_DATA + klen, body, blen)
        memset(target + CS_DATA + klen, 0, 2)  # ID 0
        if arcount >= 0:
            target[CS_DATA + klen + 10] = arcount >> 8
            target[CS_DATA + klen + 11] = arcount & 0xFF
        memcpy(target + CS_DATA + klen + blen, offs, 2 * noff)
        if not hits_kept:
            fdc_store(target + CS_HITS, 0)
            fdc_store(target + CS_LAST_HIT_NS, <uint64_t>(-(1LL << 62)))
        fdc_add(count, 1)  # counted, then published (a kill between: one count over)
        target[CS_KIND] = kind
        self._unlock(target, word)
        self._count_entries()
        return 1

    # -- the Python ResponseCache's store ------------------------------------------

    def lookup(self, bytes key, int cache):
        """(denial, body, offsets, rcode, ttl, stored_ns, expires_ns, hits, last_hit_ns)
        of ``key``'s entry in cache ``cache``, or None; read under the seqlock."""
        cdef CSlot* e = &self.tmp
        cdef unsigned char* s = NULL
        cdef Py_ssize_t klen = len(key)
        if not self._find(<const unsigned char*>PyBytes_AS_STRING(key), klen, e, &s):
            return None
        if e.cache != cache:
            return None
        body = PyBytes_FromStringAndSize(<char*>e.data + klen, e.bodylen)
        offs = PyBytes_FromStringAndSize(<char*>e.data + klen + e.bodylen, 2 * e.noffsets)
        return (e.kind == K_DENIAL, body, offs, e.rcode, e.ttl, e.stored_ns, e.expires_ns,
                fdc_load(s + CS_HITS), <int64_t>fdc_load(s + CS_LAST_HIT_NS))

    def put(self, bytes key, int cache, bint denial, bytes body, offsets, unsigned int rcode,
            unsigned int ttl, long long stored_ns, long long until_ns, long long expires_ns,
            long long dead_ns, bint keepttl=False, long long prefetch_ns=0):
        """Store one entry (replacing the key's old one): 1 stored, 0 larger than a
        slot (the caller keeps it itself), -1 not stored (no room, capacity 0)."""
        cdef Py_ssize_t klen = len(key), blen = len(body), noff = len(offsets), i
        cdef uint16_t offs[CC_MAX_OFFSETS]
        if klen < 6 or klen > CC_KEY_MAX or blen < 12 + klen - 5 + 4:
            return -1
        if klen + blen + 2 * noff > CS_DATA_MAX:
            if self.base != NULL:
                fdc_add(self.base + CT_TOOBIG, 1)
            return 0
        for i in range(noff):
            if offsets[i] + 4 > blen or offsets[i] < klen + 11:  # qend
                return -1
            offs[i] = offsets[i]
        return self._insert(<const unsigned char*>PyBytes_AS_STRING(key), klen, cache,
                            K_DENIAL if denial else K_SUCCESS,
                            <const unsigned char*>PyBytes_AS_STRING(body), blen, offs, noff,
                            rcode, ttl, stored_ns, until_ns, expires_ns, dead_ns, keepttl,
                            prefetch_ns)

    def remove(self, bytes key, int cache=-1):
        """Drop ``key``'s entry (of cache ``cache``; -1: whichever); True when there was one."""
        cdef unsigned char* s = NULL
        cdef uint64_t word
        cdef Py_ssize_t klen = len(key)
        if not self._find(<const unsigned char*>PyBytes_AS_STRING(key), klen, &self.tmp, &s):
            return False
        if cache >= 0 and self.tmp.cache != cache:
            return False
        if not self._lock(s, &word):
            return False
        if memcmp(s + CS_DATA, PyBytes_AS_STRING(key), klen) == 0 and \
                _u16(s, CS_KEYLEN) == klen:
            self._drop_locked(s, False)
        self._unlock(s, word)
        self._count_entries()
        return True

    def touch(self, bytes key, long long now_ns):
        """Count a hit for prefetch (CoreDNS ``freq.Update``); the hits now, -1 if gone."""
        cdef unsigned char* s = NULL
        if not self._find(<const unsigned char*>PyBytes_AS_STRING(key), len(key), &self.tmp,
                          &s):
            return -1
        return _freq(s, now_ns, self.tmp.prefetch_ns)

    def hits(self, bytes key):
        """(hits, last hit in clock ns) of ``key``, as every worker counted them, or None."""
        cdef unsigned char* s = NULL
        if not self._find(<const unsigned char*>PyBytes_AS_STRING(key), len(key), &self.tmp,
                          &s):
            return None
        return (fdc_load(s + CS_HITS), <int64_t>fdc_load(s + CS_LAST_HIT_NS))

    # -- the UDP batch ---------------------------------------------------------------

    def serve(self, data, long long now_ns):
        """The C answer to the query ``data`` at ``now_ns``, or None (tests)."""
        cdef const unsigned char[::1] p = data
        cdef unsigned char out[SLOT]
        cdef Py_ssize_t n
        if p.shape[0] == 0:
            return None
        n = self.answer(&p[0], p.shape[0], out, now_ns)
        return PyBytes_FromStringAndSize(<char*>out, n) if n > 0 else None

    cdef Py_ssize_t answer(self, const unsigned char* pkt, Py_ssize_t n, unsigned char* out,
                           int64_t now) noexcept nogil:
        """A hit rendered into ``out`` (SLOT octets): its length; -1: miss, -2: not asked.

        Precondition: ``pkt`` holds ``n`` octets, a query answer_packet passed on.
        """
        return self.render(pkt, n, out, now, True)

    cdef Py_ssize_t render(self, const unsigned char* pkt, Py_ssize_t n, unsigned char* out,
                           int64_t now, bint hit) noexcept nogil:
        """``answer``; ``hit`` False renders the entry the C forwarder just stored for
        a miss (ResponseCache.peek + render: the reply that filled the cache carries
        the capped TTL, CoreDNS cache.go WriteMsg) without counting a hit."""
        cdef CQuery q
        cdef unsigned char key[CC_KEY_MAX]
        cdef Py_ssize_t klen, i, total, limit, off
        cdef CSlot* e = &self.tmp
        cdef unsigned char* s = NULL
        cdef unsigned int flags, bflags, ar
        cdef int64_t age
        cdef long long ttl
        cdef const unsigned char* body
        cdef const unsigned char* offs
        if self.base == NULL:
            return -2
        if parse_query_c(pkt, n, &q) != E_OK or q.opcode != 0 or not q.has_question:
            return -2
        if q.edns_version != 0 or q.qname_len + 5 > CC_KEY_MAX:
            return -2
        klen = cc_key(&q, key)
        if not self._find(key, klen, e, &s):
            return -1
        if now >= e.until_ns:
            return -1  # expired or in the prefetch window: Python decides
        total = e.bodylen + (CC_OPT_LEN if q.edns else 0)
        limit = q.payload if q.edns else 512
        if limit < 512:
            limit = 512
        if limit > SLOT:
            limit = SLOT
        if total > limit or e.qend != q.question_end or e.bodylen < e.qend:
            return -1  # Python sends it truncated
        body = e.data + e.keylen
        offs = body + e.bodylen
        memcpy(out, body, e.bodylen)
        out[0] = pkt[0]
        out[1] = pkt[1]
        bflags = body[2] << 8 | body[3]
        flags = (bflags & (0xFFFF & ~CC_COPIED)) | (q.flags & CC_COPIED) | CC_AA
        if not q.do and not (q.flags & CC_AD):
            flags &= ~CC_AD
        out[2] = flags >> 8
        out[3] = flags & 0xFF
        memcpy(out + 12, pkt + 12, e.qend - 12)  # the client's question (its 0x20 case)
        if e.keepttl:
            ttl = e.ttl
        else:
            age = (now - e.stored_ns) // 1000000000
            ttl = <long long>e.ttl - age
            if ttl < 0:
                ttl = 0
        for i in range(e.noffsets):
            off = (<const uint16_t*>(offs + 2 * i))[0]
            if off + 4 > e.bodylen:
                return -1  # never the case for what put stored
            _put_u32(out + off, <uint32_t>ttl)
        if q.edns:
            ar = (out[10] << 8 | out[11]) + 1
            out[10] = ar >> 8
            out[11] = ar & 0xFF
            # RFC 6891 §6.1.2: root owner, OPT, payload 1232, version 0, DO echoed
            memcpy(out + e.bodylen, b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00",
                   CC_OPT_LEN)
            if q.do:
                out[e.bodylen + 7] = 0x80
        if not hit:
            return total
        _freq(s, now, e.prefetch_ns)
        if self.w != NULL:
            self.w[W_CC_HITS_DENIAL if e.kind == K_DENIAL else W_CC_HITS_SUCCESS] += 1
            if e.cache < CACHE_ROWS:  # its cache's row (coredns_cache_* labels)
                self.w[W_CACHE_ROWS + e.cache * CR_WORDS
                       + (CR_C_HITS_DENIAL if e.kind == K_DENIAL else CR_C_HITS_SUCCESS)] += 1
            if (self.w[W_CC_HITS_SUCCESS] & 255) == 0:
                self._count_entries()  # other workers' inserts too, now and then
        return total

    # -- the C forwarder's store (policy in _udp_cache_policy.pxi) --------------------

    def set_policy(self, int cache, zones, disable_success, disable_denial,
                   int success_ttl, int success_minttl, int denial_ttl, int denial_minttl,
                   double servfail_ttl, double serve_stale, int prefetch,
                   double prefetch_duration, double prefetch_percentage, bint keepttl):
        """Cache number ``cache``'s policy, for ``insert_response`` (-1: forget every
        policy; a cache without one: C leaves its answers to Python).

        Zones are lowercased wire names; more than CC_MAX_ZONES in a list, or a
        name over 255 octets, leaves the decision to Python.
        """
        if cache < 0:
            self._free_policies()
            return
        self._check(cache)
        free(self.policies[cache])
        self.policies[cache] = NULL
        self.policies[cache] = make_policy(
            cache, zones, disable_success, disable_denial, success_ttl, success_minttl,
            denial_ttl, denial_minttl, servfail_ttl, serve_stale, prefetch,
            prefetch_duration, prefetch_percentage, keepttl)

    def store_response(self, bytes key, resp, long long now_ns, int cache=0):
        """``insert_response`` from Python (tests): 1 handled, 0 left to Python."""
        cdef const unsigned char[::1] p = resp
        if p.shape[0] == 0:
            return 0
        return self.insert_response(<const unsigned char*>PyBytes_AS_STRING(key), len(key),
                                    &p[0], p.shape[0], now_ns, cache)

    cdef inline CPolicy* _policy(self, int cache) noexcept nogil:
        """Cache ``cache``'s active policy, or NULL."""
        cdef CPolicy* pol
        if cache < 0 or cache >= CT_MAX_CACHES or self.base == NULL:
            return NULL
        pol = self.policies[cache]
        return pol if pol != NULL and pol.active else NULL

    cdef int forward_key(self, const CQuery* q, unsigned char* key, Py_ssize_t* klen,
                         int cache) noexcept nogil:
        """May the C forwarder take the miss ``q`` through cache ``cache``?

        1: yes, ``key[:klen]`` is its key (no entry of any state is stored);
        0: the name is outside the cache's zones (CoreDNS passes it through,
        uncached); -1: Python decides (no active policy, EDNS version != 0, or
        an entry exists: stale, in its prefetch window, or too large for this
        client, which ResponseCache serves, refreshes or truncates).
        """
        cdef CPolicy* pol = self._policy(cache)
        if pol == NULL:
            return -1
        if q.edns_version != 0 or q.qname_len + 5 > CC_KEY_MAX:
            return -1
        klen[0] = cc_key(q, key)
        if not zone_listed(pol, 0, key, q.qname_len):
            return 0
        if self._find(key, klen[0], &self.tmp, NULL):
            return -1
        return 1

    def policy_active(self, int cache):
        """Does ``insert_response`` decide for cache ``cache`` (set_policy, within its
        limits)?"""
        return self._policy(cache) != NULL

    cdef int insert_response(self, const unsigned char* key, Py_ssize_t klen,
                             const unsigned char* resp, Py_ssize_t n, int64_t now,
                             int cache) noexcept nogil:
        """Classify and store the upstream answer ``resp`` to the query keyed ``key``.

        1: handled (stored, or not cacheable by the policy); 0: C cannot
        decide (no policy for ``cache``, a message it does not parse, an entry
        larger than a slot): the caller hands it to ResponseCache.put.
        """
        cdef CScan sc
        cdef CPolicy* pol = self._policy(cache)
        cdef int kind, r
        cdef int64_t ttl, lifetime_ns, until, thr
        if pol == NULL or klen < 6:
            return 0
        if scan_response(resp, n, key, klen, &sc) != 0:
            return 0
        if not zone_listed(pol, 0, key, klen - 5):
            return 1  # outside the cache's zones: CoreDNS passes it through
        kind = classify(pol, &sc, &ttl, &lifetime_ns)
        if kind == K_EMPTY or lifetime_ns <= 0:
            return 1
        if zone_listed(pol, 1 if kind == K_SUCCESS else 2, key, klen - 5):
            return 1  # disable success|denial ZONES
        until = now + lifetime_ns
        if pol.prefetch > 0 and sc.rcode != 2:
            thr = <int64_t>ceil(pol.prefetch_pct / 100.0 * <double>ttl)
            if now + (ttl - thr) * 1000000000 < until:
                until = now + (ttl - thr) * 1000000000
        r = self._insert(key, klen, pol.index, kind, resp, sc.body_len, sc.offs, sc.noff,
                         sc.rcode, <uint32_t>ttl, now, until, now + lifetime_ns,
                         now + lifetime_ns + pol.stale_ns, pol.keepttl, pol.prefetch_ns,
                         <int>sc.ar - 1 if sc.has_opt else -1)
        return 0 if r == 0 else 1
