"""header (``plugin/header``): the AA, RA and RD flags of queries and answers set or cleared.

As plugin/header/setup.go and header.go: ``header { query|response set|clear FLAGS... }``
with FLAGS ``aa``, ``ra``, ``rd``; the rules of each selector apply in order,
so the last one touching a flag wins (here folded into a set mask and a
clear mask per selector). Query rules change the query the rest of the
block sees (the forwarded query's RD, the RD the answer copies); response
rules the answer the client gets.

The UDP fast path's C hook (fastdns/plugins/_shape.pyx) changes the query
before the lookup and the image's answer after it; a query the image hands
on goes to Python, where ``before`` does both, the answer's through the
forwarder's reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

from fastdns.codec import wire
from fastdns.corefile.dispenser import Dispenser
from fastdns.corefile.model import PluginConfig, ServerBlock
from fastdns.plugins import shapewire, shaping
from fastdns.plugins.spec import Plugin, Rewritten

BITS = {"aa": 0x0400, "ra": 0x0080, "rd": 0x0100}


@dataclass(frozen=True)
class HeaderConfig(PluginConfig):
    name: ClassVar[str] = "header"
    query_set: int = 0
    query_clear: int = 0
    response_set: int = 0
    response_clear: int = 0


def parse_header(d: Dispenser, zones: tuple[str, ...]) -> HeaderConfig:
    masks = {"query": [0, 0], "response": [0, 0]}
    rules = 0
    if d.remaining_args():
        raise d.arg_err()
    while d.next_block():
        selector = d.val().lower()
        if selector not in masks:
            raise d.err(f"setting up rule: invalid selector={selector} should be query or "
                        "response")
        action = d.tok.text if d.next_arg() else ""
        flags = [t.text for t in d.remaining_args()]
        if not action:
            raise d.err("setting up rule: no flag action provided")
        if not flags:
            raise d.err("setting up rule: invalid length for flags, at least one should be "
                        "provided")
        if action.lower() not in ("set", "clear"):
            raise d.err(f"setting up rule: unknown flag action={action.lower()}, should be set "
                        "or clear")
        for f in flags:
            bit = BITS.get(f.lower())
            if bit is None:
                raise d.err(f"setting up rule: unknown/unsupported flag={f.lower()}")
            m = masks[selector]
            if action.lower() == "set":
                m[0], m[1] = m[0] | bit, m[1] & ~bit
            else:
                m[0], m[1] = m[0] & ~bit, m[1] | bit
            rules += 1
    if not rules:
        raise d.arg_err()
    return HeaderConfig(*masks["query"], *masks["response"])


def _after(original: bytes, resp: bytes, conf: HeaderConfig) -> bytes:
    return shapewire.flags(resp, conf.response_set, conf.response_clear)


def before(data: bytes, q: wire.Query, addr: tuple[str, int], tcp: bool,
           block: ServerBlock) -> Rewritten | None:
    conf = block.plugins.get("header")
    if not isinstance(conf, HeaderConfig):
        return None
    new = shapewire.flags(data, conf.query_set, conf.query_clear)
    after = (partial(_after, conf=conf) if conf.response_set or conf.response_clear else None)
    if new == data and after is None:
        return None
    return Rewritten(new, after)


def _row(conf: PluginConfig) -> shaping.Row:
    assert isinstance(conf, HeaderConfig)
    return conf.query_set, conf.query_clear, conf.response_set, conf.response_clear, b""


PLUGIN = Plugin("header", "full", config=HeaderConfig, parse=parse_header,
                stages=("fast_path", "slow_path"), before=before,
                prelookup=shaping.prelookup(shaping.HEADER, "header", _row))
