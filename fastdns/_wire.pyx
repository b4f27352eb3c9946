"""Cython wire core: the per-packet path of fastdns.

Same Python API, bytes and exceptions as the pure-Python twin
``fastdns.wire`` (docs/internals.md §1), plus a C API (``_wire.pxd``) that
the UDP loop calls without the GIL. The per-packet path (``answer_packet``)
creates no Python object and allocates nothing: the query is parsed into a
stack struct, its lowercased name hashed while it is copied, the image
probed in place and the answer assembled straight into the caller's buffer.
C helpers return error codes; only the Python entry points turn them into
``fastdns.errors`` classes.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy

from fastdns import errors as _errors
from fastdns.ipc.image import ImageError

include "_wire_cursor.pxi"

SLOT = WIRE_SLOT
STATUS_SLOW = WIRE_STATUS_SLOW
ST_ANSWER = 0
ST_DROP = 1
ST_SLOW = 2
MAX_POINTERS = WIRE_MAX_POINTERS
DEBUG_BUILD = bool(FASTDNS_DEBUG)

# Indexed by WireErr (_wire.pxd), same order.
_ERROR_CLASSES = (
    None,
    _errors.DropPacket,
    _errors.ShortMessage,
    _errors.QuestionCount,
    _errors.LabelTooLong,
    _errors.NameTooLong,
    _errors.BadLabelType,
    _errors.CompressionInQuestion,
    _errors.BadPointer,
    _errors.PointerLoop,
    _errors.BadRdata,
    _errors.DuplicateOPT,
    _errors.BadOPT,
    _errors.TrailingData,
    _errors.BadEncoding,
    ImageError,
)

cdef enum:
    QR = 0x8000
    TC = 0x0200
    RA = 0x0080
    COPIED = 0x7910           # opcode, RD, CD (RFC 1035 §4.1.1; RFC 8906: not Z)
    T_OPT = 41
    T_SOA = 6
    OPT_LEN = 11
    EDNS_PAYLOAD = 1232
    MIN_PAYLOAD = 512
    R_FORMERR = 1
    R_SERVFAIL = 2
    R_NOTIMP = 4
    R_REFUSED = 5
    R_BADVERS = 16
    T_IXFR = 251              # RFC 1995
    T_AXFR = 252              # RFC 5936
    ZK_KUBERNETES = 0         # zone kinds of fastdns.ipc.image
    ZK_POD = 2
    IMG_HEADER = 64
    IMG_SLOT = 16
    IMG_ZONE = 32
    ZF_SLOW_MISS = 0x2
    LK_ANSWER = 0
    LK_SLOW = 2

cdef uint32_t _CRC[256]
cdef unsigned char _LOWER[256]


cdef void _init_tables() noexcept:
    cdef uint32_t c
    cdef int i, _k
    for i in range(256):
        c = i
        for _k in range(8):
            c = (c >> 1) ^ (0xEDB88320 if c & 1 else 0)
        _CRC[i] = c
        _LOWER[i] = i + 32 if 65 <= i <= 90 else i


_init_tables()


cdef inline uint32_t crc_step(uint32_t reg, unsigned char b) noexcept nogil:
    return _CRC[(reg ^ b) & 0xFF] ^ (reg >> 8)


cdef uint32_t crc32_update(uint32_t crc, const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """zlib.crc32(p[:n], crc): the table-driven reflected CRC-32 (IEEE 802.3)."""
    cdef uint32_t reg = ~crc
    cdef Py_ssize_t i
    for i in range(n):
        reg = crc_step(reg, p[i])
    return ~reg


def crc32(data, value=0):
    """zlib.crc32 computed by the core's own table (the image hash; tested equal)."""
    cdef bytes b = bytes(data)
    return crc32_update(<uint32_t>(value & 0xFFFFFFFF),
                        <const unsigned char*>PyBytes_AS_STRING(b), len(b))


cdef int _raise(int err) except -1:
    raise _ERROR_CLASSES[err]()


# ---------------------------------------------------------------- queries

cdef int parse_question(Cursor* c, CQuery* q) noexcept nogil:
    """Read the question at c.pos (= 12): lowercase the name into q.key while
    feeding the CRC and marking label starts; no compression allowed."""
    cdef Py_ssize_t total = 0
    cdef Py_ssize_t i
    cdef uint32_t length, v
    cdef uint32_t reg = 0xFFFFFFFF
    cdef unsigned char ch
    cdef int err
    q.starts[0] = q.starts[1] = q.starts[2] = q.starts[3] = 0
    while True:
        if not cur_has(c, 1):
            return E_SHORT
        length = c.buf[c.pos]
        q.starts[total >> 6] |= (<uint64_t>1) << (total & 63)
        if length == 0:
            q.key[total] = 0
            reg = crc_step(reg, 0)
            total += 1
            c.pos += 1
            break
        if length & 0xC0 == 0xC0:
            return E_COMP_Q
        if length & 0xC0:
            return E_LABEL_TYPE
        if total + length + 1 >= 255:
            return E_NAME_LONG
        if not cur_has(c, length + 1):
            return E_SHORT
        q.key[total] = <unsigned char>length
        reg = crc_step(reg, <unsigned char>length)
        for i in range(1, length + 1):
            ch = _LOWER[c.buf[c.pos + i]]
            q.key[total + i] = ch
            reg = crc_step(reg, ch)
        total += length + 1
        c.pos += length + 1
    FDNS_ASSERT(total <= 255 and c.pos == 12 + total)
    q.qname_len = total
    err = cur_u16(c, &v)
    if err:
        return err
    q.qtype = v
    err = cur_u16(c, &v)
    if err:
        return err
    q.qclass = v
    q.question_end = c.pos
    q.key_crc = reg
    q.has_question = 1
    return E_OK


cdef int walk_options(const unsigned char* buf, Py_ssize_t pos, Py_ssize_t end) noexcept nogil:
    """RFC 6891 §6.1.2: {code, length, data} options must tile the rdata exactly."""
    cdef Cursor o
    cdef uint32_t code, olen
    cur_init(&o, buf, end, pos)
    while o.pos < o.len:
        if cur_u16(&o, &code) or cur_u16(&o, &olen) or cur_skip(&o, olen, E_BAD_OPT):
            return E_BAD_OPT
    return E_OK


# ---------------------------------------------------------------- records

# The records after the question (RFC 1035 §4.1), read one at a time by
# parse_query_c, _parse_response and check_response_c; walk_next holds the
# rules every record must keep, so that each is written once.
ctypedef struct RRWalk:
    Cursor c                  # at the next record
    uint32_t i                # records read
    uint32_t count            # records in all: AN + NS + AR
    uint32_t ancount
    uint32_t first_additional
    bint seen_opt
    bint soa                  # check (and read) the authority SOAs' rdata

# One record as walk_next read it.
ctypedef struct RR:
    uint32_t rtype
    uint32_t rclass
    uint32_t ttl
    Py_ssize_t ttl_at         # where its TTL lies (the forwarder's cache rewrites it)
    bint opt                  # the message's OPT (the one of the additional section)
    bint soa                  # an authority SOA whose rdata was read (walk.soa only)
    uint32_t minimum          # that SOA's MINIMUM


cdef inline void walk_init(RRWalk* w, const Cursor* c, uint32_t an, uint32_t ns,
                           uint32_t ar, bint soa) noexcept nogil:
    """Start a walk at c.pos, just past the question."""
    w.c = c[0]
    w.i = 0
    w.count = an + ns + ar
    w.ancount = an
    w.first_additional = an + ns
    w.seen_opt = False
    w.soa = soa


cdef inline int soa_rdata(const Cursor* c, Py_ssize_t rd_end, uint32_t* minimum) noexcept nogil:
    """SOA rdata at c.pos: MNAME, RNAME and five u32 that end it exactly
    (RFC 1035 §3.3.13); *minimum = the last of them."""
    cdef Cursor sub = c[0]
    cdef int err = cur_name(&sub, NULL, NULL)
    if err:
        return err
    err = cur_name(&sub, NULL, NULL)
    if err:
        return err
    if sub.pos + 20 != rd_end:
        return E_RDATA
    minimum[0] = be32(sub.buf + sub.pos + 16)
    return E_OK


cdef inline int walk_next(RRWalk* w, RR* rr) noexcept nogil:
    """Read and check record w.i into `rr`, leaving w.c just past it; a WireErr."""
    cdef Cursor* c = &w.c
    cdef Py_ssize_t name_start = c.pos, name_end, rd_end
    cdef const unsigned char* f
    cdef uint32_t rdlen
    cdef int err = cur_name(c, NULL, NULL)
    if err:
        return err
    name_end = c.pos
    if not cur_has(c, 10):
        return E_SHORT
    f = c.buf + c.pos  # TYPE, CLASS, TTL, RDLENGTH: all in the message
    rr.rtype = be16(f)
    rr.rclass = be16(f + 2)
    rr.ttl_at = c.pos + 4
    rr.ttl = be32(f + 4)
    rdlen = be16(f + 8)
    c.pos += 10
    if not cur_has(c, rdlen):
        return E_RDATA
    rd_end = c.pos + rdlen
    rr.opt = rr.rtype == T_OPT and w.i >= w.first_additional
    rr.soa = w.soa and rr.rtype == T_SOA and w.ancount <= w.i < w.first_additional
    if rr.opt:
        if w.seen_opt:
            return E_DUP_OPT  # RFC 6891 §6.1.1
        if name_end != name_start + 1:
            return E_BAD_OPT  # owner must be the root, written as one 0 octet
        err = walk_options(c.buf, c.pos, rd_end)
        if err:
            return err
        w.seen_opt = True
    elif rr.soa:
        err = soa_rdata(c, rd_end, &rr.minimum)
        if err:
            return err
    c.pos = rd_end
    w.i += 1
    return E_OK


cdef inline int walk_end(const RRWalk* w) noexcept nogil:
    """After the last record: the message must end there."""
    return E_TRAILING if w.c.pos != w.c.len else E_OK


cdef int parse_query_c(const unsigned char* pkt, Py_ssize_t n, CQuery* q) noexcept nogil:
    """Parse a query into `q` (docs/internals.md §1); returns a WireErr.

    On an error after the question, q.has_question stays set so that the
    FORMERR can echo it.
    """
    cdef Cursor c
    cdef RRWalk w
    cdef RR rr
    cdef int err
    q.has_question = 0
    q.edns = 0
    q.edns_version = 0
    q.payload = MIN_PAYLOAD
    q.do = 0
    q.qname_len = 0
    q.qtype = 0
    q.qclass = 0
    q.question_end = 12
    if n < 12:
        return E_DROP
    q.id = be16(pkt)
    q.flags = be16(pkt + 2)
    if q.flags & QR:  # RFC 1035/2181: never answer a response
        return E_DROP
    q.opcode = (q.flags >> 11) & 0xF
    q.qdcount = be16(pkt + 4)
    q.ancount = be16(pkt + 6)
    q.nscount = be16(pkt + 8)
    q.arcount = be16(pkt + 10)
    cur_init(&c, pkt, n, 12)
    if q.opcode != 0:
        # RFC 8906 §3.1.4: NOTIMP; echo the question when it can be read.
        if q.qdcount == 1 and parse_question(&c, q) != E_OK:
            q.has_question = 0
            q.qname_len = 0
            q.qtype = 0
            q.qclass = 0
            q.question_end = 12
        return E_OK
    if q.qdcount != 1:
        return E_QCOUNT
    err = parse_question(&c, q)
    if err:
        return err
    walk_init(&w, &c, q.ancount, q.nscount, q.arcount, False)
    while w.i < w.count:
        err = walk_next(&w, &rr)
        if err:
            return err
        if rr.opt:
            q.edns = 1
            q.edns_version = (rr.ttl >> 16) & 0xFF
            q.payload = rr.rclass if rr.rclass > MIN_PAYLOAD else MIN_PAYLOAD
            q.do = (rr.ttl >> 15) & 1
    return walk_end(&w)


@cython.final
cdef class Query:
    """A parsed query (read-only); see docs/internals.md §1 for each field."""

    cdef CQuery c
    cdef readonly bytes qname
    cdef readonly bytes key

    def __init__(self):
        raise TypeError("Query objects come from parse_query()")

    @property
    def id(self):
        return self.c.id

    @property
    def flags(self):
        return self.c.flags

    @property
    def opcode(self):
        return self.c.opcode

    @property
    def qtype(self):
        return self.c.qtype

    @property
    def qclass(self):
        return self.c.qclass

    @property
    def question_end(self):
        return self.c.question_end

    @property
    def edns(self):
        return bool(self.c.edns)

    @property
    def edns_version(self):
        return self.c.edns_version

    @property
    def payload(self):
        return self.c.payload

    @property
    def do(self):
        return bool(self.c.do)

    def __repr__(self):
        return (f"<Query id={self.id} opcode={self.opcode} qname={self.qname!r} "
                f"qtype={self.qtype} qclass={self.qclass} edns={self.edns}>")


cdef Query _query_from(const unsigned char* pkt, CQuery* cq):
    cdef Query q = Query.__new__(Query)
    q.c = cq[0]
    if cq.has_question:
        q.qname = PyBytes_FromStringAndSize(<const char*>pkt + 12, cq.qname_len)
        q.key = PyBytes_FromStringAndSize(<const char*>cq.key, cq.qname_len)
    else:
        q.qname = b""
        q.key = b""
    return q


def parse_query(data):
    """Parse a query per docs/internals.md §1; raises a ``WireError`` subclass."""
    cdef bytes d = bytes(data)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(d)
    cdef CQuery cq
    cdef int err = parse_query_c(p, len(d), &cq)
    if err:
        _raise(err)
    return _query_from(p, &cq)


# ---------------------------------------------------------------- names

def encode_name(name):
    """Presentation name ("a.B.c" or "a.B.c.") -> uncompressed wire, case kept."""
    cdef bytes raw
    cdef bytearray out
    cdef Py_ssize_t i, start, n
    if isinstance(name, str):
        try:
            raw = name.encode("ascii")
        except UnicodeEncodeError:
            raise _errors.BadEncoding("names must be ASCII (IDNA is the caller's job)") from None
    elif isinstance(name, (bytes, bytearray)):
        raw = bytes(name)
    else:
        raise _errors.BadEncoding(f"cannot encode a {type(name).__name__} as a name")
    if raw == b".":
        return b"\x00"
    n = len(raw)
    if n and raw[n - 1] == 0x2E:
        n -= 1
    out = bytearray()
    start = 0
    for i in range(n + 1):
        if i == n or raw[i] == 0x2E:
            if i == start:
                raise _errors.BadEncoding("empty label")
            if i - start > 63:
                raise _errors.LabelTooLong()
            out.append(i - start)
            out += raw[start:i]
            start = i + 1
    out.append(0)
    if len(out) > 255:
        raise _errors.NameTooLong()
    return bytes(out)


def decode_name(data, offset):
    """(uncompressed wire, offset just past the name in `data`)."""
    cdef bytes d = bytes(data)
    cdef Cursor c
    cdef unsigned char buf[256]
    cdef Py_ssize_t length = 0
    cdef int err
    if offset < 0 or offset >= len(d):
        raise _errors.ShortMessage()
    cur_init(&c, <const unsigned char*>PyBytes_AS_STRING(d), len(d), offset)
    err = cur_name(&c, buf, &length)
    if err:
        _raise(err)
    return PyBytes_FromStringAndSize(<const char*>buf, length), c.pos


cdef bytes _lower_bytes(bytes b):
    cdef Py_ssize_t i, n = len(b)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef unsigned char* o = <unsigned char*>PyBytes_AS_STRING(out)
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(b)
    for i in range(n):
        o[i] = _LOWER[s[i]]
    return out


# ---------------------------------------------------------------- responses

cdef inline Py_ssize_t put_opt(unsigned char* p, uint32_t ext_rcode, int do) noexcept nogil:
    """Our OPT: root owner, payload 1232, version 0, DO echoed, no options (RFC 6891 §6.1.3)."""
    p[0] = 0
    put16(p + 1, T_OPT)
    put16(p + 3, EDNS_PAYLOAD)
    p[5] = ext_rcode & 0xFF
    p[6] = 0
    p[7] = 0x80 if do else 0
    p[8] = 0
    p[9] = 0
    p[10] = 0
    return OPT_LEN


cdef inline void put_header(unsigned char* out, const unsigned char* pkt, uint32_t flags,
                            uint32_t qd, uint32_t an, uint32_t ns, uint32_t ar) noexcept nogil:
    out[0] = pkt[0]
    out[1] = pkt[1]
    put16(out + 2, flags)
    put16(out + 4, qd)
    put16(out + 6, an)
    put16(out + 8, ns)
    put16(out + 10, ar)


cdef Py_ssize_t build_error(const unsigned char* pkt, const CQuery* q, uint32_t rcode,
                            bint with_question, bint with_opt,
                            unsigned char* out) noexcept nogil:
    """Error answer into `out` (room for 12 + 259 + 11 octets); returns its length.

    Precondition: pkt holds >= 12 octets and, with_question, q.question_end.
    """
    cdef uint32_t flags = (be16(pkt + 2) & COPIED) | QR | RA | (rcode & 0xF)
    cdef Py_ssize_t qlen, n
    if not with_question:
        put_header(out, pkt, flags, 0, 0, 0, 0)
        return 12
    qlen = q.question_end - 12
    FDNS_ASSERT(0 < qlen and qlen <= 259)
    put_header(out, pkt, flags, 1, 0, 0, 1 if with_opt else 0)
    memcpy(out + 12, pkt + 12, qlen)
    n = 12 + qlen
    if with_opt:
        n += put_opt(out + n, rcode >> 4, q.do)
    return n


cdef Py_ssize_t respond_c(const unsigned char* pkt, const CQuery* q, const unsigned char* t,
                          Py_ssize_t tlen, uint32_t spos, unsigned char* out,
                          Py_ssize_t out_cap, Py_ssize_t max_size) noexcept nogil:
    """Assemble header + question + template body (relocations patched) + OPT.

    Returns the length, or -1 for a malformed template. `max_size` > 0
    replaces the UDP limit. Preconditions: the question was parsed,
    spos < 0x4000, out_cap >= WIRE_SLOT and >= max_size.
    """
    cdef uint32_t nreloc, r, flags, i
    cdef Py_ssize_t head, blen, qlen, total, limit, optlen, body_at
    cdef unsigned char* p
    if tlen < 10:
        return -1
    nreloc = be16(t + 8)
    head = 10 + 2 * <Py_ssize_t>nreloc
    if head > tlen:
        return -1
    blen = tlen - head
    for i in range(nreloc):
        if be16(t + 10 + 2 * i) + 2 > blen:
            return -1
    qlen = q.question_end - 12
    if max_size > 0:
        limit = max_size
    else:
        # RFC 6891 §6.2.5: under 512 means 512; a slot caps one UDP answer.
        limit = q.payload if q.edns else MIN_PAYLOAD
        if limit > WIRE_SLOT:
            limit = WIRE_SLOT
    optlen = OPT_LEN if q.edns else 0
    flags = (be16(t) & ~(<uint32_t>COPIED) & 0xFFFF) | (be16(pkt + 2) & COPIED)
    total = 12 + qlen + blen + optlen
    if total > limit:
        # RFC 1035 §4.2.1 / RFC 2181 §9: TC, question only; the client retries over TCP.
        put_header(out, pkt, flags | TC, 1, 0, 0, 1 if q.edns else 0)
        memcpy(out + 12, pkt + 12, qlen)
        if q.edns:
            put_opt(out + 12 + qlen, 0, q.do)
        return 12 + qlen + optlen
    if total > out_cap:
        return -1
    put_header(out, pkt, flags, 1, be16(t + 2), be16(t + 4),
               (be16(t + 6) + (1 if q.edns else 0)) & 0xFFFF)
    memcpy(out + 12, pkt + 12, qlen)
    body_at = 12 + qlen
    memcpy(out + body_at, t + head, blen)
    for i in range(nreloc):
        r = be16(t + 10 + 2 * i)
        p = out + body_at + r
        p[0] = 0xC0 | (spos >> 8)
        p[1] = spos & 0xFF
    if q.edns:
        put_opt(out + total - OPT_LEN, 0, q.do)
    FDNS_ASSERT(total <= out_cap)
    return total


# ---------------------------------------------------------------- the image

cdef int find_c(const unsigned char* im, Py_ssize_t n, uint32_t nslots, uint32_t soff,
                const CQuery* q, uint32_t qtype, uint32_t h, uint32_t* ans) noexcept nogil:
    """Linear probe for (q.key, qtype) with hash h; *ans = answer offset or 0."""
    cdef uint32_t i = <uint32_t>((<uint64_t>h * nslots) >> 32)  # image.home_slot
    cdef uint32_t _k, sh = 0, sqt = 0, koff = 0
    cdef Py_ssize_t sp
    ans[0] = 0
    for _k in range(nslots):
        sp = soff + <Py_ssize_t>i * IMG_SLOT
        if img_u32(im, n, sp, &sh) or img_u32(im, n, sp + 12, &sqt):
            return E_IMAGE
        if sh == 0:
            return E_OK
        if sh == h and (sqt & 0xFFFF) == qtype and (sqt >> 16) == <uint32_t>q.qname_len:
            img_u32(im, n, sp + 4, &koff)
            if (koff + <Py_ssize_t>q.qname_len <= n
                    and memcmp(im + koff, q.key, q.qname_len) == 0):
                img_u32(im, n, sp + 8, ans)
                return E_OK
        i += 1
        if i == nslots:
            i = 0
    return E_OK


cdef inline uint32_t key_hash(uint32_t reg, uint32_t qtype) noexcept nogil:
    """crc32(key + qtype big-endian) | 1 from the key's CRC register."""
    reg = crc_step(reg, (qtype >> 8) & 0xFF)
    reg = crc_step(reg, qtype & 0xFF)
    return ~reg | 1


cdef int lookup_c(const unsigned char* im, Py_ssize_t n, const CQuery* q, int* kind,
                  int64_t* where, uint32_t* spos) noexcept nogil:
    """docs/internals.md §2: exact, then (key, QT_NAME), then the longest zone, else slow."""
    cdef uint32_t nslots = 0, soff = 0, nzones = 0, zoff = 0, ans = 0
    cdef uint32_t zflags = 0, neg = 0
    cdef int64_t zi = -1
    cdef Py_ssize_t zp, start = 0
    cdef int err
    if img_u32(im, n, 28, &nslots) or img_u32(im, n, 32, &soff):
        return E_IMAGE
    if img_u32(im, n, 36, &nzones) or img_u32(im, n, 40, &zoff):
        return E_IMAGE
    err = find_c(im, n, nslots, soff, q, q.qtype, key_hash(q.key_crc, q.qtype), &ans)
    if err:
        return err
    if ans == 0:
        err = find_c(im, n, nslots, soff, q, 0, key_hash(q.key_crc, 0), &ans)
        if err:
            return err
    if ans:
        kind[0] = LK_ANSWER
        where[0] = ans
        spos[0] = 12
        return E_OK
    err = zone_of_c(im, n, nzones, zoff, q, &zi, &start)
    if err:
        return err
    if zi < 0:
        kind[0] = LK_SLOW
        where[0] = -1
        return E_OK
    zp = zoff + zi * IMG_ZONE  # in bounds: zone_of_c checked the whole entry
    img_u16(im, n, zp + 6, &zflags)
    img_u32(im, n, zp + 8, &neg)
    if zflags & ZF_SLOW_MISS or neg == 0:
        kind[0] = LK_SLOW
        where[0] = zi
        return E_OK
    kind[0] = LK_ANSWER
    where[0] = neg
    spos[0] = 12 + start
    return E_OK


cdef int zone_of_c(const unsigned char* im, Py_ssize_t n, uint32_t nzones, uint32_t zoff,
                   const CQuery* q, int64_t* zi_out, Py_ssize_t* start_out) noexcept nogil:
    """The most specific image zone holding the question name (the image stores
    zones longest first): *zi_out = its index or -1, *start_out = where its
    name starts in q.key. E_IMAGE when an entry it reads runs past the image."""
    cdef uint32_t name_off = 0, name_len = 0, zi
    cdef Py_ssize_t zp, start
    zi_out[0] = -1
    for zi in range(nzones):
        zp = zoff + <Py_ssize_t>zi * IMG_ZONE
        if (img_u32(im, n, zp, &name_off) or img_u16(im, n, zp + 4, &name_len)
                or zp + IMG_ZONE > n):
            return E_IMAGE
        if name_len > <uint32_t>q.qname_len:
            continue
        start = q.qname_len - name_len
        if not (q.starts[start >> 6] >> (start & 63)) & 1:
            continue  # not on a label boundary
        if name_off + <Py_ssize_t>name_len > n:
            continue
        if memcmp(im + name_off, q.key + start, name_len) != 0:
            continue
        zi_out[0] = zi
        start_out[0] = start
        return E_OK
    return E_OK


cdef int transfer_refused_c(const unsigned char* im, Py_ssize_t n, const CQuery* q,
                            bint* refused) noexcept nogil:
    """AXFR/IXFR: whether the question's zone is the kubernetes plugin's, which
    refuses transfers (plugin/kubernetes/handler.go; wire.py's twin cites it)."""
    cdef uint32_t nzones = 0, zoff = 0, zkind = 0
    cdef int64_t zi = -1
    cdef Py_ssize_t start = 0
    cdef int err
    refused[0] = False
    if img_u32(im, n, 36, &nzones) or img_u32(im, n, 40, &zoff):
        return E_IMAGE
    err = zone_of_c(im, n, nzones, zoff, q, &zi, &start)
    if err:
        return err
    if zi >= 0:
        img_u16(im, n, zoff + zi * IMG_ZONE + 18, &zkind)
        refused[0] = zkind == ZK_KUBERNETES or zkind == ZK_POD
    return E_OK


cdef int template_c(const unsigned char* im, Py_ssize_t n, Py_ssize_t ans, uint32_t counter,
                    const unsigned char** t, Py_ssize_t* tlen) noexcept nogil:
    """Template variant `counter % nvariants` of the answer record at `ans`."""
    cdef uint32_t nvar = 0, voff = 0, length = 0
    if img_u16(im, n, ans, &nvar) or ans + 4 > n or nvar == 0:
        return E_IMAGE
    if img_u32(im, n, ans + 4 + 4 * <Py_ssize_t>(counter % nvar), &voff):
        return E_IMAGE
    if img_u32(im, n, voff, &length) or <Py_ssize_t>voff + 4 + length > n:
        return E_IMAGE
    t[0] = im + voff + 4
    tlen[0] = length
    return E_OK


cdef Py_ssize_t answer_packet(const unsigned char* image, Py_ssize_t image_len,
                              const unsigned char* pkt, Py_ssize_t pkt_len,
                              unsigned char* out, Py_ssize_t out_cap,
                              unsigned int counter, int* zone,
                              Py_ssize_t max_size=0) noexcept nogil:
    """The fast path for one packet (docs/internals.md §1, C API).

    Returns the answer length (> 0), 0 to drop, or -1 for the slow path with
    *zone = image zone index or -1. `max_size` > 0 replaces the UDP limit
    (TCP). Preconditions: out_cap >= WIRE_SLOT and >= max_size; the
    image header was checked by the caller (an image that is too short or
    lacks the magic sends everything to the slow path). Every image offset
    is bounds-checked: an inconsistent image answers SERVFAIL.
    """
    cdef CQuery q
    cdef int err, kind = LK_SLOW
    cdef int64_t where = -1
    cdef uint32_t spos = 12
    cdef const unsigned char* t = NULL
    cdef Py_ssize_t tlen = 0, r
    cdef bint refused = False
    FDNS_ASSERT(out_cap >= WIRE_SLOT and out_cap >= max_size)
    zone[0] = -1
    err = parse_query_c(pkt, pkt_len, &q)
    if err == E_DROP:
        return 0
    if err:
        # The question is echoed when it was read; the OPT is not, since the
        # message around it is not trusted (RFC 6891 §7 makes it optional).
        return build_error(pkt, &q, R_FORMERR, q.has_question, False, out)
    if q.opcode:
        return build_error(pkt, &q, R_NOTIMP, q.has_question, q.edns, out)
    if q.edns and q.edns_version:
        return build_error(pkt, &q, R_BADVERS, True, True, out)  # RFC 6891 §6.1.3
    if q.qclass != 1 and q.qclass != 255:
        return -1
    if image_len < IMG_HEADER or memcmp(image, b"FDNSIMG1", 8) != 0:
        return -1
    if q.qtype == T_AXFR or q.qtype == T_IXFR:
        err = transfer_refused_c(image, image_len, &q, &refused)
        if err:
            return build_error(pkt, &q, R_SERVFAIL, True, q.edns, out)
        if refused:
            return build_error(pkt, &q, R_REFUSED, True, q.edns, out)
    err = lookup_c(image, image_len, &q, &kind, &where, &spos)
    if err:
        return build_error(pkt, &q, R_SERVFAIL, True, q.edns, out)
    if kind == LK_SLOW:
        zone[0] = <int>where
        return -1
    err = template_c(image, image_len, where, counter, &t, &tlen)
    if err:
        return build_error(pkt, &q, R_SERVFAIL, True, q.edns, out)
    r = respond_c(pkt, &q, t, tlen, spos, out, out_cap, max_size)
    if r < 0:
        return build_error(pkt, &q, R_SERVFAIL, True, q.edns, out)
    FDNS_ASSERT(12 <= r and r <= out_cap)
    return r


cdef int _check_image(const unsigned char[::1] im) except -1:
    """The header checks of fastdns.ipc.image.read_header, raising its ImageError."""
    cdef Py_ssize_t n = im.shape[0]
    cdef const unsigned char* p
    cdef uint32_t v = 0
    cdef uint64_t size, nslots, soff
    if n < IMG_HEADER:
        raise ImageError("image shorter than its header")
    p = &im[0]
    img_u32(p, n, 8, &v)
    if memcmp(p, b"FDNSIMG1", 8) != 0 or v != 2:
        raise ImageError("not a fastdns image of format version 2")
    img_u32(p, n, 24, &v)
    size = v
    img_u32(p, n, 28, &v)
    nslots = v
    img_u32(p, n, 32, &v)
    soff = v
    if size > <uint64_t>n or nslots == 0 or soff + nslots * IMG_SLOT > size:
        raise ImageError("image header inconsistent with its size")
    return 0


def answer(image, data, counter=0, max_size=0):
    """The fast path for one packet: (status, response, zone_index); see docs/internals.md §1.

    `zone_index` is only meaningful for ST_SLOW; it is -1 otherwise.
    `max_size` > 0 replaces the UDP size limit (TCP passes 65535, RFC 7766 §8).
    """
    cdef const unsigned char[::1] im
    cdef bytes d
    cdef unsigned char stack_out[WIRE_SLOT]
    cdef unsigned char* out = stack_out
    cdef Py_ssize_t cap = WIRE_SLOT
    cdef Py_ssize_t limit
    cdef int zone = -1
    cdef Py_ssize_t r
    if not 0 <= max_size <= 0xFFFF:
        raise ValueError("max_size must be 0 (UDP) or a message size up to 65535")
    limit = max_size
    im = image
    _check_image(im)
    d = bytes(data)
    if limit > cap:
        cap = limit
        out = <unsigned char*>PyMem_Malloc(cap)
        if out == NULL:
            raise MemoryError()
    try:
        r = answer_packet(&im[0], im.shape[0], <const unsigned char*>PyBytes_AS_STRING(d),
                          len(d), out, cap, <unsigned int>(counter & 0xFFFFFFFF), &zone, limit)
        if r > 0:
            return ST_ANSWER, PyBytes_FromStringAndSize(<const char*>out, r), -1
        if r == 0:
            return ST_DROP, None, -1
        return ST_SLOW, None, zone
    finally:
        if out != stack_out:
            PyMem_Free(out)


def answer_batch(image, const unsigned char[::1] inbuf, const unsigned short[::1] inlens,
                 unsigned char[::1] outbuf, unsigned short[::1] outlens, counter=0):
    """Answer `len(inlens)` packets held in SLOT-sized slots; returns the slow count.

    Packet i uses rotation counter `counter + i`. No Python object is made
    per packet; the loop runs without the GIL.
    """
    cdef const unsigned char[::1] im = image
    cdef Py_ssize_t n = inlens.shape[0]
    cdef Py_ssize_t i, r, slow = 0
    cdef unsigned int c0 = <unsigned int>(counter & 0xFFFFFFFF)
    cdef int zone
    cdef const unsigned char* imp
    cdef const unsigned char* inp
    cdef unsigned char* outp
    cdef const unsigned short* inl
    cdef unsigned short* outl
    cdef Py_ssize_t imn = im.shape[0]
    _check_image(im)
    if inbuf.shape[0] < n * WIRE_SLOT or outbuf.shape[0] < n * WIRE_SLOT or outlens.shape[0] < n:
        raise ValueError("buffers too small for the batch")
    for i in range(n):
        if inlens[i] > WIRE_SLOT:
            raise ValueError("a packet length exceeds SLOT")
    if n == 0:
        return 0
    imp = &im[0]
    inp = &inbuf[0]
    outp = &outbuf[0]
    inl = &inlens[0]
    outl = &outlens[0]
    with nogil:
        for i in range(n):
            r = answer_packet(imp, imn, inp + i * WIRE_SLOT, inl[i], outp + i * WIRE_SLOT,
                              WIRE_SLOT, c0 + <unsigned int>i, &zone)
            if r > 0:
                outl[i] = <unsigned short>r
            elif r == 0:
                outl[i] = 0
            else:
                outl[i] = WIRE_STATUS_SLOW
                slow += 1
    return slow


def error_response(data, Query q, rcode):
    """An error answer (FORMERR, NOTIMP, BADVERS, SERVFAIL, REFUSED ...) to `data`."""
    cdef bytes d = bytes(data)
    cdef unsigned char out[12 + 259 + OPT_LEN]
    cdef Py_ssize_t r
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(d)
    if len(d) < 12:
        raise _errors.DropPacket()
    if not 0 <= rcode <= 0xFFF:
        raise ValueError("rcode out of range")
    if q is None or not q.c.has_question:
        r = build_error(p, NULL, rcode, False, False, out)
    else:
        if len(d) < q.c.question_end:
            raise _errors.ShortMessage()
        r = build_error(p, &q.c, rcode, True, q.c.edns, out)
    return PyBytes_FromStringAndSize(<const char*>out, r)


def respond(data, Query q not None, template, suffix_pos=12):
    """Assemble the answer to `data` from an image template (docs/internals.md §1)."""
    cdef bytes d = bytes(data)
    cdef bytes t = bytes(template)
    cdef unsigned char out[WIRE_SLOT]
    cdef Py_ssize_t r
    if not q.c.has_question:
        raise ValueError("respond needs a query whose question was parsed")
    if not 0 <= suffix_pos < 0x4000:
        raise ValueError("suffix_pos must fit a 14-bit compression pointer")
    if len(d) < q.c.question_end:
        raise _errors.ShortMessage()
    r = respond_c(<const unsigned char*>PyBytes_AS_STRING(d), &q.c,
                  <const unsigned char*>PyBytes_AS_STRING(t), len(t), suffix_pos, out, WIRE_SLOT,
                  0)
    if r < 0:
        raise ImageError("malformed template")
    return PyBytes_FromStringAndSize(<const char*>out, r)


# ---------------------------------------------------------------- upstream responses

@cython.final
cdef class Response:
    """A parsed upstream response (read-only), for the forwarder and its cache."""

    cdef readonly unsigned int id, flags, rcode, qtype, qclass, ancount, nscount, arcount
    cdef readonly bint tc
    cdef readonly bytes qname, key
    cdef readonly list ttl_offsets
    cdef readonly long long min_ttl, soa_minimum

    def __init__(self):
        raise TypeError("Response objects come from parse_response()")

    def __repr__(self):
        return (f"<Response id={self.id} rcode={self.rcode} qname={self.qname!r} "
                f"qtype={self.qtype} an={self.ancount} ns={self.nscount} ar={self.arcount}>")


cdef int response_start(const unsigned char* p, Py_ssize_t n, RRWalk* w, unsigned char* qbuf,
                        Py_ssize_t* qlen, uint32_t* qtype, uint32_t* qclass) noexcept nogil:
    """Check a response's header and question (name into `qbuf` as cur_name's
    `out`) and start the walk over its records; returns a WireErr."""
    cdef Cursor c
    cdef int err
    if n < 12:
        return E_SHORT
    if be16(p + 4) != 1:
        return E_QCOUNT
    cur_init(&c, p, n, 12)
    err = cur_name(&c, qbuf, qlen)
    if err:
        return err
    if cur_u16(&c, qtype) or cur_u16(&c, qclass):
        return E_SHORT
    walk_init(w, &c, be16(p + 6), be16(p + 8), be16(p + 10), True)
    return E_OK


cdef int _parse_response(const unsigned char* p, Py_ssize_t n, Response r) except -1:
    """Fill `r` from the message; returns a WireErr (0 = E_OK)."""
    cdef RRWalk w
    cdef RR rr
    cdef unsigned char qbuf[256]
    cdef Py_ssize_t qlen = 0
    cdef uint32_t qtype = 0, qclass = 0
    cdef int err = response_start(p, n, &w, qbuf, &qlen, &qtype, &qclass)
    if err:
        return err
    r.id = be16(p)
    r.flags = be16(p + 2)
    r.tc = (r.flags & TC) != 0
    r.ancount = be16(p + 6)
    r.nscount = be16(p + 8)
    r.arcount = be16(p + 10)
    r.qtype = qtype
    r.qclass = qclass
    r.rcode = r.flags & 0xF
    r.min_ttl = -1
    r.soa_minimum = -1
    r.ttl_offsets = []
    while w.i < w.count:
        err = walk_next(&w, &rr)
        if err:
            return err
        if rr.opt:
            r.rcode |= (rr.ttl >> 24) << 4  # RFC 6891 §6.1.3: the upper 8 bits of the rcode
            continue
        r.ttl_offsets.append(rr.ttl_at)
        if r.min_ttl < 0 or rr.ttl < r.min_ttl:
            r.min_ttl = rr.ttl
        if rr.soa and r.soa_minimum < 0:
            # RFC 2308 §5: a negative answer lives min(SOA TTL, SOA MINIMUM).
            r.soa_minimum = rr.ttl if rr.ttl < rr.minimum else rr.minimum
    err = walk_end(&w)
    if err:
        return err
    r.qname = PyBytes_FromStringAndSize(<const char*>qbuf, qlen)
    r.key = _lower_bytes(r.qname)
    return E_OK


cdef int check_response_c(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """Would ``parse_response`` accept the message? Its walk without the
    Python objects (the UDP fast path's forwarder checks answers with it);
    returns a WireErr (0 = E_OK)."""
    cdef RRWalk w
    cdef RR rr
    cdef uint32_t qtype = 0, qclass = 0
    cdef int err = response_start(p, n, &w, NULL, NULL, &qtype, &qclass)
    if err:
        return err
    while w.i < w.count:
        err = walk_next(&w, &rr)
        if err:
            return err
    return walk_end(&w)


def parse_response(data):
    """Parse an upstream answer: question, TTL positions, SOA minimum (RFC 2308 §5)."""
    cdef bytes d = bytes(data)
    cdef Response r = Response.__new__(Response)
    cdef int err = _parse_response(<const unsigned char*>PyBytes_AS_STRING(d), len(d), r)
    if err:
        _raise(err)
    return r
