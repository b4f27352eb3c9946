"""dns64 (``plugin/dns64``): AAAA records synthesized from A records for NAT64 (RFC 6147).

As plugin/dns64/dns64.go: a query of type AAAA and class IN, from an IPv6
client (``allow_ipv4``: any client; an IPv4-mapped address counts as IPv4,
as request.Family does), goes down the chain; its answer stands when it is
NXDOMAIN or (without ``translate_all``) holds an AAAA record. Otherwise the
name's A records are asked from the top of the server's chain
(plugin/pkg/upstream; fastdns: beforechain.lookup_for) and ``Synthesize``
builds the answer: SetReply of the query (ID, opcode, RD, CD; NOERROR; TC
from the A answer), each A record of the A answer's answer section turned
into an AAAA at PREFIX (RFC 6052 ``to6``) with TTL min(A TTL, the AAAA
answer's SOA TTL or 600), every other answer record (a CNAME chain) as it
is, and the A answer's authority and additional sections unchanged.

The UDP fast path's C hook (fastdns/plugins/_dns64.pyx) hands only the
AAAA queries a dns64 block would look at to Python; every other query stays
in C. Names are written uncompressed (autopath_wire.uncompressed_rdata).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any, ClassVar

from fastdns.codec import wire
from fastdns.corefile.dispenser import Dispenser
from fastdns.corefile.model import Config, PluginConfig, ServerBlock
from fastdns.names import zone_key
from fastdns.plugins import counting
from fastdns.plugins.autopath_wire import uncompressed_rdata
from fastdns.plugins.spec import Lookup, Pending, Plugin, Rewritten

A, AAAA, SOA, IN = 1, 28, 6, 1
NXDOMAIN = 3
DEFAULT_PREFIX = "64:ff9b::/96"
_RR = struct.Struct(">HHIH")
TRANSLATED = "coredns_dns64_requests_translated_total"  # plugin/dns64/metrics.go


@dataclass(frozen=True)
class Dns64Config(PluginConfig):
    name: ClassVar[str] = "dns64"
    prefix: str = DEFAULT_PREFIX  # a network, as ipaddress writes it
    translate_all: bool = False
    allow_ipv4: bool = False


def _prefix(d: Dispenser, tok: Any) -> str:
    """setup.go parsePrefix: an IPv6 network of /32 to /96, a multiple of 8."""
    try:
        net = ipaddress.ip_network(tok.text, strict=False)
    except ValueError:
        raise d.err(f"invalid CIDR address: {tok.text}", tok) from None
    if net.version != 6:
        raise d.err(f"invalid netmask {net.max_prefixlen} IPv6 address: {tok.text!r}", tok)
    if net.prefixlen % 8 or not 32 <= net.prefixlen <= 96:
        raise d.err(f"invalid prefix length {tok.text!r}", tok)
    return str(net)


def parse_dns64(d: Dispenser, zones: tuple[str, ...]) -> Dns64Config:
    """dns64 [PREFIX] { prefix PREFIX; translate_all; allow_ipv4 } (setup.go dns64Parse)."""
    o: dict[str, Any] = {}
    args = d.remaining_args()
    if len(args) > 1:
        raise d.arg_err()
    if args:
        o["prefix"] = _prefix(d, args[0])
    while d.next_block():
        key = d.val()
        if key == "prefix":
            o["prefix"] = _prefix(d, d.one_arg())
        elif key in ("translate_all", "allow_ipv4"):
            if d.remaining_args():
                raise d.arg_err()
            o[key] = True
        else:
            raise d.unknown_property()
    return Dns64Config(**o)


def to6(prefix: str, v4: bytes) -> bytes:
    """RFC 6052 §2.2 (dns64.go to6): the prefix's octets, then the IPv4
    octets, skipping octet 8 (the "u" octet, always zero)."""
    net = ipaddress.IPv6Network(prefix)
    v6 = bytearray(16)
    n = net.prefixlen // 8
    v6[:n] = net.network_address.packed[:n]
    i, j = n, 0
    while i < 8:
        v6[i] = v4[j]
        i, j = i + 1, j + 1
    if i == 8:
        i += 1
    while j < 4:
        v6[i] = v4[j]
        i, j = i + 1, j + 1
    return bytes(v6)


def from_ipv6(addr: Any) -> bool:
    """request.Family() == 2: a client address that is IPv6 and not IPv4-mapped."""
    host = addr[0] if addr else ""
    if ":" not in host:
        return False
    try:
        return ipaddress.IPv6Address(host.split("%", 1)[0]).ipv4_mapped is None
    except ValueError:
        return False


def _records(msg: bytes) -> tuple[int, list[tuple[bytes, int, int, int, bytes]]]:
    """(answer count, [(owner, type, class, ttl, rdata)] of every section) of a
    message, names uncompressed."""
    qd, an, ns, ar = struct.unpack_from(">HHHH", msg, 4)
    pos = 12
    for _ in range(qd):
        _n, pos = wire.decode_name(msg, pos)
        pos += 4
    out = []
    for _ in range(an + ns + ar):
        owner, pos = wire.decode_name(msg, pos)
        rtype, rclass, ttl, rdlen = _RR.unpack_from(msg, pos)
        if pos + 10 + rdlen > len(msg):
            raise ValueError("short record")
        out.append((owner, rtype, rclass, ttl, uncompressed_rdata(msg, rtype, pos + 10, rdlen)))
        pos += 10 + rdlen
    return an, out


def needs_synthesis(resp: bytes, conf: Dns64Config) -> bool:
    """responseShouldDNS64: not NXDOMAIN, and (translate_all or no AAAA answer)."""
    if len(resp) < 12 or resp[3] & 0xF == NXDOMAIN:
        return False
    if conf.translate_all:
        return True
    try:
        an, rrs = _records(resp)
    except Exception:  # noqa: BLE001 - an answer that does not parse stands
        return False
    return not any(rtype == AAAA for _o, rtype, _c, _t, _d in rrs[:an])


def synthesize(query: bytes, q: wire.Query, aaaa: bytes, a: bytes, prefix: str) -> bytes:
    """dns64.go Synthesize: the answer to ``query`` from the AAAA answer's SOA
    TTL and the A answer's records."""
    soa_ttl = 600
    an6, rrs6 = _records(aaaa)
    for _o, rtype, _c, ttl, _d in rrs6[an6:]:
        if rtype == SOA:
            soa_ttl = ttl
    an, rrs = _records(a)
    _qd, _an, ns, ar = struct.unpack_from(">HHHH", a, 4)
    out = []
    for i, (owner, rtype, rclass, ttl, rdata) in enumerate(rrs):
        if i < an and rtype == A and len(rdata) == 4:
            rtype, ttl, rdata = AAAA, min(ttl, soa_ttl), to6(prefix, rdata)
        out.append(owner + _RR.pack(rtype, rclass, ttl, len(rdata)) + rdata)
    flags = 0x8000 | (q.flags & 0x7800)
    if q.opcode == 0:
        flags |= q.flags & 0x0110  # RD, CD (SetReply)
    flags |= a[2] << 8 & 0x0200  # TC of the A answer
    head = struct.pack(">HHHHHH", q.id, flags, 1, an, ns, ar)
    return head + query[12:q.question_end] + b"".join(out)


def _a_query(data: bytes, q: wire.Query) -> bytes:
    """The query as it came, asking type A (ID, flags, OPT kept: NewWithQuestion)."""
    end = q.question_end
    return data[:end - 4] + struct.pack(">H", A) + data[end - 2:]


def _after(conf: Dns64Config, tcp: bool, server: str, original: bytes,
           resp: bytes) -> bytes | Pending:
    if not needs_synthesis(resp, conf):
        return resp
    try:
        q = wire.parse_query(original)
    except Exception:  # noqa: BLE001 - the query parsed before; be safe
        return resp

    async def work(lookup: Lookup) -> bytes:
        from fastdns.forward.message import fit  # the worker's room: imported there

        got = await lookup(_a_query(original, q))
        if not got:
            return wire.error_response(original, q, 2)  # no answer at all: SERVFAIL
        out = fit(synthesize(original, q, resp, got, conf.prefix), original, q, tcp)
        counting.add((TRANSLATED, server))  # dns64.go RequestsTranslatedCount
        return out

    return Pending(work, resp)


def before(data: bytes, q: wire.Query, addr: tuple[str, int], tcp: bool,
           block: ServerBlock) -> Rewritten | None:
    conf = block.plugins.get("dns64")
    if not isinstance(conf, Dns64Config) or q.qtype != AAAA or q.qclass != IN:
        return None
    if not conf.allow_ipv4 and not from_ipv6(addr):
        return None
    server = counting.server_of(block)
    return Rewritten(data, lambda original, resp: _after(conf, tcp, server, original, resp))


def series(config: Config) -> list[counting.Series]:
    """coredns_dns64_requests_translated_total{server} of each block with dns64."""
    return [(TRANSLATED, counting.server_of(b)) for b in config.servers if "dns64" in b.plugins]


def zone_rows(config: Config) -> list[tuple[int, bytes, int]]:
    """(port, wire zone, 0 off / 1 IPv6 clients / 2 every client) per zone of every block."""
    rows: list[tuple[int, bytes, int]] = []
    for b in config.servers:
        conf = b.plugins.get("dns64")
        on = 0 if not isinstance(conf, Dns64Config) else 2 if conf.allow_ipv4 else 1
        rows.extend((b.port, zone_key(z), on) for z in b.zones)
    return rows


def prelookup(config: Config) -> Any:
    try:
        from fastdns.plugins import _dns64
    except ImportError:
        return None
    try:
        return _dns64.hook(zone_rows(config))
    except ValueError:
        return None


PLUGIN = Plugin("dns64", "full", config=Dns64Config, parse=parse_dns64,
                stages=("fast_path", "slow_path"), before=before, prelookup=prelookup,
                metrics=(TRANSLATED,), series=series)
