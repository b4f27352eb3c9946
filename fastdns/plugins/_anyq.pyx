# cython: language_level=3, boundscheck=False, wraparound=False
"""any's C pre-lookup hook: an ANY query in a block with ``any`` answered with RFC 8482's HINFO.

The table (fastdns/plugins/anyq.py ``zone_rows``) holds per local port the
zones of its blocks and whether the block has the plugin; the block serving
a name is the one whose zone is its longest suffix. The answer is
anyq.hinfo's, byte for byte: the query's ID, RD and CD, its question, and
the record anyq.RECORD holds. Anything else is left as it came.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_New
from libc.string cimport memcpy, memset

include "../server/_prelookup.pxi"
include "_names.pxi"
include "_portzones.pxi"

cdef enum:
    PRE_LOOKUP = 0
    PRE_ANSWER = 1

cdef struct Hook:
    fastdns_prelookup hook
    int rlen
    unsigned char record[64]
    PortZones zones


cdef int any_fn(void* ctx, unsigned char* pkt, Py_ssize_t* length, unsigned char* out,
                Py_ssize_t out_cap, Py_ssize_t* ans, const fastdns_peer* peer) noexcept nogil:
    cdef const Hook* h = <const Hook*>ctx
    cdef int qend = question_type_at(pkt, <int>length[0]), o
    if qend < 0 or pkt[qend] != 0 or pkt[qend + 1] != 255:
        return PRE_LOOKUP
    if not block_value(&h.zones, peer.local_port, pkt + 12, qend - 12):
        return PRE_LOOKUP
    o = qend + 4
    if o + h.rlen > out_cap:
        return PRE_LOOKUP
    out[0] = pkt[0]
    out[1] = pkt[1]
    out[2] = 0x80 | (pkt[2] & 0x01)  # QR; opcode QUERY; RD copied
    out[3] = pkt[3] & 0x10  # CD copied
    memset(out + 4, 0, 8)
    out[5] = 1
    out[7] = 1
    memcpy(out + 12, pkt + 12, o - 12)
    memcpy(out + o, h.record, h.rlen)
    ans[0] = o + h.rlen
    return PRE_ANSWER


cdef void _free(object capsule) noexcept:
    PyMem_Free(PyCapsule_GetPointer(capsule, b"fastdns.prelookup"))


def hook(zones, bytes record):
    """A "fastdns.prelookup" capsule for (port, wire zone, on) rows (at most 32)
    answering with ``record`` after the question."""
    if len(record) > 64:
        raise ValueError("a record longer than 64 octets")
    cdef Hook* h = <Hook*>PyMem_Malloc(sizeof(Hook))
    if h == NULL:
        raise MemoryError()
    memset(h, 0, sizeof(Hook))
    try:
        fill_port_zones(&h.zones, zones)
    except BaseException:
        PyMem_Free(h)
        raise
    h.rlen = len(record)
    memcpy(h.record, <const unsigned char*>record, len(record))
    h.hook.fn = any_fn
    h.hook.ctx = h
    h.hook.post = NULL
    return PyCapsule_New(<void*>&h.hook, b"fastdns.prelookup", _free)
