# cython: language_level=3, boundscheck=False, wraparound=False
"""rewrite's C pre-lookup filter: only the queries a rule may touch go to Python.

The tables come from fastdns/plugins/rewrite/__init__.py ``flat``: per
local port the zones of its blocks (the block serving a name: its longest
zone suffix), and per block with rewrite one condition per rule: the name
(lowercase presentation form with its trailing dot, as ``state.Name()``)
equals, starts with, ends with or contains a pattern; the type or class is
one a rule rewrites; or always (regex rules). A query no condition of its
block holds is left as it is (PRE_LOOKUP): no rule would change it, since
a rule after another can only see a name the one before rewrote, and that
one's condition held. Any other goes to Python (PRE_SLOW), which rewrites
and reverts. A name with a character miekg would escape goes to Python too.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_New
from libc.string cimport memcmp, memcpy, memset

include "../../server/_prelookup.pxi"
include "../_names.pxi"

cdef enum:
    MAX_BZONES = 32
    MAX_CONDS = 256
    POOL = 16384
    PRE_LOOKUP = 0
    PRE_SLOW = 2
    EXACT = 1
    PREFIX = 2
    SUFFIX = 3
    SUBSTRING = 4
    ALWAYS = 5
    QTYPE = 6
    QCLASS = 7

cdef struct BZone:
    int port
    int set  # -1: the block has no rewrite
    int zoff
    int zlen

cdef struct Cond:
    int set
    int code
    int number
    int poff
    int plen

cdef struct Hook:
    fastdns_prelookup hook
    int nb, nc, used
    BZone bzones[MAX_BZONES]
    Cond conds[MAX_CONDS]
    unsigned char pool[POOL]


cdef inline bint plain(unsigned char c) noexcept nogil:
    """A character miekg prints as it is (dns.Name String: no escape)."""
    if c < 33 or c > 126:
        return False
    return not (c == 46 or c == 92 or c == 34 or c == 40 or c == 41 or c == 59
                or c == 64 or c == 36)


cdef int to_text(const unsigned char* name, int nlen, unsigned char* out) noexcept nogil:
    """The lowercase presentation form with its trailing dot; -1: needs escapes."""
    cdef int pos = 0, o = 0, n, k
    if nlen == 1:
        out[0] = 46
        return 1
    while pos < nlen and name[pos]:
        n = name[pos]
        for k in range(1, n + 1):
            if not plain(name[pos + k]):
                return -1
            out[o] = lower(name[pos + k])
            o += 1
        out[o] = 46
        o += 1
        pos += n + 1
    return o


cdef bint contains(const unsigned char* s, int n, const unsigned char* p, int m) noexcept nogil:
    cdef int i
    if m == 0:
        return True
    for i in range(n - m + 1):
        if s[i] == p[0] and memcmp(s + i, p, m) == 0:
            return True
    return False


cdef int filter_fn(void* ctx, unsigned char* pkt, Py_ssize_t* length, unsigned char* out,
                   Py_ssize_t out_cap, Py_ssize_t* ans, const fastdns_peer* peer) noexcept nogil:
    cdef const Hook* h = <const Hook*>ctx
    cdef int n = <int>length[0], pos, qend, i, best = -1, set = -1, tlen, qtype, qclass
    cdef int starts[128]
    cdef int ns
    cdef unsigned char text[512]
    cdef const Cond* c
    cdef const unsigned char* p
    if n < 17 or (pkt[4] << 8 | pkt[5]) != 1:
        return PRE_SLOW
    pos = 12
    while pos < n and pkt[pos] != 0:
        if pkt[pos] & 0xC0:
            return PRE_SLOW
        pos += pkt[pos] + 1
    if pos + 5 > n:
        return PRE_SLOW
    qend = pos + 1
    ns = label_starts(pkt + 12, qend - 12, starts)
    for i in range(h.nb):
        if h.bzones[i].port != peer.local_port or h.bzones[i].zlen <= best:
            continue
        if under(pkt + 12, qend - 12, starts, ns, h.pool + h.bzones[i].zoff, h.bzones[i].zlen):
            best = h.bzones[i].zlen
            set = h.bzones[i].set
    if set < 0:
        return PRE_LOOKUP
    tlen = to_text(pkt + 12, qend - 12, text)
    if tlen < 0:
        return PRE_SLOW
    qtype = pkt[qend] << 8 | pkt[qend + 1]
    qclass = pkt[qend + 2] << 8 | pkt[qend + 3]
    for i in range(h.nc):
        c = &h.conds[i]
        if c.set != set:
            continue
        p = h.pool + c.poff
        if c.code == ALWAYS:
            return PRE_SLOW
        if c.code == QTYPE and qtype == c.number:
            return PRE_SLOW
        if c.code == QCLASS and qclass == c.number:
            return PRE_SLOW
        if c.code == EXACT and tlen == c.plen and memcmp(text, p, tlen) == 0:
            return PRE_SLOW
        if c.code == PREFIX and tlen >= c.plen and memcmp(text, p, c.plen) == 0:
            return PRE_SLOW
        if c.code == SUFFIX and tlen >= c.plen and memcmp(text + tlen - c.plen, p, c.plen) == 0:
            return PRE_SLOW
        if c.code == SUBSTRING and contains(text, tlen, p, c.plen):
            return PRE_SLOW
    return PRE_LOOKUP


cdef void _free(object capsule) noexcept:
    PyMem_Free(PyCapsule_GetPointer(capsule, b"fastdns.prelookup"))


cdef int _put(Hook* h, bytes raw) except -1:
    cdef int off = h.used
    if len(raw) > 1024 or off + len(raw) > POOL:
        raise ValueError("rewrite patterns exceed the filter's pool")
    if len(raw):
        memcpy(h.pool + off, <const unsigned char*>raw, len(raw))
    h.used += len(raw)
    return off


def hook(blocks, sets):
    """A "fastdns.prelookup" capsule for ``flat``'s tables: (port, wire zone,
    set or -1) per block zone, and per set its (code, pattern, number)
    conditions; ValueError past the filter's tables."""
    rows = list(blocks)
    conds = [(i, c) for i, s in enumerate(sets) for c in s]
    if len(rows) > MAX_BZONES or len(conds) > MAX_CONDS:
        raise ValueError("more blocks or rules than the rewrite filter holds")
    cdef Hook* h = <Hook*>PyMem_Malloc(sizeof(Hook))
    if h == NULL:
        raise MemoryError()
    memset(h, 0, sizeof(Hook))
    try:
        for port, zone, idx in rows:
            h.bzones[h.nb].port = port
            h.bzones[h.nb].set = idx
            h.bzones[h.nb].zoff = _put(h, bytes(zone))
            h.bzones[h.nb].zlen = len(zone)
            h.nb += 1
        for idx, (code, pattern, number) in conds:
            h.conds[h.nc].set = idx
            h.conds[h.nc].code = code
            h.conds[h.nc].number = number
            h.conds[h.nc].poff = _put(h, bytes(pattern))
            h.conds[h.nc].plen = len(pattern)
            h.nc += 1
    except BaseException:
        PyMem_Free(h)
        raise
    h.hook.fn = filter_fn
    h.hook.ctx = h
    h.hook.post = NULL
    return PyCapsule_New(<void*>&h.hook, b"fastdns.prelookup", _free)
