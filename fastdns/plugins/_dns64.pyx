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

cdef enum:
    MAX_ZONES = 32
    PRE_LOOKUP = 0
    PRE_SLOW = 2

cdef struct Zone:
    int port
    int on
    int zlen
    unsigned char zone[256]

cdef struct Hook:
    fastdns_prelookup hook
    int n
    Zone zones[MAX_ZONES]


cdef int dns64_fn(void* ctx, unsigned char* pkt, Py_ssize_t* length, unsigned char* out,
                  Py_ssize_t out_cap, Py_ssize_t* ans, const fastdns_peer* peer) noexcept nogil:
    cdef const Hook* h = <const Hook*>ctx
    cdef int n = <int>length[0], pos, qend, i, best = -1, on = 0
    cdef int starts[128]
    cdef int ns
    if n < 17 or (pkt[4] << 8 | pkt[5]) != 1 or pkt[2] & 0x80 or (pkt[2] >> 3) & 0xF:
        return PRE_LOOKUP
    pos = 12
    while pos < n and pkt[pos] != 0:
        if pkt[pos] & 0xC0:
            return PRE_LOOKUP
        pos += pkt[pos] + 1
    if pos + 5 > n:
        return PRE_LOOKUP
    qend = pos + 1
    # AAAA (28), class IN (1)
    if pkt[qend] != 0 or pkt[qend + 1] != 28 or pkt[qend + 2] != 0 or pkt[qend + 3] != 1:
        return PRE_LOOKUP
    ns = label_starts(pkt + 12, qend - 12, starts)
    for i in range(h.n):
        if h.zones[i].port != peer.local_port or h.zones[i].zlen <= best:
            continue
        if under(pkt + 12, qend - 12, starts, ns, h.zones[i].zone, h.zones[i].zlen):
            best = h.zones[i].zlen
            on = h.zones[i].on
    if on == 2 or (on == 1 and fastdns_dns64_v6(peer.addr)):
        return PRE_SLOW
    return PRE_LOOKUP


cdef void _free(object capsule) noexcept:
    PyMem_Free(PyCapsule_GetPointer(capsule, b"fastdns.prelookup"))


def hook(zones):
    """A "fastdns.prelookup" capsule for (port, wire zone, on) rows (at most 32)."""
    rows = list(zones)
    if len(rows) > MAX_ZONES:
        raise ValueError(f"at most {MAX_ZONES} (port, zone) blocks")
    cdef Hook* h = <Hook*>PyMem_Malloc(sizeof(Hook))
    if h == NULL:
        raise MemoryError()
    memset(h, 0, sizeof(Hook))
    cdef bytes z
    for i, (port, zone, on) in enumerate(rows):
        z = bytes(zone)
        if len(z) > 255:
            PyMem_Free(h)
            raise ValueError("zone longer than 255 octets")
        h.zones[i].port = port
        h.zones[i].on = on
        h.zones[i].zlen = len(z)
        memcpy(h.zones[i].zone, <const unsigned char*>z, len(z))
    h.n = len(rows)
    h.hook.fn = dns64_fn
    h.hook.ctx = h
    h.hook.post = NULL
    return PyCapsule_New(<void*>&h.hook, b"fastdns.prelookup", _free)
