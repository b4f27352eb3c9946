"""A small cluster image and helpers shared by the wire tests (not a test module).

Templates are written by hand here, independently of the zone compiler, so
the wire tests check the wire core against docs/internals.md and not
against another module's idea of it.
"""

from __future__ import annotations

import struct

from fastdns.constants import QT_NAME
from fastdns.ipc.image import (
    ZF_AUTH,
    ZF_SLOW_MISS,
    ZK_FORWARD,
    make_template,
)
from fastdns.zone.imagebuilder import ZoneSpec, build_image

A, NS, SOA, AAAA, TXT = 1, 2, 6, 28, 16
ZONE = "cluster.local"
TTL = 30
# QR AA RA: what an authoritative cluster answer carries (RD comes from the query).
AUTH_FLAGS = 0x8480


def wire_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def h(text: str) -> bytes:
    """Hex grouped per field, as the goldens are written."""
    return bytes.fromhex("".join(text.split()))


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + struct.pack(">HHIH", rtype, 1, ttl, len(rdata)) + rdata


def ptr(offset: int) -> bytes:
    return (0xC000 | offset).to_bytes(2, "big")


def soa_rdata(zone_ptr: bytes, serial: int = 1) -> bytes:
    return (b"\x02ns\x03dns" + zone_ptr + b"\x0ahostmaster" + zone_ptr
            + struct.pack(">IIIII", serial, 7200, 1800, 86400, TTL))


def a_template(ips: list[bytes], ttl: int = TTL) -> bytes:
    """Exact-name answer: every owner points at the question (offset 12)."""
    body = b"".join(rr(ptr(12), A, ttl, ip) for ip in ips)
    return make_template(AUTH_FLAGS, len(ips), 0, 0, body)


def nodata_template(key: bytes, zone: bytes) -> bytes:
    """NODATA of an existing name: SOA owner = the zone suffix inside the question."""
    zp = ptr(12 + len(key) - len(zone))
    return make_template(AUTH_FLAGS, 0, 1, 0, rr(zp, SOA, TTL, soa_rdata(zp)))


def negative_template(rcode: int = 3) -> bytes:
    """Zone-miss answer: the zone's position in the question is only known at answer
    time, so the SOA owner and both rdata names point through relocations."""
    rdata = soa_rdata(b"\0\0")
    body = rr(b"\0\0", SOA, TTL, rdata)
    first = 2 + 10 + len(b"\x02ns\x03dns")  # owner(2) + fixed(10) + "ns.dns" labels
    second = first + 2 + len(b"\x0ahostmaster")
    return make_template(0x8480 | rcode, 0, 1, 0, body, [0, first, second])


IP1, IP2, IP3 = bytes([10, 96, 0, 10]), bytes([10, 96, 0, 11]), bytes([10, 96, 0, 12])
WEB = wire_name("web.default.svc.cluster.local")
MULTI = wire_name("multi.default.svc.cluster.local")
BIG = wire_name("big.default.svc.cluster.local")  # 40 A records: > 512, < 1232
HUGE = wire_name("huge.default.svc.cluster.local")  # 300 A records: > 4096
SVC = wire_name("svc.cluster.local")
ZONE_WIRE = wire_name(ZONE)
REVERSE_WIRE = wire_name("in-addr.arpa")
FORWARD_WIRE = wire_name("example.org")
BIG_IPS = [bytes([10, 1, 0, i]) for i in range(40)]
HUGE_IPS = [bytes([10, 2, i // 256, i % 256]) for i in range(300)]


def cluster_entries():
    return [
        (WEB, A, [a_template([IP1])]),
        (WEB, QT_NAME, [nodata_template(WEB, ZONE_WIRE)]),
        (MULTI, A, [a_template([IP1, IP2, IP3]), a_template([IP2, IP3, IP1]),
                    a_template([IP3, IP1, IP2])]),
        (MULTI, QT_NAME, [nodata_template(MULTI, ZONE_WIRE)]),
        (BIG, A, [a_template(BIG_IPS)]),
        (HUGE, A, [a_template(HUGE_IPS)]),
        (SVC, QT_NAME, [nodata_template(SVC, ZONE_WIRE)]),
    ]


def cluster_zones():
    return [
        ZoneSpec(ZONE_WIRE, ZF_AUTH, (negative_template(),), ttl=TTL),
        ZoneSpec(REVERSE_WIRE, ZF_AUTH | ZF_SLOW_MISS, ()),
        ZoneSpec(FORWARD_WIRE, ZF_SLOW_MISS, (), kind=ZK_FORWARD),
    ]


def cluster_image(extra_names: int = 0) -> bytes:
    """The test image; `extra_names` adds that many A names (for a realistic table size)."""
    entries = cluster_entries()
    for i in range(extra_names):
        key = wire_name(f"svc{i}.ns{i % 50}.svc.cluster.local")
        entries.append((key, A, [a_template([bytes([10, 3, i // 256 % 256, i % 256])])]))
        entries.append((key, QT_NAME, [nodata_template(key, ZONE_WIRE)]))
    return build_image(entries, cluster_zones(), flags=1)


def zone_index(image: bytes, name: bytes) -> int:
    from fastdns.ipc.image import read_header, zone_entry

    for i in range(read_header(image).nzones):
        if zone_entry(image, i)[0] == name:
            return i
    raise KeyError(name)


def query(name: str | bytes, qtype: int = A, *, qid: int = 0x04D2, flags: int = 0x0100,
          qclass: int = 1, edns: bytes | None = None) -> bytes:
    """A query; `edns` is the raw OPT RR to append as the additional record."""
    qname = name if isinstance(name, bytes) else wire_name(name)
    head = struct.pack(">HHHHHH", qid, flags, 1, 0, 0, 1 if edns else 0)
    return head + qname + struct.pack(">HH", qtype, qclass) + (edns or b"")


def opt(payload: int = 1232, version: int = 0, do: bool = False, options: bytes = b"",
        ext_rcode: int = 0) -> bytes:
    return (b"\x00" + struct.pack(">HHBBHH", 41, payload, ext_rcode, version,
                                  0x8000 if do else 0, len(options)) + options)
