"""Names and addresses as the kubernetes records spell them, in wire form.

Presentation names to uncompressed wire (case kept, on fastdns.names),
reverse names of addresses (in-addr.arpa, ip6.arpa), and dashed endpoint
hostnames. Pure functions of their arguments; pod-name labels
(``10-244-1-5``) are read at answer time too, so they live in fastdns.names.
"""

from __future__ import annotations

import socket

from fastdns import errors
from fastdns.names import is_subdomain, to_wire

IN_ADDR = b"\x07in-addr\x04arpa\x00"
IP6_ARPA = b"\x03ip6\x04arpa\x00"


def name_wire(name: str) -> bytes:
    """Presentation -> wire, case kept ("." and "" are the root); ValueError if malformed.

    fastdns.names.to_wire with the compiler's contract: the zone code reports
    a bad name as ValueError (a bad Corefile or object, not a bad packet).
    """
    if name in (".", ""):
        return b"\x00"
    try:
        return to_wire(name)
    except errors.NameTooLong:
        raise ValueError(f"name too long: {name!r}") from None
    except errors.WireError:
        raise ValueError(f"malformed name {name!r}") from None


def label(s: str) -> bytes:
    b = s.encode("ascii", "replace")
    return bytes((len(b),)) + b


def split_zones(zones: tuple[str, ...]) -> tuple[list[bytes], list[bytes]]:
    """(forward zones, reverse zones) as lowercased wire, deduplicated, in order."""
    fwd: list[bytes] = []
    rev: list[bytes] = []
    seen: set[bytes] = set()
    for z in zones:
        w = name_wire(z).lower()
        if w in seen:
            continue
        seen.add(w)
        reverse = is_subdomain(w, IN_ADDR) or is_subdomain(w, IP6_ARPA)
        (rev if reverse else fwd).append(w)
    return fwd, rev


def ip_text(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def reverse_wire(packed: bytes) -> bytes:
    """The in-addr.arpa / ip6.arpa name of an address, lowercased wire (RFC 1035 §3.5, RFC 3596)."""
    if len(packed) == 4:
        d = _OCTET_LABELS
        return d[packed[3]] + d[packed[2]] + d[packed[1]] + d[packed[0]] + IN_ADDR
    return b"".join(_NIBBLE_LABELS[c] for c in packed.hex()[::-1]) + IP6_ARPA


_OCTET_LABELS = [bytes((len(str(o)),)) + str(o).encode() for o in range(256)]
_NIBBLE_LABELS = {c: b"\x01" + c.encode() for c in "0123456789abcdef"}


def dashed(ip: str) -> str:
    """CoreDNS endpointHostname's last resort: `.` or `:` -> `-` (`5678:abcd::1` -> `5678-abcd--1`).

    A name ending in `-` is not a valid label, so the spec's rule applies:
    a trailing `-` becomes `-0` (`fd00::` -> `fd00--0`).
    """
    if "." in ip:
        out = ip.replace(".", "-")
    elif ":" in ip:
        out = ip.replace(":", "-")
    else:
        return ""
    if out.endswith("-"):
        out += "0"
    return out
