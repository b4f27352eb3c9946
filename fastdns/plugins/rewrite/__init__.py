"""rewrite (``plugin/rewrite``): the query rewritten before it is answered, the answer reverted.

- ``config``: the Corefile syntax (setup.go, rewrite.go ``newRule``);
- ``rules``: what the rules do to one query, and the response rules left;
- ``reverter``: the answer made the asked question's again, on the wire;
- ``_rewrite.pyx``: the fast path's filter. A UDP query that no rule of its
  block can touch (names that match no exact, prefix, suffix or substring
  pattern, types and classes no rule rewrites) is answered in C; one that a
  rule may touch goes to Python (``before``), which rewrites it, looks the
  new question up in the image or forwards it, and reverts the answer.

``rewrite name exact foo.example.com foo.default.svc.cluster.local`` then
costs Python only for foo.example.com, not for every cluster name.
"""

from __future__ import annotations

import struct
from functools import partial
from typing import Any

from fastdns import errors as wire_errors
from fastdns.codec import wire
from fastdns.constants import Rcode
from fastdns.corefile.model import Config, ServerBlock
from fastdns.names import to_text, to_wire, zone_key
from fastdns.plugins.rewrite import reverter, rules
from fastdns.plugins.rewrite.config import RewriteConfig, merge_rewrite, parse_rewrite
from fastdns.plugins.spec import Plugin, Rewritten

__all__ = ["PLUGIN", "RewriteConfig"]


def before(data: bytes, q: wire.Query, addr: tuple[str, int], tcp: bool,
           block: ServerBlock) -> bytes | Rewritten | None:
    conf = block.plugins.get("rewrite")
    if not isinstance(conf, RewriteConfig):
        return None
    name = to_text(q.key)
    if "\\" in name:
        return None  # a name miekg would escape: not matched (rare, and no rule's)
    out = rules.apply(conf.rules, name, q.qtype, q.qclass)
    if out is None:
        return None
    head = data[:12]
    if out.name != name:
        try:
            head += to_wire(out.name)
        except wire_errors.WireError:  # rewrite.go: "invalid name after rewrite"
            return wire.error_response(data, q, Rcode.SERVFAIL)
    else:
        head += data[12:q.question_end - 4]
    new = head + struct.pack(">HH", out.qtype, out.qclass) + data[q.question_end:]
    if not out.restore:
        return Rewritten(new)
    return Rewritten(new, partial(_after, responses=out.responses, tcp=tcp))


def _after(original: bytes, resp: bytes, responses: tuple[rules.Response, ...],
           tcp: bool) -> bytes:
    try:
        oq = wire.parse_query(original)
    except wire_errors.WireError:
        return resp
    return reverter.revert(original, oq, resp, responses, True, tcp)


#: the C filter's condition codes (_rewrite.pyx)
EXACT, PREFIX, SUFFIX, SUBSTRING, ALWAYS, QTYPE, QCLASS = 1, 2, 3, 4, 5, 6, 7


def conditions(conf: RewriteConfig) -> list[tuple[int, bytes, int, bytes]]:
    """(code, pattern, number, new name) per rule: when the rule may touch a
    query, and for ``name exact`` with ``stop`` and no answer rules the name
    the C hook renames to itself (lowercase wire; empty: Python does it)."""
    out: list[tuple[int, bytes, int, bytes]] = []
    for r in conf.rules:
        if r.field == "type":
            out.append((QTYPE, b"", r.old, b""))
        elif r.field == "class":
            out.append((QCLASS, b"", r.old, b""))
        elif r.match is None or r.match.kind == "regex":
            out.append((ALWAYS, b"", 0, b""))
        else:
            code = {"exact": EXACT, "prefix": PREFIX, "suffix": SUFFIX,
                    "substring": SUBSTRING}[r.match.kind]
            to = b""
            if (r.field == "name" and code == EXACT and r.mode == "stop" and not r.answers
                    and "\\" not in r.to):
                try:
                    to = to_wire(r.to)
                except wire_errors.WireError:
                    to = b""
            out.append((code, r.match.pattern.encode("ascii", "replace"), 0, to))
    return out


def flat(config: Config) -> tuple[list[tuple[int, bytes, int]], list[Any]]:
    blocks: list[tuple[int, bytes, int]] = []
    sets: list[Any] = []
    for b in config.servers:
        conf = b.plugins.get("rewrite")
        idx = -1
        if isinstance(conf, RewriteConfig):
            idx = len(sets)
            sets.append(conditions(conf))
        for z in b.zones:
            blocks.append((b.port, zone_key(z), idx))
    return blocks, sets


def prelookup(config: Config) -> Any:
    """The C filter for ``config``; None (each UDP query to Python) without the
    build or past the filter's tables."""
    try:
        from fastdns.plugins.rewrite import _rewrite
    except ImportError:
        return None
    blocks, sets = flat(config)
    try:
        return _rewrite.hook(blocks, sets)
    except ValueError:
        return None


PLUGIN = Plugin("rewrite", "full", config=RewriteConfig, parse=parse_rewrite,
                merge=merge_rewrite, stages=("fast_path", "slow_path"), before=before,
                prelookup=prelookup)
