# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Image assembly in C: join fragment blobs, move their offsets, build the slot index.

Same bytes as `fragments.assemble_py` (a test compares them). One pass per
fragment: memcpy the blob, add its image offset to each relocation, insert
each entry into the open-addressing table (linear probing,
docs/internals.md §2). No Python object is touched per entry.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint32_t
from libc.string cimport memcpy, memset

cdef enum:
    HEADER_SIZE = 64
    SLOT_SIZE = 16

cdef uint32_t SHARED = 0x80000000u


cdef inline uint32_t rd32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (
        <uint32_t>p[3] << 24)


cdef inline void wr32(unsigned char* p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF
    p[2] = (v >> 16) & 0xFF
    p[3] = (v >> 24) & 0xFF


def assemble(bytes header, bytes zone_table, Py_ssize_t nslots, list frags,
             Py_ssize_t shared_base):
    """Lay out header (its size field is filled in), slots, zone table and fragments
    (tuples blob, ents, relocs)."""
    cdef Py_ssize_t slots_off = HEADER_SIZE
    cdef Py_ssize_t base = slots_off + nslots * SLOT_SIZE + PyBytes_GET_SIZE(zone_table)
    cdef Py_ssize_t total = base
    cdef Py_ssize_t nf = len(frags)
    cdef Py_ssize_t i
    cdef object f
    if nslots <= 0 or nslots & (nslots - 1):
        raise ValueError("nslots must be a power of two")
    if PyBytes_GET_SIZE(header) != HEADER_SIZE:
        raise ValueError("header must be 64 octets")
    cdef Py_ssize_t nent = 0
    for i in range(nf):
        f = frags[i]
        total += PyBytes_GET_SIZE(<bytes>f[0])
        nent += PyBytes_GET_SIZE(<bytes>f[1]) >> 4
    if nent >= nslots:
        raise ValueError("more entries than slots")
    if total > 0xFFFFFFFF:
        raise ValueError("image larger than 4 GiB")
    out = PyBytes_FromStringAndSize(NULL, total)
    cdef unsigned char* data = <unsigned char*>PyBytes_AS_STRING(out)
    memcpy(data, PyBytes_AS_STRING(header), HEADER_SIZE)
    wr32(data + 24, <uint32_t>total)  # header: total size
    memset(data + slots_off, 0, nslots * SLOT_SIZE)
    memcpy(data + slots_off + nslots * SLOT_SIZE, PyBytes_AS_STRING(zone_table),
           PyBytes_GET_SIZE(zone_table))
    cdef uint32_t mask = <uint32_t>(nslots - 1)
    cdef unsigned char* slots = data + slots_off
    cdef Py_ssize_t cur = base
    cdef bytes blob, ents, relocs
    cdef const unsigned char* e
    cdef const unsigned char* r
    cdef Py_ssize_t n, k, blen
    cdef uint32_t h, koff, aoff, qk, idx, pos
    for i in range(nf):
        f = frags[i]
        blob = <bytes>f[0]
        ents = <bytes>f[1]
        relocs = <bytes>f[2]
        blen = PyBytes_GET_SIZE(blob)
        if blen:
            memcpy(data + cur, PyBytes_AS_STRING(blob), blen)
        r = <const unsigned char*>PyBytes_AS_STRING(relocs)
        n = PyBytes_GET_SIZE(relocs) >> 2
        for k in range(n):
            pos = rd32(r + 4 * k)
            if pos + 4 > blen:
                raise ValueError("relocation outside its fragment")
            wr32(data + cur + pos, rd32(data + cur + pos) + <uint32_t>cur)
        e = <const unsigned char*>PyBytes_AS_STRING(ents)
        n = PyBytes_GET_SIZE(ents) >> 4
        for _k in range(n):
            h = rd32(e)
            koff = rd32(e + 4) + <uint32_t>cur
            aoff = rd32(e + 8)
            qk = rd32(e + 12)
            if aoff & SHARED:
                aoff = <uint32_t>shared_base + (aoff & ~SHARED)
            else:
                aoff += <uint32_t>cur
            idx = h & mask
            while rd32(slots + idx * SLOT_SIZE) != 0:
                idx = (idx + 1) & mask
            wr32(slots + idx * SLOT_SIZE, h)
            wr32(slots + idx * SLOT_SIZE + 4, koff)
            wr32(slots + idx * SLOT_SIZE + 8, aoff)
            wr32(slots + idx * SLOT_SIZE + 12, qk)
            e += 16
        cur += blen
    return out
