"""DNS numbers used across fastdns, as IntEnums (dnspython's habit)."""

from enum import IntEnum, IntFlag


class Rcode(IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5
    BADVERS = 16  # extended: upper 8 bits live in the OPT TTL (RFC 6891 §6.1.3)


class Opcode(IntEnum):
    QUERY = 0
    IQUERY = 1
    STATUS = 2
    NOTIFY = 4
    UPDATE = 5


class Flag(IntFlag):
    QR = 0x8000
    AA = 0x0400
    TC = 0x0200
    RD = 0x0100
    RA = 0x0080
    Z = 0x0040
    AD = 0x0020
    CD = 0x0010


OPCODE_MASK = 0x7800
RCODE_MASK = 0x000F
# Bits a response takes from its query: opcode, RD, CD (RFC 1035 §4.1.1;
# RFC 8906: Z is never copied).
QUERY_COPIED_BITS = OPCODE_MASK | Flag.RD | Flag.CD


class Qtype(IntEnum):
    A = 1
    NS = 2
    CNAME = 5
    SOA = 6
    PTR = 12
    HINFO = 13
    MX = 15
    TXT = 16
    AAAA = 28
    SRV = 33
    OPT = 41
    ANY = 255


class Qclass(IntEnum):
    IN = 1
    CH = 3
    ANY = 255


# Lookup pseudo-type: the "name exists" entry whose template is the NODATA
# answer for that name (see docs/internals.md, the image).
QT_NAME = 0

EDNS_PAYLOAD = 1232  # what fastdns advertises (DNS flag day 2020)
MIN_UDP_PAYLOAD = 512  # RFC 1035 §4.2.1; RFC 6891 §6.2.5: treat smaller as 512
MAX_NAME = 255
MAX_LABEL = 63
