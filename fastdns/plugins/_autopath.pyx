# cython: language_level=3, boundscheck=False, wraparound=False
"""autopath's C pre-lookup hook: only the queries autopath may change go to Python.

A search-path expansion looks like ``BASE.NS.svc.ZONE`` and the image
answers it NXDOMAIN; that is all autopath (fastdns/plugins/autopath.py)
changes, once it has checked that the client is a Pod of NS. So the hook
marks the queries of that shape (a name ending in ``svc.ZONE`` of one of
the table's zones on the port the query came to, with at least two labels
before ``svc``) PRE_POST, and its ``post`` passes the image's answer
through unless it is NXDOMAIN (or the image had none of its own): those
go to Python's ``before``. Every other query, and every found name, stays
on the fast path.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_New
from libc.string cimport memcpy, memset

include "../server/_prelookup.pxi"

cdef enum:
    MAX_ZONES = 32
    ZONE_MAX = 255

cdef struct Zone:
    int port
    int zlen
    unsigned char zone[ZONE_MAX + 1]  # "\x03svc" + the zone, lowercase wire

cdef struct Hook:
    fastdns_prelookup hook
    int n
    Zone zones[MAX_ZONES]


cdef inline unsigned char lower(unsigned char c) noexcept nogil:
    return c + 32 if 65 <= c <= 90 else c


cdef int shape_fn(void* ctx, unsigned char* pkt, Py_ssize_t* length, unsigned char* out,
                  Py_ssize_t out_cap, Py_ssize_t* ans, const fastdns_peer* peer) noexcept nogil:
    cdef const Hook* h = <const Hook*>ctx
    cdef int n = <int>length[0], pos = 12, ns = 0, i, j, k, s, nlen
    cdef int starts[128]
    if n < 17 or (pkt[4] << 8 | pkt[5]) != 1:
        return 0
    while pos < n and pkt[pos] != 0 and ns < 128:
        if pkt[pos] & 0xC0:
            return 0
        starts[ns] = pos - 12
        ns += 1
        pos += pkt[pos] + 1
    if pos >= n or pkt[pos] != 0:
        return 0
    nlen = pos + 1 - 12
    for i in range(h.n):
        if h.zones[i].port != peer.local_port:
            continue
        for j in range(2, ns):  # two labels at least (BASE, NS) before svc.ZONE
            s = starts[j]
            if nlen - s != h.zones[i].zlen:
                continue
            k = 0
            while k < h.zones[i].zlen and lower(pkt[12 + s + k]) == h.zones[i].zone[k]:
                k += 1
            if k == h.zones[i].zlen:
                return 3  # PRE_POST
            break
    return 0


cdef int found_fn(void* ctx, unsigned char* pkt, Py_ssize_t* length, unsigned char* out,
                  Py_ssize_t out_cap, Py_ssize_t* ans) noexcept nogil:
    if ans[0] > 3 and (out[3] & 0x0F) != 3:
        return 1  # PRE_ANSWER: found, autopath would give it as it is
    return 2  # PRE_SLOW: NXDOMAIN or handed on: autopath's walk, in Python


cdef void _free(object capsule) noexcept:
    PyMem_Free(PyCapsule_GetPointer(capsule, b"fastdns.prelookup"))


def hook(zones):
    """A "fastdns.prelookup" capsule for ``zones``: (port, lowercase wire zone)
    rows, at most 32, of the blocks that have autopath."""
    rows = list(zones)
    if len(rows) > MAX_ZONES:
        raise ValueError(f"at most {MAX_ZONES} (port, zone) rows")
    cdef Hook* h = <Hook*>PyMem_Malloc(sizeof(Hook))
    if h == NULL:
        raise MemoryError()
    memset(h, 0, sizeof(Hook))
    cdef bytes z
    for i, (port, zone) in enumerate(rows):
        z = b"\x03svc" + bytes(zone)
        if len(z) > ZONE_MAX:
            PyMem_Free(h)
            raise ValueError("zone longer than 251 octets")
        h.zones[i].port = port
        h.zones[i].zlen = len(z)
        memcpy(h.zones[i].zone, <const unsigned char*>z, len(z))
    h.n = len(rows)
    h.hook.fn = shape_fn
    h.hook.ctx = h
    h.hook.post = found_fn
    return PyCapsule_New(<void*>&h.hook, b"fastdns.prelookup", _free)
