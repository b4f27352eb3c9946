"""The label values of CoreDNS's metrics, from the Corefile: server, zone, plugin, rcode.

Label values stay bounded: ``server`` and ``zone`` come from the Corefile's
server blocks, ``to`` from its ``forward`` TOs (at most
``counters.FWD_MAX_UPSTREAMS``, the rest as ``to="other"``), never from a
query name. Which plugin names the ``plugin`` label and which plugins
``coredns_plugin_enabled`` lists are the plugin registry's fields
(fastdns/plugins/registry.py: ``label_rank``, ``handler``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from fastdns.ipc import tables
from fastdns.plugins import registry

# Rcodes the server core writes in CoreDNS (no plugin ran): plugin label "".
SERVER_RCODES = frozenset({"FORMERR", "NOTIMP", "BADSIG"})


def rcode_label(name: str) -> str:
    """CoreDNS's rcode label (``plugin/pkg/rcode.ToString`` over miekg/dns).

    miekg's ``RcodeToString`` maps 16 to ``BADSIG`` (BADVERS shares the
    number, RFC 6891 §9, and its entry is commented out), so CoreDNS reports
    a BADVERS answer as ``BADSIG``.
    """
    return "BADSIG" if name == "BADVERS" else name


server_label = tables.server_label  # dns://:53, dns://127.0.0.1:53, dns://[::1]:53


# -- what the Corefile tells the collector ---------------------------------------


@dataclass(frozen=True)
class BlockLabels:
    """The label values of one Corefile server block.

    ``servers``: one ``server`` label per listen address (``bind`` hosts x
    the block's port); ``zones``: the block keys' zones, normalised
    (``"."``, ``"cluster.local."``); ``plugins``: the directive names in the
    block; ``upstreams``: its ``forward`` TOs as CoreDNS's ``to`` label.
    """

    servers: tuple[str, ...]
    zones: tuple[str, ...]
    plugins: tuple[str, ...] = ()
    view: str = ""
    upstreams: tuple[str, ...] = ()

    @property
    def answering_plugin(self) -> str:
        """The ``plugin`` label of the block's answers: its plugin first in
        fastdns's answering chain (the registry's ``label_rank``)."""
        for row in registry.by_rank():
            if row.name in self.plugins:
                return row.name
        return ""

    @property
    def enabled(self) -> list[str]:
        """The block's plugins that coredns_plugin_enabled lists: those in
        CoreDNS's handler chain (the registry's ``handler``)."""
        return [p for p in dict.fromkeys(self.plugins) if _handler(p)]


def _handler(name: str) -> bool:
    row = registry.get(name)
    return row is None or row.handler


def blocks_from_config(config: object) -> list[BlockLabels]:
    """BlockLabels of a parsed Corefile (``fastdns.corefile.Config``).

    A ``ServerBlock`` has ``zones``, ``port``, ``transport``, ``listen_hosts``
    (``bind`` addresses, or ``("",)``) and ``plugins`` (name -> config, in
    Corefile order). Read by attribute so a test can pass simple objects.
    """
    out = []
    # a Config, or (tests) any iterable of block-like objects
    for b in cast(Iterable[object], getattr(config, "servers", config)):
        port = int(getattr(b, "port", 53) or 53)
        transport = getattr(b, "transport", "dns") or "dns"
        hosts = tuple(getattr(b, "listen_hosts", ()) or ()) or ("",)
        plugins = getattr(b, "plugins", ())
        names = tuple(plugins) if isinstance(plugins, dict) else tuple(
            p if isinstance(p, str) else getattr(p, "name", str(p)) for p in plugins)
        out.append(BlockLabels(
            servers=tuple(dict.fromkeys(server_label(port, h, transport) for h in hosts)),
            zones=tuple(str(z) for z in getattr(b, "zones", (".",))),
            plugins=names,
            view=str(getattr(b, "view", "") or ""),
            upstreams=tuple(tables.config_upstreams([b])),
        ))
    return out
