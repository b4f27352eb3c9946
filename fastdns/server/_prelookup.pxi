# The pre-lookup hook ABI (docs/internals.md section 4, "Pre-lookup hook"):
# included by fastdns/server/_udp.pyx, which calls the hooks, and by the
# plugins' extension modules that implement them (fastdns/plugins/_*.pyx),
# so both sides compile one declaration. The return codes are _udp.pyx's
# PRE_* enum: 0 look up, 1 answer, 2 to Python, 3 look up then post, 4 drop.

cdef extern from *:
    """
    /* The pre-lookup hooks (docs/internals.md section 4, "Pre-lookup hook"):
       what a plugin's extension module hands FastPath.set_prelookup, each in
       a PyCapsule named "fastdns.prelookup". Called without the GIL for each
       query before the image lookup, in plugin.cfg order; ``post`` (may be
       NULL) after the image answered a query whose ``fn`` returned PRE_POST. */
    #include <sys/socket.h>
    typedef struct fastdns_peer {
        const struct sockaddr *addr;  /* the client: a sockaddr_in or sockaddr_in6 */
        int local_port;               /* the port the query came to: picks the block */
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
    static int fastdns_all_slow(void *ctx, unsigned char *pkt, Py_ssize_t *length,
                                unsigned char *out, Py_ssize_t out_cap, Py_ssize_t *ans,
                                const fastdns_peer *peer) {
        return 2;  /* PRE_SLOW: a plugin that decides per query only in Python */
    }
    static fastdns_prelookup fastdns_all_slow_hook __attribute__((unused)) = {
        fastdns_all_slow, NULL, NULL};
    """
    ctypedef struct fastdns_peer:
        const void* addr  # a struct sockaddr (sockaddr_in / sockaddr_in6)
        int local_port
    ctypedef int (*fastdns_prelookup_fn)(void* ctx, unsigned char* pkt, Py_ssize_t* length,
                                         unsigned char* out, Py_ssize_t out_cap,
                                         Py_ssize_t* ans, const fastdns_peer* peer) noexcept nogil
    ctypedef int (*fastdns_postlookup_fn)(void* ctx, unsigned char* pkt, Py_ssize_t* length,
                                          unsigned char* out, Py_ssize_t out_cap,
                                          Py_ssize_t* ans) noexcept nogil
    ctypedef struct fastdns_prelookup:
        fastdns_prelookup_fn fn
        void* ctx
        fastdns_postlookup_fn post
    fastdns_prelookup fastdns_all_slow_hook

