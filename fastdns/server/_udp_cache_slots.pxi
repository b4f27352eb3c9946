# The shared cache table's building blocks (included by _udp_cache.pxi): the
# GCC __atomic builtins the seqlock uses, a slot copy, the C policy record,
# and the little readers and writers of slot fields (CS_* of _layout.pxi).
# Every atomic is on an aligned u64 of the shared segment.

cdef extern from *:
    """
    #include <errno.h>
    #include <signal.h>
    #include <stdint.h>
    #include <sys/types.h>
    #include <unistd.h>
    static inline uint64_t fdc_load_acq(const void* p) {
        return __atomic_load_n((const uint64_t*)p, __ATOMIC_ACQUIRE); }
    static inline uint64_t fdc_load(const void* p) {
        return __atomic_load_n((const uint64_t*)p, __ATOMIC_RELAXED); }
    static inline void fdc_fence_acq(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
    static inline int fdc_cas(void* p, uint64_t expect, uint64_t want) {
        return __atomic_compare_exchange_n((uint64_t*)p, &expect, want, 0,
                                           __ATOMIC_ACQ_REL, __ATOMIC_RELAXED); }
    static inline void fdc_store_rel(void* p, uint64_t v) {
        __atomic_store_n((uint64_t*)p, v, __ATOMIC_RELEASE); }
    static inline void fdc_store(void* p, uint64_t v) {
        __atomic_store_n((uint64_t*)p, v, __ATOMIC_RELAXED); }
    static inline int64_t fdc_add(void* p, int64_t d) {
        return (int64_t)__atomic_add_fetch((uint64_t*)p, (uint64_t)d, __ATOMIC_RELAXED); }
    /* a slot's writer is gone: no such process (EPERM = alive, someone else's) */
    static inline int fdc_pid_gone(uint32_t pid) {
        return pid != 0 && kill((pid_t)pid, 0) != 0 && errno == ESRCH; }
    static inline uint32_t fdc_getpid(void) { return (uint32_t)getpid(); }
    """
    uint64_t fdc_load_acq(const void* p) noexcept nogil
    uint64_t fdc_load(const void* p) noexcept nogil
    void fdc_fence_acq() noexcept nogil
    bint fdc_cas(void* p, uint64_t expect, uint64_t want) noexcept nogil
    void fdc_store_rel(void* p, uint64_t v) noexcept nogil
    void fdc_store(void* p, uint64_t v) noexcept nogil
    int64_t fdc_add(void* p, int64_t d) noexcept nogil
    bint fdc_pid_gone(uint32_t pid) noexcept nogil
    uint32_t fdc_getpid() noexcept nogil

cdef enum:
    CC_KEY_MAX = 255 + 5  # qname wire + qtype + qclass + DO|CD octet
    CC_OPT_LEN = 11
    CC_COPIED = 0x7910  # opcode, RD, CD come from the query (cache.py _COPIED)
    CC_AA = 0x0400
    CC_AD = 0x0020
    CC_CD = 0x0010
    CC_TC = 0x0200
    K_EMPTY = 0
    K_SUCCESS = 1
    K_DENIAL = 2
    EVICT_PROBES = 16  # buckets a full store looks into for a victim of its own
    READ_TRIES = 4  # a read that races a writer this often is a miss
    CC_MAX_ZONES = 8  # zones per list the C policy holds; more: Python decides
    CC_MAX_OFFSETS = CS_DATA_MAX // 2


# A copy of one slot, taken under its seqlock.
ctypedef struct CSlot:
    int kind
    int cache
    int keepttl
    unsigned int rcode
    Py_ssize_t keylen, bodylen, noffsets, qend
    uint32_t ttl
    int64_t stored_ns, until_ns, expires_ns, dead_ns, prefetch_ns
    unsigned char data[CS_DATA_MAX]


# One ``cache`` stanza's policy, for insert_response (pushed by set_policy).
ctypedef struct CPolicy:
    int active
    int index  # its CS_CACHE number
    int64_t success_ttl, success_minttl, denial_ttl, denial_minttl
    int64_t servfail_ns  # 0: SERVFAIL not cached
    int64_t stale_ns, prefetch_ns
    int prefetch, keepttl
    double prefetch_pct
    int nzones[3]  # covered zones, disable success, disable denial
    int zlen[3][CC_MAX_ZONES]
    unsigned char zone[3][CC_MAX_ZONES][256]


cdef inline uint64_t cc_hash(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    # FNV-1a 64; never 0 (0 marks an empty slot)
    cdef uint64_t h = 14695981039346656037ULL
    cdef Py_ssize_t i
    for i in range(n):
        h ^= p[i]
        h *= 1099511628211ULL
    return h if h else 1


cdef inline uint16_t _u16(const unsigned char* s, int off) noexcept nogil:
    return (<const uint16_t*>(s + off))[0]


cdef inline int64_t _i64(const unsigned char* s, int off) noexcept nogil:
    return (<const int64_t*>(s + off))[0]


cdef inline void _set_u16(unsigned char* s, int off, uint16_t v) noexcept nogil:
    (<uint16_t*>(s + off))[0] = v


cdef inline void _set_i64(unsigned char* s, int off, int64_t v) noexcept nogil:
    (<int64_t*>(s + off))[0] = v


cdef inline bint in_zone(const unsigned char* key, Py_ssize_t n, const unsigned char* z,
                         Py_ssize_t zn) noexcept nogil:
    """Is the lowercased wire name ``key`` (n octets) at or below zone ``z``?"""
    cdef Py_ssize_t pos = 0, start = n - zn
    if zn > n or memcmp(key + start, z, zn) != 0:
        return False
    while pos < start:
        pos += key[pos] + 1
    return pos == start


cdef inline uint64_t _freq(unsigned char* s, int64_t now, int64_t window) noexcept nogil:
    """CoreDNS freq.Update: hits within the prefetch window count up (advisory words)."""
    cdef int64_t last = <int64_t>fdc_load(s + CS_LAST_HIT_NS)
    cdef uint64_t hits
    fdc_store(s + CS_LAST_HIT_NS, <uint64_t>now)
    if now - last > window:
        fdc_store(s + CS_HITS, 1)
        return 1
    hits = <uint64_t>fdc_add(s + CS_HITS, 1)
    return hits


cdef inline void _put_u32(unsigned char* p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF
