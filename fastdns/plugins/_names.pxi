# Name matching shared by the plugins' C pre-lookup hooks (fastdns/plugins/_*.pyx):
# the block serving a name is the one whose zone is its longest suffix on a
# label boundary (Config.select), and rules apply under their zones.

cdef inline unsigned char lower(unsigned char c) noexcept nogil:
    return c + 32 if 65 <= c <= 90 else c


cdef inline bint name_is(const unsigned char* a, const unsigned char* b, int n) noexcept nogil:
    """``a`` (any case) equals ``b`` (lowercase) over ``n`` octets."""
    cdef int k = 0
    while k < n and lower(a[k]) == b[k]:
        k += 1
    return k == n


cdef inline int label_starts(const unsigned char* name, int nlen, int* starts) noexcept nogil:
    """The offsets of the labels of the wire ``name`` (at most 128), the root's last."""
    cdef int ns = 0, pos = 0
    while pos < nlen and ns < 128:
        starts[ns] = pos
        ns += 1
        if name[pos] == 0:
            break
        pos += name[pos] + 1
    return ns


cdef inline bint under(const unsigned char* name, int nlen, const int* starts, int ns,
                       const unsigned char* zone, int zlen) noexcept nogil:
    """Whether the wire ``name`` is ``zone`` (lowercase wire) or below it."""
    cdef int j, s
    for j in range(ns):
        s = starts[j]
        if nlen - s == zlen:
            return name_is(name + s, zone, zlen)
    return False
