# Bounds-checked reads of packet and image bytes (included by _wire.pyx).
#
# Packet bytes are read only through a Cursor (py-pgproto's frb habit):
# every read checks the remaining length first and returns an error code
# instead of running past the end. Image bytes go through img_u16/img_u32,
# which check the offset against the image length the same way.


cdef inline uint32_t be16(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 8) | p[1]


cdef inline uint32_t be32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void put16(unsigned char* p, uint32_t v) noexcept nogil:
    p[0] = (v >> 8) & 0xFF
    p[1] = v & 0xFF


cdef inline void cur_init(Cursor* c, const unsigned char* buf, Py_ssize_t n,
                          Py_ssize_t pos) noexcept nogil:
    c.buf = buf
    c.len = n
    c.pos = pos


cdef inline bint cur_has(const Cursor* c, Py_ssize_t n) noexcept nogil:
    """True when `n` (>= 0) more octets can be read."""
    FDNS_ASSERT(c.pos >= 0)
    FDNS_ASSERT(c.pos <= c.len)
    return n <= c.len - c.pos


cdef inline int cur_u16(Cursor* c, uint32_t* v) noexcept nogil:
    if not cur_has(c, 2):
        return E_SHORT
    v[0] = be16(c.buf + c.pos)
    c.pos += 2
    return E_OK


cdef inline int cur_u32(Cursor* c, uint32_t* v) noexcept nogil:
    if not cur_has(c, 4):
        return E_SHORT
    v[0] = be32(c.buf + c.pos)
    c.pos += 4
    return E_OK


cdef inline int cur_skip(Cursor* c, Py_ssize_t n, int err) noexcept nogil:
    """Skip `n` octets, or fail with `err` (the caller's class of overrun)."""
    if not cur_has(c, n):
        return err
    c.pos += n
    return E_OK


cdef int cur_name(Cursor* c, unsigned char* out, Py_ssize_t* out_len) noexcept nogil:
    """Walk a possibly compressed name at c.pos; leave c.pos just past it.

    Precondition: `out` is NULL or has room for 255 octets. Pointers must land
    strictly before the previous jump target (dnspython's rule, RFC 9267 §2),
    which ends every walk; at most WIRE_MAX_POINTERS of them are followed.
    """
    cdef Py_ssize_t p = c.pos
    cdef Py_ssize_t limit = c.pos
    cdef Py_ssize_t end = -1
    cdef Py_ssize_t total = 0
    cdef Py_ssize_t ptr
    cdef unsigned int length
    cdef unsigned int hops = 0
    if p < 0:
        return E_SHORT
    while True:
        if p >= c.len:
            return E_SHORT
        length = c.buf[p]
        if length == 0:
            if out != NULL:
                out[total] = 0
            if out_len != NULL:
                out_len[0] = total + 1
            c.pos = end if end >= 0 else p + 1
            FDNS_ASSERT(c.pos <= c.len and total + 1 <= 255)
            return E_OK
        if length & 0xC0 == 0xC0:
            if p + 1 >= c.len:
                return E_SHORT
            ptr = ((length & 0x3F) << 8) | c.buf[p + 1]
            if ptr >= limit:
                return E_BAD_PTR
            hops += 1
            if hops > WIRE_MAX_POINTERS:
                return E_PTR_LOOP
            if end < 0:
                end = p + 2
            limit = ptr
            p = ptr
            continue
        if length & 0xC0:
            return E_LABEL_TYPE
        if total + length + 1 >= 255:  # no room left for the root octet (RFC 1035 §3.1)
            return E_NAME_LONG
        if p + 1 + length > c.len:
            return E_SHORT
        if out != NULL:
            memcpy(out + total, c.buf + p, length + 1)
        total += length + 1
        p += length + 1


cdef inline int img_u16(const unsigned char* im, Py_ssize_t n, Py_ssize_t off,
                        uint32_t* v) noexcept nogil:
    """Little-endian u16 of the image at `off`, or E_IMAGE past its end."""
    if off < 0 or off > n - 2:
        return E_IMAGE
    v[0] = im[off] | (<uint32_t>im[off + 1] << 8)
    return E_OK


cdef inline int img_u32(const unsigned char* im, Py_ssize_t n, Py_ssize_t off,
                        uint32_t* v) noexcept nogil:
    """Little-endian u32 of the image at `off`, or E_IMAGE past its end."""
    if off < 0 or off > n - 4:
        return E_IMAGE
    v[0] = (im[off] | (<uint32_t>im[off + 1] << 8) | (<uint32_t>im[off + 2] << 16)
            | (<uint32_t>im[off + 3] << 24))
    return E_OK
