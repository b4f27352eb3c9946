# cython: language_level=3, boundscheck=False, wraparound=False
"""The C pre-lookup hooks of the plugins that shape an answer: header, minimal, nsid.

Each hook holds per local port the zones of its blocks (the block serving
a name: its longest zone suffix) with that block's settings, and works as
fastdns/plugins/shapewire.py does in Python:

- header: the query's flags set/cleared before the lookup; when the block
  has response rules, PRE_POST and ``post`` sets/clears the answer's.
- minimal: PRE_POST; ``post`` drops the authority and additional sections
  of a NOERROR answer (records, or no SOA/NS in authority).
- nsid: PRE_POST only when the query's OPT asks for NSID; ``post`` appends
  the option to the answer's OPT (or hands it to Python when it has none,
  already has one, or would pass the client's UDP size).

``post`` sees only what the image answered: a query the image hands on
(forwarded, or completed in Python) goes to Python (PRE_SLOW), which
applies the same rule to the forwarded answer. The hook state between the
pre and the post call is per worker and per packet (one batch at a time).
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_New
from libc.string cimport memcpy, memmove, memset

include "../server/_prelookup.pxi"
include "_names.pxi"

cdef enum:
    MAX_ZONES = 32
    PRE_LOOKUP = 0
    PRE_ANSWER = 1
    PRE_SLOW = 2
    PRE_POST = 3
    HEADER = 1
    MINIMAL = 2
    NSID = 3

cdef struct Zone:
    int port
    int on
    int qset, qclear, rset, rclear  # header's masks on the flags word
    int dlen  # nsid's data
    unsigned char data[128]
    int zlen
    unsigned char zone[256]

cdef struct Hook:
    fastdns_prelookup hook
    int kind
    int n
    int current  # the zone row of the packet between fn and post
    Zone zones[MAX_ZONES]


cdef int question_end(const unsigned char* pkt, int n) noexcept nogil:
    cdef int pos = 12
    if n < 17 or (pkt[4] << 8 | pkt[5]) != 1:
        return -1
    while pos < n and pkt[pos] != 0:
        if pkt[pos] & 0xC0:
            return -1
        pos += pkt[pos] + 1
    if pos + 5 > n:
        return -1
    return pos + 1


cdef int row_of(const Hook* h, const unsigned char* pkt, int qend, int port) noexcept nogil:
    cdef int starts[128]
    cdef int ns = label_starts(pkt + 12, qend - 12, starts), i, best = -1, row = -1
    for i in range(h.n):
        if h.zones[i].port != port or h.zones[i].zlen <= best:
            continue
        if under(pkt + 12, qend - 12, starts, ns, h.zones[i].zone, h.zones[i].zlen):
            best = h.zones[i].zlen
            row = i if h.zones[i].on else -1
    return row


cdef int skip(const unsigned char* p, int pos, int n) noexcept nogil:
    while pos < n:
        if p[pos] == 0:
            return pos + 1
        if p[pos] & 0xC0 == 0xC0:
            return pos + 2
        if p[pos] & 0xC0:
            return -1
        pos += p[pos] + 1
    return -1


cdef int opt_of(const unsigned char* m, int n, int qend, int* rdstart) noexcept nogil:
    """The offset of the OPT record (its rdlength at +8 past the owner), -1: none."""
    cdef int rrs = (m[6] << 8 | m[7]) + (m[8] << 8 | m[9]) + (m[10] << 8 | m[11])
    cdef int first_ar = (m[6] << 8 | m[7]) + (m[8] << 8 | m[9]), i, pos = qend + 4, at
    for i in range(rrs):
        at = skip(m, pos, n)
        if at < 0 or at + 10 > n:
            return -1
        if i >= first_ar and (m[at] << 8 | m[at + 1]) == 41:
            rdstart[0] = at + 10
            return at
        pos = at + 10 + (m[at + 8] << 8 | m[at + 9])
    return -1


cdef bint wants_nsid(const unsigned char* pkt, int n, int qend) noexcept nogil:
    cdef int rd = 0, at = opt_of(pkt, n, qend, &rd), end, pos
    if at < 0:
        return False
    end = rd + (pkt[at + 8] << 8 | pkt[at + 9])
    pos = rd
    while pos + 4 <= end and end <= n:
        if (pkt[pos] << 8 | pkt[pos + 1]) == 3:
            return True
        pos += 4 + (pkt[pos + 2] << 8 | pkt[pos + 3])
    return False


cdef int shape_fn(void* ctx, unsigned char* pkt, Py_ssize_t* length, unsigned char* out,
                  Py_ssize_t out_cap, Py_ssize_t* ans, const fastdns_peer* peer) noexcept nogil:
    cdef Hook* h = <Hook*>ctx
    cdef int n = <int>length[0], qend = question_end(pkt, n), row, f
    h.current = -1
    if qend < 0:
        return PRE_LOOKUP
    row = row_of(h, pkt, qend, peer.local_port)
    if row < 0:
        return PRE_LOOKUP
    if h.kind == HEADER:
        f = ((pkt[2] << 8 | pkt[3]) | h.zones[row].qset) & ~h.zones[row].qclear
        pkt[2] = (f >> 8) & 0xFF
        pkt[3] = f & 0xFF
        if not (h.zones[row].rset or h.zones[row].rclear):
            return PRE_LOOKUP
    elif h.kind == NSID and not wants_nsid(pkt, n, qend):
        return PRE_LOOKUP
    h.current = row
    return PRE_POST


cdef int udp_limit(const unsigned char* pkt, int n) noexcept nogil:
    cdef int rd = 0, qend = question_end(pkt, n), at, size
    if qend < 0:
        return 512
    at = opt_of(pkt, n, qend, &rd)
    if at < 0:
        return 512
    size = pkt[at + 2] << 8 | pkt[at + 3]
    return size if size > 512 else 512


cdef int shape_post(void* ctx, unsigned char* pkt, Py_ssize_t* length, unsigned char* out,
                    Py_ssize_t out_cap, Py_ssize_t* ans) noexcept nogil:
    cdef Hook* h = <Hook*>ctx
    cdef int row = h.current, n = <int>ans[0], qend, f, i, an, ns, pos, at, rd, end, add
    cdef int soa_or_ns = 0, t
    h.current = -1
    end = 0
    if row < 0 or n < 12:
        return PRE_SLOW
    if h.kind == HEADER:
        f = ((out[2] << 8 | out[3]) | h.zones[row].rset) & ~h.zones[row].rclear
        out[2] = (f >> 8) & 0xFF
        out[3] = f & 0xFF
        return PRE_ANSWER
    qend = question_end(out, n)
    if qend < 0:
        return PRE_SLOW
    if h.kind == MINIMAL:
        if out[3] & 0xF or (out[2] >> 3) & 0xF in (4, 5):
            return PRE_ANSWER
        t = out[qend] << 8 | out[qend + 1]
        if t == 252 or t == 251:
            return PRE_ANSWER
        an = out[6] << 8 | out[7]
        ns = out[8] << 8 | out[9]
        pos = qend + 4
        end = pos
        for i in range(an + ns):
            at = skip(out, pos, n)
            if at < 0 or at + 10 > n:
                return PRE_SLOW
            t = out[at] << 8 | out[at + 1]
            if i == an - 1:
                end = at + 10 + (out[at + 8] << 8 | out[at + 9])
            if i >= an and (t == 6 or t == 2):
                soa_or_ns = 1
            pos = at + 10 + (out[at + 8] << 8 | out[at + 9])
        if an == 0:
            if soa_or_ns:
                return PRE_ANSWER  # NODATA or a delegation: as it is
            end = qend + 4
        memset(out + 8, 0, 4)
        ans[0] = end
        return PRE_ANSWER
    # NSID
    rd = 0
    at = opt_of(out, n, qend, &rd)
    if at < 0:
        return PRE_SLOW  # no OPT to put it in: Python adds one
    end = rd + (out[at + 8] << 8 | out[at + 9])
    pos = rd
    while pos + 4 <= end:
        if (out[pos] << 8 | out[pos + 1]) == 3:
            return PRE_SLOW  # one already: Python replaces it
        pos += 4 + (out[pos + 2] << 8 | out[pos + 3])
    add = 4 + h.zones[row].dlen
    if n + add > out_cap or n + add > udp_limit(pkt, <int>length[0]):
        return PRE_SLOW
    memmove(out + end + add, out + end, n - end)
    out[end] = 0
    out[end + 1] = 3
    out[end + 2] = (h.zones[row].dlen >> 8) & 0xFF
    out[end + 3] = h.zones[row].dlen & 0xFF
    memcpy(out + end + 4, h.zones[row].data, h.zones[row].dlen)
    f = (out[at + 8] << 8 | out[at + 9]) + add
    out[at + 8] = (f >> 8) & 0xFF
    out[at + 9] = f & 0xFF
    ans[0] = n + add
    return PRE_ANSWER


cdef void _free(object capsule) noexcept:
    PyMem_Free(PyCapsule_GetPointer(capsule, b"fastdns.prelookup"))


def hook(int kind, rows):
    """A "fastdns.prelookup" capsule for ``kind`` (1 header, 2 minimal, 3 nsid)
    and its rows: (port, wire zone, on, qset, qclear, rset, rclear, data) per
    zone of every block; ValueError past the hook's table."""
    rows = list(rows)
    if len(rows) > MAX_ZONES:
        raise ValueError(f"at most {MAX_ZONES} (port, zone) blocks")
    cdef Hook* h = <Hook*>PyMem_Malloc(sizeof(Hook))
    if h == NULL:
        raise MemoryError()
    memset(h, 0, sizeof(Hook))
    cdef bytes z, d
    for i, (port, zone, on, qset, qclear, rset, rclear, data) in enumerate(rows):
        z = bytes(zone)
        d = bytes(data)
        if len(z) > 255 or len(d) > 128:
            PyMem_Free(h)
            raise ValueError("zone or NSID data too long for the hook")
        h.zones[i].port = port
        h.zones[i].on = on
        h.zones[i].qset = qset
        h.zones[i].qclear = qclear
        h.zones[i].rset = rset
        h.zones[i].rclear = rclear
        h.zones[i].dlen = len(d)
        memcpy(h.zones[i].data, <const unsigned char*>d, len(d))
        h.zones[i].zlen = len(z)
        memcpy(h.zones[i].zone, <const unsigned char*>z, len(z))
    h.n = len(rows)
    h.kind = kind
    h.current = -1
    h.hook.fn = shape_fn
    h.hook.ctx = h
    h.hook.post = shape_post
    return PyCapsule_New(<void*>&h.hook, b"fastdns.prelookup", _free)
