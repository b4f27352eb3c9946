# The C forwarder's upstream side: answers read from the upstream sockets,
# matched, rendered and sent to the clients; expiry and retries.
#
# Included by _udp.pyx after _udp_forward.pxi (CForwarder's methods call these
# functions; they are module-level only to keep each file readable).


cdef int cf_drain(CForwarder self, int fd) except -1:
    """Read the answers queued on upstream socket ``fd`` and send them on."""
    cdef int n, i, k, up, pi, nrep = 0, nhand = 0, batches = 0
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
            cf_expire(self, now_ns())
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
                pi = cf_match(self, up, a, length,
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
                cf_observe(self, up, a[3] & 0xF, now - p.t_attempt)
                if p.cached:
                    nrep = cf_cached(self, pi, i, a, length, nrep, now)
                    continue
                length = cf_render(self, p, a, length)
                cf_queue_reply(self, nrep, p, a, length)
                cf_heard(self, p, a, length)
                nrep += 1
                self.w[W_CFWD_ANSWERED] += 1
                self._release(pi)
            cf_send_replies(self, nrep)
        for i in range(nhand):
            cf_hand_over(self, self.handed[i])
        for k in range(self.nfb):
            cf_fallback(self, self.fb[3 * k], self.fb[3 * k + 1], self.fb[3 * k + 2])
        self.nfb = 0
        for k in range(self.ndeferred):
            self._release(self.deferred[k])
        self.ndeferred = 0
        if n < RETRY_AT:
            break
    return 0

cdef int cf_match(CForwarder self, int up, const unsigned char* a, Py_ssize_t n,
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

cdef int cf_cached(CForwarder self, int pi, int slot, unsigned char* a, Py_ssize_t n,
                   int nrep, int64_t now) noexcept nogil:
    """A cached block's answer (ForwardingResolver._upstream + _forward): stored in
    the table by the cache's policy, then each waiter's reply rendered from the
    entry as a hit is (its ID, question case, aged TTL, our OPT). What C cannot
    store or render goes to ``on_cached`` after the batch (cf_fallback), and
    the leader is released only then. Returns the replies queued."""
    cdef CFPending* p = &self.pend[pi]
    cdef CFPending* wt
    cdef int j = pi, store
    cdef Py_ssize_t m
    cdef unsigned char* out
    cdef bint deferred = False
    cdef CFBlock* b = &self.blocks[p.block]
    store = self.table.insert_response(p.key, p.klen, a, n, now, b.cache) == 0
    p.q[0] = p.cid >> 8  # the leader's query again as its client sent it
    p.q[1] = p.cid & 0xFF
    while j >= 0:
        wt = &self.pend[j]
        if nrep == VLEN:
            cf_send_replies(self, nrep)
            nrep = 0
        out = self.obuf + nrep * SLOT
        m = -1 if store else self.table.render(wt.q, wt.qlen, out, now, False)
        self.w[W_CC_FORWARDED] += 1
        self.w[b.c_row] += 1
        if m > 0:
            cf_queue_reply(self, nrep, wt, out, m)
            cf_heard(self, wt, out, m)
            nrep += 1
            self.w[W_CFWD_ANSWERED] += 1
        else:
            self.fb[3 * self.nfb] = j
            self.fb[3 * self.nfb + 1] = slot
            self.fb[3 * self.nfb + 2] = store
            self.nfb += 1
            store = 0  # the first fallback stores it; the others render what it stored
            deferred = True
        j = wt.fnext
    if deferred:
        self.deferred[self.ndeferred] = pi
        self.ndeferred += 1
    else:
        self._release(pi)
    return nrep

cdef int cf_fallback(CForwarder self, int j, int slot, int store) except -1:
    """Waiter ``j``'s reply from Python (``on_cached``) for the answer in inbuf ``slot``."""
    cdef CFPending* wt = &self.pend[j]
    cdef unsigned char buf[SLOT]
    cdef Py_ssize_t n
    query = PyBytes_FromStringAndSize(<char*>wt.q, wt.qlen)
    raw = PyBytes_FromStringAndSize(<char*>(self.inbuf + slot * SLOT), self.rmsgs[slot].msg_len)
    try:
        resp = self.on_cached(wt.block, query, raw, store != 0) if self.on_cached else None
    except Exception:
        resp = None
    if isinstance(resp, bytes) and 0 < PyBytes_GET_SIZE(resp) <= SLOT:
        n = PyBytes_GET_SIZE(resp)
        memcpy(buf, PyBytes_AS_STRING(resp), n)
        cf_send_one(self, wt, buf, n)
        cf_heard(self, wt, buf, n)
        self.w[W_CFWD_ANSWERED] += 1
    else:
        count_dropped(self.w, wt.row)
    return 0

cdef void cf_observe(CForwarder self, int up, int rcode, int64_t ns) noexcept nogil:
    """coredns_proxy_request_duration_seconds{to, rcode} (Forwarder._observe)."""
    cdef int o = self.ups[up].w_dur + rcode * self.fwd_hist
    if ns < 0:
        ns = 0
    self.counts[o + latency_bucket(<uint64_t>ns)] += 1
    self.counts[o + self.fwd_hist - 1] += <uint64_t>ns

cdef Py_ssize_t cf_render(CForwarder self, CFPending* p, unsigned char* a,
                          Py_ssize_t n) noexcept nogil:
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

cdef void cf_queue_reply(CForwarder self, int j, CFPending* p, unsigned char* a,
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


cdef inline void cf_heard(CForwarder self, CFPending* p, const unsigned char* a,
                          Py_ssize_t n) noexcept nogil:
    """A reply this side gave (not a hand-over: Python reports its own): a SERVFAIL
    goes to the errors plugin, as WorkerPlugins.answered reports the slow path's."""
    if n > 3 and a[3] & 0xF == 2:
        self.report(p.q, p.qlen, p.lfd)

cdef void cf_send_replies(CForwarder self, int m) noexcept nogil:
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

cdef int cf_hand_over(CForwarder self, int pi) except -1:
    """Give the client's original query to Python (FastPath.slow), as if the
    fast path had never taken it, and its followers' queries too (Python's
    resolver shares one upstream query among them again); send each answer
    that comes back now."""
    cdef int f = self.pend[pi].fnext
    while f >= 0:
        cf_give(self, f)
        f = self.pend[f].fnext
    cf_give(self, pi)
    self._release(pi)
    return 0

cdef int cf_give(CForwarder self, int pi) except -1:
    """One waiter of cf_hand_over to FastPath.slow."""
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
        cf_send_one(self, p, buf, n)
    elif resp is not None:
        count_dropped(self.w, row)
    return 0

cdef void cf_send_one(CForwarder self, CFPending* p, unsigned char* a,
                      Py_ssize_t n) noexcept nogil:
    """One reply to pending ``p``'s client, now (error answers, hand-overs)."""
    cf_queue_reply(self, 0, p, a, n)
    if sendmsg(p.lfd, &self.smsgs[0].msg_hdr, MSG_DONTWAIT) < 0:
        self.w[W_SEND_ERRORS] += 1

cdef uint64_t cf_expire(CForwarder self, int64_t now) noexcept nogil:
    cdef int k, pi, up, j
    cdef CFPending* p
    cdef CFPending* w
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
        j = pi
        while j >= 0:  # the leader and its followers
            self.w[W_CFWD_SERVFAIL] += 1  # counted before the client can see it
            w = &self.pend[j]
            if w.cached:
                self.w[W_CC_FORWARDED] += 1
                self.w[self.blocks[w.block].c_row] += 1
            if parse_query_c(w.q, w.qlen, &q) == E_OK:
                n = build_error(w.q, &q, 2, True, q.edns, out)
                cf_send_one(self, w, out, n)
                cf_heard(self, w, out, n)
            else:
                count_dropped(self.w, w.row)
            j = w.fnext
        self._release(pi)  # moves the last active into position k
    self.flush()
    self.failed |= failed
    return failed
