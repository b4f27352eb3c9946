"""any (``plugin/any``): ANY queries answered with RFC 8482's HINFO, never with every record.

As plugin/any/any.go: in a block with the plugin, a query of type ANY gets
``SetReply`` (ID, opcode, RD and CD of the query, its question) with one
record, the asked name, class IN, TTL 8482, HINFO "ANY obsoleted" "See
RFC 8482"; any other type goes on down the chain. The UDP fast path's C
pre-lookup hook (fastdns/plugins/_anyq.pyx) writes the same octets; the
Python ``before`` below answers TCP and the pure-Python path. (The module
is ``anyq``: ``any`` is a Python builtin.)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, ClassVar

from fastdns.codec import wire
from fastdns.corefile.dispenser import Dispenser
from fastdns.corefile.model import Config, PluginConfig, ServerBlock
from fastdns.names import zone_key
from fastdns.plugins.spec import Plugin

ANY, HINFO = 255, 13
CPU, OS = b"ANY obsoleted", b"See RFC 8482"
#: the answer record after the question: a pointer to it, HINFO IN 8482, the rdata
RECORD = (b"\xc0\x0c" + struct.pack(">HHIH", HINFO, 1, 8482, 2 + len(CPU) + len(OS))
          + bytes([len(CPU)]) + CPU + bytes([len(OS)]) + OS)


@dataclass(frozen=True)
class AnyConfig(PluginConfig):
    name: ClassVar[str] = "any"


def parse_any(d: Dispenser, zones: tuple[str, ...]) -> AnyConfig:
    """any (setup.go: no arguments, no block)."""
    if d.next_arg():
        raise d.arg_err()
    if d.next_block():
        raise d.unknown_property()
    return AnyConfig()


def hinfo(data: bytes, q: wire.Query) -> bytes:
    """any.go's answer to ``data``."""
    flags = 0x8000 | (q.flags & 0x7800)
    if q.opcode == 0:
        flags |= q.flags & 0x0110  # RD, CD (SetReply)
    return (struct.pack(">HHHHHH", q.id, flags, 1, 1, 0, 0) + bytes(data[12:q.question_end])
            + RECORD)


def before(data: bytes, q: wire.Query, addr: tuple[str, int], tcp: bool,
           block: ServerBlock) -> bytes | None:
    return hinfo(data, q) if q.qtype == ANY else None


def zone_rows(config: Config) -> list[tuple[int, bytes, int]]:
    """(port, wire zone, 1 if the block has any else 0) per zone of every block."""
    return [(b.port, zone_key(z), 1 if "any" in b.plugins else 0)
            for b in config.servers for z in b.zones]


def prelookup(config: Config) -> Any:
    try:
        from fastdns.plugins import _anyq
    except ImportError:
        return None
    try:
        return _anyq.hook(zone_rows(config), RECORD)
    except ValueError:
        return None


PLUGIN = Plugin("any", "full", config=AnyConfig, parse=parse_any, stages=("fast_path",),
                answers=False, before=before, prelookup=prelookup)
