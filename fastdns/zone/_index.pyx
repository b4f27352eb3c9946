# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Image assembly in C: join fragment blobs, move their offsets, build the slot index.

Same bytes as `fragments.assemble_py` (a test compares them). One pass per
fragment: memcpy the blob, add its image offset to each relocation, insert
each entry into the open-addressing table (linear probing,
docs/internals.md §2). No Python object is touched per entry.
"""

from cpython.buffer cimport PyBUF_FORMAT, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_Resize
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_Check,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.list cimport PyList_GET_ITEM
from cpython.ref cimport PyObject
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.stdint cimport int64_t, uint32_t, uint64_t
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


cdef extern from "Python.h":
    ctypedef struct ByteArray "PyByteArrayObject":
        Py_ssize_t ob_alloc  # octets allocated (size + 1 at least)


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


ctypedef struct Frag:
    const unsigned char* blob
    const unsigned char* ents
    const unsigned char* relocs
    Py_ssize_t blen
    Py_ssize_t nent
    Py_ssize_t nrel
    uint32_t placed  # the offset its relocations already hold (a placed blob), else 0


cdef extern from *:
    """
    #define FDNS_PREFETCH(p) __builtin_prefetch((const void*)(p))
    """
    void prefetch "FDNS_PREFETCH"(const void* p) noexcept nogil

# The fragments' pointers and sizes, gathered once per assembly.
cdef Frag* _frags = NULL
cdef Py_ssize_t _frags_cap = 0


cdef Frag* frag_table(Py_ssize_t n) except NULL:
    global _frags, _frags_cap
    cdef void* p
    if n > _frags_cap:
        p = realloc(_frags, n * sizeof(Frag))
        if p == NULL:
            raise MemoryError()
        _frags = <Frag*>p
        _frags_cap = n
    return _frags


cdef inline const unsigned char* bytes_of(object o, Py_ssize_t* size) except NULL:
    if not PyBytes_Check(o):
        raise TypeError("fragment parts must be bytes")
    size[0] = PyBytes_GET_SIZE(o)
    return <const unsigned char*>PyBytes_AS_STRING(o)


def assemble(bytes header, bytes zone_table, Py_ssize_t nslots, list frags,
             Py_ssize_t shared_base, bytearray out=None, object into=None, object prev=None,
             object at=None):
    """Lay out header (its size field is filled in), slots, zone table and fragments
    (tuples blob, ents, relocs); a new bytes, or ``out`` resized to the image
    and overwritten whole (every octet is written: nothing of its old
    contents survives), or ``into(size)``: a writable buffer of exactly the
    image's size (the publisher's next segment, mapped), filled and returned.

    ``out`` is the control loop's reused buffer: its pages are already
    faulted in, where a fresh 40 MB object cost ~2 ms more per image at 10k
    Services (page faults on a VM); a bytearray that shrinks keeps its
    allocation, and one that must grow gets 1/32 to spare.

    Entries are inserted in the order `assemble_py` (fragments.py) defines:
    by block of their home slot, stable; the slot table then fills almost
    sequentially instead of with one cache miss per entry.

    At 10k Services the ~14k fragments are ~42k objects scattered over the
    heap, and touching each one's header was a cache (and TLB) miss in
    turn: a third of the assembly. They are read once, prefetched a few
    fragments ahead, into a C table the passes use.

    A placed fragment (tuple item 3 true: `Compiler.placed`) has its blob
    in ``prev``, the image in force, at ``at[i]`` for ``length`` (item 4)
    octets, relocated there already: it is copied from there and its
    relocations moved by the difference. ``at`` (an array("q"), one entry
    per fragment) is then overwritten with where each fragment lies now.
    """
    cdef Py_buffer pb
    cdef Py_buffer ab
    cdef int64_t* pos = NULL
    cdef bint have_at = at is not None
    if have_at:
        PyObject_GetBuffer(at, &ab, PyBUF_WRITABLE | PyBUF_FORMAT)
        if ab.itemsize != 8 or ab.len != 8 * len(frags) or ab.format[0] != b"q":
            PyBuffer_Release(&ab)
            raise ValueError("at: an array('q') with one position per fragment")
        pos = <int64_t*>ab.buf
    try:
        if prev is None:
            return _assemble(header, zone_table, nslots, frags, shared_base, out, into,
                             NULL, 0, pos)
        PyObject_GetBuffer(prev, &pb, 0)
        try:
            return _assemble(header, zone_table, nslots, frags, shared_base, out, into,
                             <const unsigned char*>pb.buf, pb.len, pos)
        finally:
            PyBuffer_Release(&pb)
    finally:
        if have_at:
            PyBuffer_Release(&ab)


cdef object _assemble(bytes header, bytes zone_table, Py_ssize_t nslots, list frags,
                      Py_ssize_t shared_base, bytearray out, object into,
                      const unsigned char* prev, Py_ssize_t prev_len, int64_t* pos):
    cdef Py_ssize_t slots_off = HEADER_SIZE
    cdef Py_ssize_t base = slots_off + nslots * SLOT_SIZE + PyBytes_GET_SIZE(zone_table)
    cdef Py_ssize_t total = base
    cdef Py_ssize_t nf = len(frags)
    cdef Py_ssize_t i
    cdef PyObject* f
    cdef PyObject* g
    cdef Py_ssize_t at
    if nslots <= 0 or nslots > 0xFFFFFFFF:
        raise ValueError("nslots must be positive")
    if PyBytes_GET_SIZE(header) != HEADER_SIZE:
        raise ValueError("header must be 64 octets")
    cdef Frag* fr = frag_table(nf + 1)
    cdef Py_ssize_t nent = 0
    for i in range(nf):
        if i + 16 < nf:
            prefetch(PyList_GET_ITEM(frags, i + 16))
        if i + 8 < nf:
            g = PyList_GET_ITEM(frags, i + 8)
            if PyTuple_Check(<object>g) and PyTuple_GET_SIZE(<object>g) >= 3:
                prefetch(PyTuple_GET_ITEM(<object>g, 0))
                prefetch(PyTuple_GET_ITEM(<object>g, 1))
                prefetch(PyTuple_GET_ITEM(<object>g, 2))
        f = PyList_GET_ITEM(frags, i)
        if not PyTuple_Check(<object>f) or PyTuple_GET_SIZE(<object>f) < 3:
            raise TypeError("a fragment is a tuple (blob, ents, relocs)")
        fr[i].placed = 0
        if PyTuple_GET_SIZE(<object>f) >= 5 and <object>PyTuple_GET_ITEM(<object>f, 3):
            at = pos[i] if pos != NULL else -1
            fr[i].blen = <object>PyTuple_GET_ITEM(<object>f, 4)
            if prev == NULL or at < 0 or at + fr[i].blen > prev_len or at > 0xFFFFFFFF:
                raise ValueError("a placed fragment outside the image it was placed in")
            fr[i].blob = prev + at
            fr[i].placed = <uint32_t>at
        else:
            fr[i].blob = bytes_of(<object>PyTuple_GET_ITEM(<object>f, 0), &fr[i].blen)
        fr[i].ents = bytes_of(<object>PyTuple_GET_ITEM(<object>f, 1), &fr[i].nent)
        fr[i].relocs = bytes_of(<object>PyTuple_GET_ITEM(<object>f, 2), &fr[i].nrel)
        fr[i].nent >>= 4
        fr[i].nrel >>= 2
        total += fr[i].blen
        nent += fr[i].nent
    if nent >= nslots:
        raise ValueError("more entries than slots")
    if total > 0xFFFFFFFF:
        raise ValueError("image larger than 4 GiB")
    cdef uint32_t n32 = <uint32_t>nslots
    cdef int shift = block_shift(nslots)
    cdef uint32_t nblocks = <uint32_t>(((nslots - 1) >> shift) + 1)
    cdef unsigned char* data
    cdef Py_buffer pb
    cdef unsigned char* tmp
    if into is not None:
        image = into(total)
        PyObject_GetBuffer(image, &pb, PyBUF_WRITABLE)
        try:
            if pb.len != total:
                raise ValueError(f"into({total}) gave a buffer of {pb.len} octets")
            data = <unsigned char*>pb.buf
            if prev != NULL and data < prev + prev_len and prev < data + total:
                raise ValueError("into() gave the image the placed fragments are read from")
            tmp = scratch(nent * 16 + (nblocks + 1) * 4)
            fill_header(data, header, zone_table, slots_off, nslots, total)
            if not fill_image(data, slots_off, nslots, base, fr, nf, nent, tmp,
                              <uint32_t>shared_base, n32, shift, nblocks, pos):
                raise ValueError("relocation outside its fragment")
        finally:
            PyBuffer_Release(&pb)
        return image
    if out is None:
        image = PyBytes_FromStringAndSize(NULL, total)
        data = <unsigned char*>PyBytes_AS_STRING(image)
    else:
        if (<ByteArray*>out).ob_alloc <= total:
            # room to grow: a later image a little larger must not reallocate
            # (realloc copied the whole buffer: one image more of peak RSS)
            PyByteArray_Resize(out, total + (total >> 5))  # BufferError if viewed
        PyByteArray_Resize(out, total)  # a smaller size keeps the allocation
        image = out
        data = <unsigned char*>PyByteArray_AS_STRING(out)
    tmp = scratch(nent * 16 + (nblocks + 1) * 4)
    advise_huge(data, total)
    fill_header(data, header, zone_table, slots_off, nslots, total)
    # The passes keep the GIL (the scratch tables are module state): released,
    # the watch thread got to queue events mid-compile and batches shrank, for
    # ~30 % more control CPU and no better p99 (bench/bench_kube.py).
    if not fill_image(data, slots_off, nslots, base, fr, nf, nent, tmp, <uint32_t>shared_base,
                      n32, shift, nblocks, pos):
        raise ValueError("relocation outside its fragment")
    return image


cdef void fill_header(unsigned char* data, bytes header, bytes zone_table,
                      Py_ssize_t slots_off, Py_ssize_t nslots, Py_ssize_t total) noexcept:
    memcpy(data, PyBytes_AS_STRING(header), HEADER_SIZE)
    wr32(data + 24, <uint32_t>total)  # header: total size
    memcpy(data + slots_off + nslots * SLOT_SIZE, PyBytes_AS_STRING(zone_table),
           PyBytes_GET_SIZE(zone_table))


cdef bint fill_image(unsigned char* data, Py_ssize_t slots_off, Py_ssize_t nslots,
                     Py_ssize_t base, const Frag* fr, Py_ssize_t nf, Py_ssize_t nent,
                     unsigned char* tmp, uint32_t shared_base, uint32_t n32, int shift,
                     uint32_t nblocks, int64_t* at) noexcept nogil:
    """The passes over the fragments: blobs, relocations and the slot table.
    False when a relocation points outside its fragment."""
    cdef unsigned char* slots = data + slots_off
    cdef uint32_t* fill = <uint32_t*>(tmp + nent * 16)
    cdef Py_ssize_t cur = base
    cdef const unsigned char* e
    cdef const unsigned char* r
    cdef unsigned char* t
    cdef Py_ssize_t i, k, blen
    cdef uint32_t h, aoff, idx, pos, blk, acc, c
    memset(slots, 0, nslots * SLOT_SIZE)
    memset(fill, 0, (nblocks + 1) * 4)
    # pass 1: count entries per block
    for i in range(nf):
        if i + 4 < nf:
            prefetch(fr[i + 4].ents)
        e = fr[i].ents
        for _k in range(fr[i].nent):
            fill[(home(rd32(e), n32) >> shift) + 1] += 1
            e += 16
    acc = 0
    for blk in range(nblocks + 1):
        c = fill[blk]
        fill[blk] = acc
        acc += c
    # pass 2: copy blobs, relocate, scatter absolute entries by block
    for i in range(nf):
        if i + 4 < nf:
            prefetch(fr[i + 4].blob)
            prefetch(fr[i + 4].relocs)
            prefetch(fr[i + 4].ents)
        blen = fr[i].blen
        if at != NULL:
            at[i] = cur
        if blen:
            memcpy(data + cur, fr[i].blob, blen)
        r = fr[i].relocs
        for k in range(fr[i].nrel):
            pos = rd32(r + 4 * k)
            if pos + 4 > blen:
                return False
            wr32(data + cur + pos, rd32(data + cur + pos) + <uint32_t>cur - fr[i].placed)
        e = fr[i].ents
        for _k in range(fr[i].nent):
            h = rd32(e)
            aoff = rd32(e + 8)
            if aoff & SHARED:
                aoff = shared_base + (aoff & ~SHARED)
            else:
                aoff += <uint32_t>cur
            blk = home(h, n32) >> shift
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
        idx = home(rd32(t), n32)
        while rd32(slots + idx * SLOT_SIZE) != 0:
            idx += 1
            if idx == n32:
                idx = 0
        memcpy(slots + idx * SLOT_SIZE, t, SLOT_SIZE)
        t += 16
    return True


cdef int block_shift(Py_ssize_t nslots) noexcept:
    """floor(log2(nslots)) - log2(BLOCKS), at least 0 (fragments.block_shift)."""
    cdef int bits = 0
    while (<Py_ssize_t>1 << (bits + 1)) <= nslots:
        bits += 1
    return bits - BLOCK_BITS if bits > BLOCK_BITS else 0


cdef inline uint32_t home(uint32_t h, uint32_t nslots) noexcept nogil:
    """image.home_slot: multiply-shift onto [0, nslots)."""
    return <uint32_t>((<uint64_t>h * nslots) >> 32)
