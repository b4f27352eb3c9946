# cython: language_level=3, boundscheck=False, wraparound=False
"""dns64's C pre-lookup hook: only the AAAA queries a dns64 block looks at go to Python.

The table (fastdns/plugins/dns64.py ``zone_rows``) holds per local port the
zones of its blocks and whether the block has the plugin (1: for IPv6
clients, 2: ``allow_ipv4``, every client); the block serving a name is the
one whose zone is its longest suffix. A query of type AAAA, class IN, in
such a block, from a client the block translates for (an IPv4-mapped IPv6
address is IPv4, as CoreDNS's request.Family says) is handed to Python
(PRE_SLOW), whose ``before`` asks the A records when the answer has no
AAAA. Every other query stays on the fast path.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_New
from libc.string cimport memcpy, memset

cdef extern from "<netinet/in.h>":
    """
    #include <sys/socket.h>
    #include <netinet/in.h>
    /* request.Family(): 2 for IPv6, 1 for IPv4 and IPv4-mapped IPv6 */
    static int fastdns_dns64_v6(const void *sa) {
        const struct sockaddr *s = (const struct sockaddr *)sa;
        if (s == NULL || s->sa_family != AF_INET6) return 0;
        return !IN6_IS_ADDR_V4MAPPED(&((const struct sockaddr_in6 *)sa)->sin6_addr);
    }
    """
    int fastdns_dns64_v6(const void* sa) nogil

include "../server/_prelookup.pxi"
include "_names.pxi"
include "_portzones.pxi"

cdef enum:
    PRE_LOOKUP = 0
    PRE_SLOW = 2

cdef struct Hook:
    fastdns_prelookup hook
    PortZones zones


cdef int dns64_fn(void* ctx, unsigned char* pkt, Py_ssize_t* length, unsigned char* out,
                  Py_ssize_t out_cap, Py_ssize_t* ans, const fastdns_peer* peer) noexcept nogil:
    cdef const Hook* h = <const Hook*>ctx
    cdef int qend = question_type_at(pkt, <int>length[0]), on
    # AAAA (28), class IN (1)
    if qend < 0 or pkt[qend] != 0 or pkt[qend + 1] != 28 or pkt[qend + 2] != 0 \
            or pkt[qend + 3] != 1:
        return PRE_LOOKUP
    on = block_value(&h.zones, peer.local_port, pkt + 12, qend - 12)
    if on == 2 or (on == 1 and fastdns_dns64_v6(peer.addr)):
        return PRE_SLOW
    return PRE_LOOKUP


cdef void _free(object capsule) noexcept:
    PyMem_Free(PyCapsule_GetPointer(capsule, b"fastdns.prelookup"))


def hook(zones):
    """A "fastdns.prelookup" capsule for (port, wire zone, on) rows (at most 32)."""
    cdef Hook* h = <Hook*>PyMem_Malloc(sizeof(Hook))
    if h == NULL:
        raise MemoryError()
    memset(h, 0, sizeof(Hook))
    try:
        fill_port_zones(&h.zones, zones)
    except BaseException:
        PyMem_Free(h)
        raise
    h.hook.fn = dns64_fn
    h.hook.ctx = h
    h.hook.post = NULL
    return PyCapsule_New(<void*>&h.hook, b"fastdns.prelookup", _free)
