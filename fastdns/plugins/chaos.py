"""chaos (``plugin/chaos``): CH-class TXT answers about the server itself.

As plugin/chaos/chaos.go answers them, for a CH TXT query in a block that
has the plugin: ``version.bind`` and ``version.server`` give the version
(fastdns's own, ``fastdns-VERSION``, the name ``-version`` prints, where
CoreDNS gives ``CoreDNS-VERSION``; or the Corefile's VERSION),
``authors.bind`` the authors (CoreDNS's maintainers by default, or the
Corefile's, one TXT each, shuffled), ``hostname.bind`` and ``id.server``
the host name (os.Hostname, ``localhost`` if it has none; 255 octets at
most). TTL 0, NOERROR, not authoritative (``SetReply``). Any other name or
type goes on down the chain. OpenShift's dns-operator Corefile serves
``hostname.bind:5353 { chaos }``.

No CH name is in the snapshot image, so these queries reach the worker's
slow path, where this answer hook runs (fastdns/server/worker_plugins.py).
"""

from __future__ import annotations

import random
import socket
import struct
from dataclasses import dataclass
from typing import ClassVar

from fastdns import __version__
from fastdns.codec import wire
from fastdns.corefile.dispenser import Dispenser
from fastdns.corefile.model import PluginConfig, ServerBlock
from fastdns.plugins.spec import Plugin

CH, TXT = 3, 16
QR = 0x8000
# plugin/chaos/zowners.go: the maintainers' GitHub handles
OWNERS = ("Tantalor93", "bradbeam", "chrisohaver", "darshanime", "dilyevsky", "ekleiner",
          "greenpau", "houyuwushang", "ihac", "inigohu", "isolus", "jameshartig",
          "johnbelamaric", "miekg", "mqasimsarfraz", "nchrisdk", "nitisht", "pmoroney",
          "rajansandeep", "rdrozhdzh", "rtreffer", "snebel29", "stp-ip", "superq",
          "thevilledev", "varyoo", "ykhr53", "yongtang", "zouyee")
_HEAD = struct.Struct(">HHHHH")  # template head: flags, an, ns, ar, nreloc
_RR = struct.Struct(">HHIH")


def _trim(s: str) -> str:
    return s if len(s) < 256 else s[:255]


def _default_version() -> str:
    return f"fastdns-{__version__}"


@dataclass(frozen=True)
class ChaosConfig(PluginConfig):
    name: ClassVar[str] = "chaos"
    version: str = ""  # "": fastdns's own
    authors: tuple[str, ...] = OWNERS


def parse_chaos(d: Dispenser, zones: tuple[str, ...]) -> ChaosConfig:
    """chaos [VERSION] [AUTHORS...] (setup.go: authors deduplicated and sorted)."""
    args = [t.text for t in d.remaining_args()]
    if d.next_block():
        raise d.unknown_property()
    if not args:
        return ChaosConfig()
    if len(args) == 1:
        return ChaosConfig(_trim(args[0]))
    return ChaosConfig(args[0], tuple(sorted({_trim(a) for a in args[1:]})))


def _txt(text: str) -> bytes:
    raw = text.encode("utf-8")[:255]
    return bytes([len(raw)]) + raw


def chaos_template(conf: ChaosConfig, key: bytes) -> bytes | None:
    """The wire template (docs/internals.md §1 ``respond``) for name ``key``
    (lowercased wire), or None for a name the plugin does not answer."""
    if key == b"\x07authors\x04bind\x00":
        texts = list(conf.authors)
        random.shuffle(texts)
    elif key in (b"\x07version\x04bind\x00", b"\x07version\x06server\x00"):
        texts = [conf.version or _trim(_default_version())]
    elif key in (b"\x08hostname\x04bind\x00", b"\x02id\x06server\x00"):
        texts = [_trim(socket.gethostname() or "localhost")]
    else:
        return None
    rrs = b"".join(b"\xc0\x0c" + _RR.pack(TXT, CH, 0, len(t)) + t
                   for t in (_txt(x) for x in texts))
    return _HEAD.pack(QR, len(texts), 0, 0, 0) + rrs


def answer(data: bytes, q: wire.Query, addr: tuple[str, int], tcp: bool,
           block: ServerBlock) -> bytes | None:
    if q.qclass != CH or q.qtype != TXT:
        return None
    conf = block.plugins.get("chaos")
    if not isinstance(conf, ChaosConfig):
        return None
    template = chaos_template(conf, q.key)
    return wire.respond(data, q, template) if template is not None else None


PLUGIN = Plugin("chaos", "full", config=ChaosConfig, parse=parse_chaos, stages=("slow_path",),
                answers=True, label_rank=5, answer=answer)
