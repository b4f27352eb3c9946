"""template's answer in Python: which template handles a query, and the message it writes.

``plugin/template/template.go`` ``ServeDNS``: a name outside every
template's zones goes to the next plugin. Otherwise the templates are tried
in order; one whose zone, class or type does not fit is skipped; one whose
regexes all miss is skipped when its ``fallthrough`` covers the name and
answers SERVFAIL when not. The first match answers: SERVFAIL (the server's
error reply) for ``rcode SERVFAIL``, otherwise an authoritative reply with
the template's rcode and its executed records (an execution or record
failure is SERVFAIL), plus the extended error when ``ederror`` is set.
When every template fell through, the query goes on.

This is the ``before`` hook's work for the queries the C hook hands on
(fastdns/plugins/template/_template.pyx answers the common shapes itself)
and for TCP and the pure-Python UDP path.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastdns.codec import wire
from fastdns.mnemonics import CLASSES, TYPES
from fastdns.names import to_text
from fastdns.plugins.template import gotmpl, rrtext
from fastdns.plugins.template.config import ANY, Template, TemplateConfig

SERVFAIL, QR, AA = 2, 0x8000, 0x0400
_HEAD = struct.Struct(">HHHHH")  # the wire.respond template head: flags an ns ar nreloc
OPT, EDE = 41, 15


def zone_match(zones: tuple[str, ...], name: str) -> str:
    """``plugin.Zones.Matches``: the longest zone ``name`` is in; "" for none."""
    best = ""
    for z in zones:
        if (z == "." or name == z or name.endswith("." + z)) and len(z) > len(best):
            best = z
    return best


def falls_through(t: Template, name: str) -> bool:
    """``fall.F.Through``: no ``fallthrough`` never does."""
    return bool(t.fallthrough) and zone_match(t.fallthrough, name) != ""


@dataclass
class Outcome:
    """What the template plugin does with a query: ``answer`` (wire) or go on (None)."""
    answer: bytes | None
    template: Template | None = None
    #: the zone of the template whose regex matched (coredns_template_matches_total's)
    matched: str | None = None


class _Fail(Exception):
    pass


def _fields(t: Template, zone: str, name: str, pattern: str, groups: Any, q: Any,
            remote: str) -> dict[str, Any]:
    match = [g if g is not None else "" for g in (groups.group(0), *groups.groups())]
    group = {str(i): m for i, m in enumerate(match)}
    for gname, idx in groups.re.groupindex.items():
        group[gname] = match[idx]
    cls = q.qclass if q.qclass != ANY else t.qclass
    typ = q.qtype if q.qtype != ANY else t.qtype
    return {
        "Zone": zone, "Name": name, "Regex": pattern, "Match": match, "Group": group,
        "Class": CLASSES.get(cls, ""), "Type": TYPES.get(typ, ""),
        "Message": {"Id": q.id}, "Question": {"Name": to_text(q.qname), "Qtype": q.qtype,
                                               "Qclass": q.qclass},
        "Remote": remote, "Var": {},
    }


def _records(t: Template, data: gotmpl.Data) -> Iterator[bytes]:
    for section in (t.answer, t.authority, t.additional):
        for rr in section:
            try:
                text = gotmpl.execute(rr.nodes, data)
            except gotmpl.ExecError:
                raise _Fail("template") from None
            try:
                yield rrtext.parse_rr(text)
            except rrtext.RRError:
                raise _Fail("rr") from None


def _ede_opt(data: bytes, q: Any, resp: bytes, code: int, reason: str) -> bytes:
    """The reply with CoreDNS's EDE option (``msg.SetEdns0(4096, true)``, then the
    server's SizeAndDo: the client's OPT flags when it sent one)."""
    text = reason.encode("utf-8")
    option = struct.pack(">HHH", EDE, 2 + len(text), code) + text
    if q.edns:  # wire.respond put its 11-octet OPT last
        head = resp[-11:-2]
        return resp[:-11] + head + struct.pack(">H", len(option)) + option
    arcount = struct.unpack_from(">H", resp, 10)[0] + 1
    opt = struct.pack(">BHHBBHH", 0, OPT, 4096, 0, 0, 0x8000, len(option)) + option
    return resp[:10] + struct.pack(">H", arcount) + resp[12:] + opt


def serve(conf: TemplateConfig, data: bytes, q: Any, remote: str) -> Outcome:
    """ServeDNS for the parsed query ``q`` (``data`` its bytes) from ``remote``."""
    name = to_text(q.key)
    if not zone_match(conf.zones, name):
        return Outcome(None)
    for t in conf.templates:
        zone = zone_match(t.zones, name)
        if not zone:
            continue
        if t.qclass != ANY and q.qclass != ANY and q.qclass != t.qclass:
            continue
        if t.qtype != ANY and q.qtype != ANY and q.qtype != t.qtype:
            continue
        hit = None
        for pattern, rx in zip(t.regex, t.compiled, strict=True):  # noqa: B007 - used below
            hit = rx.search(name)
            if hit is not None:
                break
        if hit is None:
            if falls_through(t, name):
                continue
            return Outcome(wire.error_response(data, q, SERVFAIL), t)
        if t.rcode == SERVFAIL:
            return Outcome(wire.error_response(data, q, SERVFAIL), t, zone)
        fields = _fields(t, zone, name, pattern, hit, q, remote)
        try:
            rrs = list(_records(t, gotmpl.Data(fields)))
        except _Fail:
            return Outcome(wire.error_response(data, q, SERVFAIL), t, zone)
        head = _HEAD.pack(QR | AA | t.rcode, len(t.answer), len(t.authority),
                          len(t.additional), 0)
        resp = wire.respond(data, q, head + b"".join(rrs))
        if t.ederror is not None:
            resp = _ede_opt(data, q, resp, *t.ederror)
        return Outcome(resp, t, zone)
    return Outcome(None)
