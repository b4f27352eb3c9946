# The C forwarder's declarations: limits, the block, upstream, route and
# pending-slot structs, the name-suffix test. Included by _udp.pyx before
# _udp_forward.pxi (the forwarder; its design is described there).

from libc.errno cimport ECONNREFUSED

from fastdns._wire cimport build_error, check_response_c

cdef extern from "<sys/random.h>" nogil:
    ssize_t getrandom(void* buf, size_t n, unsigned int flags)

cdef extern from "<sys/socket.h>" nogil:
    ssize_t sendmsg(int fd, const msghdr* msg, int flags)

cdef enum:
    CF_MAX_BLOCKS = 16
    CF_MAX_UPS = 64  # upstreams of all blocks together
    CF_BLOCK_UPS = 16  # per block (layout.FWD_MAX_UPSTREAMS)
    CF_NSOCK = 4  # connected sockets per upstream (random choice per query)
    CF_MAX_PENDING = 8192
    CF_QMAX = 512  # longest query it forwards (longer: Python)
    CF_MAX_EXCEPT = 8
    CF_ROUTES = 16  # listeners with a route table
    CF_ROUTE_ZONES = 16
    CF_SENDQ = 64
    CF_RAND = 512
    CF_MAX_ZONES = 4096  # image zones whose kind it knows (more: those go to Python)
    CF_KEYB = 4096  # buckets of the in-flight key table (coalescing, cached blocks)
    CF_PRIVATE = 1024  # remembered keys a worker's Python cache holds privately
    CF_REPORTS = 64  # SERVFAILs kept for the errors plugin between two ticks (more: dropped)
    CF_QR = 0x80  # in the first flags octet
    CF_TC = 0x02
    CF_KEEP = 0x86EF  # message._KEEP: all but opcode, RD, CD (0x7910)
    CF_COPIED = 0x7910
    POLICY_RANDOM = 0
    POLICY_ROUND_ROBIN = 1
    POLICY_SEQUENTIAL = 2
    TAKE_DECLINE = 0
    TAKE_PENDING = 1
    TAKE_ANSWER = 2

ctypedef struct CFBlock:
    int nups
    int ups[CF_BLOCK_UPS]  # indices into CForwarder.ups
    int policy
    unsigned int rr
    int max_concurrent  # 0: no limit
    int inflight
    int failfast
    unsigned int handover  # bit r: an answer with rcode r goes to Python
    int64_t read_timeout_ns
    int64_t timeout_ns
    int from_len
    int nexcept
    int except_len[CF_MAX_EXCEPT]
    unsigned char from_zone[256]
    unsigned char except_zone[CF_MAX_EXCEPT][256]
    uint64_t rejects
    int cache  # its `cache`'s number in the table (insert, render, coalesce), -1: none
    int c_row  # the counters word of that cache's row that counts its C misses

ctypedef struct CFUp:
    int block
    int healthy
    int nsock
    int fds[CF_NSOCK]
    uint64_t sent[CF_NSOCK]  # queries sent on each socket (rotation, conn-cache counts)
    int w_conn_miss  # region-relative words of its forward slot (cforward.py)
    int w_dur
    int64_t refused_ns  # an ECONNREFUSED seen at this time

ctypedef struct CFRoute:
    int fd
    int nzones
    int zlen[CF_ROUTE_ZONES]
    int block[CF_ROUTE_ZONES]  # -1: a block the C path leaves to Python
    unsigned char zone[CF_ROUTE_ZONES][256]

ctypedef struct CFPending:
    int used
    int block
    int up
    int attempts
    int oi  # next position in order (forwarder.py's i)
    int skipped
    unsigned char order[CF_BLOCK_UPS]
    int64_t t_attempt
    int64_t t_expire
    int64_t t_deadline
    int lfd
    int pktinfo
    int row
    int qlen
    int qend
    int limit  # the client's UDP limit (message.udp_limit)
    int edns
    int do
    unsigned int cid
    unsigned int qid
    socklen_t alen
    sockaddr_storage addr
    size_t ctllen
    unsigned char ctl[CTL]
    unsigned char q[CF_QMAX]  # the query as sent (ID = qid)
    # cached blocks: the cache key (ResponseCache.key), the in-flight key chain
    # and the waiters sharing this query (a follower has no ID and no upstream)
    int cached
    int follower
    int fnext  # next follower of this leader, -1
    int knext  # next leader in its key bucket, -1
    uint64_t khash
    Py_ssize_t klen
    unsigned char key[CC_KEY_MAX]


cdef inline unsigned int cf_be16(const unsigned char* p) noexcept nogil:
    return p[0] << 8 | p[1]


cdef inline bint cf_suffix(const unsigned char* key, Py_ssize_t klen, const uint64_t* starts,
                           const unsigned char* z, int zlen) noexcept nogil:
    """Is the lowercased zone wire ``z`` the name ``key`` or one of its parents
    (names.is_subdomain)? ``starts``: bit i set when a label starts at key[i]."""
    cdef Py_ssize_t s = klen - zlen
    if s < 0 or not (starts[s >> 6] >> (s & 63)) & 1:
        return False
    return memcmp(key + s, z, zlen) == 0
