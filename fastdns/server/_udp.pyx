# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The UDP fast path: drain a socket with recvmmsg, answer, sendmmsg.

A uvloop reader callback calls ``FastPath.drain(fd, family)`` when the socket
is readable. Each batch reads up to VLEN datagrams into preallocated slots
(MSG_DONTWAIT), answers every one with the wire core's C ``answer_packet``
into preallocated output slots, and sends all answers with one ``sendmmsg``.
A hit creates no Python object. Packets the fast path cannot answer go to a
Python callable (the slow path), which may hand back an answer to join the
batch. The snapshot generation is checked once per batch, before any packet
of it is touched, so a remap never pulls an image out from under a batch.

On a wildcard socket (0.0.0.0 or ::, ``drain(fd, family, True)``) each
datagram is read with its IP_PKTINFO / IPV6_PKTINFO control message, and its
answer is sent with that message turned into the reply's (``_reply_cmsg``),
so it leaves from the address the query was sent to, as CoreDNS's replies
do (miekg/dns ``udp.go``: ``setUDPSocketOptions``, ``correctSource``,
``WriteToSessionUDP``; ``fastdns/server/udpsource.py`` enables the option).
A socket bound to one address needs none of it and reads and sends without
control data.

Counters are written here directly into the worker's shm block with the
word layout declared in ``fastdns/ipc/layout.py`` (``_layout.pxi`` is
generated from it at build time; ``fastdns/ipc/counters.py`` is the Python
writer of the same words). Each packet is also counted into the row of its
(server, zone) for CoreDNS's ``server``/``zone`` labels: the row is matched
from the question name while ``count_query`` walks it anyway (the socket's
zone table, ``set_rows``), and the row's words sit next to each other, so a
packet touches the same few extra lines as every other packet of its zone.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_IsValid, PyCapsule_New
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport uint64_t
from libc.string cimport memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.uio cimport iovec

from fastdns._wire cimport answer_packet

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t

    struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags

    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len

    struct sockaddr:
        unsigned short sa_family

    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type

    cmsghdr* CMSG_FIRSTHDR(msghdr* m)
    cmsghdr* CMSG_NXTHDR(msghdr* m, cmsghdr* c)
    unsigned char* CMSG_DATA(cmsghdr* c)
    size_t CMSG_LEN(size_t n)
    size_t CMSG_SPACE(size_t n)

    struct sockaddr_storage:
        unsigned short ss_family

    int recvmmsg(int fd, mmsghdr* vec, unsigned int vlen, int flags, timespec* timeout)
    int getsockname(int fd, sockaddr* addr, socklen_t* addrlen)
    int sendmmsg(int fd, mmsghdr* vec, unsigned int vlen, int flags)
    enum:
        MSG_DONTWAIT
        MSG_TRUNC
        AF_INET
        AF_INET6

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        pass

    struct in6_addr:
        unsigned char s6_addr[16]

    # ip(7) and ipv6(7) (RFC 3542 §6.1); glibc declares in6_pktinfo only
    # under _GNU_SOURCE, which Python.h defines
    struct in_pktinfo:
        int ipi_ifindex
        in_addr ipi_spec_dst
        in_addr ipi_addr

    struct in6_pktinfo:
        in6_addr ipi6_addr
        unsigned int ipi6_ifindex

    enum:
        IPPROTO_IP
        IPPROTO_IPV6
        IP_PKTINFO
        IPV6_PKTINFO

    struct sockaddr_in:
        unsigned short sin_port
        in_addr sin_addr

    struct sockaddr_in6:
        unsigned short sin6_port
        unsigned int sin6_flowinfo
        in6_addr sin6_addr
        unsigned int sin6_scope_id

    unsigned short ntohs(unsigned short)
    unsigned int ntohl(unsigned int)

cdef extern from "<arpa/inet.h>" nogil:
    const char* inet_ntop(int af, const void* src, char* dst, socklen_t size)

cdef extern from *:
    """
    /* The generation word is written by another process (one aligned
       8-octet store, docs/internals.md section 4); an acquire load keeps
       the compiler from caching it across batches. */
    static inline unsigned long long fd_load_u64(const void *p) {
        return __atomic_load_n((const unsigned long long *)p, __ATOMIC_ACQUIRE);
    }
    """
    unsigned long long fd_load_u64(const void* p) nogil

include "_prelookup.pxi"

# -- sizes ----------------------------------------------------------------------
cdef enum:
    # what a pre-lookup hook returns
    PRE_LOOKUP = 0  # look ``pkt[:*length]`` up in the image (the hook may have rewritten it)
    PRE_ANSWER = 1  # ``out[:*ans]`` is the answer
    PRE_SLOW = 2  # hand the original packet to Python, which runs the plugins' ``before``
    PRE_POST = 3  # look it up, then call this hook's ``post`` on the answer
    PRE_DROP = 4  # no answer at all (acl's ``drop``)
    MAX_HOOKS = 12  # pre-lookup hooks chained at once (worker_plugins.MAX_HOOKS)
    SLOT = 4096  # octets per datagram slot: answer_packet needs out_cap >= 4096
    VLEN = 64  # datagrams per recvmmsg
    MAX_BATCHES = 16  # batches per readiness callback, so one socket cannot starve the loop
    RETRY_AT = 4  # a batch of at least this many packets is followed by another recvmmsg
    CTL = 64  # octets of control data per datagram slot (an in6_pktinfo cmsg takes 40)
    TF_EXTERNAL = 0x40  # image.TF_EXTERNAL: the Z bit of an answer the slow path completes
    ZONE_EXTERNAL = -2  # slowpath.ZONE_EXTERNAL: the zone argument for such a packet
    ZONE_PRELOOKUP = -3  # beforechain.ZONE_PRELOOKUP: a hook handed it to Python's ``before``

# -- the shared-memory layout: generated from fastdns/ipc/layout.py by setup.py --
include "_layout.pxi"

cdef enum:
    # the zone tables the rows are matched with
    MAX_LISTENERS = 16  # sockets with a table; any other counts totals only
    MAX_LZ = 16  # zones per listener; a listener with more counts into ROW_MAX
    MAX_FD = 1024

ctypedef struct ListenerZones:
    # one listener's zones (tables.ListenerRows): lowercased wire names,
    # longest first, each with its row; ``dropped`` for a name none matches
    int fd  # the socket this table is for; -1 = free
    int nzones
    int dropped
    int row[MAX_LZ]
    int zlen[MAX_LZ]
    unsigned char name[MAX_LZ][256]
SLOT_SIZE = SLOT
BATCH = VLEN

include "_udp_cache.pxi"


cdef inline int size_bucket(Py_ssize_t n) noexcept nogil:
    cdef int i
    for i in range(N_SIZE_BOUNDS):
        if n <= SIZE_BOUNDS[i]:
            return i
    return N_SIZE_BOUNDS


cdef inline int match_row(const ListenerZones* lz, const unsigned char* p, Py_ssize_t qend,
                          const uint64_t* starts) noexcept nogil:
    """Twin of tables.ListenerRows.match: the row of the longest zone that is a
    suffix of the name at p[12:qend] (``starts``: its label starts, bit o - 12)."""
    cdef int k, j, length
    cdef Py_ssize_t s
    cdef unsigned char c
    for k in range(lz.nzones):
        length = lz.zlen[k]
        s = qend - length
        if s < 12 or s >= 12 + 256 or not (starts[(s - 12) >> 6] >> ((s - 12) & 63)) & 1:
            continue
        j = 0
        while j < length:
            c = p[s + j]
            if <unsigned int>(c - 65) < 26:  # A-Z (a length octet is at most 63)
                c |= 0x20
            if c != lz.name[k][j]:
                break
            j += 1
        if j == length:
            return lz.row[k]
    return lz.dropped


cdef inline int count_query(uint64_t* w, const ListenerZones* lz, int proto, int family,
                            const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """Twin of counters.Counters.query: qtype bucket, DO bit, request size; with
    a listener table ``lz``, also into the row of the query's (server, zone),
    which it returns (-1 without one).

    Precondition: ``w`` is a counters block of at least W_END words, and of
    ROWS_END words when ``lz`` is not NULL.
    """
    cdef int bucket = QT_OTHER, do = 0, row = -1
    cdef Py_ssize_t o = 12
    cdef unsigned int length
    cdef uint64_t starts[4]
    starts[0] = starts[1] = starts[2] = starts[3] = 0
    if n >= 12 and (p[4] | p[5]):
        while o < n:
            if o < 12 + 256:
                starts[(o - 12) >> 6] |= (<uint64_t>1) << ((o - 12) & 63)
            length = p[o]
            if length == 0:
                o += 1
                break
            if length & 0xC0:
                o = n + 1
                break
            o += length + 1
        else:
            o = n + 1
        if o <= n and lz != NULL:
            row = match_row(lz, p, o, starts)
        if o + 4 <= n:
            bucket = qtype_bucket(p[o] << 8 | p[o + 1])
            o += 4
            # an OPT right after the question of a query with no answer or
            # authority records: DO is the top bit of the TTL's flags (RFC 6891 §6.1.3)
            if (not (p[6] | p[7] | p[8] | p[9]) and (p[10] | p[11]) and o + 11 <= n
                    and p[o] == 0 and p[o + 1] == 0 and p[o + 2] == 41 and p[o + 7] & 0x80):
                w[W_DO] += 1
                do = 1
    cdef int q = (proto * 2 + family - 1) * N_QTYPES + bucket
    cdef int sb = size_bucket(n)
    w[W_QUERIES + q] += 1
    cdef int base = W_REQ_SIZE + proto * (N_SIZE + 1)
    w[base + sb] += 1
    w[base + N_SIZE] += <uint64_t>n
    if lz == NULL:
        return -1
    if row < 0:
        row = lz.dropped  # no readable name: CoreDNS never reaches a zone
    cdef uint64_t* r = w + W_ROWS + row * ROW_WORDS
    r[R_QUERIES + q] += 1
    r[R_DO] += <uint64_t>do
    base = R_REQ_SIZE + proto * (N_SIZE + 1)
    r[base + sb] += 1
    r[base + N_SIZE] += <uint64_t>n
    return row


cdef inline void count_response(uint64_t* w, int row, int proto,
                                const unsigned char* r, Py_ssize_t n) noexcept nogil:
    """Twin of counters.Counters.response for an answer of ``n`` > 0 octets
    (``row`` < 0: the totals only)."""
    cdef int rcode = R_DROPPED
    if n >= 12:
        rcode = r[3] & 0x0F
        if (n >= 23 and (r[10] | r[11]) and r[n - 11] == 0 and r[n - 10] == 0
                and r[n - 9] == 41 and r[n - 2] == 0 and r[n - 1] == 0 and r[n - 6]):
            rcode = R_BADVERS
    cdef int sb = size_bucket(n)
    w[W_RESPONSES + rcode] += 1
    cdef int base = W_RESP_SIZE + proto * (N_SIZE + 1)
    w[base + sb] += 1
    w[base + N_SIZE] += <uint64_t>n
    if row >= 0:
        w += W_ROWS + row * ROW_WORDS
        w[R_RESPONSES + rcode] += 1
        base = R_RESP_SIZE + proto * (N_SIZE + 1)
        w[base + sb] += 1
        w[base + N_SIZE] += <uint64_t>n


cdef inline void count_dropped(uint64_t* w, int row) noexcept nogil:
    """A query that gets no answer (``row`` < 0: the totals only)."""
    w[W_RESPONSES + R_DROPPED] += 1
    if row >= 0:
        w[W_ROWS + row * ROW_WORDS + R_RESPONSES + R_DROPPED] += 1


cdef inline int latency_bucket(uint64_t ns) noexcept nogil:
    # CoreDNS buckets: 0.00025 s * 2**k, k = 0..15 (layout.LATENCY_BUCKETS)
    cdef uint64_t bound = LATENCY_FIRST_NS
    cdef int i = 0
    while i < N_LAT_BOUNDS and ns > bound:
        bound <<= 1
        i += 1
    return i


cdef inline void count_latency(uint64_t* w, uint64_t ns, uint64_t npackets) noexcept nogil:
    cdef int i = latency_bucket(ns)
    w[W_LATENCY + i] += npackets
    w[W_LATENCY_SUM_NS] += ns * npackets


cdef inline uint64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


cdef inline int local_port(int fd) noexcept nogil:
    """The local port of socket ``fd`` (sin_port and sin6_port lie at the same
    offset); 0 if it cannot be read. Once per batch, and only with hooks set."""
    cdef sockaddr_storage ss
    cdef socklen_t n = sizeof(ss)
    cdef const unsigned char* p = <const unsigned char*>&ss
    if getsockname(fd, <sockaddr*>&ss, &n) != 0:
        return 0
    return (p[2] << 8) | p[3]


cdef object sockaddr_tuple(const sockaddr_storage* sa):
    """The address as Python's socket module spells it (for sock.sendto)."""
    cdef char text[64]
    cdef const sockaddr_in* a4
    cdef const sockaddr_in6* a6
    if sa.ss_family == AF_INET:
        a4 = <const sockaddr_in*>sa
        inet_ntop(AF_INET, &a4.sin_addr, text, sizeof(text))
        return (text.decode("ascii"), ntohs(a4.sin_port))
    a6 = <const sockaddr_in6*>sa
    inet_ntop(AF_INET6, &a6.sin6_addr, text, sizeof(text))
    return (text.decode("ascii"), ntohs(a6.sin6_port), ntohl(a6.sin6_flowinfo),
            a6.sin6_scope_id)


include "_udp_forward_types.pxi"
include "_udp_forward.pxi"
include "_udp_forward_io.pxi"


@cython.final
cdef class FastPath:
    """One worker's UDP engine: buffers, the mapped image, the counters block.

    ``generation_word`` is a buffer whose first 8 octets are the control
    segment's generation; ``counters`` the worker's writable counters block;
    ``on_generation()`` is called (at a batch boundary) when the generation
    moved, and calls ``set_image`` with the new mapping; ``slow(data, addr,
    zone, fd)`` returns an answer (bytes) to send in this batch, or None when
    it sends or drops the packet itself (it then counts the response); from a
    wildcard socket it gets a fifth argument, the ancillary data its own
    ``sock.sendmsg`` of a later answer must carry (``_slow_one``).
    ``cache`` is the response cache's C table (``_udp_cache.pxi``): a packet
    the image cannot answer is looked up there before it goes to ``slow``;
    then ``cfwd`` (``_udp_forward.pxi``, ``set_forward``) forwards it if it
    serves the name's block.
    """

    cdef const unsigned char[::1] _image
    cdef const unsigned char* image
    cdef Py_ssize_t image_len
    cdef const unsigned char[::1] _gen
    cdef unsigned char[::1] _counters
    cdef uint64_t* w
    cdef readonly unsigned long long generation
    cdef unsigned int rotation
    cdef object on_generation
    cdef object slow
    cdef unsigned int log_mask  # query log (issue 6): response classes to hand to logger
    cdef object logger
    cdef unsigned char* inbuf
    cdef unsigned char* outbuf
    cdef sockaddr_storage* addrs
    cdef iovec* riov
    cdef iovec* siov
    cdef mmsghdr* rmsgs
    cdef mmsghdr* smsgs
    cdef unsigned char* rctl  # VLEN * CTL: each datagram's control data (wildcard sockets)
    cdef bint ctl_armed  # smsgs may still point at a wildcard batch's control data
    cdef int* slow_idx
    cdef int* slow_zone
    cdef int* prow  # the row of each packet of the batch (-1: none)
    cdef ListenerZones* lz  # MAX_LISTENERS tables (set_rows)
    cdef signed char fd_lz[MAX_FD]  # fd -> its table, -1 = none
    cdef bint has_rows  # the counters block holds the row region
    cdef readonly CacheTable cache
    cdef readonly CForwarder cfwd  # misses forwarded from C (_udp_forward.pxi), or None
    cdef bint cfwd_on
    cdef fastdns_prelookup hooks[MAX_HOOKS]  # the pre-lookup chain, in plugin.cfg order
    cdef int nhooks  # 0: no hook (one predictable branch a packet)
    cdef object _prelookup_capsules  # keep the hooks' owners alive
    cdef unsigned char orig[SLOT]  # the packet before the hooks (PRE_SLOW hands it on)
    cdef Py_ssize_t orig_len

    def __cinit__(self):
        self.inbuf = <unsigned char*>PyMem_Malloc(VLEN * SLOT)
        self.outbuf = <unsigned char*>PyMem_Malloc(VLEN * SLOT)
        self.addrs = <sockaddr_storage*>PyMem_Malloc(VLEN * sizeof(sockaddr_storage))
        self.riov = <iovec*>PyMem_Malloc(VLEN * sizeof(iovec))
        self.siov = <iovec*>PyMem_Malloc(VLEN * sizeof(iovec))
        self.rmsgs = <mmsghdr*>PyMem_Malloc(VLEN * sizeof(mmsghdr))
        self.smsgs = <mmsghdr*>PyMem_Malloc(VLEN * sizeof(mmsghdr))
        self.rctl = <unsigned char*>PyMem_Malloc(VLEN * CTL)
        self.slow_idx = <int*>PyMem_Malloc(VLEN * sizeof(int))
        self.slow_zone = <int*>PyMem_Malloc(VLEN * sizeof(int))
        self.prow = <int*>PyMem_Malloc(VLEN * sizeof(int))
        self.lz = <ListenerZones*>PyMem_Malloc(MAX_LISTENERS * sizeof(ListenerZones))
        if (self.prow == NULL or self.lz == NULL
                or self.inbuf == NULL or self.outbuf == NULL or self.addrs == NULL
                or self.riov == NULL or self.siov == NULL or self.rmsgs == NULL
                or self.smsgs == NULL or self.slow_idx == NULL or self.slow_zone == NULL
                or self.rctl == NULL):
            raise MemoryError()
        memset(self.rmsgs, 0, VLEN * sizeof(mmsghdr))
        memset(self.smsgs, 0, VLEN * sizeof(mmsghdr))
        memset(self.fd_lz, 0xFF, sizeof(self.fd_lz))
        cdef int i
        for i in range(MAX_LISTENERS):
            self.lz[i].fd = -1
        for i in range(VLEN):
            self.riov[i].iov_base = self.inbuf + i * SLOT
            self.riov[i].iov_len = SLOT
            self.rmsgs[i].msg_hdr.msg_iov = &self.riov[i]
            self.rmsgs[i].msg_hdr.msg_iovlen = 1
            self.rmsgs[i].msg_hdr.msg_name = &self.addrs[i]
            # msg_controllen stays 0 (no control data) until a wildcard batch
            self.rmsgs[i].msg_hdr.msg_control = self.rctl + i * CTL
            self.smsgs[i].msg_hdr.msg_iov = &self.siov[i]
            self.smsgs[i].msg_hdr.msg_iovlen = 1

    def __dealloc__(self):
        PyMem_Free(self.inbuf)
        PyMem_Free(self.outbuf)
        PyMem_Free(self.addrs)
        PyMem_Free(self.riov)
        PyMem_Free(self.siov)
        PyMem_Free(self.rmsgs)
        PyMem_Free(self.smsgs)
        PyMem_Free(self.rctl)
        PyMem_Free(self.slow_idx)
        PyMem_Free(self.slow_zone)
        PyMem_Free(self.prow)
        PyMem_Free(self.lz)

    def __init__(self, generation_word, counters, on_generation, slow):
        self._gen = generation_word
        if self._gen.shape[0] < CTL_GENERATION + 8:
            raise ValueError("the control segment's generation word is not in the view")
        self._counters = counters
        if self._counters.shape[0] < W_END * 8:
            raise ValueError("counters block too small")
        self.w = <uint64_t*>&self._counters[0]
        self.has_rows = self._counters.shape[0] >= ROWS_END * 8
        self.cache = CacheTable()
        self.cache.w = self.w
        self.on_generation = on_generation
        self.slow = slow
        self.generation = 0
        self.image = NULL
        self.image_len = 0

    def set_image(self, image, unsigned long long generation):
        """Serve ``image`` (a buffer) from the next batch on; None unmaps.

        The previous buffer is released here, so its owner may close it.
        """
        if image is None:
            self._image = None
            self.image = NULL
            self.image_len = 0
        else:
            self._image = image
            self.image = &self._image[0]
            self.image_len = self._image.shape[0]
        self.generation = generation
        self.w[W_GENERATION] = generation
        if self.cfwd is not None:
            self.cfwd.set_image_zones(image)

    def set_forward(self, CForwarder cf, bint on=True):
        """Forward the misses ``cf`` serves from the batch (None: all go to ``slow``);
        ``on`` False keeps it but hands everything to Python (a query log, an
        armed loop probe: they must see each query)."""
        if self.cfwd is cf:
            self.cfwd_on = cf is not None and on
            return
        if self.cfwd is not None:
            self.cfwd.close()
        self.cfwd = cf
        self.cfwd_on = cf is not None and on
        if cf is not None:
            cf.w = self.w
            cf.slow = self.slow
            cf.set_image_zones(self._image if self.image != NULL else None)

    def set_prelookup(self, capsules):
        """Call plugins' C hooks for each query before the image lookup; None: no hook.

        ``capsules`` is one PyCapsule named ``"fastdns.prelookup"`` or a
        sequence of at most MAX_HOOKS of them, in plugin.cfg order, each
        holding a ``fastdns_prelookup`` (function, context and optional
        ``post``, see the C declaration above); they are kept alive while
        set. A hook may rewrite the query in place (at most ``out_cap``
        octets, setting ``*length``) and return PRE_LOOKUP (the next hook,
        then the image) or PRE_POST (the same, and its ``post`` sees the
        answer), write an answer to ``out`` and return PRE_ANSWER, return
        PRE_DROP, or return PRE_SLOW: the packet as it came goes to Python,
        which runs the plugins' ``before`` (server/beforechain.py).
        """
        cdef fastdns_prelookup* hook
        cdef fastdns_prelookup got[MAX_HOOKS]
        cdef int n = 0
        if capsules is None:
            capsules = ()
        elif not isinstance(capsules, (list, tuple)):
            capsules = (capsules,)
        capsules = tuple(capsules)
        if len(capsules) > MAX_HOOKS:
            raise ValueError(f"at most {MAX_HOOKS} pre-lookup hooks")
        for capsule in capsules:
            if not PyCapsule_IsValid(capsule, b"fastdns.prelookup"):
                raise TypeError("a pre-lookup hook is a PyCapsule named 'fastdns.prelookup'")
            hook = <fastdns_prelookup*>PyCapsule_GetPointer(capsule, b"fastdns.prelookup")
            if hook.fn == NULL:
                raise ValueError("the pre-lookup hook has no function")
            got[n] = hook[0]
            n += 1
        self.nhooks = 0  # the batch reads nhooks first: no half-set chain is called
        for i in range(n):
            self.hooks[i] = got[i]
        self._prelookup_capsules = capsules
        self.nhooks = n

    def release(self):
        """Drop every buffer this object holds (before the mmaps close)."""
        self._image = None
        self.image = NULL
        self.image_len = 0
        self._gen = None
        self._counters = None
        self.w = NULL
        self.cache.w = NULL
        self.set_forward(None)
        self.cache.clear()

    def clear_rows(self):
        """Forget every socket's zone table (before a reload sets them again)."""
        cdef int i
        memset(self.fd_lz, 0xFF, sizeof(self.fd_lz))
        for i in range(MAX_LISTENERS):
            self.lz[i].fd = -1

    def set_rows(self, int fd, zones, int dropped):
        """Count the queries read on ``fd`` into rows: ``zones`` is the socket's
        listener's ``tables.ListenerRows.zones`` ((lowercased wire, row),
        longest first), ``dropped`` its row for a name none matches. Returns
        False when they cannot be (no row region, fd or table limits): that
        socket then counts the totals only."""
        cdef int i, slot = -1, k
        cdef bytes name
        if not self.has_rows or fd < 0 or fd >= MAX_FD or not 0 <= dropped < ROWS:
            return False
        for i in range(MAX_LISTENERS):
            if self.lz[i].fd == fd or (slot < 0 and self.lz[i].fd < 0):
                slot = i
        if slot < 0:
            return False
        self.fd_lz[fd] = -1
        cdef ListenerZones* t = &self.lz[slot]
        t.fd = fd
        t.dropped = dropped
        t.nzones = 0
        if len(zones) > MAX_LZ:
            # more zones than rows: each is past ROW_MAX in the table, or shares it
            t.dropped = ROW_MAX
        else:
            for k, (name, row) in enumerate(zones):
                if len(name) > 255 or not 0 <= row < ROWS:
                    t.fd = -1
                    return False
                memcpy(t.name[k], PyBytes_AS_STRING(name), len(name))
                t.zlen[k] = len(name)
                t.row[k] = row
            t.nzones = len(zones)
        self.fd_lz[fd] = slot
        return True

    def set_logger(self, unsigned int mask, logger):
        """Hand answers of the classes in ``mask`` (LOG_SUCCESS | LOG_DENIAL |
        LOG_ERROR) to ``logger(fd, [(query, addr, answer), ...], batch_ns)``
        once per batch; 0 turns it off (one test per batch is all it costs)."""
        self.log_mask = mask if logger is not None else 0
        self.logger = logger

    def drain(self, int fd, int family, bint pktinfo=False):
        """Answer what is queued on ``fd`` (family 1 = IPv4, 2 = IPv6); returns packets read.

        ``pktinfo``: ``fd`` is a wildcard socket with IP_PKTINFO (IPv4) or
        IPV6_RECVPKTINFO (IPv6) on; each answer then leaves from its query's
        destination address.
        """
        cdef int batches = 0, total = 0, n
        if self.w == NULL:
            return 0
        while batches < MAX_BATCHES:
            if fd_load_u64(&self._gen[CTL_GENERATION]) != self.generation:
                # a publish: remap before this batch (the old image is no
                # longer referenced by any packet once we get here)
                self.on_generation()
            if self.image == NULL:
                break
            n = self._batch(fd, family, pktinfo)
            if n <= 0:
                break
            total += n
            batches += 1
            if n < RETRY_AT:
                # A short batch: the queue is (nearly) empty, so go back to
                # the loop (level-triggered: it calls us again). After a
                # longer one more has likely arrived while we answered, and
                # another recvmmsg is cheaper than epoll_wait plus the
                # loop's dispatch.
                break
        if self.cfwd is not None:
            self.cfwd.arm_if_wanted()  # the expiry timer, once something is pending
        return total

    cdef int _batch(self, int fd, int family, bint pktinfo) except -2:
        cdef int i, n, m = 0, nslow = 0, sent, r, zone, row, lb, pre, fw
        cdef Py_ssize_t length, ans
        cdef int nh = self.nhooks, posts
        cdef fastdns_peer peer
        cdef uint64_t t0, ns
        cdef uint64_t* w = self.w
        cdef uint64_t* rw
        cdef unsigned char* pkt
        cdef unsigned char* out
        cdef const ListenerZones* lz = NULL
        cdef int rown[ROWS]  # packets of this batch per row (for the latency)
        if fd < MAX_FD and self.fd_lz[fd] >= 0:
            lz = &self.lz[self.fd_lz[fd]]
        for i in range(VLEN):
            self.rmsgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
            self.rmsgs[i].msg_hdr.msg_flags = 0
        if pktinfo:
            for i in range(VLEN):
                self.rmsgs[i].msg_hdr.msg_controllen = CTL
            self.ctl_armed = True
        elif self.ctl_armed:
            self._disarm()
        with nogil:
            n = recvmmsg(fd, self.rmsgs, VLEN, MSG_DONTWAIT, NULL)
        if n <= 0:
            return 0
        t0 = now_ns()
        w[W_BATCHES] += 1
        if nh:
            peer.local_port = local_port(fd)
        if lz != NULL:
            memset(rown, 0, sizeof(rown))
        with nogil:
            for i in range(n):
                pkt = self.inbuf + i * SLOT
                out = self.outbuf + i * SLOT
                length = self.rmsgs[i].msg_len
                row = count_query(w, lz, 0, family, pkt, length)
                self.prow[i] = row
                if row >= 0:
                    rown[row] += 1
                if self.rmsgs[i].msg_hdr.msg_flags & MSG_TRUNC:
                    # larger than a slot: no DNS query is (RFC 6891 sizes are for answers)
                    w[W_OVERSIZE] += 1
                    count_dropped(w, row)
                    continue
                zone = -1
                posts = 0
                if nh:
                    pre = self._prelookup(i, pkt, &length, out, &ans, &peer, &posts)
                    if pre == PRE_ANSWER and posts:
                        # a hook's answer passes the posts of the hooks before it, as
                        # CoreDNS's chain hands a plugin's answer to those above it
                        pre = self._postlookup(i, pkt, &length, out, &ans, posts)
                        if pre != PRE_ANSWER:
                            w[W_SLOW] += 1
                            self.slow_idx[nslow] = i
                            self.slow_zone[nslow] = ZONE_PRELOOKUP
                            nslow += 1
                            continue
                    if pre == PRE_ANSWER:
                        count_response(w, row, 0, out, ans)
                        self._queue(m, i, out, ans)
                        m += 1
                        continue
                    if pre == PRE_DROP:
                        count_dropped(w, row)
                        continue
                    if pre == PRE_SLOW:
                        w[W_SLOW] += 1
                        self.slow_idx[nslow] = i
                        self.slow_zone[nslow] = ZONE_PRELOOKUP
                        nslow += 1
                        continue
                ans = answer_packet(self.image, self.image_len, pkt, length, out, SLOT,
                                    self.rotation, &zone)
                self.rotation += 1
                if posts:
                    pre = self._postlookup(i, pkt, &length, out, &ans, posts)
                    if pre == PRE_ANSWER:
                        count_response(w, row, 0, out, ans)
                        self._queue(m, i, out, ans)
                        m += 1
                        continue
                    w[W_SLOW] += 1
                    self.slow_idx[nslow] = i
                    self.slow_zone[nslow] = ZONE_PRELOOKUP
                    nslow += 1
                    continue
                if ans > 3 and out[3] & TF_EXTERNAL:
                    # an ExternalName CNAME to an outside name: Python appends the
                    # target's records (fastdns/server/external.py)
                    w[W_SLOW] += 1
                    self.slow_idx[nslow] = i
                    self.slow_zone[nslow] = ZONE_EXTERNAL
                    nslow += 1
                elif ans > 0:
                    count_response(w, row, 0, out, ans)
                    self._queue(m, i, out, ans)
                    m += 1
                elif ans == 0:
                    count_dropped(w, row)
                else:
                    # not in the image: the response cache's C table, then Python
                    ans = self.cache.answer(pkt, length, out, <int64_t>t0)
                    if ans > 0:
                        count_response(w, row, 0, out, ans)
                        self._queue(m, i, out, ans)
                        m += 1
                        continue
                    if ans == -1:
                        w[W_CC_MISSES] += 1
                    if self.cfwd_on and self.cfwd.routable(zone):
                        # a name in no image zone or a forward-only one: the C
                        # forwarder, if its block is one
                        fw = self.cfwd.take(fd, pkt, length, &self.addrs[i],
                                            self.rmsgs[i].msg_hdr.msg_namelen,
                                            self._reply_cmsg(i) if pktinfo else NULL,
                                            pktinfo, row, out, &ans, <int64_t>t0)
                        if fw == TAKE_PENDING:
                            continue
                        if fw == TAKE_ANSWER:
                            count_response(w, row, 0, out, ans)
                            self._queue(m, i, out, ans)
                            m += 1
                            continue
                    w[W_SLOW] += 1
                    self.slow_idx[nslow] = i
                    self.slow_zone[nslow] = zone
                    nslow += 1
        if self.cfwd_on:
            with nogil:
                self.cfwd.flush()  # the forwarded misses, one sendmmsg per upstream socket
        for r in range(nslow):
            m += self._slow_one(self.slow_idx[r], self.slow_zone[r], m, fd, pktinfo)
        sent = 0
        with nogil:
            if pktinfo:
                for r in range(m):
                    self._reply_source(r)
            while sent < m:
                r = sendmmsg(fd, self.smsgs + sent, m - sent, MSG_DONTWAIT)
                if r > 0:
                    sent += r
                elif r < 0 and errno == EINTR:
                    continue
                elif r < 0 and errno == EAGAIN:  # == EWOULDBLOCK on Linux
                    # socket buffer full: UDP may drop, spinning here would not help
                    w[W_SEND_ERRORS] += m - sent
                    break
                else:
                    # this message failed (e.g. EPERM from a firewall): skip it
                    w[W_SEND_ERRORS] += 1
                    sent += 1
            ns = now_ns() - t0
            count_latency(w, ns, n)
            if lz != NULL:
                lb = latency_bucket(ns)
                for r in range(ROWS):
                    if rown[r]:
                        rw = w + W_ROWS + r * ROW_WORDS
                        rw[R_LATENCY + lb] += rown[r]
                        rw[R_LATENCY_SUM_NS] += ns * rown[r]
        if self.log_mask:
            self._log(fd, m, t0)
        return n

    cdef int _log(self, int fd, int m, uint64_t t0) except -1:
        """The answers of this batch whose class the log wants, to Python."""
        cdef int j, i
        cdef const unsigned char* r
        items = []
        for j in range(m):
            r = <const unsigned char*>self.siov[j].iov_base
            if not response_class(r, self.siov[j].iov_len) & self.log_mask:
                continue
            i = (r - self.outbuf) // SLOT
            items.append((PyBytes_FromStringAndSize(<char*>self.inbuf + i * SLOT,
                                                    self.rmsgs[i].msg_len),
                          sockaddr_tuple(&self.addrs[i]),
                          PyBytes_FromStringAndSize(<const char*>r, self.siov[j].iov_len)))
        if items:
            try:
                self.logger(fd, items, now_ns() - t0)
            except Exception:  # a log line is never worth a lost batch
                pass
        return 0

    cdef void _disarm(self) noexcept nogil:
        """Back to no control data (a bound socket's batch after a wildcard one's)."""
        cdef int i
        for i in range(VLEN):
            self.rmsgs[i].msg_hdr.msg_controllen = 0
            self.smsgs[i].msg_hdr.msg_control = NULL
            self.smsgs[i].msg_hdr.msg_controllen = 0
        self.ctl_armed = False

    cdef cmsghdr* _reply_cmsg(self, int i) noexcept nogil:
        """The IP_PKTINFO / IPV6_PKTINFO message datagram ``i`` came with, made into
        its reply's (in place): interface index 0, so the route picks the
        interface (ip(7), ipv6(7)); the source stays the address asked:
        ``ipi_spec_dst``, the local address the kernel computed for the
        query (its destination for unicast), or ``ipi6_addr``. NULL when there
        is none, or it is a multicast address no reply can come from: the
        kernel then picks the source, as without pktinfo.

        Precondition: this batch was read with ``msg_controllen = CTL``.
        """
        cdef msghdr* h = &self.rmsgs[i].msg_hdr
        cdef cmsghdr* c = CMSG_FIRSTHDR(h)
        cdef in6_pktinfo* p6
        while c != NULL:
            if (c.cmsg_level == IPPROTO_IP and c.cmsg_type == IP_PKTINFO
                    and c.cmsg_len == CMSG_LEN(sizeof(in_pktinfo))):
                (<in_pktinfo*>CMSG_DATA(c)).ipi_ifindex = 0
                return c
            if (c.cmsg_level == IPPROTO_IPV6 and c.cmsg_type == IPV6_PKTINFO
                    and c.cmsg_len == CMSG_LEN(sizeof(in6_pktinfo))):
                p6 = <in6_pktinfo*>CMSG_DATA(c)
                if p6.ipi6_addr.s6_addr[0] == 0xFF:
                    return NULL
                p6.ipi6_ifindex = 0
                return c
            c = CMSG_NXTHDR(h, c)
        return NULL

    cdef inline void _reply_source(self, int j) noexcept nogil:
        """Send answer ``j`` of a wildcard batch from its query's destination."""
        cdef int i = (<unsigned char*>self.siov[j].iov_base - self.outbuf) // SLOT
        cdef cmsghdr* c = self._reply_cmsg(i)
        self.smsgs[j].msg_hdr.msg_control = c
        self.smsgs[j].msg_hdr.msg_controllen = CMSG_SPACE(c.cmsg_len - CMSG_LEN(0)) if c else 0

    cdef inline void _queue(self, int m, int i, unsigned char* out,
                            Py_ssize_t length) noexcept nogil:
        self.siov[m].iov_base = out
        self.siov[m].iov_len = length
        self.smsgs[m].msg_hdr.msg_name = &self.addrs[i]
        self.smsgs[m].msg_hdr.msg_namelen = self.rmsgs[i].msg_hdr.msg_namelen

    cdef inline int _prelookup(self, int i, unsigned char* pkt, Py_ssize_t* length,
                               unsigned char* out, Py_ssize_t* ans, fastdns_peer* peer,
                               int* posts) noexcept nogil:
        """Run the pre-lookup chain on packet ``i``; PRE_LOOKUP: on to the image
        (``*posts``: the bits of the hooks whose ``post`` must see its answer)."""
        cdef int h, pre
        cdef Py_ssize_t n = length[0]
        memcpy(self.orig, pkt, n)
        self.orig_len = n
        peer.addr = <const void*>&self.addrs[i]
        for h in range(self.nhooks):
            ans[0] = 0
            pre = self.hooks[h].fn(self.hooks[h].ctx, pkt, length, out, SLOT, ans, peer)
            if length[0] < 12 or length[0] > SLOT:
                pre = PRE_SLOW  # a hook that broke the packet: Python decides
            if pre == PRE_POST:
                if self.hooks[h].post != NULL:
                    posts[0] |= 1 << h
                continue
            if pre == PRE_LOOKUP:
                continue
            if pre == PRE_ANSWER and not (0 < ans[0] <= SLOT):
                pre = PRE_SLOW
            if pre == PRE_DROP or pre == PRE_ANSWER:
                return pre
            self._restore(i, pkt, length, n)
            return PRE_SLOW
        if length[0] != n:
            self.rmsgs[i].msg_len = <unsigned int>length[0]  # rewritten
        return PRE_LOOKUP

    cdef inline int _postlookup(self, int i, unsigned char* pkt, Py_ssize_t* length,
                                unsigned char* out, Py_ssize_t* ans, int posts) noexcept nogil:
        """The ``post`` hooks, last hook first, on the image's answer (``*ans``
        0 when the image had none of its own); PRE_ANSWER or PRE_SLOW (the
        original packet restored for Python)."""
        cdef int h, pre = PRE_ANSWER
        cdef Py_ssize_t n = self.rmsgs[i].msg_len
        if ans[0] < 0 or (ans[0] > 3 and out[3] & TF_EXTERNAL):
            ans[0] = 0  # handed on, or to be completed by Python: the hook decides
        h = self.nhooks - 1
        while h >= 0:
            if posts & (1 << h):
                pre = self.hooks[h].post(self.hooks[h].ctx, pkt, length, out, SLOT, ans)
                if pre != PRE_ANSWER or not (0 < ans[0] <= SLOT):
                    pre = PRE_SLOW
                    break
            h -= 1
        if pre == PRE_SLOW:
            self._restore(i, pkt, length, -1)
        return pre

    cdef inline void _restore(self, int i, unsigned char* pkt, Py_ssize_t* length,
                              Py_ssize_t n) noexcept nogil:
        """Put packet ``i`` back as it came (``n`` -1: the length it came with)."""
        if n < 0:
            n = self.orig_len
        memcpy(pkt, self.orig, n)
        length[0] = n
        self.rmsgs[i].msg_len = <unsigned int>n

    cdef int _slow_one(self, int i, int zone, int m, int fd, bint pktinfo) except -1:
        """Hand packet ``i`` to Python; queue its answer if one comes back now.

        From a wildcard socket the query's reply control message goes along
        (``slow``'s fifth argument, ``socket.sendmsg``'s ancillary data), for
        an answer sent later (a forwarded query): empty when there is none.
        """
        cdef unsigned char* out = self.outbuf + i * SLOT
        cdef Py_ssize_t length
        cdef cmsghdr* c
        data = PyBytes_FromStringAndSize(<char*>self.inbuf + i * SLOT, self.rmsgs[i].msg_len)
        try:
            if pktinfo:
                c = self._reply_cmsg(i)
                anc = [] if c == NULL else [
                    (c.cmsg_level, c.cmsg_type,
                     PyBytes_FromStringAndSize(<char*>CMSG_DATA(c), c.cmsg_len - CMSG_LEN(0)))]
                resp = self.slow(data, sockaddr_tuple(&self.addrs[i]), zone, fd, anc)
            else:
                resp = self.slow(data, sockaddr_tuple(&self.addrs[i]), zone, fd)
        except Exception:  # the slow path answers its own errors; never lose the batch
            count_dropped(self.w, self.prow[i])
            return 0
        if resp is None:
            return 0
        if not isinstance(resp, bytes) or PyBytes_GET_SIZE(resp) > SLOT:
            count_dropped(self.w, self.prow[i])
            return 0
        length = PyBytes_GET_SIZE(resp)
        memcpy(out, PyBytes_AS_STRING(resp), length)
        count_response(self.w, self.prow[i], 0, out, length)
        self._queue(m, i, out, length)
        return 1


cdef enum:
    C_LOG_SUCCESS = 1
    C_LOG_DENIAL = 2
    C_LOG_ERROR = 4

LOG_SUCCESS = C_LOG_SUCCESS
LOG_DENIAL = C_LOG_DENIAL
LOG_ERROR = C_LOG_ERROR


cdef inline unsigned int response_class(const unsigned char* r, Py_ssize_t n) noexcept nogil:
    """CoreDNS's response class (plugin/pkg/response/typify.go, classify.go), or
    the union of the classes it may be when the header alone cannot tell (the
    logger then decides exactly)."""
    if n < 12:
        return C_LOG_ERROR
    cdef unsigned int rcode = r[3] & 0x0F
    if rcode == 3:
        return C_LOG_DENIAL
    if rcode != 0:
        return C_LOG_ERROR
    if r[6] | r[7]:
        return C_LOG_SUCCESS
    if r[8] | r[9]:
        return C_LOG_SUCCESS | C_LOG_DENIAL  # NODATA with its SOA, or a delegation
    if r[10] | r[11]:
        return C_LOG_SUCCESS | C_LOG_ERROR  # an extended rcode in the OPT
    return C_LOG_SUCCESS


def all_slow_hook():
    """A pre-lookup hook that hands every query to Python's ``before`` chain:
    for a Corefile whose plugin decides per query only in Python (correct,
    and as slow as the Python path)."""
    return PyCapsule_New(<void*>&fastdns_all_slow_hook, b"fastdns.prelookup", NULL)


def count_udp_query(counters, int family, data):
    """Count a query through the C twin (tests compare it with ipc/counters.py)."""
    cdef unsigned char[::1] blk = counters
    cdef const unsigned char[::1] p = data
    count_query(<uint64_t*>&blk[0], NULL, 0, family, &p[0] if p.shape[0] else NULL,
                p.shape[0])


def count_udp_response(counters, data):
    cdef unsigned char[::1] blk = counters
    cdef const unsigned char[::1] p = data
    count_response(<uint64_t*>&blk[0], -1, 0, &p[0], p.shape[0])


def count_udp_row(counters, zones, int dropped, int family, data):
    """Count a query with a listener table through the C twin; returns its row
    (tests compare it with tables.ListenerRows.match and Counters.query)."""
    if len(counters) < ROWS_END * 8:
        raise ValueError("counters block too small for the rows")
    cdef unsigned char[::1] blk = counters
    cdef const unsigned char[::1] p = data
    cdef ListenerZones t
    cdef bytes name
    cdef int k
    if len(zones) > MAX_LZ or not 0 <= dropped < ROWS:
        raise ValueError("too many zones or a bad row")
    t.fd = 0
    t.dropped = dropped
    for k, (name, row) in enumerate(zones):
        memcpy(t.name[k], PyBytes_AS_STRING(name), len(name))
        t.zlen[k] = len(name)
        t.row[k] = row
    t.nzones = len(zones)
    return count_query(<uint64_t*>&blk[0], &t, 0, family, &p[0] if p.shape[0] else NULL,
                       p.shape[0])


def count_batch_latency(counters, unsigned long long ns, unsigned long long n):
    cdef unsigned char[::1] blk = counters
    count_latency(<uint64_t*>&blk[0], ns, n)
