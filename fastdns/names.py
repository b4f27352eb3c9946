"""DNS names outside packet parsing: one owner for every name conversion.

Presentation text to uncompressed wire (``to_wire``, ``zone_key``), wire back
to text as miekg/dns prints it (``to_text``), the label-boundary "equal to or
below this zone" test (``is_subdomain``), the labels of a wire name, the
address a pod-name label spells (``10-244-1-5``), the text of an rcode
(``rcode_text``, ``forward_rcode_text``) and an address with its port as Go's
``net.JoinHostPort`` writes it (``host_port``: IPv6 in brackets), the form of
CoreDNS's ``server`` and ``to`` labels and of its log lines. The zone compiler, the forwarder,
the query log and the wire twin's ``encode_name`` all call these, so a name
is spelled, compared and printed one way everywhere. The Cython core keeps
its own C loops over packet bytes (that is parsing, not conversion), and
tests/test_wire_hypothesis.py holds the two ``encode_name`` twins equal.

Rcode 16 has two names (RFC 6891 BADVERS, RFC 8945 BADSIG) and each caller
keeps the one it has always printed:

- ``rcode_text`` is miekg/dns ``RcodeToString`` (``msg.go``, v1.1.72), which
  keeps the TSIG name, so 16 is ``BADSIG``; CoreDNS's ``log``/``errors``
  lines and metrics use it, and so do ours (tests/test_runtime_deps.py);
- ``forward_rcode_text`` is the forwarder's short table (the rcodes an
  upstream answer is counted under), where 16 has always been ``BADVERS``,
  the code fastdns itself sends (fastdns.constants.Rcode.BADVERS).

Standard library and fastdns.errors only, so the wire core may import it.
"""

from __future__ import annotations

import socket

from fastdns import errors

RCODES: dict[int, str] = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 11: "DSOTYPENI",
    16: "BADSIG", 17: "BADKEY", 18: "BADTIME", 19: "BADMODE", 20: "BADNAME", 21: "BADALG",
    22: "BADTRUNC", 23: "BADCOOKIE",
}

# The forwarder's table: rcodes 0..10 and 23 as miekg spells them, 16 as BADVERS.
FORWARD_RCODES: dict[int, str] = {
    **{c: RCODES[c] for c in (*range(11), 23)}, 16: "BADVERS",
}

_PLAIN = bytes(range(0x30, 0x3A)) + bytes(range(0x41, 0x5B)) + bytes(range(0x61, 0x7B)) + b"-_*"


def bracket_host(host: str) -> str:
    """``host`` as it stands before ``:port`` in a URL or label: an IPv6
    address (anything with a colon) in brackets (RFC 3986), else as is."""
    return f"[{host}]" if ":" in host else host


def host_port(host: str, port: int | str) -> str:
    """``host:port`` as Go's ``net.JoinHostPort`` (``[::1]:53``)."""
    return f"{bracket_host(host)}:{port}"


def rcode_text(rcode: int) -> str:
    """CoreDNS's ``{rcode}``: ``RcodeToString[rcode]``, else the number."""
    return RCODES.get(rcode) or str(rcode)


def forward_rcode_text(rcode: int) -> str:
    """The forwarder's rcode label (16 is ``BADVERS``), else the number."""
    return FORWARD_RCODES.get(rcode, str(rcode))


def to_wire(name: str | bytes) -> bytes:
    """Presentation name ("a.B.c" or "a.B.c.") -> uncompressed wire, case kept.

    ``BadEncoding`` (``LabelTooLong`` / ``NameTooLong``) on a name that is not
    one; "." is the root.
    """
    if isinstance(name, str):
        try:
            raw = name.encode("ascii")
        except UnicodeEncodeError:
            raise errors.BadEncoding("names must be ASCII (IDNA is the caller's job)") from None
    elif isinstance(name, (bytes, bytearray)):
        raw = bytes(name)
    else:
        raise errors.BadEncoding(f"cannot encode a {type(name).__name__} as a name")
    if raw == b".":
        return b"\x00"
    if raw.endswith(b"."):
        raw = raw[:-1]
    out = bytearray()
    for label in raw.split(b"."):
        if not label:
            raise errors.BadEncoding("empty label")
        if len(label) > 63:
            raise errors.LabelTooLong
        out.append(len(label))
        out += label
    out.append(0)
    if len(out) > 255:
        raise errors.NameTooLong
    return bytes(out)


def zone_key(zone: str) -> bytes:
    """A Corefile zone ("example.org." / ".") as lowercased wire, the form names are matched in."""
    return to_wire(zone.lower())


def is_subdomain(name: bytes, zone: bytes) -> bool:
    """`name` (lowercased wire) equals `zone` or ends with it on a label boundary."""
    if zone == b"\x00":
        return True
    if not name.endswith(zone):
        return False
    start = len(name) - len(zone)
    p = 0
    while p < start:
        p += name[p] + 1
    return p == start


def to_text(wire_name: bytes) -> str:
    """Presentation form with the trailing dot, escaped as miekg/dns prints it."""
    labels, p = [], 0
    end = len(wire_name)
    while p < end and wire_name[p]:
        n = wire_name[p]
        labels.append(wire_name[p + 1:p + 1 + n])
        p += n + 1
    if not labels:
        return "."
    if not b"".join(labels).translate(None, _PLAIN):  # the usual case: nothing to escape
        return b".".join(labels).decode("ascii") + "."
    return _to_text_escaped(wire_name)


def _to_text_escaped(wire_name: bytes) -> str:
    """miekg/dns escaping: special characters backslashed, others as \\DDD."""
    labels, p = [], 0
    while p < len(wire_name) and wire_name[p]:
        n = wire_name[p]
        raw = wire_name[p + 1:p + 1 + n]
        labels.append("".join(chr(c) if 0x21 <= c <= 0x7E and c not in b'.\\"()' else
                              (f"\\{chr(c)}" if 0x21 <= c <= 0x7E else f"\\{c:03d}")
                              for c in raw))
        p += n + 1
    return ".".join(labels) + "." if labels else "."


def key_text(key: bytes) -> str:
    """Presentation form of a lowercased wire name, unescaped, for matching Corefile zones
    (forward Config.select); "." for the root. Not for logs: ``to_text`` escapes."""
    labels, p = [], 0
    while p < len(key) and key[p]:
        n = key[p]
        labels.append(key[p + 1 : p + 1 + n].decode("ascii", "replace"))
        p += n + 1
    return ".".join(labels) + "." if labels else "."


def wire_labels(wire: bytes) -> list[bytes]:
    """The labels of an uncompressed wire name, root excluded."""
    out, p = [], 0
    while p < len(wire) and wire[p]:
        out.append(wire[p + 1 : p + 1 + wire[p]])
        p += wire[p] + 1
    return out


def ip_packed(ip: str) -> bytes | None:
    """4 or 16 octets of an address, None if it is not one."""
    try:
        return socket.inet_pton(socket.AF_INET, ip)
    except OSError:
        try:
            return socket.inet_pton(socket.AF_INET6, ip)
        except OSError:
            return None


def ip_from_podname(podname: str) -> str:
    """findPods: three dashes and no `--` is IPv4 (dashes -> dots), else IPv6 (dashes -> colons)."""
    if podname.count("-") == 3 and "--" not in podname:
        return podname.replace("-", ".")
    return podname.replace("-", ":")


def pod_name_address(podname: str) -> bytes | None:
    """Address of a pod name label (`10-244-1-5`, `fd00--5`), None if it is not one."""
    return ip_packed(ip_from_podname(podname))
