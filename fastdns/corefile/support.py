"""Which Corefile plugins fastdns runs today, for the server and check-corefile.

``SUPPORTED`` maps a plugin name to ``"full"`` (fastdns does what CoreDNS
does) or ``"parsed"`` (its configuration is read and validated, but the
behaviour is not wired in yet). A module that makes a plugin functional
flips its entry to ``"full"`` in the same change. Plugins absent from the
map are refused at parse time.
"""

from __future__ import annotations

from typing import Literal

from fastdns.corefile.model import ServerBlock

Status = Literal["full", "parsed"]

SUPPORTED: dict[str, Status] = {
    "errors": "full",
    "health": "full",
    "ready": "full",
    "kubernetes": "full",
    "prometheus": "full",
    "reload": "full",
    "loadbalance": "full",
    "bind": "full",
    "loop": "full",
    "debug": "full",
    "forward": "full",
    "cache": "full",
    "log": "full",
    "hosts": "full",
    "whoami": "full",
}

# Why a "parsed" plugin does not run yet; the server prints this when it refuses.
PARSED_REASON: dict[str, str] = {
    "forward": "forwarding to upstream resolvers is not implemented yet",
    "cache": "the response cache is not implemented yet",
}

# CoreDNS's own plugin.cfg (plus a few common external ones): a name here
# that fastdns lacks is "not implemented", any other name is a typo.
COREDNS_PLUGINS = frozenset("""
metadata geoip cancel tls timeouts multisocket reload nsid bufsize root bind debug trace
ready health pprof prometheus errors log dnstap local dns64 acl any chaos loadbalance tsig
cache rewrite header dnssec autopath minimal template transfer hosts route53 azure clouddns
k8s_external kubernetes file auto secondary etcd loop forward grpc erratic whoami on sign
view nomad federation fanout alternate redisc ready quic grpc_server https https3
""".split())


def status(name: str) -> Status | None:
    return SUPPORTED.get(name)


def not_running(block: ServerBlock) -> list[tuple[str, str]]:
    """(plugin, reason) for each plugin of ``block`` that fastdns does not run yet."""
    out = []
    for name in block.plugins:
        st = SUPPORTED.get(name)
        if st != "full":
            out.append((name, PARSED_REASON.get(name, "not implemented by fastdns")))
    return out


def is_runnable(block: ServerBlock) -> bool:
    return not not_running(block)
