# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Image assembly in C: join fragment blobs, move their offsets, build the slot index.

Same bytes as `fragments.assemble_py` (a test compares them). One pass per
fragment: memcpy the blob, add its image offset to each relocation, insert
each entry into the open-addressing table (linear probing,
docs/internals.md §2). No Python object is touched per entry.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint32_t
from libc.stdlib cimport realloc
from libc.string cimport memcpy, memset

cdef enum:
    HEADER_SIZE = 64
    SLOT_SIZE = 16
    BLOCK_BITS = 12  # 4096 blocks of home slots (fragments.BLOCK_BITS)

cdef uint32_t SHARED = 0x80000000u


cdef inline uint32_t rd32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (
        <uint32_t>p[3] << 24)


cdef inline void wr32(unsigned char* p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF
    p[2] = (v >> 16) & 0xFF
    p[3] = (v >> 24) & 0xFF


cdef extern from "sys/mman.h" nogil:
    int madvise(void* addr, size_t length, int advice)
    int MADV_HUGEPAGE

# Scratch space for the block-ordered entries, kept between calls so a
# re-assembly does not fault in fresh pages every time.
cdef unsigned char* _scratch = NULL
cdef size_t _scratch_cap = 0


cdef unsigned char* scratch(size_t size) except NULL:
    global _scratch, _scratch_cap
    cdef void* p
    if size > _scratch_cap:
        p = realloc(_scratch, size)
        if p == NULL:
            raise MemoryError()
        _scratch = <unsigned char*>p
        _scratch_cap = size
    return _scratch


cdef void advise_huge(unsigned char* p, size_t n) noexcept nogil:
    """Ask for transparent huge pages on a large fresh buffer: 2 MiB faults
    instead of 4 KiB ones (advisory; harmless where THP is off)."""
    cdef size_t start = (<size_t>p + 0x1FFFFF) & ~(<size_t>0x1FFFFF)
    cdef size_t end = (<size_t>p + n) & ~(<size_t>0x1FFFFF)
    if end > start:
        madvise(<void*>start, end - start, MADV_HUGEPAGE)


def assemble(bytes header, bytes zone_table, Py_ssize_t nslots, list frags,
             Py_ssize_t shared_base, bytearray out=None):
    """Lay out header (its size field is filled in), slots, zone table and fragments
    (tuples blob, ents, relocs); a new bytes, or ``out`` resized to the image
    and overwritten whole (every octet is written: nothing of its old
    contents survives).

    ``out`` is the control loop's reused buffer: its pages are already
    faulted in, where a fresh 38 MB object costs ~12 ms of page faults per
    image on a VM (bench/bench_kube.py); a bytearray that shrinks keeps its
    allocation and one that grows by little is moved by ``mremap``.

    Entries are inserted in the order `insertion_order` (fragments.py) defines:
    by block of their home slot, stable; the slot table then fills almost
    sequentially instead of with one cache miss per entry.
    """
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
    cdef unsigned char* data
    if out is None:
        image = PyBytes_FromStringAndSize(NULL, total)
        data = <unsigned char*>PyBytes_AS_STRING(image)
    else:
        PyByteArray_Resize(out, total)  # BufferError while a view of it is alive
        image = out
        data = <unsigned char*>PyByteArray_AS_STRING(out)
    advise_huge(data, total)
    memcpy(data, PyBytes_AS_STRING(header), HEADER_SIZE)
    wr32(data + 24, <uint32_t>total)  # header: total size
    memset(data + slots_off, 0, nslots * SLOT_SIZE)
    memcpy(data + slots_off + nslots * SLOT_SIZE, PyBytes_AS_STRING(zone_table),
           PyBytes_GET_SIZE(zone_table))
    cdef uint32_t mask = <uint32_t>(nslots - 1)
    cdef int shift = block_shift(nslots)
    cdef uint32_t nblocks = <uint32_t>(nslots >> shift)
    cdef unsigned char* slots = data + slots_off
    cdef unsigned char* tmp = scratch(nent * 16 + (nblocks + 1) * 4)
    cdef uint32_t* fill = <uint32_t*>(tmp + nent * 16)
    memset(fill, 0, (nblocks + 1) * 4)
    cdef Py_ssize_t cur = base
    cdef bytes blob, ents, relocs
    cdef const unsigned char* e
    cdef const unsigned char* r
    cdef unsigned char* t
    cdef Py_ssize_t n, k, blen
    cdef uint32_t h, aoff, idx, pos, blk, acc, c
    # pass 1: count entries per block
    for i in range(nf):
        ents = <bytes>(<tuple>frags[i])[1]
        e = <const unsigned char*>PyBytes_AS_STRING(ents)
        n = PyBytes_GET_SIZE(ents) >> 4
        for _k in range(n):
            fill[((rd32(e) & mask) >> shift) + 1] += 1
            e += 16
    acc = 0
    for blk in range(nblocks + 1):
        c = fill[blk]
        fill[blk] = acc
        acc += c
    # pass 2: copy blobs, relocate, scatter absolute entries by block
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
            aoff = rd32(e + 8)
            if aoff & SHARED:
                aoff = <uint32_t>shared_base + (aoff & ~SHARED)
            else:
                aoff += <uint32_t>cur
            blk = (h & mask) >> shift
            t = tmp + 16 * fill[blk + 1]
            fill[blk + 1] += 1
            wr32(t, h)
            wr32(t + 4, rd32(e + 4) + <uint32_t>cur)
            wr32(t + 8, aoff)
            memcpy(t + 12, e + 12, 4)
            e += 16
        cur += blen
    # pass 3: insert in block order (linear probing)
    t = tmp
    for _k in range(nent):
        idx = rd32(t) & mask
        while rd32(slots + idx * SLOT_SIZE) != 0:
            idx = (idx + 1) & mask
        memcpy(slots + idx * SLOT_SIZE, t, SLOT_SIZE)
        t += 16
    return image


cdef int block_shift(Py_ssize_t nslots) noexcept:
    """log2(nslots) - log2(BLOCKS), at least 0 (fragments.block_shift)."""
    cdef int bits = 0
    while (<Py_ssize_t>1 << bits) < nslots:
        bits += 1
    return bits - BLOCK_BITS if bits > BLOCK_BITS else 0
