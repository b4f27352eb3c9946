# The cache policy in C, for CacheTable.insert_response (_udp_cache.pxi):
# the same rules as ResponseCache.classify and .put (fastdns/forward/cache.py),
# on an upstream message scanned as _wire.pyx's _parse_response scans it.
# Anything this scanner does not accept returns "cannot decide" (Python then
# parses and decides), never a guess.

cdef enum:
    CC_MAX_HOPS = 127  # compression pointers followed in one name (WIRE_MAX_POINTERS)
    MINIMAL_DEFAULT_TTL = 5  # cache.py: a message without RRs

ctypedef struct CScan:
    unsigned int rcode, an, ns, ar
    int tc, has_opt
    Py_ssize_t body_len  # the message up to its OPT (the whole message without one)
    int64_t min_ttl, soa_min
    Py_ssize_t noff
    uint16_t offs[CC_MAX_OFFSETS]


cdef inline Py_ssize_t name_end(const unsigned char* p, Py_ssize_t n,
                                Py_ssize_t pos) noexcept nogil:
    """Where the name at ``pos`` ends in the message; -1 if malformed.

    Pointers must point strictly backwards (before the labels they follow);
    label types 64-191 and names over 255 octets are errors (RFC 1035 §4.1.4).
    """
    cdef Py_ssize_t end = -1, cur = pos, limit = pos, total = 1, t
    cdef int hops = 0
    cdef unsigned int c
    while True:
        if cur >= n:
            return -1
        c = p[cur]
        if c == 0:
            return end if end >= 0 else cur + 1
        if c >= 0xC0:
            if cur + 2 > n:
                return -1
            t = ((c & 0x3F) << 8) | p[cur + 1]
            if end < 0:
                end = cur + 2
            if t >= limit:
                return -1
            limit = t
            cur = t
            hops += 1
            if hops > CC_MAX_HOPS:
                return -1
            continue
        if c & 0xC0:
            return -1
        total += c + 1
        if total > 255:
            return -1
        cur += c + 1


cdef inline unsigned int be16(const unsigned char* p) noexcept nogil:
    return p[0] << 8 | p[1]


cdef inline uint32_t be32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef int scan_response(const unsigned char* p, Py_ssize_t n, const unsigned char* key,
                       Py_ssize_t klen, CScan* sc) noexcept nogil:
    """Fill ``sc`` from the message; 0 when it parses and answers the question ``key``."""
    cdef Py_ssize_t pos = 12, qlen = klen - 5, i, start, ttl_at, rd_end, sub
    cdef unsigned int c, count, first_add, rtype, rdlen, qd
    cdef uint32_t ttl, v
    cdef unsigned char ch
    if n < 12:
        return -1
    qd = be16(p + 4)
    sc.an = be16(p + 6)
    sc.ns = be16(p + 8)
    sc.ar = be16(p + 10)
    sc.tc = (p[2] << 8 | p[3]) & CC_TC != 0
    sc.rcode = p[3] & 0xF
    if qd != 1 or n < 12 + qlen + 4:
        return -1
    # the question, uncompressed, equal to the key case-insensitively (RFC 4343)
    i = 0
    while i < qlen:
        c = p[12 + i]
        if c & 0xC0 or i + c + 1 > qlen or key[i] != c:
            return -1
        for start in range(i + 1, i + 1 + c):
            ch = p[12 + start]
            if 65 <= ch <= 90:
                ch += 32
            if ch != key[start]:
                return -1
        i += c + 1
        if c == 0:
            break
    if i != qlen or p[12 + qlen - 1] != 0:
        return -1
    pos = 12 + qlen
    if memcmp(p + pos, key + qlen, 4) != 0:
        return -1
    pos += 4
    sc.min_ttl = -1
    sc.soa_min = -1
    sc.noff = 0
    sc.has_opt = 0
    sc.body_len = n
    first_add = sc.an + sc.ns
    count = first_add + sc.ar
    for i in range(count):
        start = pos
        pos = name_end(p, n, pos)
        if pos < 0 or pos + 10 > n:
            return -1
        rtype = be16(p + pos)
        ttl_at = pos + 4
        ttl = be32(p + ttl_at)
        rdlen = be16(p + pos + 8)
        pos += 10
        rd_end = pos + rdlen
        if rd_end > n:
            return -1
        if rtype == 41 and i >= first_add:
            # OPT: stored without it, so it must be the last RR and carry no
            # extended rcode bits (forward/message.py strip_opt); else Python decides
            if sc.has_opt or i != count - 1 or start + 1 != pos - 10 or p[start] != 0:
                return -1
            if ttl >> 24:
                return -1
            sc.has_opt = 1
            sc.body_len = start
        else:
            if sc.noff >= CC_MAX_OFFSETS:
                return -1
            sc.offs[sc.noff] = <uint16_t>ttl_at
            sc.noff += 1
            if sc.min_ttl < 0 or ttl < sc.min_ttl:
                sc.min_ttl = ttl
            if rtype == 6 and sc.an <= i < first_add:
                # RFC 2308 §5: a negative answer lives min(SOA TTL, SOA MINIMUM)
                sub = name_end(p, n, pos)
                if sub < 0:
                    return -1
                sub = name_end(p, n, sub)
                if sub < 0 or sub + 20 != rd_end:
                    return -1
                v = be32(p + sub + 16)
                if sc.soa_min < 0:
                    sc.soa_min = ttl if ttl < v else v
        pos = rd_end
    if pos != n:
        return -1
    return 0


cdef bint zone_listed(CPolicy* pol, int li, const unsigned char* name,
                      Py_ssize_t n) noexcept nogil:
    """Is ``name`` in one of the policy's zones of list ``li`` (0 covered, 1/2 disabled)?"""
    cdef int i
    for i in range(pol.nzones[li]):
        if in_zone(name, n, pol.zone[li][i], pol.zlen[li][i]):
            return True
    return False


cdef int classify(CPolicy* pol, CScan* sc, int64_t* ttl, int64_t* lifetime_ns) noexcept nogil:
    """ResponseCache.classify: K_SUCCESS / K_DENIAL with the TTL, or K_EMPTY (not cached)."""
    cdef int64_t t
    cdef bint negative
    ttl[0] = 0
    lifetime_ns[0] = 0
    if sc.tc:
        return K_EMPTY  # CoreDNS cache.go key(): we don't store truncated responses
    if sc.rcode == 2:  # SERVFAIL, for `servfail` seconds
        if pol.servfail_ns <= 0:
            return K_EMPTY
        ttl[0] = pol.servfail_ns // 1000000000
        lifetime_ns[0] = pol.servfail_ns
        return K_DENIAL
    negative = sc.rcode == 3 or (sc.rcode == 0 and sc.an == 0 and (
        sc.soa_min >= 0 or sc.ns == 0))
    if sc.rcode == 0 and not negative:
        t = sc.min_ttl if sc.min_ttl >= 0 else MINIMAL_DEFAULT_TTL
        if t < pol.success_minttl:
            t = pol.success_minttl
        if t > pol.success_ttl:
            t = pol.success_ttl
        ttl[0] = t
        lifetime_ns[0] = t * 1000000000
        return K_SUCCESS
    if negative:
        if sc.soa_min < 0:
            return K_EMPTY  # RFC 2308 §5: without SOA, SHOULD NOT be cached
        t = sc.soa_min if sc.soa_min < sc.min_ttl else sc.min_ttl
        if t < pol.denial_minttl:
            t = pol.denial_minttl
        if t > pol.denial_ttl:
            t = pol.denial_ttl
        ttl[0] = t
        lifetime_ns[0] = t * 1000000000
        return K_DENIAL
    return K_EMPTY  # REFUSED, FORMERR, NOTIMP ...: CoreDNS OtherError


cdef CPolicy* make_policy(int cache, zones, disable_success, disable_denial,
                          int success_ttl, int success_minttl, int denial_ttl,
                          int denial_minttl, double servfail_ttl, double serve_stale,
                          int prefetch, double prefetch_duration, double prefetch_percentage,
                          bint keepttl) except NULL:
    """A CPolicy (calloc'd: the caller frees it) from ResponseCache.c_policy's values."""
    cdef CPolicy* pol = <CPolicy*>calloc(1, sizeof(CPolicy))
    cdef int li, i
    if pol == NULL:
        raise MemoryError()
    pol.index = cache
    pol.success_ttl, pol.success_minttl = success_ttl, success_minttl
    pol.denial_ttl, pol.denial_minttl = denial_ttl, denial_minttl
    pol.servfail_ns = <int64_t>(servfail_ttl * 1e9) if servfail_ttl > 0 else 0
    pol.stale_ns = <int64_t>(serve_stale * 1e9)
    pol.prefetch = prefetch
    pol.prefetch_ns = <int64_t>(prefetch_duration * 1e9)
    pol.prefetch_pct = prefetch_percentage
    pol.keepttl = keepttl
    pol.active = 1
    for li, names in enumerate((zones, disable_success, disable_denial)):
        if len(names) > CC_MAX_ZONES:
            pol.active = 0
            break
        pol.nzones[li] = len(names)
        for i, z in enumerate(names):
            if len(z) > 255 or len(z) == 0:
                pol.active = 0
                break
            pol.zlen[li][i] = len(z)
            memcpy(pol.zone[li][i], <const char*>PyBytes_AS_STRING(z), len(z))
    return pol
