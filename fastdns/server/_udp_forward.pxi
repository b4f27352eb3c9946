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
#
# The structs are in _udp_forward_types.pxi, the upstream side (drain, match,
# render, expire) in _udp_forward_io.pxi; this file holds the class, its
# configuration and the batch side (take, attempt, flush).


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
    # cached blocks (set_cache): the shared table, Python's hand for what C
    # cannot store or render, the in-flight keys, keys Python keeps privately
    cdef CacheTable table
    cdef object on_cached
    cdef int* key_head  # CF_KEYB buckets: a leader pending slot, -1
    cdef uint64_t* private_keys  # CF_PRIVATE hashes of keys Python's own store holds
    cdef unsigned char* obuf  # VLEN replies rendered from the table
    cdef int* fb  # [waiter, inbuf slot, store] a drain leaves to on_cached
    cdef int nfb
    cdef int* deferred  # leaders released after their fallbacks
    cdef int ndeferred
    # the errors plugin (report_errors): the SERVFAILs this side sent, for
    # take_reports (the query and its listener), at most CF_REPORTS per tick
    cdef public bint report_errors
    cdef unsigned char* rep_q
    cdef int rep_len[CF_REPORTS]
    cdef int rep_lfd[CF_REPORTS]
    cdef int nreports
    cdef readonly uint64_t reports_dropped

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
        self.key_head = <int*>PyMem_Malloc(CF_KEYB * sizeof(int))
        self.private_keys = <uint64_t*>PyMem_Calloc(CF_PRIVATE, sizeof(uint64_t))
        self.obuf = <unsigned char*>PyMem_Malloc(VLEN * SLOT)
        self.fb = <int*>PyMem_Malloc(3 * CF_MAX_PENDING * sizeof(int))
        self.deferred = <int*>PyMem_Malloc(VLEN * sizeof(int))
        self.rep_q = <unsigned char*>PyMem_Malloc(CF_REPORTS * CF_QMAX)
        if (self.rep_q == NULL or self.key_head == NULL or self.private_keys == NULL or self.obuf == NULL
                or self.fb == NULL or self.deferred == NULL or self.blocks == NULL or self.ups == NULL or self.routes == NULL
                or self.pend == NULL or self.free_list == NULL or self.active == NULL
                or self.active_pos == NULL or self.by_id == NULL or self.smsgs == NULL
                or self.siov == NULL or self.raddrs == NULL or self.rctl == NULL
                or self.rfd == NULL or self.rmsgs == NULL or self.riov == NULL
                or self.inbuf == NULL or self.handed == NULL):
            raise MemoryError()
        cdef int i
        memset(self.by_id, 0xFF, 65536 * sizeof(int))
        memset(self.key_head, 0xFF, CF_KEYB * sizeof(int))
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
        PyMem_Free(self.key_head)
        PyMem_Free(self.private_keys)
        PyMem_Free(self.obuf)
        PyMem_Free(self.fb)
        PyMem_Free(self.deferred)
        PyMem_Free(self.rep_q)
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
                  bint failfast, unsigned int handover, double read_timeout, double timeout,
                  int cache=-1):
        """A forward block; returns its index, or -1 when it cannot be held.
        ``cache``: its ``cache``'s number in the table (set_cache), whose policy
        ``CacheTable.set_policy`` holds; -1: none, or one C does not store for."""
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
        if cache >= CACHE_ROWS or self.table is None or not self.table.policy_active(cache):
            cache = -1
        b.cache = cache
        b.c_row = W_CACHE_ROWS + cache * CR_WORDS + CR_C_FORWARDED if cache >= 0 else 0
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

    def set_cache(self, CacheTable table, on_cached):
        """Store the answers of cached blocks in ``table`` (its policy: set_policy) and
        render each waiter's reply from it. ``on_cached(block, query, answer,
        store)`` returns the reply where C cannot (an answer the table does not
        take, ``store`` True: Python's ResponseCache.put decides; one not stored
        or too large for the client), or None. Call it before add_block."""
        self.table = table
        self.on_cached = on_cached

    def note_private(self, bytes key):
        """``key`` is in a worker's own store (larger than a table slot): its misses
        go to Python, which serves it from there (a stale mark only costs speed)."""
        cdef uint64_t h = cc_hash(<const unsigned char*>PyBytes_AS_STRING(key), len(key))
        self.private_keys[h % CF_PRIVATE] = h

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
        cdef int k, bid = -1, pi, up, j, t, li = -1, cached = 0
        cdef unsigned char key[CC_KEY_MAX]
        cdef Py_ssize_t klen = 0
        cdef uint64_t h = 0
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
        if b.cache >= 0:
            # ForwardingResolver.resolve: a name the cache covers and holds in no
            # state is a miss; concurrent misses of one key share one query (_fetch)
            cached = self.table.forward_key(&q, key, &klen, b.cache)
            if cached < 0:
                return TAKE_DECLINE
            if cached:
                h = cc_hash(key, klen)
                if self.private_keys[h % CF_PRIVATE] == h:
                    return TAKE_DECLINE
                li = self._leader(bid, key, klen, h)
        if self.nfree == 0:
            return TAKE_DECLINE
        if li >= 0:  # a follower: no ID, no upstream, not counted by max_concurrent
            pi = self.free_list[self.nfree - 1]
            self.nfree -= 1
            p = &self.pend[pi]
            p.block = bid
            p.used = 1
            p.follower = 1
            p.cached = 1
            p.knext = -1
            self._fill(p, pkt, n, &q, lfd, pktinfo, row, addr, alen, c)
            p.fnext = self.pend[li].fnext
            self.pend[li].fnext = pi
            self.w[W_CFWD_JOINED] += 1
            return TAKE_PENDING
        if b.max_concurrent and b.inflight >= b.max_concurrent:
            b.rejects += 1
            self.w[W_CFWD_REFUSED] += 1
            ans[0] = build_error(pkt, &q, 5, True, q.edns, out)  # REFUSED (ErrLimitExceeded)
            return TAKE_ANSWER
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
            self.report(pkt, n, lfd)
            return TAKE_ANSWER
        self.nfree -= 1
        p.used = 1
        p.follower = 0
        p.cached = cached
        p.fnext = -1
        p.knext = -1
        self._fill(p, pkt, n, &q, lfd, pktinfo, row, addr, alen, c)
        p.t_deadline = now + b.timeout_ns
        self.active_pos[pi] = self.nactive
        self.active[self.nactive] = pi
        self.nactive += 1
        b.inflight += 1
        self.w[W_CFWD_PENDING] = self.nactive
        if not self._attempt(pi, up, now):
            self._release(pi)
            return TAKE_DECLINE
        if cached:
            memcpy(p.key, key, klen)
            p.klen = klen
            p.khash = h
            p.knext = self.key_head[h % CF_KEYB]
            self.key_head[h % CF_KEYB] = pi
        return TAKE_PENDING

    cdef inline void _fill(self, CFPending* p, const unsigned char* pkt, Py_ssize_t n,
                           const CQuery* q, int lfd, int pktinfo, int row,
                           const sockaddr_storage* addr, socklen_t alen,
                           cmsghdr* c) noexcept nogil:
        """The client's side of a pending slot: its query, limit, address, control."""
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

    cdef int _leader(self, int bid, const unsigned char* key, Py_ssize_t klen,
                     uint64_t h) noexcept nogil:
        """The pending slot already asking upstream for ``key`` in block ``bid``, or -1."""
        cdef int pi = self.key_head[h % CF_KEYB]
        cdef CFPending* p
        while pi >= 0:
            p = &self.pend[pi]
            if (p.khash == h and p.block == bid and p.klen == klen
                    and memcmp(p.key, key, klen) == 0):
                return pi
            pi = p.knext
        return -1

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
        """Free pending ``pi`` (its ID, its block's in-flight count, its key) and the
        followers that shared it (their callers answered them first)."""
        cdef CFPending* p = &self.pend[pi]
        cdef int pos, last, f, nf
        cdef int* link
        if not p.used:
            return
        f = p.fnext
        while f >= 0:
            nf = self.pend[f].fnext
            self.pend[f].used = 0
            self.pend[f].fnext = -1
            self.free_list[self.nfree] = f
            self.nfree += 1
            f = nf
        p.fnext = -1
        if p.cached:
            link = &self.key_head[p.khash % CF_KEYB]
            while link[0] >= 0:
                if link[0] == pi:
                    link[0] = p.knext
                    break
                link = &self.pend[link[0]].knext
            p.cached = 0
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

    cdef void report(self, const unsigned char* q, Py_ssize_t n, int lfd) noexcept nogil:
        """Keep a SERVFAIL this side answered for the errors plugin (WorkerPlugins.
        report_servfail, from cforward.py's tick), as the Python path reports each
        SERVFAIL answer it sends."""
        if not self.report_errors:
            return
        if self.nreports == CF_REPORTS or n > CF_QMAX:
            self.reports_dropped += 1
            return
        memcpy(self.rep_q + self.nreports * CF_QMAX, q, n)
        self.rep_len[self.nreports] = n
        self.rep_lfd[self.nreports] = lfd
        self.nreports += 1
        if not self.timer_armed:
            self.want_timer = True

    def take_reports(self):
        """[(query, listener fd)] of the SERVFAILs kept since the last call."""
        cdef int i
        out = [(PyBytes_FromStringAndSize(<char*>(self.rep_q + i * CF_QMAX), self.rep_len[i]),
                self.rep_lfd[i]) for i in range(self.nreports)]
        self.nreports = 0
        return out

    @property
    def reports(self):
        return self.nreports

    cdef void arm_if_wanted(self) except *:
        if self.want_timer and not self.timer_armed:
            self.want_timer = False
            self.timer_armed = True
            self.on_pending()

    # -- the upstream side (_udp_forward_io.pxi) ----------------------------------

    def drain(self, int fd):
        """Read the answers queued on upstream socket ``fd`` and send them on."""
        return cf_drain(self, fd)

    def expire(self):
        """Retry or fail the attempts whose time is up; returns the upstreams that
        failed since the last call (bit u: cforward.py starts their probes)."""
        if self.w == NULL:
            return 0
        cf_expire(self, now_ns())
        return self.take_failed()

    def take_failed(self):
        """The upstreams whose attempts failed since the last call (bit u)."""
        cdef uint64_t f = self.failed
        self.failed = 0
        return f

    def close(self):
        """Forget every pending query (a reload or shutdown): they get no answer."""
        cdef int f
        while self.nactive:
            if self.w != NULL:
                count_dropped(self.w, self.pend[self.active[0]].row)
                f = self.pend[self.active[0]].fnext
                while f >= 0:
                    count_dropped(self.w, self.pend[f].row)
                    f = self.pend[f].fnext
            self._release(self.active[0])
        self.nsendq = 0
        self.w = NULL
        self.slow = None
        self.on_pending = None
        self.on_refused = None
        self.on_cached = None
        self.table = None
