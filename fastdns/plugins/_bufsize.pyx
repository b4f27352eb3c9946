# cython: language_level=3, boundscheck=False, wraparound=False
"""bufsize's C pre-lookup hook: the query's EDNS0 UDP size capped in place.

The hook holds, per local port, the zones of that port's blocks (lowercase
wire form) with the block's ``bufsize`` (0: none), and gives a query the
size of the block CoreDNS would serve it from (the longest zone its name
ends in). Capping the query's OPT before the lookup is all CoreDNS's
plugin/bufsize does (``option.SetUDPSize``); the image answer's truncation
and a forwarded query's OPT follow from it. A query it cannot read as a
plain one-question message is left as it came (the lookup judges it).
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_New
from libc.string cimport memcpy, memset

include "../server/_prelookup.pxi"
include "_names.pxi"
include "_portzones.pxi"

cdef struct Hook:
    fastdns_prelookup hook
    PortZones zones  # value: the block's bufsize, 0: the block has none


cdef int skip_name(const unsigned char* p, int pos, int n) noexcept nogil:
    """Past the (possibly compressed) name at ``pos``; -1 if it runs off."""
    while pos < n:
        if p[pos] == 0:
            return pos + 1
        if p[pos] & 0xC0 == 0xC0:
            return pos + 2 if pos + 2 <= n else -1
        if p[pos] & 0xC0:
            return -1
        pos += p[pos] + 1
    return -1


cdef int cap_fn(void* ctx, unsigned char* pkt, Py_ssize_t* length, unsigned char* out,
                Py_ssize_t out_cap, Py_ssize_t* ans, const fastdns_peer* peer) noexcept nogil:
    cdef const Hook* h = <const Hook*>ctx
    cdef int n = <int>length[0], pos, qend, size, i, rrs, first_ar, rdlen
    cdef unsigned int cur
    if n < 17 or (pkt[4] << 8 | pkt[5]) != 1:
        return 0
    rrs = (pkt[6] << 8 | pkt[7]) + (pkt[8] << 8 | pkt[9])
    first_ar = rrs
    rrs += pkt[10] << 8 | pkt[11]
    if rrs == first_ar:
        return 0  # no additional record: no OPT to cap
    pos = 12
    while pos < n and pkt[pos] != 0:
        if pkt[pos] & 0xC0:
            return 0
        pos += pkt[pos] + 1
    if pos >= n:
        return 0
    qend = pos + 1
    size = block_value(&h.zones, peer.local_port, pkt + 12, qend - 12)
    if size == 0:
        return 0
    pos = qend + 4
    for i in range(rrs):
        pos = skip_name(pkt, pos, n)
        if pos < 0 or pos + 10 > n:
            return 0
        rdlen = pkt[pos + 8] << 8 | pkt[pos + 9]
        if i >= first_ar and (pkt[pos] << 8 | pkt[pos + 1]) == 41:
            cur = pkt[pos + 2] << 8 | pkt[pos + 3]
            if cur > <unsigned int>size:
                pkt[pos + 2] = (size >> 8) & 0xFF
                pkt[pos + 3] = size & 0xFF
            return 0
        pos += 10 + rdlen
    return 0


cdef void _free(object capsule) noexcept:
    PyMem_Free(PyCapsule_GetPointer(capsule, b"fastdns.prelookup"))


def hook(zones):
    """A "fastdns.prelookup" capsule for ``zones``: (port, wire zone, size) rows,
    at most 32, the zone lowercase in wire form, size 0 for a block without
    bufsize."""
    cdef Hook* h = <Hook*>PyMem_Malloc(sizeof(Hook))
    if h == NULL:
        raise MemoryError()
    memset(h, 0, sizeof(Hook))
    try:
        fill_port_zones(&h.zones, zones)
    except BaseException:
        PyMem_Free(h)
        raise
    h.hook.fn = cap_fn
    h.hook.ctx = h
    h.hook.post = NULL
    return PyCapsule_New(<void*>&h.hook, b"fastdns.prelookup", _free)
