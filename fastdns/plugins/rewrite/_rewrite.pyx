# cython: language_level=3, boundscheck=False, wraparound=False
"""rewrite's C pre-lookup filter: only the queries a rule may touch go to Python.

The tables come from fastdns/plugins/rewrite/__init__.py ``flat``: per
local port the zones of its blocks (the block serving a name: its longest
zone suffix), and per block with rewrite one condition per rule: the name
(lowercase presentation form with its trailing dot, as ``state.Name()``)
equals, starts with, ends with or contains a pattern; the type or class is
one a rule rewrites; or always (regex rules). A query no condition of its
block holds is left as it is (PRE_LOOKUP): no rule would change it, since
a rule after another can only see a name the one before rewrote, and that
one's condition held. Any other goes to Python (PRE_SLOW), which rewrites
and reverts. A name with a character miekg would escape goes to Python too.

The common rule, ``rewrite name exact FROM TO`` (stop, no answer rules),
is also done here when it is the first rule that holds: the question is
renamed in place (PRE_POST), the image answers TO, and ``post`` reverts the
answer as reverter.py would: the question as asked, every name that is TO
or below it mapped back onto FROM (owners and the names CNAME, NS, PTR,
DNAME, MX, SRV and SOA records point to), compressed against the question.
An answer the image does not have (forwarded, or to be completed by
Python), or one past the client's UDP size, goes to Python instead, which
does the same from the query as it came.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_New
from libc.string cimport memcmp, memcpy, memmove, memset

include "../../server/_prelookup.pxi"
include "../_names.pxi"

cdef enum:
    MAX_BZONES = 32
    MAX_CONDS = 256
    POOL = 16384
    PRE_LOOKUP = 0
    PRE_ANSWER = 1
    PRE_SLOW = 2
    PRE_POST = 3
    EXACT = 1
    PREFIX = 2
    SUFFIX = 3
    SUBSTRING = 4
    ALWAYS = 5
    QTYPE = 6
    QCLASS = 7

cdef struct BZone:
    int port
    int set  # -1: the block has no rewrite
    int zoff
    int zlen

cdef struct Cond:
    int set
    int code
    int number
    int poff
    int plen
    int toff  # an exact rule C does itself: the new name, lowercase wire
    int tlen  # 0: Python does it

cdef struct Hook:
    fastdns_prelookup hook
    int nb, nc, used
    int active  # the packet being looked up was renamed here: ``post`` reverts it
    int olen
    unsigned char oname[256]  # its name as asked
    BZone bzones[MAX_BZONES]
    Cond conds[MAX_CONDS]
    unsigned char pool[POOL]


cdef inline bint plain(unsigned char c) noexcept nogil:
    """A character miekg prints as it is (dns.Name String: no escape)."""
    if c < 33 or c > 126:
        return False
    return not (c == 46 or c == 92 or c == 34 or c == 40 or c == 41 or c == 59
                or c == 64 or c == 36)


cdef int to_text(const unsigned char* name, int nlen, unsigned char* out) noexcept nogil:
    """The lowercase presentation form with its trailing dot; -1: needs escapes."""
    cdef int pos = 0, o = 0, n, k
    if nlen == 1:
        out[0] = 46
        return 1
    while pos < nlen and name[pos]:
        n = name[pos]
        for k in range(1, n + 1):
            if not plain(name[pos + k]):
                return -1
            out[o] = lower(name[pos + k])
            o += 1
        out[o] = 46
        o += 1
        pos += n + 1
    return o


cdef bint contains(const unsigned char* s, int n, const unsigned char* p, int m) noexcept nogil:
    cdef int i
    if m == 0:
        return True
    for i in range(n - m + 1):
        if s[i] == p[0] and memcmp(s + i, p, m) == 0:
            return True
    return False


cdef int rename(Hook* h, const Cond* c, unsigned char* pkt, Py_ssize_t* length, int qend,
                Py_ssize_t cap) noexcept nogil:
    """The question's name replaced by the rule's (the rest of the packet kept)."""
    cdef int n = <int>length[0], olen = qend - 12
    if 12 + c.tlen + n - qend > cap or olen > 255:
        return PRE_SLOW
    memcpy(h.oname, pkt + 12, olen)
    h.olen = olen
    memmove(pkt + 12 + c.tlen, pkt + qend, n - qend)
    memcpy(pkt + 12, h.pool + c.toff, c.tlen)
    length[0] = 12 + c.tlen + n - qend
    h.active = 1
    return PRE_POST


cdef int filter_fn(void* ctx, unsigned char* pkt, Py_ssize_t* length, unsigned char* out,
                   Py_ssize_t out_cap, Py_ssize_t* ans, const fastdns_peer* peer) noexcept nogil:
    cdef Hook* h = <Hook*>ctx
    cdef int n = <int>length[0], pos, qend, i, best = -1, set = -1, tlen, qtype, qclass
    cdef int starts[128]
    cdef int ns
    cdef unsigned char text[512]
    cdef const Cond* c
    cdef const unsigned char* p
    if n < 17 or (pkt[4] << 8 | pkt[5]) != 1:
        return PRE_SLOW
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
            set = h.bzones[i].set
    if set < 0:
        return PRE_LOOKUP
    tlen = to_text(pkt + 12, qend - 12, text)
    if tlen < 0:
        return PRE_SLOW
    qtype = pkt[qend] << 8 | pkt[qend + 1]
    qclass = pkt[qend + 2] << 8 | pkt[qend + 3]
    for i in range(h.nc):
        c = &h.conds[i]
        if c.set != set:
            continue
        p = h.pool + c.poff
        if c.code == ALWAYS:
            return PRE_SLOW
        if c.code == QTYPE and qtype == c.number:
            return PRE_SLOW
        if c.code == QCLASS and qclass == c.number:
            return PRE_SLOW
        if c.code == EXACT and tlen == c.plen and memcmp(text, p, tlen) == 0:
            if c.tlen:
                return rename(h, c, pkt, length, qend, out_cap)
            return PRE_SLOW
        if c.code == PREFIX and tlen >= c.plen and memcmp(text, p, c.plen) == 0:
            return PRE_SLOW
        if c.code == SUFFIX and tlen >= c.plen and memcmp(text + tlen - c.plen, p, c.plen) == 0:
            return PRE_SLOW
        if c.code == SUBSTRING and contains(text, tlen, p, c.plen):
            return PRE_SLOW
    return PRE_LOOKUP


cdef int read_name(const unsigned char* m, int n, int pos, unsigned char* dst,
                   int* dlen) noexcept nogil:
    """The name at ``pos`` uncompressed into ``dst``; the offset past it, -1: bad."""
    cdef int end = -1, hops = 0, d = 0, l
    while pos < n:
        l = m[pos]
        if l == 0:
            dst[d] = 0
            dlen[0] = d + 1
            return end if end >= 0 else pos + 1
        if l & 0xC0 == 0xC0:
            if pos + 1 >= n or hops > 64:
                return -1
            if end < 0:
                end = pos + 2
            pos = (l & 0x3F) << 8 | m[pos + 1]
            hops += 1
            continue
        if l & 0xC0 or pos + 1 + l > n or d + l + 2 > 255:
            return -1
        memcpy(dst + d, m + pos, l + 1)
        d += l + 1
        pos += l + 1
    return -1


cdef int map_back(const unsigned char* nm, int len, const unsigned char* frm, int flen,
                  const unsigned char* to, int tlen, unsigned char* dst) noexcept nogil:
    """remapStringRewriter: ``frm`` itself, or a name below it, onto ``to``."""
    cdef int starts[128]
    cdef int ns = label_starts(nm, len, starts), j, s
    for j in range(ns):
        s = starts[j]
        if len - s == flen and name_is(nm + s, frm, flen):
            if s + tlen > 255:
                return -1
            memcpy(dst, nm, s)
            memcpy(dst + s, to, tlen)
            return s + tlen
        if len - s < flen:
            break
    memcpy(dst, nm, len)
    return len


cdef int put_name(unsigned char* b, int o, int cap, const unsigned char* nm, int len,
                  const unsigned char* q, int qlen, bint compress) noexcept nogil:
    """``nm`` at ``o``, ending in a pointer into the question (at 12) where a
    suffix of it is one of the question's; the offset past it, -1: no room."""
    cdef int ns, qs, i, j, k, s, t
    cdef int starts[128]
    cdef int qstarts[128]
    cdef unsigned char ql[256]
    if compress:
        ns = label_starts(nm, len, starts)
        qs = label_starts(q, qlen, qstarts)
        for k in range(qlen):
            ql[k] = lower(q[k])
        for i in range(ns - 1):  # not the root alone
            s = starts[i]
            for j in range(qs - 1):
                t = qstarts[j]
                if len - s == qlen - t and name_is(nm + s, ql + t, len - s):
                    if o + s + 2 > cap:
                        return -1
                    memcpy(b + o, nm, s)
                    b[o + s] = 0xC0 | ((12 + t) >> 8)
                    b[o + s + 1] = (12 + t) & 0xFF
                    return o + s + 2
    if o + len > cap:
        return -1
    memcpy(b + o, nm, len)
    return o + len


cdef int udp_limit(const unsigned char* pkt, int n) noexcept nogil:
    """The query's EDNS0 UDP size (512 without OPT, never below it)."""
    cdef int pos = 12, i, rrs, size
    while pos < n and pkt[pos]:
        pos += pkt[pos] + 1
    pos += 5
    rrs = (pkt[6] << 8 | pkt[7]) + (pkt[8] << 8 | pkt[9]) + (pkt[10] << 8 | pkt[11])
    for i in range(rrs):
        while pos < n and pkt[pos] and pkt[pos] & 0xC0 != 0xC0:
            pos += pkt[pos] + 1
        if pos >= n:
            return 512
        pos += 1 if pkt[pos] == 0 else 2
        if pos + 10 > n:
            return 512
        if (pkt[pos] << 8 | pkt[pos + 1]) == 41:
            size = pkt[pos + 2] << 8 | pkt[pos + 3]
            return size if size > 512 else 512
        pos += 10 + (pkt[pos + 8] << 8 | pkt[pos + 9])
    return 512


cdef int post_fn(void* ctx, unsigned char* pkt, Py_ssize_t* length, unsigned char* out,
                 Py_ssize_t out_cap, Py_ssize_t* ans) noexcept nogil:
    cdef Hook* h = <Hook*>ctx
    cdef int n = <int>ans[0], pos, o, i, j, rrs, rtype, rdlen, end, k, dl, ml, fixed, names
    cdef int nlen, qn = <int>length[0], flen
    cdef unsigned char tmp[4096]
    cdef unsigned char nm[256]
    cdef unsigned char mapped[256]
    cdef unsigned char to[256]
    cdef unsigned char frm[256]
    if not h.active:
        return PRE_SLOW
    h.active = 0
    if n <= 12 or (out[4] << 8 | out[5]) != 1 or n > 4096:
        return PRE_SLOW
    # the renamed question's name (lowercase: the rule's) and the asked one's, lowercased
    flen = 0
    while flen < qn and pkt[12 + flen]:
        flen += pkt[12 + flen] + 1
    flen += 1
    if flen > 255:
        return PRE_SLOW
    memcpy(frm, pkt + 12, flen)
    for k in range(h.olen):
        to[k] = lower(h.oname[k])
    memcpy(tmp, out, 12)
    memcpy(tmp + 12, h.oname, h.olen)
    pos = read_name(out, n, 12, nm, &dl)
    if pos < 0 or pos + 4 > n:
        return PRE_SLOW
    o = 12 + h.olen
    memcpy(tmp + o, out + pos, 4)
    o += 4
    pos += 4
    rrs = (out[6] << 8 | out[7]) + (out[8] << 8 | out[9]) + (out[10] << 8 | out[11])
    for i in range(rrs):
        pos = read_name(out, n, pos, nm, &dl)
        if pos < 0 or pos + 10 > n:
            return PRE_SLOW
        rtype = out[pos] << 8 | out[pos + 1]
        rdlen = out[pos + 8] << 8 | out[pos + 9]
        end = pos + 10 + rdlen
        if end > n:
            return PRE_SLOW
        if rtype == 41:
            ml = dl
            memcpy(mapped, nm, dl)
        else:
            ml = map_back(nm, dl, frm, flen, to, h.olen, mapped)
        if ml < 0:
            return PRE_SLOW
        o = put_name(tmp, o, 4096, mapped, ml, h.oname, h.olen, True)
        if o < 0 or o + 10 > 4096:
            return PRE_SLOW
        memcpy(tmp + o, out + pos, 10)
        k = o + 8  # rdlength, set below
        o += 10
        pos += 10
        fixed, names = -1, 0
        if rtype == 2 or rtype == 5 or rtype == 12 or rtype == 39:
            fixed, names = 0, 1
        elif rtype == 6:
            fixed, names = 0, 2
        elif rtype == 15:
            fixed, names = 2, 1
        elif rtype == 33:
            fixed, names = 6, 1
        if fixed < 0:
            if o + rdlen > 4096:
                return PRE_SLOW
            memcpy(tmp + o, out + pos, rdlen)
            o += rdlen
        else:
            if o + fixed > 4096:
                return PRE_SLOW
            memcpy(tmp + o, out + pos, fixed)
            o += fixed
            pos += fixed
            for j in range(names):
                pos = read_name(out, n, pos, nm, &dl)
                if pos < 0 or pos > end:
                    return PRE_SLOW
                if rtype == 6 and j == 1:  # SOA's RNAME: not a value rewrite
                    ml = dl
                    memcpy(mapped, nm, dl)
                else:
                    ml = map_back(nm, dl, frm, flen, to, h.olen, mapped)
                if ml < 0:
                    return PRE_SLOW
                o = put_name(tmp, o, 4096, mapped, ml, h.oname, h.olen,
                             rtype == 2 or rtype == 5 or rtype == 12 or rtype == 6
                             or rtype == 15)
                if o < 0:
                    return PRE_SLOW
            if o + (end - pos) > 4096:
                return PRE_SLOW
            memcpy(tmp + o, out + pos, end - pos)
            o += end - pos
        nlen = o - (k + 2)
        tmp[k] = (nlen >> 8) & 0xFF
        tmp[k + 1] = nlen & 0xFF
        pos = end
    if o > out_cap or (o > n and o > udp_limit(pkt, qn)):
        return PRE_SLOW  # past the client's size: Python truncates it
    memcpy(out, tmp, o)
    ans[0] = o
    return PRE_ANSWER


cdef void _free(object capsule) noexcept:
    PyMem_Free(PyCapsule_GetPointer(capsule, b"fastdns.prelookup"))


cdef int _put(Hook* h, bytes raw) except -1:
    cdef int off = h.used
    if len(raw) > 1024 or off + len(raw) > POOL:
        raise ValueError("rewrite patterns exceed the filter's pool")
    if len(raw):
        memcpy(h.pool + off, <const unsigned char*>raw, len(raw))
    h.used += len(raw)
    return off


def hook(blocks, sets):
    """A "fastdns.prelookup" capsule for ``flat``'s tables: (port, wire zone,
    set or -1) per block zone, and per set its (code, pattern, number, new
    name) conditions (new name: the lowercase wire name an exact rule C does
    itself renames to, or empty); ValueError past the filter's tables."""
    rows = list(blocks)
    conds = [(i, c) for i, s in enumerate(sets) for c in s]
    if len(rows) > MAX_BZONES or len(conds) > MAX_CONDS:
        raise ValueError("more blocks or rules than the rewrite filter holds")
    cdef Hook* h = <Hook*>PyMem_Malloc(sizeof(Hook))
    if h == NULL:
        raise MemoryError()
    memset(h, 0, sizeof(Hook))
    try:
        for port, zone, idx in rows:
            h.bzones[h.nb].port = port
            h.bzones[h.nb].set = idx
            h.bzones[h.nb].zoff = _put(h, bytes(zone))
            h.bzones[h.nb].zlen = len(zone)
            h.nb += 1
        for idx, (code, pattern, number, to) in conds:
            h.conds[h.nc].set = idx
            h.conds[h.nc].code = code
            h.conds[h.nc].number = number
            h.conds[h.nc].poff = _put(h, bytes(pattern))
            h.conds[h.nc].plen = len(pattern)
            h.conds[h.nc].toff = _put(h, bytes(to))
            h.conds[h.nc].tlen = len(to)
            h.nc += 1
    except BaseException:
        PyMem_Free(h)
        raise
    h.hook.fn = filter_fn
    h.hook.ctx = h
    h.hook.post = post_fn
    return PyCapsule_New(<void*>&h.hook, b"fastdns.prelookup", _free)
