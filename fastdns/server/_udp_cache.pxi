# The response cache's C table: cache hits answered inside the UDP batch.
#
# Included by _udp.pyx (one extension, split for reading). The Python
# ResponseCache (fastdns/forward/cache.py) stays the owner of every policy
# (capacities, TTL caps, denial/success, disabled zones, serve_stale,
# prefetch): each entry it stores and that a UDP answer can hold is mirrored
# here with `put`, each entry it drops is removed with `remove`. The C side
# only serves an entry while it is fresh and, with prefetch on, only until
# the entry enters its prefetch window; anything else misses here and the
# packet goes on to Python, which serves stale entries and prefetches.
#
# Stored form = docs/internals.md section 7 (Entry): the upstream message
# without its OPT and with ID 0, the offsets of its TTL fields, the clock
# second it was stored and its TTL. A hit is rendered exactly as
# ResponseCache.render does (client ID and question bytes, copied flag bits,
# AA, AD only for DO/AD clients, aged TTLs, our OPT); a hit that would not
# fit the client's UDP limit misses (Python truncates it).

from libc.stdint cimport int64_t, uint16_t, uint32_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp

from fastdns._wire cimport CQuery, E_OK, parse_query_c

cdef enum:
    CC_KEY_MAX = 255 + 5  # qname wire + qtype + qclass + DO|CD octet
    CC_OPT_LEN = 11
    CC_COPIED = 0x7910  # opcode, RD, CD come from the query (cache.py _COPIED)
    CC_AA = 0x0400
    CC_AD = 0x0020
    CC_CD = 0x0010

ctypedef struct CEntry:
    uint64_t hash  # 0 = empty slot
    unsigned char* mem  # key, then body, then offsets (u16 each), one malloc
    uint16_t keylen
    uint16_t bodylen
    uint16_t noffsets
    uint16_t qend  # offset just past the question in body
    uint32_t ttl
    int denial
    int keepttl
    int64_t stored_ns
    int64_t until_ns  # served from C while now < until_ns
    int64_t prefetch_ns  # the prefetch frequency window (CoreDNS freq)
    int64_t last_hit_ns
    uint32_t hits


cdef inline uint64_t cc_hash(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    # FNV-1a 64; never 0 (0 marks an empty slot)
    cdef uint64_t h = 14695981039346656037ULL
    cdef Py_ssize_t i
    for i in range(n):
        h ^= p[i]
        h *= 1099511628211ULL
    return h if h else 1


@cython.final
cdef class CacheTable:
    """Open addressing (linear probing, backward-shift delete), fixed capacity.

    ``configure(max_entries)`` sizes it (and empties it); a full table
    refuses new keys, so memory stays bounded by the caches' capacities.
    """

    cdef CEntry* slots
    cdef size_t mask
    cdef readonly size_t count
    cdef readonly size_t max_entries
    cdef uint64_t* w  # the worker's counters block, or NULL

    def __cinit__(self):
        self.slots = NULL
        self.mask = 0
        self.count = 0
        self.max_entries = 0
        self.w = NULL

    def __dealloc__(self):
        self._free_all()
        free(self.slots)

    cdef void _free_all(self) noexcept:
        cdef size_t i
        if self.slots == NULL:
            return
        for i in range(self.mask + 1):
            if self.slots[i].hash:
                free(self.slots[i].mem)
                self.slots[i].hash = 0
        self.count = 0

    def configure(self, size_t max_entries):
        """Empty the table and size it for ``max_entries`` (0 = off)."""
        cdef size_t size = 8
        self._free_all()
        free(self.slots)
        self.slots = NULL
        self.mask = 0
        self.max_entries = max_entries
        if max_entries == 0:
            self._count_entries()
            return
        while size < max_entries * 2:  # load factor <= 0.5
            size <<= 1
        self.slots = <CEntry*>malloc(size * sizeof(CEntry))
        if self.slots == NULL:
            self.max_entries = 0
            raise MemoryError()
        memset(self.slots, 0, size * sizeof(CEntry))
        self.mask = size - 1
        self._count_entries()

    cdef inline void _count_entries(self) noexcept nogil:
        if self.w != NULL:
            self.w[W_CC_ENTRIES] = self.count

    cdef Py_ssize_t _find(self, const unsigned char* key, Py_ssize_t n,
                          uint64_t h) noexcept nogil:
        cdef size_t i
        cdef CEntry* e
        if self.slots == NULL:
            return -1
        i = h & self.mask
        while True:
            e = &self.slots[i]
            if e.hash == 0:
                return -1
            if e.hash == h and e.keylen == n and memcmp(e.mem, key, n) == 0:
                return <Py_ssize_t>i
            i = (i + 1) & self.mask

    cdef void _delete_at(self, size_t i) noexcept nogil:
        # backward-shift deletion keeps every probe chain unbroken (Knuth 6.4 R)
        cdef size_t j, k
        free(self.slots[i].mem)
        self.slots[i].hash = 0
        j = i
        while True:
            j = (j + 1) & self.mask
            if self.slots[j].hash == 0:
                break
            k = self.slots[j].hash & self.mask
            # move j back to i unless its home k lies cyclically in (i, j]
            if (i <= j and (i < k <= j)) or (i > j and (k > i or k <= j)):
                continue
            self.slots[i] = self.slots[j]
            self.slots[j].hash = 0
            i = j
        self.count -= 1
        self._count_entries()

    def put(self, bytes key, bytes body, offsets, unsigned int ttl, long long stored_ns,
            long long until_ns, bint denial, bint keepttl=False, long long prefetch_ns=0):
        """Mirror one entry (replacing the key's old one); False when it cannot be held."""
        cdef const unsigned char[:] offs_view
        cdef Py_ssize_t klen = len(key), blen = len(body), noff = len(offsets), i
        cdef Py_ssize_t qend = 12
        cdef uint64_t h
        cdef CEntry* e
        cdef unsigned char* mem
        if self.slots == NULL or klen < 6 or klen > CC_KEY_MAX:
            return False
        qend = 12 + klen - 5 + 4
        if blen < qend or blen + CC_OPT_LEN > SLOT or noff > 0xFFFF:
            return False
        for i in range(noff):
            if offsets[i] + 4 > blen or offsets[i] < qend:
                return False
        self.remove(key)
        if self.count >= self.max_entries:
            return False
        mem = <unsigned char*>malloc(klen + blen + 2 * noff)
        if mem == NULL:
            return False
        memcpy(mem, PyBytes_AS_STRING(key), klen)
        memcpy(mem + klen, PyBytes_AS_STRING(body), blen)
        for i in range(noff):
            # memcpy: the offsets may sit at an odd address
            _store_u16(mem + klen + blen + 2 * i, offsets[i])
        h = cc_hash(mem, klen)
        i = h & self.mask
        while self.slots[i].hash != 0:
            i = (i + 1) & self.mask
        e = &self.slots[i]
        e.hash = h
        e.mem = mem
        e.keylen = klen
        e.bodylen = blen
        e.noffsets = noff
        e.qend = qend
        e.ttl = ttl
        e.denial = denial
        e.keepttl = keepttl
        e.stored_ns = stored_ns
        e.until_ns = until_ns
        e.prefetch_ns = prefetch_ns
        e.last_hit_ns = -(1LL << 62)
        e.hits = 0
        self.count += 1
        self._count_entries()
        return True

    def remove(self, bytes key):
        """Drop ``key``'s entry; True when there was one."""
        cdef Py_ssize_t klen = len(key)
        cdef Py_ssize_t i = self._find(<const unsigned char*>PyBytes_AS_STRING(key), klen,
                                       cc_hash(<const unsigned char*>PyBytes_AS_STRING(key),
                                               klen))
        if i < 0:
            return False
        self._delete_at(i)
        return True

    def hits(self, bytes key):
        """(hits, last hit in clock ns) of ``key`` as the C path counted them, or None."""
        cdef Py_ssize_t klen = len(key)
        cdef Py_ssize_t i = self._find(<const unsigned char*>PyBytes_AS_STRING(key), klen,
                                       cc_hash(<const unsigned char*>PyBytes_AS_STRING(key),
                                               klen))
        if i < 0:
            return None
        return (self.slots[i].hits, self.slots[i].last_hit_ns)

    def clear(self):
        self._free_all()
        self._count_entries()

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
        cdef CQuery q
        cdef unsigned char key[CC_KEY_MAX]
        cdef Py_ssize_t klen, i, total, limit
        cdef CEntry* e
        cdef unsigned int flags, bflags, ar
        cdef int64_t age
        cdef long long ttl
        cdef const unsigned char* body
        if self.count == 0:
            return -2
        if parse_query_c(pkt, n, &q) != E_OK or q.opcode != 0 or not q.has_question:
            return -2
        if q.edns_version != 0 or q.qname_len + 5 > CC_KEY_MAX:
            return -2
        klen = q.qname_len
        memcpy(key, q.key, klen)
        key[klen] = q.qtype >> 8
        key[klen + 1] = q.qtype & 0xFF
        key[klen + 2] = q.qclass >> 8
        key[klen + 3] = q.qclass & 0xFF
        key[klen + 4] = (1 if q.do else 0) | (2 if q.flags & CC_CD else 0)
        klen += 5
        i = self._find(key, klen, cc_hash(key, klen))
        if i < 0:
            return -1
        e = &self.slots[i]
        if now >= e.until_ns:
            return -1  # expired or in the prefetch window: Python decides
        total = e.bodylen + (CC_OPT_LEN if q.edns else 0)
        limit = q.payload if q.edns else 512
        if limit < 512:
            limit = 512
        if limit > SLOT:
            limit = SLOT
        if total > limit or e.qend != q.question_end:
            return -1  # Python sends it truncated
        body = e.mem + e.keylen
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
            _put_u32(out + _load_u16(e.mem + e.keylen + e.bodylen + 2 * i), <uint32_t>ttl)
        if q.edns:
            ar = (out[10] << 8 | out[11]) + 1
            out[10] = ar >> 8
            out[11] = ar & 0xFF
            # RFC 6891 §6.1.2: root owner, OPT, payload 1232, version 0, DO echoed
            memcpy(out + e.bodylen, b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00",
                   CC_OPT_LEN)
            if q.do:
                out[e.bodylen + 7] = 0x80
        # CoreDNS freq.Update: hits within the prefetch window count up
        if now - e.last_hit_ns > e.prefetch_ns:
            e.hits = 1
        else:
            e.hits += 1
        e.last_hit_ns = now
        if self.w != NULL:
            self.w[W_CC_HITS_DENIAL if e.denial else W_CC_HITS_SUCCESS] += 1
        return total

    # stub: replaced by the shared cache
    cdef int insert_response(self, const unsigned char* key, Py_ssize_t klen,
                             const unsigned char* resp, Py_ssize_t n,
                             int64_t now) noexcept nogil:
        return 0


cdef inline void _store_u16(unsigned char* p, unsigned int v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = v >> 8


cdef inline unsigned int _load_u16(const unsigned char* p) noexcept nogil:
    return p[0] | p[1] << 8


cdef inline void _put_u32(unsigned char* p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF
