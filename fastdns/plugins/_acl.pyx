# cython: language_level=3, boundscheck=False, wraparound=False
"""acl's C pre-lookup hook: allow, block, filter or drop a UDP query on the fast path.

The tables come from fastdns/plugins/acl.py ``flat``, the same parse the
Python ``before`` decides from: per local port the zones of its blocks
(the block serving a name is the one whose zone is its longest suffix, as
Config.select), and per block with acl its rules, each with zones and
policies (action, query types, source networks). The walk is acl.go's
ServeDNS: the first rule whose zones hold the name, its first policy that
matches the type and the source; ``allow`` ends the walk. ``block`` and
``filter`` are answered here byte for byte as acl.refusal builds them,
``drop`` is PRE_DROP. A query that is not a plain one-question QUERY goes
to Python (PRE_SLOW), which decides it the same way.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_New
from libc.string cimport memcpy, memset

include "../server/_prelookup.pxi"
include "_names.pxi"

cdef extern from "<netinet/in.h>":
    """
    #include <netinet/in.h>
    static inline int fastdns_acl_source(const void *sa, unsigned char *out16) {
        /* 4 or 6 and the address in out16 (an IPv4-mapped IPv6 address is IPv4); 0: other */
        const struct sockaddr *s = (const struct sockaddr *)sa;
        if (s->sa_family == AF_INET) {
            memcpy(out16, &((const struct sockaddr_in *)sa)->sin_addr, 4);
            return 4;
        }
        if (s->sa_family == AF_INET6) {
            const unsigned char *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
            static const unsigned char mapped[12] = {0,0,0,0,0,0,0,0,0,0,0xff,0xff};
            if (memcmp(a, mapped, 12) == 0) {
                memcpy(out16, a + 12, 4);
                return 4;
            }
            memcpy(out16, a, 16);
            return 6;
        }
        return 0;
    }
    """
    int fastdns_acl_source(const void* sa, unsigned char* out16) noexcept nogil

cdef enum:
    MAX_BZONES = 32
    MAX_RULES = 32
    MAX_RULE_ZONES = 8
    MAX_POLICIES = 128
    MAX_TYPES = 16
    MAX_NETS = 1024
    POOL = 8192
    PRE_LOOKUP = 0
    PRE_ANSWER = 1
    PRE_SLOW = 2
    PRE_DROP = 4
    ALLOW = 1
    BLOCK = 2
    FILTER = 3
    DROP = 4

cdef struct BZone:
    int port
    int acl  # -1: the block has no acl
    int zoff
    int zlen

cdef struct Net:
    int version
    int bits
    unsigned char addr[16]

cdef struct Policy:
    int action
    int ntypes  # 0: every type
    unsigned short types[MAX_TYPES]
    int net0
    int nnet  # -1: every source

cdef struct Rule:
    int acl
    int nzones
    int zoff[MAX_RULE_ZONES]
    int zlen[MAX_RULE_ZONES]
    int pol0
    int npol

cdef enum:
    # counts[]: allowed per acl (block), then per (rule, rule zone) blocked, filtered, dropped
    MAX_COUNTS = MAX_BZONES + MAX_RULES * MAX_RULE_ZONES * 3

cdef struct Hook:
    fastdns_prelookup hook
    int nb, nr, np, nn, used, nacl
    unsigned long long counts[MAX_COUNTS]
    BZone bzones[MAX_BZONES]
    Rule rules[MAX_RULES]
    Policy policies[MAX_POLICIES]
    Net nets[MAX_NETS]
    unsigned char pool[POOL]


cdef bint net_holds(const Net* n, int version, const unsigned char* ip) noexcept nogil:
    cdef int full, rest
    if n.version != version:
        return False
    full = n.bits >> 3
    rest = n.bits & 7
    for i in range(full):
        if ip[i] != n.addr[i]:
            return False
    if rest:
        return ((ip[full] ^ n.addr[full]) & (0xFF << (8 - rest)) & 0xFF) == 0
    return True


cdef int decide(const Hook* h, int acl, const unsigned char* name, int nlen, int qtype,
                const void* sa, int* slot) noexcept nogil:
    """acl.go ServeDNS: the action, 0 when the query goes on; ``slot``: the
    (rule, zone) that decided it, for its counters (-1: none)."""
    cdef int starts[128]
    cdef int ns = label_starts(name, nlen, starts), r, z, p, t, k, version = -1
    cdef unsigned char ip[16]
    cdef const Rule* rule
    cdef const Policy* pol
    cdef bint hit
    for r in range(h.nr):
        rule = &h.rules[r]
        if rule.acl != acl:
            continue
        hit = False
        for z in range(rule.nzones):
            if under(name, nlen, starts, ns, h.pool + rule.zoff[z], rule.zlen[z]):
                hit = True
                break
        if not hit:
            continue
        slot[0] = r * MAX_RULE_ZONES + z
        if version < 0:
            version = fastdns_acl_source(sa, ip)
            if version == 0:
                return BLOCK  # acl.go: a source address that does not parse
        for p in range(rule.pol0, rule.pol0 + rule.npol):
            pol = &h.policies[p]
            if pol.ntypes:
                hit = False
                for t in range(pol.ntypes):
                    if pol.types[t] == qtype:
                        hit = True
                        break
                if not hit:
                    continue
            if pol.nnet >= 0:
                hit = False
                for k in range(pol.net0, pol.net0 + pol.nnet):
                    if net_holds(&h.nets[k], version, ip):
                        hit = True
                        break
                if not hit:
                    continue
            return 0 if pol.action == ALLOW else pol.action
    return 0


cdef int acl_fn(void* ctx, unsigned char* pkt, Py_ssize_t* length, unsigned char* out,
                Py_ssize_t out_cap, Py_ssize_t* ans, const fastdns_peer* peer) noexcept nogil:
    cdef const Hook* h = <const Hook*>ctx
    cdef int n = <int>length[0], pos, qend, i, best = -1, acl = -1, action, qtype, o
    cdef int slot = -1
    cdef Hook* counted = <Hook*>ctx  # the counters: this worker's alone
    cdef int starts[128]
    cdef int ns
    if n < 17:
        return PRE_SLOW
    if (pkt[4] << 8 | pkt[5]) != 1 or pkt[2] & 0x80 or (pkt[2] >> 3) & 0xF:
        return PRE_SLOW  # not a plain QUERY: Python decides (or answers FORMERR)
    pos = 12
    while pos < n and pkt[pos] != 0:
        if pkt[pos] & 0xC0:
            return PRE_SLOW
        pos += pkt[pos] + 1
    if pos + 5 > n:
        return PRE_SLOW
    qend = pos + 1
    ns = label_starts(pkt + 12, qend - 12, starts)
    for i in range(h.nb):
        if h.bzones[i].port != peer.local_port or h.bzones[i].zlen <= best:
            continue
        if under(pkt + 12, qend - 12, starts, ns, h.pool + h.bzones[i].zoff, h.bzones[i].zlen):
            best = h.bzones[i].zlen
            acl = h.bzones[i].acl
    if acl < 0:
        return PRE_LOOKUP
    qtype = pkt[qend] << 8 | pkt[qend + 1]
    action = decide(h, acl, pkt + 12, qend - 12, qtype, peer.addr, &slot)
    if action == 0:
        counted.counts[acl] += 1
        return PRE_LOOKUP
    o = qend + 4
    if action != DROP and o + 17 > out_cap:
        return PRE_SLOW
    if slot >= 0:
        counted.counts[MAX_BZONES + slot * 3 + action - BLOCK] += 1
    if action == DROP:
        return PRE_DROP
    out[0] = pkt[0]
    out[1] = pkt[1]
    out[2] = 0x80 | (pkt[2] & 0x01)  # QR; opcode QUERY; RD copied
    out[3] = (5 if action == BLOCK else 0) | (pkt[3] & 0x10)  # CD copied
    out[4] = 0
    out[5] = 1
    memset(out + 6, 0, 4)
    out[10] = 0
    out[11] = 1
    memcpy(out + 12, pkt + 12, o - 12)
    # OPT: root, type 41, 4096, ext-rcode 0, version 0, DO, rdlen 6, EDE 15 len 2 info
    out[o] = 0
    out[o + 1] = 0
    out[o + 2] = 41
    out[o + 3] = 0x10
    out[o + 4] = 0
    out[o + 5] = 0
    out[o + 6] = 0
    out[o + 7] = 0x80
    out[o + 8] = 0
    out[o + 9] = 0
    out[o + 10] = 6
    out[o + 11] = 0
    out[o + 12] = 15
    out[o + 13] = 0
    out[o + 14] = 2
    out[o + 15] = 0
    out[o + 16] = 15 if action == BLOCK else 17
    ans[0] = o + 17
    return PRE_ANSWER


cdef void _free(object capsule) noexcept:
    PyMem_Free(PyCapsule_GetPointer(capsule, b"fastdns.prelookup"))


cdef int _put(Hook* h, bytes raw) except -1:
    cdef int off = h.used
    if len(raw) > 255 or off + len(raw) > POOL:
        raise ValueError("acl zones exceed the hook's pool")
    memcpy(h.pool + off, <const unsigned char*>raw, len(raw))
    h.used += len(raw)
    return off


cdef int _fill(Hook* h, list blocks, list acls) except -1:
    cdef Rule* r
    cdef Policy* p
    cdef Net* net
    cdef bytes raw
    if len(blocks) > MAX_BZONES:
        raise ValueError(f"at most {MAX_BZONES} (port, zone) blocks")
    for port, zone, idx in blocks:
        h.bzones[h.nb].port = port
        h.bzones[h.nb].acl = idx
        raw = bytes(zone)
        h.bzones[h.nb].zoff = _put(h, raw)
        h.bzones[h.nb].zlen = len(raw)
        h.nb += 1
    h.nacl = len(acls)
    for idx, rules in enumerate(acls):
        for zones, policies in rules:
            if h.nr >= MAX_RULES or len(zones) > MAX_RULE_ZONES:
                raise ValueError("acl rules exceed the hook's tables")
            r = &h.rules[h.nr]
            r.acl = idx
            r.nzones = len(zones)
            for i, zone in enumerate(zones):
                raw = bytes(zone)
                r.zoff[i] = _put(h, raw)
                r.zlen[i] = len(raw)
            r.pol0 = h.np
            r.npol = len(policies)
            for action, qtypes, nets in policies:
                if h.np >= MAX_POLICIES or len(qtypes) > MAX_TYPES:
                    raise ValueError("acl policies exceed the hook's tables")
                p = &h.policies[h.np]
                p.action = action
                p.ntypes = len(qtypes)
                for i, t in enumerate(qtypes):
                    p.types[i] = t
                p.net0 = h.nn
                p.nnet = -1
                if nets is not None:
                    p.nnet = len(nets)
                    for version, bits, packed in nets:
                        if h.nn >= MAX_NETS:
                            raise ValueError("acl networks exceed the hook's tables")
                        net = &h.nets[h.nn]
                        net.version = version
                        net.bits = bits
                        raw = bytes(packed)
                        memset(net.addr, 0, 16)
                        memcpy(net.addr, <const unsigned char*>raw, len(raw))
                        h.nn += 1
                h.np += 1
            h.nr += 1
    return 0


def hook(blocks, acls):
    """A "fastdns.prelookup" capsule for acl.flat's tables; ValueError when
    they exceed the hook's (Python then decides each query)."""
    cdef Hook* h = <Hook*>PyMem_Malloc(sizeof(Hook))
    if h == NULL:
        raise MemoryError()
    memset(h, 0, sizeof(Hook))
    try:
        _fill(h, list(blocks), list(acls))
    except BaseException:
        PyMem_Free(h)
        raise
    h.hook.fn = acl_fn
    h.hook.ctx = h
    h.hook.post = NULL
    return PyCapsule_New(<void*>&h.hook, b"fastdns.prelookup", _free)


def counts(capsule):
    """What the hook counted: (allowed per acl, [(rule, zone, blocked, filtered, dropped)])
    for the rules and zones acl.flat gave it, in that order."""
    cdef Hook* h = <Hook*>PyCapsule_GetPointer(capsule, b"fastdns.prelookup")
    allowed = [h.counts[i] for i in range(h.nacl)]
    rules = []
    cdef int r, z, k
    for r in range(h.nr):
        for z in range(h.rules[r].nzones):
            k = MAX_BZONES + (r * MAX_RULE_ZONES + z) * 3
            rules.append((r, z, h.counts[k], h.counts[k + 1], h.counts[k + 2]))
    return allowed, rules
