"""One resource record in zone-file text -> wire: miekg/dns ``NewRR`` for the types fastdns encodes.

CoreDNS turns each executed template into a record with ``dns.NewRR``
(``plugin/template/template.go`` ``executeRRTemplate``): owner, then TTL and
class in either order (TTL 3600 and class IN when left out), the type, the
rdata; names not ending in a dot are relative to the root. fastdns encodes
A, AAAA, CNAME, DNAME, NS, PTR, MX, TXT, SRV and SOA; a template whose type
is another one is refused when the Corefile is read (``static_type``), and
one that only turns out to be another at run time is an RR failure.
"""

from __future__ import annotations

import ipaddress
import re
import struct

from fastdns.mnemonics import CLASSES, TYPES

TYPE_OF = {v: k for k, v in TYPES.items()}
CLASS_OF = {v: k for k, v in CLASSES.items()}
SUPPORTED = frozenset({"A", "AAAA", "CNAME", "DNAME", "NS", "PTR", "MX", "TXT", "SRV", "SOA"})
DEFAULT_TTL = 3600  # miekg/dns zlexer's default when no $TTL is set


class RRError(ValueError):
    """The text is not a record (``dns: not a TTL: ...`` and the like)."""


_TOK = re.compile(r'"(?:[^"\\]|\\.)*"|[()]|;[^\n]*|[^\s"();]+(?:\\.[^\s"();]*)*')


def _tokens(text: str) -> list[str]:
    out = []
    for m in _TOK.finditer(text):
        t = m.group()
        if t in ("(", ")") or t.startswith(";"):
            continue
        out.append(t)
    return out


def name_wire(text: str) -> bytes:
    """A presentation name (escapes ``\\.``, ``\\DDD``), relative to the root -> wire."""
    if text == "." or text == "@":
        return b"\x00"
    labels: list[bytes] = [b""]
    i = 0
    raw = text.encode("latin-1", "strict") if text.isascii() else None
    if raw is None:
        raise RRError(f'dns: bad owner name: "{text}"')
    while i < len(raw):
        c = raw[i]
        if c == 0x5C:  # backslash
            if i + 3 < len(raw) + 0 and raw[i + 1:i + 4].isdigit():
                labels[-1] += bytes([int(raw[i + 1:i + 4])])
                i += 4
                continue
            if i + 1 >= len(raw):
                raise RRError(f'dns: bad name: "{text}"')
            labels[-1] += raw[i + 1:i + 2]
            i += 2
            continue
        if c == 0x2E:  # dot
            if not labels[-1]:
                raise RRError(f'dns: bad name: "{text}"')
            labels.append(b"")
        else:
            labels[-1] += bytes([c])
        i += 1
    if labels[-1] == b"":
        labels.pop()
    out = b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"
    if any(len(x) > 63 or not x for x in labels) or len(out) > 255:
        raise RRError(f'dns: bad name: "{text}"')
    return out


_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _ttl(tok: str) -> int | None:
    """miekg ``stringToTTL``: digits, or digits with s/m/h/d/w units; None if not one."""
    if tok.isdigit():
        n = int(tok)
        return n if n <= 0xFFFFFFFF else None
    m = re.fullmatch(r"(?:[0-9]+[smhdwSMHDW])+", tok)
    if not m:
        return None
    n = sum(int(v) * _TTL_UNITS[u.lower()] for v, u in re.findall(r"([0-9]+)([a-zA-Z])", tok))
    return n if n <= 0xFFFFFFFF else None


def _class(tok: str) -> int | None:
    if tok.upper() in CLASS_OF:
        return CLASS_OF[tok.upper()]
    m = re.fullmatch(r"CLASS([0-9]{1,5})", tok.upper())
    return int(m.group(1)) if m and int(m.group(1)) < 65536 else None


def _txt(tok: str) -> bytes:
    body = tok[1:-1] if tok.startswith('"') else tok
    raw = body.encode("latin-1", "replace")
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C and i + 1 < len(raw):
            if raw[i + 1:i + 4].isdigit() and len(raw[i + 1:i + 4]) == 3:
                out.append(int(raw[i + 1:i + 4]) & 0xFF)
                i += 4
            else:
                out.append(raw[i + 1])
                i += 2
        else:
            out.append(raw[i])
            i += 1
    # zone files split a string over 255 octets into several (miekg endingToTxtSlice)
    chunks = [bytes(out[j:j + 255]) for j in range(0, len(out), 255)] or [b""]
    return b"".join(bytes([len(c)]) + c for c in chunks)


def _u(tok: str, bits: int, what: str) -> int:
    if not tok.isdigit() or int(tok) >= 1 << bits:
        raise RRError(f'dns: bad {what}: "{tok}"')
    return int(tok)


def _rdata(rtype: str, args: list[str]) -> bytes:
    def need(n: int) -> None:
        if len(args) < n:
            raise RRError(f"dns: bad {rtype} rdata")

    if rtype == "A":
        need(1)
        try:
            return ipaddress.IPv4Address(args[0]).packed
        except ValueError:
            raise RRError(f'dns: bad A A: "{args[0]}"') from None
    if rtype == "AAAA":
        need(1)
        try:
            if ":" not in args[0]:
                raise ValueError
            return ipaddress.IPv6Address(args[0]).packed
        except ValueError:
            raise RRError(f'dns: bad AAAA AAAA: "{args[0]}"') from None
    if rtype in ("CNAME", "DNAME", "NS", "PTR"):
        need(1)
        return name_wire(args[0])
    if rtype == "MX":
        need(2)
        return struct.pack(">H", _u(args[0], 16, "MX Pref")) + name_wire(args[1])
    if rtype == "SRV":
        need(4)
        return struct.pack(">HHH", _u(args[0], 16, "SRV Priority"),
                           _u(args[1], 16, "SRV Weight"),
                           _u(args[2], 16, "SRV Port")) + name_wire(args[3])
    if rtype == "SOA":
        need(7)
        nums = []
        for t in args[2:7]:
            v = _ttl(t)
            if v is None:
                raise RRError(f'dns: bad SOA zone parameter: "{t}"')
            nums.append(v)
        return name_wire(args[0]) + name_wire(args[1]) + struct.pack(">5I", *nums)
    need(1)
    return b"".join(_txt(t) for t in args)  # TXT


def parse_rr(text: str) -> bytes:
    """The record's uncompressed wire (owner, type, class, TTL, rdlength, rdata);
    ``RRError`` where ``dns.NewRR`` fails or the type is one fastdns does not encode."""
    if text[:1] in (" ", "\t"):
        raise RRError("dns: record with no owner name")
    toks = _tokens(text)
    if not toks:
        raise RRError("dns: empty record")
    owner = name_wire(toks[0])
    ttl, klass, rtype, i = None, None, None, 1
    while i < len(toks):
        t = toks[i]
        i += 1
        if ttl is None and _ttl(t) is not None:
            ttl = _ttl(t)
            continue
        if klass is None and _class(t) is not None:
            klass = _class(t)
            continue
        if t.upper() in SUPPORTED:
            rtype = t.upper()
            break
        if t.upper() in TYPE_OF or re.fullmatch(r"TYPE[0-9]+", t.upper()):
            raise RRError(f'dns: type {t} is not encoded by fastdns')
        raise RRError(f'dns: not a TTL: "{t}"')
    if rtype is None:
        raise RRError(f'dns: not a TTL: "{toks[-1]}"' if len(toks) == 1 else
                      "dns: missing type")
    rdata = _rdata(rtype, toks[i:])
    return owner + struct.pack(">HHIH", TYPE_OF[rtype], CLASS_OF["IN"] if klass is None
                               else klass, DEFAULT_TTL if ttl is None else ttl,
                               len(rdata)) + rdata


def static_type(text: str) -> str | None:
    """The record type named in template text whose type field is plain text
    (``{{ .Name }} 60 IN A ...``: "A"); None when it cannot be told without
    executing the template."""
    toks = _tokens(re.sub(r"\{\{.*?\}\}", "X", text))
    for t in toks[1:4]:
        if "X" == t:
            return None
        u = t.upper()
        if u in TYPE_OF and u not in CLASS_OF or re.fullmatch(r"TYPE[0-9]+", u):
            return u
    return None


def rr_type(wire: bytes) -> int:
    """The type of an RR made by parse_rr."""
    p = 0
    while wire[p]:
        p += wire[p] + 1
    return int.from_bytes(wire[p + 1:p + 3], "big")
