"""Argument helpers shared by the plugin parsers: Go's integer, duration and
address syntax, zones normalised as CoreDNS does, errors on the offending token."""

from __future__ import annotations

import ipaddress

from fastdns.corefile.dispenser import Dispenser
from fastdns.corefile.durations import parse_duration
from fastdns.corefile.lexer import Token
from fastdns.corefile.zones import ZoneError, go_atoi, normalize_zone


def duration_arg(d: Dispenser, tok: Token, what: str) -> float:
    try:
        return parse_duration(tok.text)
    except ValueError as e:
        raise d.err(f"{what}: {e}", tok) from None


def int_arg(d: Dispenser, tok: Token, what: str) -> int:
    n = go_atoi(tok.text)
    if n is None:
        raise d.err(f"{what}: invalid integer '{tok.text}'", tok)
    return n


def zones_arg(d: Dispenser, toks: list[Token]) -> tuple[str, ...]:
    out: list[str] = []
    for t in toks:
        try:
            out.extend(normalize_zone(t.text))
        except ZoneError as e:
            raise d.err(str(e), t) from None
    return tuple(out)


def fallthrough_arg(d: Dispenser, toks: list[Token]) -> tuple[str, ...]:
    """plugin/pkg/fall SetZonesFromArgs: no zones = every zone (root)."""
    return zones_arg(d, toks) if toks else (".",)


def is_ip(s: str) -> bool:
    try:
        ipaddress.ip_address(s.split("%", 1)[0])
    except ValueError:
        return False
    return True


def go_split_host_port(addr: str) -> tuple[str, str]:
    """Go ``net.SplitHostPort``: "host:port" or "[v6]:port"; ValueError otherwise."""
    i = addr.rfind(":")
    if i < 0:
        raise ValueError(f"address {addr}: missing port in address")
    j = k = 0
    if addr.startswith("["):
        end = addr.find("]")
        if end < 0:
            raise ValueError(f"address {addr}: missing ']' in address")
        if end + 1 == len(addr):
            raise ValueError(f"address {addr}: missing port in address")
        if end + 1 != i:
            if addr[end + 1] == ":":
                raise ValueError(f"address {addr}: too many colons in address")
            raise ValueError(f"address {addr}: missing port in address")
        host = addr[1:end]
        j, k = 1, end + 1
    else:
        host = addr[:i]
        if ":" in host:
            raise ValueError(f"address {addr}: too many colons in address")
    if "[" in addr[j:]:
        raise ValueError(f"address {addr}: unexpected '[' in address")
    if "]" in addr[k:]:
        raise ValueError(f"address {addr}: unexpected ']' in address")
    return host, addr[i + 1:]


def listen_addr_arg(d: Dispenser, tok: Token) -> str:
    try:
        go_split_host_port(tok.text)
    except ValueError as e:
        raise d.err(str(e), tok) from None
    return tok.text
