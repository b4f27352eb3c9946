"""The slot and row tables of a counters block: which labels each slot counts for.

The forward region and the per-(server, zone) rows of a worker's counters
block are position-keyed: slot k and row k mean whatever the k-th entry of
a table derived from the Corefile says. The worker (writer) and the metrics
exporter (reader) each derive the table from their own Corefile with the
functions here, and a hash of it sits in the region's table word, so a
count is never reported under another label. Offsets are in
``fastdns/ipc/layout.py``.

Per-upstream forward region (words ``W_FWD`` .. ``FWD_END``): the data of
CoreDNS's ``coredns_proxy_*{proxy_name="forward",to}`` series and
``coredns_forward_healthcheck_broken_total``, written only by the worker's
0.5 s export (``fastdns/server/forwarding.py``). Upstreams are *slots*:
the distinct ``to`` labels of the Corefile in order (server blocks in
Corefile order, then the ``forward`` TOs in order; :func:`upstream_table`),
the first ``FWD_MAX_UPSTREAMS``; any further upstream is counted in the
catch-all slot ``FWD_MAX_UPSTREAMS``, exported as ``to="other"``. Word
``W_FWD_TABLE`` holds :func:`table_hash` of the slot table the words
describe (0 while a worker rewrites the region); the exporter derives the
table from its own Corefile and ignores a block whose hash differs (a
worker still on the Corefile before a reload), so a count is never
reported under another upstream's ``to``.

Per-(server, zone) region (words ``W_ROWS`` .. ``ROWS_END``, after the
forward region): CoreDNS labels every ``coredns_dns_*`` series with the
``server`` (listener address) and ``zone`` that handled the query
(``plugin/metrics/vars/report.go``); a query whose name no zone on its
listener matches is counted under zone ``dropped`` (``core/dnsserver/
server.go`` errorAndMetricsFunc). Rows are the pairs of :func:`row_table`:
per listener in Corefile order, the zones of its blocks, then its
``dropped`` row; the first ``ROW_MAX`` are exact, any further pair shares
the catch-all row ``ROW_MAX`` (exported as ``server="other", zone="other"``).
A row repeats the totals' DNS words (requests, responses, DO, sizes,
latency; ``R_*`` offsets) for the queries of its pair; the totals words
stay the sum over every row. The row of a query is decided from its name
alone (longest zone suffix among the listener's zones, as CoreDNS's
``ServeDNS`` and metrics plugin do), so it is known before the answer and
every path (C fast path, slow path, TCP) counts it the same way. Word
``W_ROWS_TABLE`` holds :func:`table_hash` of the row labels, with the same
reload rule as the forward region.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import cast

from fastdns.ipc.layout import (
    CACHE_ROWS,
    FWD_MAX_UPSTREAMS,
    ROW_MAX,
)

FWD_OTHER = "other"  # the catch-all slot's ``to`` label
ROW_OTHER = ("other", "other")  # the catch-all row's (server, zone)
ZONE_DROPPED = "dropped"  # CoreDNS vars.Dropped


def upstream_table(addrs: Iterable[str]) -> tuple[str, ...]:
    """The slot table: distinct ``to`` labels in first-seen order, at most FWD_MAX_UPSTREAMS.

    CoreDNS keys each series by (proxy_name, to) only, so two ``forward``
    stanzas with the same TO share one series; here they share one slot.
    """
    return tuple(dict.fromkeys(addrs))[:FWD_MAX_UPSTREAMS]


def config_upstreams(config: object) -> Iterator[str]:
    """Every ``forward`` TO's ``to`` label (``IP:port``, IPv6 bracketed) in Corefile order.

    Read by attribute (``servers[i].plugins["forward"].to[j].addr``) so the
    worker (``corefile.Config``) and the exporter derive the same table.
    """
    for b in cast("Iterable[object]", getattr(config, "servers", config)):
        plugins = getattr(b, "plugins", None)
        fwd = plugins.get("forward") if isinstance(plugins, dict) else None
        for u in getattr(fwd, "to", ()):
            yield u.addr


def table_hash(table: tuple[str, ...]) -> int:
    """A stable non-zero 64-bit id of a slot table (the same in every process)."""
    digest = hashlib.blake2b("\n".join(table).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") | 1


def fwd_slot_labels(table: tuple[str, ...]) -> tuple[str, ...]:
    """The ``to`` label of every slot: the table, unused slots "", then the catch-all."""
    return (*table, *[""] * (FWD_MAX_UPSTREAMS - len(table)), FWD_OTHER)


# -- per-cache rows (coredns_cache_*) --------------------------------------------------


def cache_blocks(config: object) -> list[object]:
    """The server blocks whose ``cache`` fronts a ``forward``, one per Corefile block.

    Blocks split per key share one plugin dict (one ForwardingResolver, one
    cache, as CoreDNS shares one plugin instance per server block): the first
    of them stands for it. Cache row k and the shared table's cache number k
    are the k-th of these (server/forwarding.py BlockRouter.caches).
    """
    seen: set[int] = set()
    out = []
    for b in cast("Iterable[object]", getattr(config, "servers", config)):
        plugins = getattr(b, "plugins", None)
        if not isinstance(plugins, dict) or "forward" not in plugins or "cache" not in plugins:
            continue
        if id(plugins) not in seen:
            seen.add(id(plugins))
            out.append(b)
    return out


def cache_table(config: object) -> tuple[tuple[str, str, str], ...]:
    """(server, zones, view) labels of each cache row, at most CACHE_ROWS.

    CoreDNS labels a cache's series with the server that took the query, the
    cache's zones joined by "," (its stanza's zones, else the block's:
    plugin/cache/setup.go ``zonesMetricLabel``) and the block's view. A
    block bound to several addresses reports under its first.
    """
    out = []
    for b in cache_blocks(config)[:CACHE_ROWS]:
        port = int(getattr(b, "port", 53) or 53)
        transport = getattr(b, "transport", "dns") or "dns"
        host = (tuple(getattr(b, "listen_hosts", ()) or ()) or ("",))[0]
        cache = getattr(b, "plugins", {})["cache"]
        zones = tuple(getattr(cache, "zones", ()) or getattr(b, "zones", (".",)))
        out.append((server_label(port, host, transport), ",".join(str(z) for z in zones),
                    str(getattr(b, "view", "") or "")))
    return tuple(out)


def cache_hash(table: tuple[tuple[str, str, str], ...]) -> int:
    return table_hash(tuple("\t".join(row) for row in table))


# -- per-(server, zone) rows ----------------------------------------------------------


def server_label(port: int, host: str = "", transport: str = "dns") -> str:
    """``dns://:53`` / ``dns://127.0.0.1:53`` / ``dns://[::1]:53``, as CoreDNS prints it."""
    h = f"[{host}]" if ":" in host else host
    return f"{transport}://{h}:{port}"


def listener_zones(config: object) -> dict[str, tuple[str, ...]]:
    """``server`` label -> the zones of the blocks on that listener, in Corefile order.

    core/dnsserver/register.go groupConfigsByListenAddr: one server per bind
    address and port, serving every block bound there. Read by attribute
    (``port``, ``transport``, ``listen_hosts``, ``zones``) like config_upstreams.
    """
    out: dict[str, list[str]] = {}
    for b in cast("Iterable[object]", getattr(config, "servers", config)):
        port = int(getattr(b, "port", 53) or 53)
        transport = getattr(b, "transport", "dns") or "dns"
        for h in tuple(getattr(b, "listen_hosts", ()) or ()) or ("",):
            out.setdefault(server_label(port, h, transport), []).extend(
                str(z) for z in getattr(b, "zones", (".",)))
    return {k: tuple(dict.fromkeys(v)) for k, v in out.items()}


def row_table(listeners: dict[str, tuple[str, ...]]) -> tuple[tuple[str, str], ...]:
    """Every (server, zone) pair, each listener's ``dropped`` last; row = min(index, ROW_MAX)."""
    rows: list[tuple[str, str]] = []
    for server, zones in listeners.items():
        rows.extend((server, z) for z in zones)
        rows.append((server, ZONE_DROPPED))
    return tuple(rows)


def row_labels(table: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The (server, zone) of every row: the exact ones, unused rows ("", ""), the catch-all."""
    exact = table[:ROW_MAX]
    return (*exact, *[("", "")] * (ROW_MAX - len(exact)), ROW_OTHER)


def rows_hash(table: tuple[tuple[str, str], ...]) -> int:
    return table_hash(tuple(f"{s} {z}" for s, z in table))


def zone_wire(zone: str) -> bytes:
    """Lowercased wire form of a zone name (``"cluster.local."``; ``"."`` is ``b"\\0"``)."""
    labels = [lbl for lbl in zone.lower().rstrip(".").split(".") if lbl]
    return b"".join(len(lbl).to_bytes(1, "big") + lbl.encode("ascii") for lbl in labels) + b"\0"


class ListenerRows:
    """One listener's zones as the counters match them: longest first."""

    __slots__ = ("zones", "dropped")

    def __init__(self, zones: tuple[tuple[bytes, int], ...], dropped: int) -> None:
        self.zones = zones  # (lowercased wire, row), longest wire first
        self.dropped = dropped

    def match(self, pkt: bytes | memoryview) -> int:
        """The row of a query: its name's longest zone suffix, else ``dropped``.

        An unreadable question counts as ``dropped`` too (CoreDNS never gets
        as far as a zone for it). Twin of ``_udp.pyx`` match_row.
        """
        n = len(pkt)
        if n < 12 or not (pkt[4] or pkt[5]):
            return self.dropped
        p, starts = 12, set()
        while p < n:
            starts.add(p)
            length = pkt[p]
            if length == 0:
                p += 1
                break
            if length & 0xC0:
                return self.dropped
            p += length + 1
        else:
            return self.dropped
        if p > n:
            return self.dropped
        name = bytes(pkt[12:p]).lower()
        for wire, row in self.zones:
            s = len(name) - len(wire)
            if s >= 0 and 12 + s in starts and name[s:] == wire:
                return row
        return self.dropped


def listener_rows(listeners: dict[str, tuple[str, ...]]) -> dict[str, ListenerRows]:
    """``server`` label -> its ListenerRows, rows numbered as row_table does."""
    out, i = {}, 0
    for server, zones in listeners.items():
        zs = []
        for z in zones:
            zs.append((zone_wire(z), min(i, ROW_MAX)))
            i += 1
        zs.sort(key=lambda t: len(t[0]), reverse=True)
        # more zones than exact rows on one listener (the fast path's table
        # holds ROW_MAX): the whole listener counts into the catch-all
        out[server] = (ListenerRows(tuple(zs), min(i, ROW_MAX)) if len(zs) <= ROW_MAX
                       else ListenerRows((), ROW_MAX))
        i += 1
    return out


def socket_rows(rows: dict[str, ListenerRows], address: str, port: int,
                transport: str = "dns") -> ListenerRows:
    """The ListenerRows of a socket bound to (address, port): its ``bind`` host's
    listener, else the wildcard's (the supervisor binds 0.0.0.0 and :: for it)."""
    lr = rows.get(server_label(port, address, transport))
    if lr is None:
        lr = rows.get(server_label(port, "", transport))
    return lr if lr is not None else ListenerRows((), ROW_MAX)
