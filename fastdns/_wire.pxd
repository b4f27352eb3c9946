# Declarations of the Cython wire core (fastdns/_wire.pyx) and its C API.
#
# fastdns/server/_udp.pyx cimports `answer_packet` (and may use `crc32_update`);
# everything it needs to call them is declared here.

from libc.stdint cimport uint32_t, uint64_t

cdef extern from *:
    """
    /* FASTDNS_DEBUG comes from setup.py (-DFASTDNS_DEBUG=0/1); a plain
       `cythonize -i` build gets the optimised default. */
    #ifndef FASTDNS_DEBUG
    #define FASTDNS_DEBUG 0
    #endif
    #if FASTDNS_DEBUG
    #undef NDEBUG
    #include <assert.h>
    #define FDNS_ASSERT(x) assert(x)
    #else
    #define FDNS_ASSERT(x) ((void)0)
    #endif
    """
    const int FASTDNS_DEBUG
    void FDNS_ASSERT(bint cond) noexcept nogil

# Sizes and statuses shared with the Python API (docs/internals.md §1).
cdef enum:
    WIRE_SLOT = 4096
    WIRE_STATUS_SLOW = 0xFFFF
    WIRE_MAX_POINTERS = 127

# Error codes of the C helpers; the Python boundary maps each to its
# fastdns.errors class (see _ERROR_CLASSES in _wire.pyx, same order).
cdef enum WireErr:
    E_OK = 0
    E_DROP
    E_SHORT
    E_QCOUNT
    E_LABEL_LONG
    E_NAME_LONG
    E_LABEL_TYPE
    E_COMP_Q
    E_BAD_PTR
    E_PTR_LOOP
    E_RDATA
    E_DUP_OPT
    E_BAD_OPT
    E_TRAILING
    E_ENCODING
    E_IMAGE

# The one way packet bytes are read (py-pgproto's frb): a buffer, its
# length and a position; every read checks the length and fails with an
# error code instead of running past the end.
ctypedef struct Cursor:
    const unsigned char* buf
    Py_ssize_t len
    Py_ssize_t pos

# A parsed query, on the stack of the caller; no Python object.
ctypedef struct CQuery:
    unsigned int id
    unsigned int flags
    unsigned int opcode
    unsigned int qdcount
    unsigned int ancount
    unsigned int nscount
    unsigned int arcount
    int has_question            # the question was read (FORMERR echoes it)
    Py_ssize_t qname_len        # the question name starts at offset 12
    unsigned int qtype
    unsigned int qclass
    Py_ssize_t question_end
    int edns
    unsigned int edns_version
    unsigned int payload
    int do
    uint32_t key_crc            # CRC-32 register (not yet inverted) over key
    uint64_t starts[4]          # bit i set: a label starts at key[i]
    unsigned char key[256]      # lowercased question name wire

cdef uint32_t crc32_update(uint32_t crc, const unsigned char* p, Py_ssize_t n) noexcept nogil

cdef int parse_query_c(const unsigned char* pkt, Py_ssize_t n, CQuery* q) noexcept nogil

cdef Py_ssize_t answer_packet(const unsigned char* image, Py_ssize_t image_len,
                              const unsigned char* pkt, Py_ssize_t pkt_len,
                              unsigned char* out, Py_ssize_t out_cap,
                              unsigned int counter, int* zone,
                              Py_ssize_t max_size=*) noexcept nogil

# The UDP fast path's forwarder (server/_udp_forward.pxi): the checks
# parse_response makes, and the error answers the wire core builds.
cdef int check_response_c(const unsigned char* p, Py_ssize_t n) noexcept nogil

cdef Py_ssize_t build_error(const unsigned char* pkt, const CQuery* q, uint32_t rcode,
                            bint with_question, bint with_opt,
                            unsigned char* out) noexcept nogil
