"""whoami (``plugin/whoami``): the client's address and port, as CoreDNS answers them.

The whole plugin is this module: its config, its parser, its answer and its
registry entry (``PLUGIN``, listed in fastdns/plugins/registry.py). The
answer carries the client's address in the additional section (A or AAAA,
owner the question) and an SRV ``_udp.NAME`` / ``_tcp.NAME`` with its
source port, TTL 0, AA (``plugin/whoami/whoami.go``). It needs the client
address, which the image cannot know, so it is a slow-path answer: the
worker calls ``answer`` for queries the image passed on
(fastdns/server/worker_plugins.py).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import ClassVar

from fastdns.codec import wire
from fastdns.corefile.dispenser import Dispenser
from fastdns.corefile.model import PluginConfig, ServerBlock
from fastdns.plugins.spec import Plugin

_HEAD = struct.Struct(">HHHHH")  # template head: flags, an, ns, ar, nreloc
_RR = struct.Struct(">HHIH")
QR, AA = 0x8000, 0x0400


@dataclass(frozen=True)
class WhoamiConfig(PluginConfig):
    name: ClassVar[str] = "whoami"


def parse_whoami(d: Dispenser, zones: tuple[str, ...]) -> WhoamiConfig:
    """whoami (no arguments, no block)."""
    d.no_args()
    return WhoamiConfig()


def whoami_template(addr: tuple[str, int], proto: str, root: bool) -> bytes:
    """The wire template (docs/internals.md §1 ``respond``) of CoreDNS's whoami answer."""
    host, port = str(addr[0]), int(addr[1])
    ip = ipaddress.ip_address(host.split("%")[0])
    owner = b"\xc0\x0c"  # the question's name, compressed against offset 12
    if ip.version == 4:
        rr = owner + _RR.pack(1, 1, 0, 4) + ip.packed
    else:
        rr = owner + _RR.pack(28, 1, 0, 16) + ip.packed
    label = b"\x04_" + proto.encode()
    # whoami.go: "_" + proto + "." + qname, or "_udp." for the root
    srv_owner = label + (b"\x00" if root else owner)
    srv = srv_owner + _RR.pack(33, 1, 0, 7) + struct.pack(">HHH", 0, 0, port) + b"\x00"
    return _HEAD.pack(QR | AA, 0, 0, 2, 0) + rr + srv


def answer(data: bytes, q: wire.Query, addr: tuple[str, int], tcp: bool,
           block: ServerBlock) -> bytes | None:
    """CoreDNS's whoami answer; None in a block with ``forward``, which comes
    first in plugin.cfg and so answers every query the block gets."""
    if "forward" in block.plugins:
        return None
    return wire.respond(data, q, whoami_template(addr, "tcp" if tcp else "udp",
                                                 q.key == b"\x00"))


PLUGIN = Plugin(
    "whoami", "full", config=WhoamiConfig, parse=parse_whoami, stages=("slow_path",),
    answers=True, label_rank=2, answer=answer,
)
