"""bufsize (``plugin/bufsize``): the EDNS0 UDP size of a query capped before it is answered.

CoreDNS's plugin lowers the query's advertised UDP payload size to SIZE
when it is larger (plugin/bufsize/bufsize.go: ``option.SetUDPSize``), so
the answer is truncated at SIZE (TC set beyond it; the client retries over
TCP) and a forwarded query advertises SIZE upstream: no answer larger than
SIZE crosses a path that fragments (the DNS flag day 2020 size, 1232, is
the default). A query without OPT is left alone. fastdns does the same
on every path: the fast path's C pre-lookup hook (fastdns/plugins/
_bufsize.pyx) rewrites the OPT in the packet, and the Python ``before``
below does it for TCP, the pure-Python path and what the C hooks hand on.
Per block, as the block that serves the name has the plugin or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from fastdns.codec import wire
from fastdns.corefile.dispenser import Dispenser
from fastdns.corefile.model import Config, PluginConfig, ServerBlock
from fastdns.names import zone_key
from fastdns.plugins.spec import Plugin, Rewritten
from fastdns.wirescan import skip_name

DEFAULT = 1232  # plugin/bufsize/setup.go defaultBufSize (dnsflagday.net/2020)
OPT = 41


@dataclass(frozen=True)
class BufsizeConfig(PluginConfig):
    name: ClassVar[str] = "bufsize"
    size: int = DEFAULT


def parse_bufsize(d: Dispenser, zones: tuple[str, ...]) -> BufsizeConfig:
    """bufsize [SIZE], SIZE in [512, 4096] (RFC 6891; setup.go answers ArgErr)."""
    args = d.remaining_args()
    if not args:
        return BufsizeConfig()
    if len(args) > 1:
        raise d.arg_err()
    try:
        size = int(args[0].text, 10)
    except ValueError:
        raise d.arg_err() from None
    if not 512 <= size <= 4096:
        raise d.arg_err()
    return BufsizeConfig(size)


def capped(data: bytes, q: wire.Query, size: int) -> bytes | None:
    """``data`` with its OPT's UDP size lowered to ``size``; None when it needs
    no change (no OPT, or one already at most ``size``)."""
    if not q.edns or q.payload <= size:
        return None
    an, ns, ar = (int.from_bytes(data[i:i + 2], "big") for i in (6, 8, 10))
    pos = q.question_end
    for i in range(an + ns + ar):
        pos = skip_name(data, pos)
        if pos + 10 > len(data):
            return None  # runs off: the lookup judges the query
        rtype = int.from_bytes(data[pos:pos + 2], "big")
        rdlen = int.from_bytes(data[pos + 8:pos + 10], "big")
        if rtype == OPT and i >= an + ns:
            out = bytearray(data)
            out[pos + 2:pos + 4] = size.to_bytes(2, "big")
            return bytes(out)
        pos += 10 + rdlen
    return None


def before(data: bytes, q: wire.Query, addr: tuple[str, int], tcp: bool,
           block: ServerBlock) -> Rewritten | None:
    conf = block.plugins.get("bufsize")
    size = conf.size if isinstance(conf, BufsizeConfig) else DEFAULT
    got = capped(data, q, size)
    return Rewritten(got) if got is not None else None


def zone_rows(config: Config) -> list[tuple[int, bytes, int]]:
    """(port, wire zone, size or 0) per zone of every block, for the C hook."""
    rows: list[tuple[int, bytes, int]] = []
    for b in config.servers:
        conf = b.plugins.get("bufsize")
        size = conf.size if isinstance(conf, BufsizeConfig) else 0
        for z in b.zones:
            rows.append((b.port, zone_key(z), size))
    return rows


def prelookup(config: Config) -> Any:
    """The C hook for ``config``; None (every UDP query to Python) without the build,
    or when the Corefile has more blocks than the hook's table."""
    try:
        from fastdns.plugins import _bufsize
    except ImportError:
        return None
    rows = zone_rows(config)
    try:
        return _bufsize.hook(rows)
    except ValueError:
        return None


PLUGIN = Plugin("bufsize", "full", config=BufsizeConfig, parse=parse_bufsize,
                stages=("fast_path", "slow_path"), before=before, prelookup=prelookup)
