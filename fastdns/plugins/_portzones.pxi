# The (port, zone) -> value table of the hooks that decide per block only
# (any, dns64, bufsize): per local port the zones of its blocks, each with
# the block's value for the plugin (0: the block does not have it). The
# block serving a name is the one whose zone is its longest suffix on a
# label boundary (Config.select). Include after _names.pxi.

cdef enum:
    MAX_PORT_ZONES = 32

cdef struct PortZone:
    int port
    int value
    int zlen
    unsigned char zone[256]

cdef struct PortZones:
    int n
    PortZone zones[MAX_PORT_ZONES]


cdef int fill_port_zones(PortZones* t, rows) except -1:
    """``rows``: (port, lowercase wire zone, value), at most MAX_PORT_ZONES."""
    cdef bytes z
    rows = list(rows)
    if len(rows) > MAX_PORT_ZONES:
        raise ValueError(f"at most {MAX_PORT_ZONES} (port, zone) blocks")
    t.n = 0
    for port, zone, value in rows:
        z = bytes(zone)
        if len(z) > 255:
            raise ValueError("zone longer than 255 octets")
        t.zones[t.n].port = port
        t.zones[t.n].value = value
        t.zones[t.n].zlen = len(z)
        memcpy(t.zones[t.n].zone, <const unsigned char*>z, len(z))
        t.n += 1
    return 0


cdef int block_value(const PortZones* t, int port, const unsigned char* name,
                     int nlen) noexcept nogil:
    """The value of the block on ``port`` whose zone is the longest suffix of
    the wire ``name``; 0 when no zone holds it."""
    cdef int starts[128]
    cdef int ns = label_starts(name, nlen, starts), i, best = -1, value = 0
    for i in range(t.n):
        if t.zones[i].port != port or t.zones[i].zlen <= best:
            continue
        if under(name, nlen, starts, ns, t.zones[i].zone, t.zones[i].zlen):
            best = t.zones[i].zlen
            value = t.zones[i].value
    return value


cdef int question_type_at(const unsigned char* pkt, int n) noexcept nogil:
    """The offset of QTYPE in a plain one-question QUERY (not a response,
    opcode 0) whose name is uncompressed and whose type and class fit; -1
    for anything else."""
    cdef int pos = 12
    if n < 17 or (pkt[4] << 8 | pkt[5]) != 1 or pkt[2] & 0x80 or (pkt[2] >> 3) & 0xF:
        return -1
    while pos < n and pkt[pos] != 0:
        if pkt[pos] & 0xC0:
            return -1
        pos += pkt[pos] + 1
    if pos + 5 > n:
        return -1
    return pos + 1
