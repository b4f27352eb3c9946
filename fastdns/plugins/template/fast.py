"""The Corefile's templates flattened for the C pre-lookup hook (_template.pyx).

What C can decide alone is chosen here, once per Corefile: each template's
zones, class and type; its regexes of a shape C matches (goregex.shape;
any other one marks the template ``python_rules``, and a query none of the
C shapes matched goes to Python); its fallthrough zones; and, when every
record is static text, the records already on the wire. A template with
executed records, ``ederror``, ``rcode SERVFAIL`` or a record that does not
parse is ``slow``: a query it matches goes to Python. The blocks of every
port come with their zones, so C picks the block serving a name as
``Config.select`` does.
"""

from __future__ import annotations

import struct
from typing import Any

from fastdns.corefile.model import Config
from fastdns.names import zone_key
from fastdns.plugins.template import gotmpl, rrtext
from fastdns.plugins.template.config import Template, TemplateConfig
from fastdns.plugins.template.goregex import shape

SERVFAIL = 2


def _ints(values: list[tuple[int, ...]]) -> bytes:
    return b"".join(struct.pack(f"={len(v)}i", *v) for v in values)


class _Tables:
    def __init__(self) -> None:
        self.pool = bytearray()
        self.names: list[tuple[int, ...]] = []
        self.rules: list[tuple[int, ...]] = []
        self.tmpls: list[tuple[int, ...]] = []
        self.blocks: list[tuple[int, ...]] = []
        self.portzones: list[tuple[int, ...]] = []

    def put(self, raw: bytes) -> int:
        off = len(self.pool)
        self.pool += raw
        return off

    def zones(self, zones: tuple[str, ...]) -> tuple[int, int]:
        first = len(self.names)
        for z in zones:
            key = zone_key(z)
            self.names.append((self.put(key), len(key)))
        return first, len(zones)

    def template(self, t: Template) -> None:
        zone0, nzone = self.zones(t.zones)
        rule0, python_rules = len(self.rules), 0
        for p in t.regex:
            s = shape(p)
            if s is None:
                python_rules = 1
                continue
            text = s.text.encode("ascii")
            self.rules.append((s.kind, s.lo, s.hi, self.put(text), len(text)))
        fall0, nfall = self.zones(t.fallthrough)
        slow = int(t.rcode == SERVFAIL or t.ederror is not None)
        body = b""
        for rr in (*t.answer, *t.authority, *t.additional):
            if not gotmpl.is_static(rr.nodes):
                slow = 1
                break
            try:
                body += rrtext.parse_rr(gotmpl.execute(rr.nodes, gotmpl.Data({})))
            except (rrtext.RRError, gotmpl.ExecError):
                slow = 1
                break
        off = self.put(body) if not slow else 0
        self.tmpls.append((t.qclass, t.qtype, zone0, nzone, rule0, len(self.rules) - rule0,
                           python_rules, fall0, nfall, slow, t.rcode, len(t.answer),
                           len(t.authority), len(t.additional), off,
                           len(body) if not slow else 0))


def tables(config: Config) -> dict[str, Any] | None:
    """The hook's tables for ``config``; None when no block has a template."""
    tb = _Tables()
    index: dict[int, int] = {}
    for b in config.servers:
        conf = b.plugins.get("template")
        if isinstance(conf, TemplateConfig) and id(b.plugins) not in index:
            index[id(b.plugins)] = len(tb.blocks)
            tmpl0 = len(tb.tmpls)
            for t in conf.templates:
                tb.template(t)
            hz0, nhz = tb.zones(conf.zones)
            tb.blocks.append((tmpl0, len(conf.templates), hz0, nhz))
    if not tb.blocks:
        return None
    for b in config.servers:
        block = index.get(id(b.plugins), -1)
        for z in b.zones:
            first, _ = tb.zones((z,))
            tb.portzones.append((b.port, first, block))
    return {
        "pool": bytes(tb.pool), "names": _ints(tb.names), "rules": _ints(tb.rules),
        "tmpls": _ints(tb.tmpls), "blocks": _ints(tb.blocks),
        "portzones": _ints(tb.portzones), "npz": len(tb.portzones),
        "fallback_port": next(iter({b.port for b in config.servers})),
    }


def prelookup(config: Config) -> object | None:
    """The ``fastdns.prelookup`` capsule for ``config``; None without the
    extension (the pure-Python build has no C fast path) or a template."""
    try:
        from fastdns.plugins.template import _template  # type: ignore[attr-defined]
    except ImportError:
        return None
    t = tables(config)
    if t is None:
        return None
    return _template.Hook(**t).capsule()
