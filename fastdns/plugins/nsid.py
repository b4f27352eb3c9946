"""nsid (``plugin/nsid``): the server's identifier in answers to queries that ask for it (RFC 5001).

As plugin/nsid/nsid.go: when the query's OPT carries an NSID option, the
answer's OPT gets one with DATA (the words after ``nsid`` joined by a
space, the host name by default; an OPT of the query's size with DO set
is added to an answer that has none, and an NSID option already there is
replaced). Queries without the option are answered as if the block had no
nsid. The UDP fast path's C hook appends the option to the image's answers
(fastdns/plugins/_shape.pyx); Python does the rest (shapewire.with_nsid).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

from fastdns.codec import wire
from fastdns.corefile.dispenser import Dispenser
from fastdns.corefile.model import PluginConfig, ServerBlock
from fastdns.plugins import shapewire, shaping
from fastdns.plugins.spec import Plugin, Rewritten


@dataclass(frozen=True)
class NsidConfig(PluginConfig):
    name: ClassVar[str] = "nsid"
    data: str = ""  # "": the host name when the plugin runs


def parse_nsid(d: Dispenser, zones: tuple[str, ...]) -> NsidConfig:
    """nsid [DATA...] (setup.go nsidParse)."""
    args = [t.text for t in d.remaining_args()]
    if d.next_block():
        raise d.unknown_property()
    return NsidConfig(" ".join(args))


def data_of(conf: NsidConfig) -> bytes:
    return (conf.data or socket.gethostname() or "localhost").encode("utf-8")


def _after(original: bytes, resp: bytes, data: bytes) -> bytes:
    return shapewire.with_nsid(resp, original, data)


def before(data: bytes, q: wire.Query, addr: tuple[str, int], tcp: bool,
           block: ServerBlock) -> Rewritten | None:
    conf = block.plugins.get("nsid")
    if not isinstance(conf, NsidConfig) or not q.edns or not shapewire.query_wants_nsid(data):
        return None
    return Rewritten(data, partial(_after, data=data_of(conf)))


def _row(conf: PluginConfig) -> shaping.Row:
    assert isinstance(conf, NsidConfig)
    return 0, 0, 0, 0, data_of(conf)


PLUGIN = Plugin("nsid", "full", config=NsidConfig, parse=parse_nsid,
                stages=("fast_path", "slow_path"), before=before,
                prelookup=shaping.prelookup(shaping.NSID, "nsid", _row))
