"""The listen set: which (address, port) pairs a Corefile serves on.

It is derived from the Corefile alone, so it lives with the Corefile: the
supervisor reads it to pre-check the ports and hand each worker its spec,
and a worker reads it again from a reloaded Corefile to bind what is new
and close what is gone. One function, so both sides agree on it.
"""

from __future__ import annotations

from fastdns.corefile.model import Config

DEFAULT_PORT = 53


def listen_addresses(config: Config) -> tuple[tuple[str, int], ...]:
    """(address, port) pairs over all server blocks, in Corefile order, deduplicated.

    Without ``bind`` CoreDNS listens on every address (``listen_hosts`` gives
    ""); here that is the IPv4 and IPv6 wildcards (workers set IPV6_V6ONLY
    so both can be bound on one port).
    """
    out: list[tuple[str, int]] = []
    for block in config.servers:
        port = block.port if block.port is not None else DEFAULT_PORT
        for host in block.listen_hosts:
            for a in (("0.0.0.0", "::") if host == "" else (host,)):
                pair = (a, int(port))
                if pair not in out:
                    out.append(pair)
    return tuple(out)
