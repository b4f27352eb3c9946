# The C forwarder: misses forwarded from the UDP batch, no Python object per query.
#
# Included by _udp.pyx (one extension, split for reading). fastdns/server/
# cforward.py configures it from the worker's BlockRouter and owns every
# policy that is not per packet: which blocks and names it may take (it
# declines the rest, which then go to Python exactly as before), the
# upstream sockets (opened, registered with the event loop, rotated), the
# health checks (it pushes the healthy set), the expiry timer.
#
# A query the image and the cache table cannot answer, on a listener whose
# port's blocks route its name to a block this forwarder serves (the longest
# zone suffix, as Config.select; under FROM and no `except` zone, as
# Forwarder.handles), takes a pending slot: an unused random ID (RFC 5452
# §9.2), the upstream the block's policy picks among the healthy ones
# (forwarder.py _exchange: skip down ones, all down = random one unless
# failfast), and goes out with sendmmsg at the end of the batch on one of the
# upstream's connected sockets (the kernel chose its random source port and
# drops datagrams from any other peer). An answer is accepted when its ID
# is pending on that upstream, QR is set, its question equals the one sent
# (the name case-insensitively, RFC 4343) and wire.parse_response would
# parse it (check_response_c); anything else is dropped and counted
# (W_CFWD_MISMATCHED), as upstream.py does. The client then gets it as
# Forwarder.forward + message.adapt/fit render it: its ID, its opcode/RD/CD
# bits and question bytes, truncated (TC, question, our OPT) past its UDP
# limit, sent from the listener socket it asked on (on a wildcard socket
# with the query's IP_PKTINFO reply message, kept in the slot).
#
# A TC answer, or an rcode listed in `next`/`failover`, or an answer larger
# than a slot hands the client's original query to Python (FastPath.slow),
# which does what it always did (TCP retry, the next upstream, `next`).
# Attempts that time out (expire(), on a Python timer while anything is
# pending) or are refused (ICMP) move to the next upstream within 2 x
# upstreams attempts and the 5 s deadline (README "Where fastdns differs");
# then SERVFAIL. Beyond `max_concurrent` in flight: REFUSED.

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


@cython.final
cdef class CForwarder:
    """The fast path's forwarder; built and fed by cforward.py, one per Corefile."""

    cdef CFBlock* blocks
    cdef int nblocks
    cdef CFUp* ups
    cdef int nups
    cdef signed char up_of_fd[MAX_FD]
    cdef CFRoute* routes
    cdef signed char route_of_fd[MAX_FD]
    cdef CFPending* pend
    cdef int* free_list
    cdef int nfree
    cdef int* active  # pending indices in use, unordered
    cdef int* active_pos
    cdef int nactive
    cdef int* by_id  # 65536: the pending slot of an upstream ID, -1
    cdef uint64_t* counts  # the forward region's words this side counted (region-relative)
    cdef readonly int count_words
    cdef int broken_word
    cdef int fwd_hist
    cdef uint64_t* w  # the worker's counters block (set_forward), or NULL
    cdef object slow  # FastPath.slow: the hand-over to Python
    cdef unsigned char rnd[CF_RAND]
    cdef int rnd_pos
    cdef int sendq_fd[CF_SENDQ]
    cdef int sendq_p[CF_SENDQ]
    cdef int nsendq
    cdef mmsghdr* smsgs
    cdef iovec* siov
    cdef sockaddr_storage* raddrs
    cdef unsigned char* rctl
    cdef int* rfd
    cdef mmsghdr* rmsgs
    cdef iovec* riov
    cdef unsigned char* inbuf
    cdef int* handed
    cdef unsigned char zone_fwd[CF_MAX_ZONES]  # 1: image zone i is ZK_FORWARD
    cdef public bint timer_armed
    cdef readonly bint want_timer
    cdef object on_pending
    cdef object on_refused
    cdef uint64_t failed  # bit u: an attempt on upstream u failed since take_failed

    def __cinit__(self):
        self.blocks = <CFBlock*>PyMem_Malloc(CF_MAX_BLOCKS * sizeof(CFBlock))
        self.ups = <CFUp*>PyMem_Malloc(CF_MAX_UPS * sizeof(CFUp))
        self.routes = <CFRoute*>PyMem_Malloc(CF_ROUTES * sizeof(CFRoute))
        # calloc: a large zeroed block is mapped lazily, so the slots cost memory
        # only once used
        self.pend = <CFPending*>PyMem_Calloc(CF_MAX_PENDING, sizeof(CFPending))
        self.free_list = <int*>PyMem_Malloc(CF_MAX_PENDING * sizeof(int))
        self.active = <int*>PyMem_Malloc(CF_MAX_PENDING * sizeof(int))
        self.active_pos = <int*>PyMem_Malloc(CF_MAX_PENDING * sizeof(int))
        self.by_id = <int*>PyMem_Malloc(65536 * sizeof(int))
        self.smsgs = <mmsghdr*>PyMem_Malloc(VLEN * sizeof(mmsghdr))
        self.siov = <iovec*>PyMem_Malloc(VLEN * sizeof(iovec))
        self.raddrs = <sockaddr_storage*>PyMem_Malloc(VLEN * sizeof(sockaddr_storage))
        self.rctl = <unsigned char*>PyMem_Malloc(VLEN * CTL)
        self.rfd = <int*>PyMem_Malloc(VLEN * sizeof(int))
        self.rmsgs = <mmsghdr*>PyMem_Malloc(VLEN * sizeof(mmsghdr))
        self.riov = <iovec*>PyMem_Malloc(VLEN * sizeof(iovec))
        self.inbuf = <unsigned char*>PyMem_Malloc(VLEN * SLOT)
        self.handed = <int*>PyMem_Malloc(VLEN * sizeof(int))
        if (self.blocks == NULL or self.ups == NULL or self.routes == NULL
                or self.pend == NULL or self.free_list == NULL or self.active == NULL
                or self.active_pos == NULL or self.by_id == NULL or self.smsgs == NULL
                or self.siov == NULL or self.raddrs == NULL or self.rctl == NULL
                or self.rfd == NULL or self.rmsgs == NULL or self.riov == NULL
                or self.inbuf == NULL or self.handed == NULL):
            raise MemoryError()
        cdef int i
        memset(self.by_id, 0xFF, 65536 * sizeof(int))
        memset(self.up_of_fd, 0xFF, sizeof(self.up_of_fd))
        memset(self.zone_fwd, 0, sizeof(self.zone_fwd))
        memset(self.route_of_fd, 0xFF, sizeof(self.route_of_fd))
        memset(self.rmsgs, 0, VLEN * sizeof(mmsghdr))
        for i in range(CF_MAX_PENDING):
            self.free_list[i] = CF_MAX_PENDING - 1 - i
        self.nfree = CF_MAX_PENDING
        for i in range(CF_ROUTES):
            self.routes[i].fd = -1
        for i in range(VLEN):
            self.riov[i].iov_base = self.inbuf + i * SLOT
            self.riov[i].iov_len = SLOT
            self.rmsgs[i].msg_hdr.msg_iov = &self.riov[i]
            self.rmsgs[i].msg_hdr.msg_iovlen = 1
        self.rnd_pos = CF_RAND
        self.counts = NULL

    def __dealloc__(self):
        PyMem_Free(self.blocks)
        PyMem_Free(self.ups)
        PyMem_Free(self.routes)
        PyMem_Free(self.pend)
        PyMem_Free(self.free_list)
        PyMem_Free(self.active)
        PyMem_Free(self.active_pos)
        PyMem_Free(self.by_id)
        PyMem_Free(self.smsgs)
        PyMem_Free(self.siov)
        PyMem_Free(self.raddrs)
        PyMem_Free(self.rctl)
        PyMem_Free(self.rfd)
        PyMem_Free(self.rmsgs)
        PyMem_Free(self.riov)
        PyMem_Free(self.inbuf)
        PyMem_Free(self.handed)
        PyMem_Free(self.counts)

    def __init__(self, int count_words, int broken_word, int fwd_hist, on_pending,
                 on_refused=None):
        """``count_words``: the forward region's size (counts are region-relative
        words, cforward.py adds them in BlockRouter.export); ``on_pending()``
        is called when a query is pending and the expiry timer is not armed;
        ``on_refused(fd)`` after an ECONNREFUSED on upstream socket ``fd``
        (libuv stops polling a socket that reported an error: the caller
        registers it again)."""
        self.counts = <uint64_t*>PyMem_Malloc(count_words * sizeof(uint64_t))
        if self.counts == NULL:
            raise MemoryError()
        memset(self.counts, 0, count_words * sizeof(uint64_t))
        self.count_words = count_words
        self.broken_word = broken_word
        self.fwd_hist = fwd_hist
        self.on_pending = on_pending
        self.on_refused = on_refused

    # -- configuration (cforward.py) -----------------------------------------

    def add_block(self, bytes from_zone, list except_zones, int policy, int max_concurrent,
                  bint failfast, unsigned int handover, double read_timeout, double timeout):
        """A forward block; returns its index, or -1 when it cannot be held."""
        cdef CFBlock* b
        cdef int k
        cdef bytes z
        if (self.nblocks >= CF_MAX_BLOCKS or len(except_zones) > CF_MAX_EXCEPT
                or len(from_zone) > 255):
            return -1
        b = &self.blocks[self.nblocks]
        memset(b, 0, sizeof(CFBlock))
        b.policy = policy
        b.max_concurrent = max_concurrent
        b.failfast = failfast
        b.handover = handover
        b.read_timeout_ns = <int64_t>(read_timeout * 1e9)
        b.timeout_ns = <int64_t>(timeout * 1e9)
        b.from_len = len(from_zone)
        memcpy(b.from_zone, PyBytes_AS_STRING(from_zone), b.from_len)
        for k, z in enumerate(except_zones):
            if len(z) > 255:
                return -1
            b.except_len[k] = len(z)
            memcpy(b.except_zone[k], PyBytes_AS_STRING(z), len(z))
        b.nexcept = len(except_zones)
        self.nblocks += 1
        return self.nblocks - 1

    def add_upstream(self, int block, list fds, int w_conn_miss, int w_dur):
        """An upstream of ``block`` with its connected sockets; returns its index."""
        cdef CFUp* u
        cdef CFBlock* b
        cdef int k, fd
        if not 0 <= block < self.nblocks or self.nups >= CF_MAX_UPS:
            return -1
        b = &self.blocks[block]
        if b.nups >= CF_BLOCK_UPS or not 0 < len(fds) <= CF_NSOCK:
            return -1
        for fd in fds:
            if not 0 <= fd < MAX_FD:
                return -1
        for word in (w_conn_miss, w_dur, w_dur + 16 * self.fwd_hist - 1):
            if not 0 <= word < self.count_words:
                return -1
        u = &self.ups[self.nups]
        memset(u, 0, sizeof(CFUp))
        u.block = block
        u.healthy = 1
        u.nsock = len(fds)
        for k, fd in enumerate(fds):
            u.fds[k] = fd
            self.up_of_fd[fd] = self.nups
        u.w_conn_miss = w_conn_miss
        u.w_dur = w_dur
        b.ups[b.nups] = self.nups
        b.nups += 1
        self.nups += 1
        return self.nups - 1

    def set_route(self, int fd, list zones):
        """Listener ``fd``'s port: [(lowercased zone wire, block or -1)], longest
        first (Config.select's order); False when it cannot be held."""
        cdef int i, slot = -1, k
        cdef CFRoute* r
        cdef bytes z
        if not 0 <= fd < MAX_FD or len(zones) > CF_ROUTE_ZONES:
            return False
        for i in range(CF_ROUTES):
            if self.routes[i].fd == fd or (slot < 0 and self.routes[i].fd < 0):
                slot = i
        if slot < 0:
            return False
        r = &self.routes[slot]
        for k, (z, block) in enumerate(zones):
            if len(z) > 255 or not -1 <= block < self.nblocks:
                return False
            r.zlen[k] = len(z)
            r.block[k] = block
            memcpy(r.zone[k], PyBytes_AS_STRING(z), len(z))
        r.nzones = len(zones)
        r.fd = fd
        self.route_of_fd[fd] = slot
        return True

    def set_image_zones(self, image):
        """Learn which zones of ``image`` are forward-only (image.ZK_FORWARD): a miss
        there is routed by Config.select like a name in no zone (slowpath.py
        _resolver), so the C side may take it; other zones' misses stay Python's."""
        from fastdns.ipc import image as img

        cdef int i
        memset(self.zone_fwd, 0, sizeof(self.zone_fwd))
        if image is None:
            return
        h = img.read_header(image)
        for i in range(min(h.nzones, CF_MAX_ZONES)):
            if img.zone_entry(image, i)[5] == img.ZK_FORWARD:
                self.zone_fwd[i] = 1

    cdef inline bint routable(self, int zone) noexcept nogil:
        """May a miss the image reported in ``zone`` (-1: none) be forwarded here?"""
        return zone == -1 or (0 <= zone < CF_MAX_ZONES and self.zone_fwd[zone])

    def set_healthy(self, int up, bint healthy):
        if 0 <= up < self.nups:
            self.ups[up].healthy = healthy

    def socket_sent(self, int up, int k):
        """Queries sent on socket ``k`` of ``up`` since it was set."""
        return self.ups[up].sent[k] if 0 <= up < self.nups and 0 <= k < self.ups[up].nsock else 0

    def replace_socket(self, int up, int k, int fd):
        """Send on ``fd`` instead of socket ``k`` of ``up`` (source-port
        rotation); returns the old fd, whose answers still count until
        ``forget_fd``."""
        cdef int old
        if not (0 <= up < self.nups and 0 <= k < self.ups[up].nsock and 0 <= fd < MAX_FD):
            return -1
        old = self.ups[up].fds[k]
        self.ups[up].fds[k] = fd
        self.ups[up].sent[k] = 0
        self.up_of_fd[fd] = up
        return old

    def forget_fd(self, int fd):
        if 0 <= fd < MAX_FD:
            self.up_of_fd[fd] = -1

    @property
    def pending(self):
        return self.nactive

    def rejects(self):
        """max_concurrent rejects of every block (coredns_forward_max_concurrent_rejects_total)."""
        cdef int i
        cdef uint64_t n = 0
        for i in range(self.nblocks):
            n += self.blocks[i].rejects
        return n

    def counted(self):
        """{region-relative word: count} of what this side counted (BlockRouter.export)."""
        cdef int i
        return {i: self.counts[i] for i in range(self.count_words) if self.counts[i]}

    # -- randomness ------------------------------------------------------------

    cdef inline unsigned int _rand16(self) noexcept nogil:
        """16 unpredictable bits (RFC 5452 §9.2: IDs an off-path attacker cannot guess)."""
        cdef unsigned int v
        if self.rnd_pos + 2 > CF_RAND:
            if getrandom(self.rnd, CF_RAND, 0) != CF_RAND:
                # cannot fail for <= 256 octets after boot (getrandom(2)); keep the old ones
                pass
            self.rnd_pos = 0
        v = self.rnd[self.rnd_pos] << 8 | self.rnd[self.rnd_pos + 1]
        self.rnd_pos += 2
        return v

    # -- the batch side (FastPath._batch, without the GIL) ---------------------

    cdef int take(self, int lfd, const unsigned char* pkt, Py_ssize_t n,
                  const sockaddr_storage* addr, socklen_t alen, cmsghdr* c, int pktinfo,
                  int row, unsigned char* out, Py_ssize_t* ans, int64_t now) noexcept nogil:
        """Forward packet ``pkt`` if this forwarder serves its name: TAKE_PENDING
        (queued for flush), TAKE_ANSWER (``out[:*ans]`` is an error answer for the
        batch), or TAKE_DECLINE (Python's, as before)."""
        cdef CQuery q
        cdef CFRoute* r
        cdef CFBlock* b
        cdef CFPending* p
        cdef int k, bid = -1, pi, up, j, t
        if lfd < 0 or lfd >= MAX_FD or self.route_of_fd[lfd] < 0 or n > CF_QMAX:
            return TAKE_DECLINE
        if parse_query_c(pkt, n, &q) != E_OK or q.opcode != 0 or not q.has_question:
            return TAKE_DECLINE
        r = &self.routes[self.route_of_fd[lfd]]
        for k in range(r.nzones):
            if cf_suffix(q.key, q.qname_len, q.starts, r.zone[k], r.zlen[k]):
                bid = r.block[k]
                break
        if bid < 0:
            return TAKE_DECLINE
        b = &self.blocks[bid]
        if b.nups == 0 or not cf_suffix(q.key, q.qname_len, q.starts, b.from_zone, b.from_len):
            return TAKE_DECLINE
        for k in range(b.nexcept):
            if cf_suffix(q.key, q.qname_len, q.starts, b.except_zone[k], b.except_len[k]):
                return TAKE_DECLINE
        if b.max_concurrent and b.inflight >= b.max_concurrent:
            b.rejects += 1
            self.w[W_CFWD_REFUSED] += 1
            ans[0] = build_error(pkt, &q, 5, True, q.edns, out)  # REFUSED (ErrLimitExceeded)
            return TAKE_ANSWER
        if self.nfree == 0:
            return TAKE_DECLINE
        pi = self.free_list[self.nfree - 1]
        p = &self.pend[pi]
        p.block = bid
        p.attempts = 0
        p.oi = 0
        p.skipped = 0
        for k in range(b.nups):
            p.order[k] = k
        if b.policy == POLICY_RANDOM:
            for k in range(b.nups - 1, 0, -1):  # Fisher-Yates (policy.Random)
                j = self._rand16() % (k + 1)
                t = p.order[k]
                p.order[k] = p.order[j]
                p.order[j] = t
        elif b.policy == POLICY_ROUND_ROBIN:
            j = b.rr % b.nups
            b.rr = (j + 1) % b.nups
            for k in range(b.nups):
                p.order[k] = (j + k) % b.nups
        up = self._next_up(p, b)
        if up < 0:  # failfast_all_unhealthy_upstreams
            self.w[W_CFWD_SERVFAIL] += 1
            ans[0] = build_error(pkt, &q, 2, True, q.edns, out)
            return TAKE_ANSWER
        self.nfree -= 1
        p.used = 1
        memcpy(p.q, pkt, n)
        p.qlen = n
        p.qend = q.question_end
        p.edns = q.edns
        p.do = q.do
        p.limit = q.payload if q.edns else 512
        if p.limit < 512:
            p.limit = 512
        if p.limit > SLOT:
            p.limit = SLOT
        p.cid = cf_be16(pkt)
        p.lfd = lfd
        p.pktinfo = pktinfo
        p.row = row
        memcpy(&p.addr, addr, alen)
        p.alen = alen
        p.ctllen = 0
        if c != NULL and c.cmsg_len <= CTL:
            memcpy(p.ctl, c, c.cmsg_len)
            p.ctllen = c.cmsg_len
        p.t_deadline = now + b.timeout_ns
        self.active_pos[pi] = self.nactive
        self.active[self.nactive] = pi
        self.nactive += 1
        b.inflight += 1
        self.w[W_CFWD_PENDING] = self.nactive
        if not self._attempt(pi, up, now):
            self._release(pi)
            return TAKE_DECLINE
        return TAKE_PENDING

    cdef int _next_up(self, CFPending* p, CFBlock* b) noexcept nogil:
        """forwarder.py _exchange's walk: the next upstream in the query's order
        that is up; all down: a random one (healthcheck_broken), or -1 with
        failfast."""
        cdef int n = b.nups, u
        while True:
            if p.oi >= n:
                p.oi = 0
                p.skipped = 0
            u = b.ups[p.order[p.oi]]
            p.oi += 1
            if self.ups[u].healthy:
                return u
            p.skipped += 1
            if p.skipped < n:
                continue
            if b.failfast:
                return -1
            self.counts[self.broken_word] += 1
            return b.ups[self._rand16() % n]

    cdef bint _attempt(self, int pi, int up, int64_t now) noexcept nogil:
        """Send pending ``pi`` to ``up`` with a fresh unused ID (queued; flush sends)."""
        cdef CFPending* p = &self.pend[pi]
        cdef CFBlock* b = &self.blocks[p.block]
        cdef CFUp* u = &self.ups[up]
        cdef unsigned int qid = 0
        cdef int tries, k
        cdef int64_t left
        for tries in range(16):
            qid = self._rand16()
            if self.by_id[qid] < 0:
                break
        else:
            return False
        self.by_id[qid] = pi
        p.qid = qid
        p.q[0] = qid >> 8
        p.q[1] = qid & 0xFF
        p.up = up
        p.attempts += 1
        p.t_attempt = now
        left = p.t_deadline - now
        p.t_expire = now + (b.read_timeout_ns if b.read_timeout_ns < left else left)
        k = self._rand16() % u.nsock if u.nsock > 1 else 0
        u.sent[k] += 1
        # coredns_proxy_conn_cache_misses_total{proto="udp"}: each UDP exchange
        # counts as a dial, as the Python forwarder counts it (forwarder.py udp_exchanges)
        self.counts[u.w_conn_miss] += 1
        if self.nsendq == CF_SENDQ:
            self.flush()
        self.sendq_fd[self.nsendq] = u.fds[k]
        self.sendq_p[self.nsendq] = pi
        self.nsendq += 1
        self.w[W_CFWD_SENT] += 1
        if not self.timer_armed:
            self.want_timer = True
        return True

    cdef void flush(self) noexcept nogil:
        """Send the queued queries, one sendmmsg per socket."""
        cdef int i, j, m, fd, sent, r
        cdef bint done[CF_SENDQ]
        if self.nsendq == 0:
            return
        memset(done, 0, sizeof(done))
        for i in range(self.nsendq):
            if done[i]:
                continue
            fd = self.sendq_fd[i]
            m = 0
            for j in range(i, self.nsendq):
                if done[j] or self.sendq_fd[j] != fd:
                    continue
                done[j] = True
                self.siov[m].iov_base = self.pend[self.sendq_p[j]].q
                self.siov[m].iov_len = self.pend[self.sendq_p[j]].qlen
                memset(&self.smsgs[m].msg_hdr, 0, sizeof(msghdr))
                self.smsgs[m].msg_hdr.msg_iov = &self.siov[m]
                self.smsgs[m].msg_hdr.msg_iovlen = 1
                m += 1
            sent = 0
            while sent < m:
                r = sendmmsg(fd, self.smsgs + sent, m - sent, MSG_DONTWAIT)
                if r > 0:
                    sent += r
                elif r < 0 and errno == EINTR:
                    continue
                else:
                    # buffer full or refused: that attempt times out and is retried
                    sent += 1
        self.nsendq = 0

    cdef void _release(self, int pi) noexcept nogil:
        """Free pending ``pi`` (its ID, its block's in-flight count)."""
        cdef CFPending* p = &self.pend[pi]
        cdef int pos, last
        if not p.used:
            return
        if self.by_id[p.qid] == pi:
            self.by_id[p.qid] = -1
        self.blocks[p.block].inflight -= 1
        p.used = 0
        pos = self.active_pos[pi]
        last = self.active[self.nactive - 1]
        self.active[pos] = last
        self.active_pos[last] = pos
        self.nactive -= 1
        self.free_list[self.nfree] = pi
        self.nfree += 1
        if self.w != NULL:
            self.w[W_CFWD_PENDING] = self.nactive

    cdef void arm_if_wanted(self) except *:
        if self.want_timer and not self.timer_armed:
            self.want_timer = False
            self.timer_armed = True
            self.on_pending()

    # -- the upstream side (event loop readers and timer) ------------------------

    def drain(self, int fd):
        """Read the answers queued on upstream socket ``fd`` and send them on."""
        cdef int n, i, up, pi, nrep = 0, nhand = 0, batches = 0
        cdef Py_ssize_t length
        cdef unsigned char* a
        cdef CFPending* p
        cdef int64_t now
        if self.w == NULL or not 0 <= fd < MAX_FD:
            return 0
        up = self.up_of_fd[fd]
        if up < 0:
            return 0
        while batches < MAX_BATCHES:
            for i in range(VLEN):
                self.rmsgs[i].msg_hdr.msg_flags = 0
            with nogil:
                n = recvmmsg(fd, self.rmsgs, VLEN, MSG_DONTWAIT, NULL)
            if n < 0 and errno == ECONNREFUSED:
                # ICMP port unreachable (connected socket): this upstream's
                # attempts fail now (upstream.py: UpstreamError, next upstream)
                self.ups[up].refused_ns = now_ns()
                self._expire(now_ns())
                if self.on_refused is not None:
                    self.on_refused(fd)
                batches += 1
                continue
            if n <= 0:
                break
            batches += 1
            now = now_ns()
            nrep = nhand = 0
            with nogil:
                for i in range(n):
                    a = self.inbuf + i * SLOT
                    length = self.rmsgs[i].msg_len
                    pi = self._match(up, a, length,
                                     self.rmsgs[i].msg_hdr.msg_flags & MSG_TRUNC)
                    if pi < 0:
                        self.w[W_CFWD_MISMATCHED] += 1
                        continue
                    p = &self.pend[pi]
                    self.by_id[p.qid] = -1  # a duplicate of this answer is a mismatch
                    if (self.rmsgs[i].msg_hdr.msg_flags & MSG_TRUNC or a[2] & CF_TC
                            or self.blocks[p.block].handover >> (a[3] & 0xF) & 1):
                        self.handed[nhand] = pi
                        nhand += 1
                        continue
                    self._observe(up, a[3] & 0xF, now - p.t_attempt)
                    length = self._render(p, a, length)
                    self._queue_reply(nrep, p, a, length)
                    nrep += 1
                    self.w[W_CFWD_ANSWERED] += 1
                    self._release(pi)
                self._send_replies(nrep)
            for i in range(nhand):
                self._hand_over(self.handed[i])
            if n < RETRY_AT:
                break
        return 0

    cdef int _match(self, int up, const unsigned char* a, Py_ssize_t n,
                    bint truncated) noexcept nogil:
        """The pending slot answer ``a`` belongs to, or -1 (RFC 5452 §9.1,
        upstream.py _accept: our ID, on its upstream, QR, the question sent,
        parseable). A datagram larger than a slot (``truncated``) cannot be
        parsed here: it matches on the rest and goes to Python."""
        cdef int pi, j
        cdef CFPending* p
        cdef unsigned char x, y
        if n < 12:
            return -1
        pi = self.by_id[cf_be16(a)]
        if pi < 0:
            return -1
        p = &self.pend[pi]
        if p.up != up or not a[2] & CF_QR or n < p.qend or cf_be16(a + 4) != 1:
            return -1
        for j in range(12, p.qend):
            x = a[j]
            y = p.q[j]
            if x != y:
                # a length octet is at most 63, so folding it is harmless
                if <unsigned int>(x - 65) < 26:
                    x |= 0x20
                if <unsigned int>(y - 65) < 26:
                    y |= 0x20
                if x != y:
                    return -1
        if not truncated and check_response_c(a, n) != E_OK:
            return -1
        return pi

    cdef void _observe(self, int up, int rcode, int64_t ns) noexcept nogil:
        """coredns_proxy_request_duration_seconds{to, rcode} (Forwarder._observe)."""
        cdef int o = self.ups[up].w_dur + rcode * self.fwd_hist
        if ns < 0:
            ns = 0
        self.counts[o + latency_bucket(<uint64_t>ns)] += 1
        self.counts[o + self.fwd_hist - 1] += <uint64_t>ns

    cdef Py_ssize_t _render(self, CFPending* p, unsigned char* a, Py_ssize_t n) noexcept nogil:
        """message.adapt then message.fit, in place: the client's ID, opcode/RD/CD
        bits and question bytes; past its UDP limit header + question + our OPT, TC."""
        cdef unsigned int flags = ((cf_be16(a + 2) & CF_KEEP)
                                   | (cf_be16(p.q + 2) & CF_COPIED))
        a[0] = p.cid >> 8
        a[1] = p.cid & 0xFF
        a[2] = flags >> 8
        a[3] = flags & 0xFF
        memcpy(a + 12, p.q + 12, p.qend - 12)
        if n <= p.limit:
            return n
        flags |= 0x0200  # RFC 2181 §9: TC, the question only
        a[2] = flags >> 8
        a[4] = 0
        a[5] = 1
        memset(a + 6, 0, 6)
        n = p.qend
        if p.edns:
            a[11] = 1
            memcpy(a + n, b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00", 11)
            if p.do:
                a[n + 7] = 0x80
            n += 11
        return n

    cdef void _queue_reply(self, int j, CFPending* p, unsigned char* a,
                           Py_ssize_t n) noexcept nogil:
        self.siov[j].iov_base = a
        self.siov[j].iov_len = n
        memcpy(&self.raddrs[j], &p.addr, p.alen)
        memset(&self.smsgs[j].msg_hdr, 0, sizeof(msghdr))
        self.smsgs[j].msg_hdr.msg_name = &self.raddrs[j]
        self.smsgs[j].msg_hdr.msg_namelen = p.alen
        self.smsgs[j].msg_hdr.msg_iov = &self.siov[j]
        self.smsgs[j].msg_hdr.msg_iovlen = 1
        if p.ctllen:
            memcpy(self.rctl + j * CTL, p.ctl, p.ctllen)
            self.smsgs[j].msg_hdr.msg_control = self.rctl + j * CTL
            self.smsgs[j].msg_hdr.msg_controllen = CMSG_SPACE(p.ctllen - CMSG_LEN(0))
        self.rfd[j] = p.lfd
        count_response(self.w, p.row, 0, a, n)

    cdef void _send_replies(self, int m) noexcept nogil:
        """sendmmsg the queued replies, grouped by listener socket (order kept per socket)."""
        cdef int i, j, k, fd, sent, r, cnt
        cdef mmsghdr tmp
        i = 0
        while i < m:
            # move the replies for rfd[i]'s socket together at i..
            fd = self.rfd[i]
            cnt = i + 1
            for j in range(i + 1, m):
                if self.rfd[j] == fd:
                    if j != cnt:
                        tmp = self.smsgs[cnt]
                        self.smsgs[cnt] = self.smsgs[j]
                        self.smsgs[j] = tmp
                        k = self.rfd[cnt]
                        self.rfd[cnt] = self.rfd[j]
                        self.rfd[j] = k
                    cnt += 1
            sent = i
            while sent < cnt:
                r = sendmmsg(fd, self.smsgs + sent, cnt - sent, MSG_DONTWAIT)
                if r > 0:
                    sent += r
                elif r < 0 and errno == EINTR:
                    continue
                elif r < 0 and errno == EAGAIN:
                    self.w[W_SEND_ERRORS] += cnt - sent
                    break
                else:
                    self.w[W_SEND_ERRORS] += 1
                    sent += 1
            i = cnt

    cdef int _hand_over(self, int pi) except -1:
        """Give the client's original query to Python (FastPath.slow), as if the
        fast path had never taken it; send its answer if one comes back now."""
        cdef CFPending* p = &self.pend[pi]
        cdef cmsghdr* c
        cdef Py_ssize_t n
        cdef unsigned char buf[SLOT]
        p.q[0] = p.cid >> 8
        p.q[1] = p.cid & 0xFF
        data = PyBytes_FromStringAndSize(<char*>p.q, p.qlen)
        addr = sockaddr_tuple(&p.addr)
        lfd = p.lfd
        row = p.row
        anc = None
        if p.pktinfo:
            c = <cmsghdr*>p.ctl
            anc = [] if p.ctllen == 0 else [
                (c.cmsg_level, c.cmsg_type,
                 PyBytes_FromStringAndSize(<char*>CMSG_DATA(c), c.cmsg_len - CMSG_LEN(0)))]
        memcpy(buf, p.q, p.qlen)  # the reply is sent with the slot's address and control
        self.w[W_CFWD_HANDED] += 1
        self.w[W_SLOW] += 1
        try:
            if anc is None:
                resp = self.slow(data, addr, -1, lfd)
            else:
                resp = self.slow(data, addr, -1, lfd, anc)
        except Exception:
            resp = None
            count_dropped(self.w, row)
        if isinstance(resp, bytes) and 0 < PyBytes_GET_SIZE(resp) <= SLOT:
            n = PyBytes_GET_SIZE(resp)
            memcpy(buf, PyBytes_AS_STRING(resp), n)
            self._send_one(p, buf, n)
        elif resp is not None:
            count_dropped(self.w, row)
        self._release(pi)
        return 0

    cdef void _send_one(self, CFPending* p, unsigned char* a, Py_ssize_t n) noexcept nogil:
        """One reply to pending ``p``'s client, now (error answers, hand-overs)."""
        self._queue_reply(0, p, a, n)
        if sendmsg(p.lfd, &self.smsgs[0].msg_hdr, MSG_DONTWAIT) < 0:
            self.w[W_SEND_ERRORS] += 1

    def expire(self):
        """Retry or fail the attempts whose time is up; returns the upstreams that
        failed (bit u: cforward.py starts their health probes)."""
        if self.w == NULL:
            return 0
        self._expire(now_ns())
        return self.take_failed()

    def take_failed(self):
        """The upstreams whose attempts failed since the last call (bit u)."""
        cdef uint64_t f = self.failed
        self.failed = 0
        return f

    cdef uint64_t _expire(self, int64_t now) noexcept nogil:
        cdef int k, pi, up
        cdef CFPending* p
        cdef CFBlock* b
        cdef uint64_t failed = 0
        cdef CQuery q
        cdef unsigned char out[12 + 259 + 11]
        cdef Py_ssize_t n
        k = 0
        while k < self.nactive:
            pi = self.active[k]
            p = &self.pend[pi]
            if now < p.t_expire and self.ups[p.up].refused_ns < p.t_attempt:
                k += 1
                continue
            self.w[W_CFWD_TIMEOUTS] += 1
            failed |= (<uint64_t>1) << p.up
            self.by_id[p.qid] = -1
            b = &self.blocks[p.block]
            if p.attempts < 2 * b.nups and now < p.t_deadline:
                up = self._next_up(p, b)
                if up >= 0 and self._attempt(pi, up, now):
                    k += 1
                    continue
            # every attempt failed (forwarder.py NoUpstream): SERVFAIL
            p.q[0] = p.cid >> 8
            p.q[1] = p.cid & 0xFF
            self.w[W_CFWD_SERVFAIL] += 1  # counted before the client can see it
            if parse_query_c(p.q, p.qlen, &q) == E_OK:
                n = build_error(p.q, &q, 2, True, q.edns, out)
                self._send_one(p, out, n)
            else:
                count_dropped(self.w, p.row)
            self._release(pi)  # moves the last active into position k
        self.flush()
        self.failed |= failed
        return failed

    def close(self):
        """Forget every pending query (a reload or shutdown): they get no answer."""
        while self.nactive:
            if self.w != NULL:
                count_dropped(self.w, self.pend[self.active[0]].row)
            self._release(self.active[0])
        self.nsendq = 0
        self.w = NULL
        self.slow = None
        self.on_pending = None
        self.on_refused = None
