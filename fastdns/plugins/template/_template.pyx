# cython: language_level=3
"""template's C pre-lookup hook: the common templates answered on the UDP fast path.

A ``fastdns.prelookup`` capsule (docs/internals.md section 4, "Pre-lookup
hooks") whose context is the Corefile's templates, flattened by
fastdns/plugins/template/fast.py. For each query it does what
fastdns/plugins/template/answer.py ``serve`` does, for the templates it can:
zones, class and type, the regex shapes of goregex.shape (everything,
``^(?:[^.]+\\.){N,M}SUFFIX$``, ``^NAME$``, ``SUFFIX$``) matched on the
lowercased name, fallthrough, and a reply of static records (none for
rcode-only templates such as AKS's). It returns PRE_LOOKUP where the
template plugin would pass the query on, PRE_ANSWER with the reply Python
would have written byte for byte (wire.respond's layout), and PRE_SLOW
(Python's ``before`` decides) for everything else: a template with
executed records, ``ederror`` or SERVFAIL, a regex of another shape that
has to be tried, a name with octets the presentation form escapes, and a
packet of any shape but a plain query with at most an OPT.

The context is immutable once built and freed with the capsule's owner.
"""

from cpython.pycapsule cimport PyCapsule_GetContext, PyCapsule_New, PyCapsule_SetContext
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

cdef extern from *:
    """
    #include <string.h>
    #include <sys/socket.h>
    typedef struct fastdns_peer {
        const struct sockaddr *addr;
        int local_port;
    } fastdns_peer;
    typedef int (*fastdns_prelookup_fn)(void *ctx, unsigned char *pkt, Py_ssize_t *length,
                                         unsigned char *out, Py_ssize_t out_cap,
                                         Py_ssize_t *ans, const fastdns_peer *peer);
    typedef int (*fastdns_postlookup_fn)(void *ctx, unsigned char *pkt, Py_ssize_t *length,
                                          unsigned char *out, Py_ssize_t out_cap,
                                          Py_ssize_t *ans);
    typedef struct fastdns_prelookup {
        fastdns_prelookup_fn fn;
        void *ctx;
        fastdns_postlookup_fn post;
    } fastdns_prelookup;

    enum { T_LOOKUP = 0, T_ANSWER = 1, T_SLOW = 2 };
    #define TP_COUNT_SLOTS 256
    enum { R_ALL = 0, R_LABELS = 1, R_EXACT = 2, R_SUFFIX = 3 };

    typedef struct { int off, len; } tp_name;           /* into pool */
    typedef struct { int kind, lo, hi, off, len; } tp_rule;
    typedef struct {
        int qclass, qtype;
        int zone0, nzone, rule0, nrule, python_rules, fall0, nfall;
        int slow, rcode, an, ns, ar, body_off, body_len;
    } tp_tmpl;
    typedef struct { int tmpl0, ntmpl, hz0, nhz; } tp_block;
    typedef struct { int port, name, block; } tp_portzone;  /* block -1: no template */
    typedef struct {
        const unsigned char *pool;
        const tp_name *names;
        const tp_rule *rules;
        const tp_tmpl *tmpls;
        const tp_block *blocks;
        const tp_portzone *pz;
        int npz, fallback_port;
        /* matches answered here, for coredns_template_matches_total: an open
           table keyed (template << 40 | zone << 32 | class << 16 | type) + 1 */
        unsigned long long keys[TP_COUNT_SLOTS], counts[TP_COUNT_SLOTS];
    } tp_ctx;

    static void tp_count(tp_ctx *c, unsigned long long key) {
        key += 1;
        unsigned int h = (unsigned int)((key * 0x9E3779B97F4A7C15ULL) >> 40) % TP_COUNT_SLOTS;
        for (int i = 0; i < TP_COUNT_SLOTS; i++) {
            unsigned int k = (h + i) % TP_COUNT_SLOTS;
            if (c->keys[k] == key) { c->counts[k]++; return; }
            if (c->keys[k] == 0) { c->keys[k] = key; c->counts[k] = 1; return; }
        }  /* full: this (template, zone, class, type) goes uncounted */
    }

    /* the query as the hook reads it: lowercased wire name, its label starts,
       its presentation text */
    typedef struct {
        unsigned char key[256]; int keylen;
        int starts[128]; int nlabels;
        char text[256]; int textlen;
        int qtype, qclass, qend, edns, payload, dobit;
    } tp_query;

    static int tp_plain(unsigned char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || c == '-' || c == '_'
               || c == '*';
    }

    /* 1: a plain query read; 0: not one Python would answer otherwise than
       the lookup (QR set, several questions); -1: any other shape */
    static int tp_read(const unsigned char *p, Py_ssize_t n, tp_query *q) {
        if (n < 17) return -1;
        if (p[2] & 0x80) return 0;
        if ((p[2] >> 3) & 0xF) return 0;              /* opcode: NOTIMP from the lookup */
        if (p[4] != 0 || p[5] != 1) return 0;         /* FORMERR from the lookup */
        if (p[6] | p[7] | p[8] | p[9] | p[10]) return -1;
        if (p[11] > 1) return -1;
        int pos = 12, k = 0, t = 0;
        q->nlabels = 0;
        for (;;) {
            if (pos >= n) return -1;
            int len = p[pos];
            if (len == 0) break;
            if (len > 63) return -1;
            if (k + len + 1 >= 255 || pos + 1 + len > n || q->nlabels >= 127) return -1;
            q->starts[q->nlabels++] = k;
            q->key[k++] = (unsigned char)len;
            for (int j = 1; j <= len; j++) {
                unsigned char c = p[pos + j];
                if (c >= 'A' && c <= 'Z') c += 32;
                if (!tp_plain(c)) return -1;              /* escaped in text: Python */
                q->key[k++] = c;
                q->text[t++] = (char)c;
            }
            q->text[t++] = '.';
            pos += 1 + len;
        }
        q->key[k++] = 0;
        q->keylen = k;
        if (t == 0) q->text[t++] = '.';
        q->textlen = t;
        pos += 1;
        if (pos + 4 > n) return -1;
        q->qtype = (p[pos] << 8) | p[pos + 1];
        q->qclass = (p[pos + 2] << 8) | p[pos + 3];
        pos += 4;
        q->qend = pos;
        q->edns = 0; q->payload = 512; q->dobit = 0;
        if (p[11] == 0) return pos == n ? 1 : -1;
        /* the one additional record: an OPT owned by the root, options tiling its rdata */
        if (pos + 11 > n || p[pos] != 0 || p[pos + 1] != 0 || p[pos + 2] != 41) return -1;
        int cls = (p[pos + 3] << 8) | p[pos + 4];
        if (p[pos + 6] != 0) return 0;                /* EDNS version: BADVERS from the lookup */
        int dob = p[pos + 7] & 0x80;
        int rdlen = (p[pos + 9] << 8) | p[pos + 10];
        int o = pos + 11, end = pos + 11 + rdlen;
        if (end != n) return -1;
        while (o < end) {
            if (o + 4 > end) return -1;
            o += 4 + ((p[o + 2] << 8) | p[o + 3]);
            if (o > end) return -1;
        }
        q->edns = 1; q->payload = cls < 512 ? 512 : cls; q->dobit = dob;
        return 1;
    }

    /* the lowercased name is the zone or below it (label boundaries) */
    static int tp_in(const tp_ctx *c, const tp_query *q, int name) {
        const tp_name *z = &c->names[name];
        if (z->len == 1) return 1;
        for (int i = 0; i < q->nlabels; i++) {
            if (q->keylen - q->starts[i] == z->len)
                return memcmp(q->key + q->starts[i], c->pool + z->off, z->len) == 0;
        }
        return 0;
    }

    static int tp_in_any(const tp_ctx *c, const tp_query *q, int first, int count) {
        for (int i = first; i < first + count; i++)
            if (tp_in(c, q, i)) return 1;
        return 0;
    }

    /* the longest zone of first..first+count that holds the name (Zones.Matches) */
    static int tp_zone(const tp_ctx *c, const tp_query *q, int first, int count) {
        int best = -1, len = -1;
        for (int i = first; i < first + count; i++)
            if (c->names[i].len > len && tp_in(c, q, i)) { best = i - first; len = c->names[i].len; }
        return best;
    }

    static int tp_rule_hit(const tp_ctx *c, const tp_query *q, const tp_rule *r) {
        if (r->kind == R_ALL) return 1;
        if (r->len > q->textlen) return 0;
        const char *lit = (const char *)c->pool + r->off;
        int pre = q->textlen - r->len;
        if (r->kind == R_EXACT) return pre == 0 && memcmp(q->text, lit, r->len) == 0;
        if (memcmp(q->text + pre, lit, r->len) != 0) return 0;
        if (r->kind == R_SUFFIX) return 1;
        /* R_LABELS: whole labels before the literal, lo..hi of them */
        if (pre > 0 && q->text[pre - 1] != '.') return 0;
        int labels = 0;
        for (int i = 0; i < pre; i++) labels += q->text[i] == '.';
        return labels >= r->lo && (r->hi < 0 || labels <= r->hi);
    }

    static int tp_hook(void *vctx, unsigned char *pkt, Py_ssize_t *length, unsigned char *out,
                       Py_ssize_t out_cap, Py_ssize_t *ans, const fastdns_peer *peer) {
        const tp_ctx *c = (const tp_ctx *)vctx;
        tp_query q;
        int got = tp_read(pkt, *length, &q);
        if (got == 0) return T_LOOKUP;
        if (got < 0) return T_SLOW;
        int port = peer->local_port, known = 0;
        for (int i = 0; i < c->npz; i++) if (c->pz[i].port == port) { known = 1; break; }
        if (!known) port = c->fallback_port;
        int block = -1, best = -1;
        for (int i = 0; i < c->npz; i++) {
            const tp_portzone *z = &c->pz[i];
            if (z->port != port || c->names[z->name].len <= best) continue;
            if (tp_in(c, &q, z->name)) { best = c->names[z->name].len; block = z->block; }
        }
        if (block < 0) return T_LOOKUP;
        const tp_block *b = &c->blocks[block];
        if (!tp_in_any(c, &q, b->hz0, b->nhz)) return T_LOOKUP;
        for (int ti = b->tmpl0; ti < b->tmpl0 + b->ntmpl; ti++) {
            const tp_tmpl *t = &c->tmpls[ti];
            if (!tp_in_any(c, &q, t->zone0, t->nzone)) continue;
            if (t->qclass != 255 && q.qclass != 255 && q.qclass != t->qclass) continue;
            if (t->qtype != 255 && q.qtype != 255 && q.qtype != t->qtype) continue;
            int hit = 0;
            for (int r = t->rule0; r < t->rule0 + t->nrule && !hit; r++)
                hit = tp_rule_hit(c, &q, &c->rules[r]);
            if (!hit) {
                if (t->python_rules) return T_SLOW;      /* another regex might match */
                if (t->nfall && tp_in_any(c, &q, t->fall0, t->nfall)) continue;
                return T_SLOW;                           /* SERVFAIL: Python writes it */
            }
            if (t->slow) return T_SLOW;
            Py_ssize_t qlen = q.qend - 12;
            Py_ssize_t size = 12 + qlen + t->body_len + (q.edns ? 11 : 0);
            Py_ssize_t limit = q.edns ? q.payload : 512;
            if (limit > 4096) limit = 4096;
            if (size > limit || size > out_cap) return T_SLOW;   /* TC: Python */
            int ar = t->ar + q.edns;
            out[0] = pkt[0]; out[1] = pkt[1];
            out[2] = 0x80 | 0x04 | (pkt[2] & 0x79);      /* QR AA, opcode and RD copied */
            out[3] = (unsigned char)(t->rcode & 0xF) | (pkt[3] & 0x10);  /* CD copied */
            out[4] = 0; out[5] = 1;
            out[6] = t->an >> 8; out[7] = t->an & 0xFF;
            out[8] = t->ns >> 8; out[9] = t->ns & 0xFF;
            out[10] = ar >> 8; out[11] = ar & 0xFF;
            memcpy(out + 12, pkt + 12, qlen);
            memcpy(out + 12 + qlen, c->pool + t->body_off, t->body_len);
            if (q.edns) {
                unsigned char *o = out + 12 + qlen + t->body_len;
                o[0] = 0; o[1] = 0; o[2] = 41; o[3] = 1232 >> 8; o[4] = 1232 & 0xFF;
                o[5] = 0; o[6] = 0; o[7] = q.dobit ? 0x80 : 0; o[8] = 0; o[9] = 0; o[10] = 0;
            }
            *ans = size;
            {
                unsigned long long qc = q.qclass != 255 ? q.qclass : t->qclass;
                unsigned long long qt = q.qtype != 255 ? q.qtype : t->qtype;
                int zi = tp_zone(c, &q, t->zone0, t->nzone);
                tp_count((tp_ctx *)c, ((unsigned long long)ti << 40)
                         | ((unsigned long long)(zi & 0xFF) << 32) | (qc << 16) | qt);
            }
            return T_ANSWER;
        }
        return T_LOOKUP;
    }
    """
    ctypedef struct fastdns_prelookup_c "fastdns_prelookup":
        void* fn
        void* ctx
        void* post
    ctypedef struct tp_name:
        int off, len
    ctypedef struct tp_rule:
        int kind, lo, hi, off, len
    ctypedef struct tp_tmpl:
        int qclass, qtype, zone0, nzone, rule0, nrule, python_rules, fall0, nfall
        int slow, rcode, an, ns, ar, body_off, body_len
    ctypedef struct tp_block:
        int tmpl0, ntmpl, hz0, nhz
    ctypedef struct tp_portzone:
        int port, name, block
    ctypedef struct tp_ctx:
        const unsigned char* pool
        const tp_name* names
        const tp_rule* rules
        const tp_tmpl* tmpls
        const tp_block* blocks
        const tp_portzone* pz
        int npz, fallback_port
        unsigned long long keys[256]
        unsigned long long counts[256]
    void* tp_hook_ptr "((void *)tp_hook)"


cdef void* _copy(bytes data) except NULL:
    cdef void* p = malloc(len(data) or 1)
    if p == NULL:
        raise MemoryError()
    memcpy(p, <const char*>data, len(data))
    return p


cdef class Hook:
    """The C context of one Corefile's templates and its capsule.

    Built from fast.py's flattened tables (packed native ints and the name
    pool); it owns the arrays, and each capsule holds a reference to it."""

    cdef tp_ctx ctx
    cdef fastdns_prelookup_c hook
    cdef list _parts

    def __cinit__(self):
        self._parts = []
        memset(self.ctx.keys, 0, sizeof(self.ctx.keys))
        memset(self.ctx.counts, 0, sizeof(self.ctx.counts))

    def counts(self):
        """[(template, zone, class, type, matches)] answered here: the template's
        index in fast.tables' order, the index of the zone in its zones."""
        out = []
        cdef int i
        cdef unsigned long long k
        for i in range(256):
            k = self.ctx.keys[i]
            if k:
                k -= 1
                out.append((<long long>(k >> 40), <int>((k >> 32) & 0xFF),
                            <int>((k >> 16) & 0xFFFF), <int>(k & 0xFFFF),
                            self.ctx.counts[i]))
        return out

    def __init__(self, bytes pool, bytes names, bytes rules, bytes tmpls, bytes blocks,
                 bytes portzones, int npz, int fallback_port):
        self.ctx.pool = <const unsigned char*>_copy(pool)
        self.ctx.names = <const tp_name*>_copy(names)
        self.ctx.rules = <const tp_rule*>_copy(rules)
        self.ctx.tmpls = <const tp_tmpl*>_copy(tmpls)
        self.ctx.blocks = <const tp_block*>_copy(blocks)
        self.ctx.pz = <const tp_portzone*>_copy(portzones)
        self.ctx.npz = npz
        self.ctx.fallback_port = fallback_port
        self.hook.fn = tp_hook_ptr
        self.hook.ctx = <void*>&self.ctx
        self.hook.post = NULL

    def __dealloc__(self):
        free(<void*>self.ctx.pool)
        free(<void*>self.ctx.names)
        free(<void*>self.ctx.rules)
        free(<void*>self.ctx.tmpls)
        free(<void*>self.ctx.blocks)
        free(<void*>self.ctx.pz)

    def capsule(self):
        """The ``fastdns.prelookup`` capsule; it keeps this Hook alive."""
        cap = PyCapsule_New(<void*>&self.hook, b"fastdns.prelookup", _release)
        Py_INCREF(self)
        PyCapsule_SetContext(cap, <void*>self)
        return cap


cdef void _release(object cap) noexcept:
    cdef void* owner = PyCapsule_GetContext(cap)
    if owner != NULL:
        Py_DECREF(<object>owner)


SIZES = {"name": sizeof(tp_name), "rule": sizeof(tp_rule), "tmpl": sizeof(tp_tmpl),
         "block": sizeof(tp_block), "portzone": sizeof(tp_portzone)}


def counts(cap):
    """Hook.counts of the Hook a capsule from ``Hook.capsule`` holds."""
    cdef void* owner = PyCapsule_GetContext(cap)
    if owner == NULL:
        return []
    return (<Hook>owner).counts()
