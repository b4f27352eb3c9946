"""Zone names and server-block keys, normalised the way CoreDNS does it.

Sources: ``plugin/normalize.go`` (``SplitHostPort``, ``Host.NormalizeExact``),
``plugin/pkg/cidr`` (a CIDR becomes the reverse zones on octet/nibble
boundaries), ``plugin/pkg/parse/transport.go`` and ``core/dnsserver/register.go``.
Every zone comes out lowercased and fully qualified (trailing dot).
"""

from __future__ import annotations

import ipaddress
import os
import re

TRANSPORTS = ("dns", "tls", "grpc", "https", "https3", "quic")
DEFAULT_PORTS = {"dns": 53, "tls": 853, "grpc": 443, "https": 443, "https3": 443, "quic": 853}
# CoreDNS's `-dns.port` (core/dnsserver/register.go: the default port of a
# dns:// key that names none). `fastdns serve -dns.port N` sets this variable
# in the supervisor, so the control process and the workers, which parse the
# Corefile again, inherit the same default.
DNS_PORT_ENV = "FASTDNS_DNS_PORT"


def default_port(transport: str) -> int:
    if transport == "dns":
        value = os.environ.get(DNS_PORT_ENV, "")
        if value.isdigit() and 0 < int(value) < 65536:
            return int(value)
    return DEFAULT_PORTS[transport]

_INT = re.compile(r"[+-]?[0-9]+\Z")


class ZoneError(ValueError):
    """A zone or key that CoreDNS would refuse; str is the reason."""


def go_atoi(s: str) -> int | None:
    """``strconv.Atoi``: optional sign, ASCII digits only; None when it fails."""
    if not _INT.match(s):
        return None
    return int(s)


def split_transport(s: str) -> tuple[str, str]:
    """``dns://.:53`` -> ("dns", ".:53"); no scheme means plain DNS."""
    for t in TRANSPORTS:
        prefix = t + "://"
        if s.startswith(prefix):
            return t, s[len(prefix):]
    return "dns", s


def fqdn(name: str) -> str:
    return name if name.endswith(".") else name + "."


def normalize_name(name: str) -> str:
    """``plugin.Name.Normalize``: lowercase, fully qualified."""
    return fqdn(name).lower()


def is_domain_name(s: str) -> bool:
    """miekg/dns ``IsDomainName``: labels 1..63 octets, name <= 255 on the wire."""
    if not s:
        return False
    if s == ".":
        return True
    body = s[:-1] if s.endswith(".") and not s.endswith("\\.") else s
    labels = re.split(r"(?<!\\)\.", body)
    wire = 1
    for label in labels:
        raw = re.sub(r"\\([0-9]{3}|.)", "x", label)
        if not raw or len(raw.encode()) > 63:
            return False
        wire += len(raw.encode()) + 1
    return wire <= 255


def cidr_zones(host: str) -> list[str] | None:
    """Reverse zones for a CIDR ``host`` (``10.0.0.0/24`` -> ``0.0.10.in-addr.arpa.``).

    None when ``host`` is not a CIDR. A prefix that is not on an octet (IPv4)
    or nibble (IPv6) boundary is split into the covering subnets on the next
    boundary (``plugin/pkg/cidr`` Split + Reverse), e.g. ``10.0.0.0/15`` gives
    ``0.10.in-addr.arpa.`` and ``1.10.in-addr.arpa.``.
    """
    if "/" not in host:
        return None
    addr, _, plen = host.partition("/")
    if not plen.isdigit() or not plen.isascii():
        return None
    try:
        net = ipaddress.ip_network(f"{addr}/{int(plen)}", strict=False)
    except ValueError:
        return None
    step = 8 if net.version == 4 else 4
    ones = net.prefixlen
    if ones % step:
        new = -(-ones // step) * step
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = list(
            net.subnets(new_prefix=new))
    else:
        nets = [net]
    out = []
    for n in nets:
        labels = n.network_address.reverse_pointer.split(".")
        skip = (n.max_prefixlen - n.prefixlen) // step
        out.append(".".join(labels[skip:]).lower() + ".")
    return out


def split_host_port(s: str) -> tuple[list[str], int | None]:
    """``plugin.SplitHostPort`` for a key without its scheme: (zones, port or None)."""
    host = s
    port: int | None = None
    colon = s.rfind(":")
    if colon != -1 and colon == len(s) - 1:
        raise ZoneError(f"expecting data after last colon: {s!r}")
    if colon != -1:
        p = go_atoi(s[colon + 1:])
        if p is not None:
            if not 0 < p < 65536:
                raise ZoneError(f"invalid port {s[colon + 1:]!r} in {s!r}")
            port = p
            host = s[:colon]
    if host == "":
        # ":1053" - no zone written: the root zone (what an operator means).
        host = "."
    if len(host) > 255:
        raise ZoneError(f"specified zone is too long: {len(host)} > 255")
    if not is_domain_name(host):
        raise ZoneError(f"zone is not a valid domain name: {host}")
    rev = cidr_zones(host)
    if rev is not None:
        return rev, port
    return [normalize_name(host)], port


def normalize_zone(s: str) -> list[str]:
    """``plugin.Host(s).NormalizeExact()``: scheme and port dropped, CIDRs expanded."""
    _, rest = split_transport(s)
    zones, _ = split_host_port(rest)
    return zones


def parse_key(key: str) -> tuple[str, list[str], int]:
    """A server block key -> (transport, zones, port); default port per transport."""
    transport, rest = split_transport(key)
    zones, port = split_host_port(rest)
    if port is None:
        port = default_port(transport)
    return transport, zones, port


def is_subdomain(parent: str, child: str) -> bool:
    """``dns.IsSubDomain`` on normalised names (child equal to parent counts)."""
    parent, child = parent.lower(), child.lower()
    return parent == "." or child == parent or child.endswith("." + parent)
