"""In-band health checking of upstreams (CoreDNS plugin/pkg/proxy/health.go).

CoreDNS does not probe healthy upstreams: a failed exchange starts a probe
loop for that upstream, one ``. IN NS`` query (``health_check ... domain``
and ``no_rec`` change the name and the RD bit) every ``health_check``
interval, until one gets *any* answer (REFUSED, SERVFAIL ... count as
healthy: the server is alive). Each failed probe adds one to the
upstream's ``fails``; a successful one resets it to 0.
"""

from __future__ import annotations

import asyncio
import secrets
import struct
from collections.abc import Callable

from fastdns.codec import wire
from fastdns.constants import Flag, Qclass, Qtype
from fastdns.forward.upstream import Upstream, UpstreamError


def probe_query(domain: str, recursion: bool) -> bytes:
    """A fresh ``DOMAIN IN NS`` query with a random ID."""
    flags = Flag.RD if recursion else 0
    return (struct.pack(">HHHHHH", secrets.randbits(16), flags, 1, 0, 0, 0)
            + wire.encode_name(domain) + struct.pack(">HH", Qtype.NS, Qclass.IN))


class HealthChecker:
    """Runs the probe loop of each upstream that failed; at most one loop per upstream."""

    def __init__(self, interval: float, *, tcp: bool, domain: str = ".",
                 recursion: bool = True, timeout: float = 1.0) -> None:
        self.interval = interval
        self.tcp = tcp
        self.domain = domain
        self.recursion = recursion
        self.timeout = timeout
        self._loops: dict[Upstream, asyncio.Task] = {}
        self.probes = 0
        # called after each probe changed ``up.fails`` (the C forwarder's healthy
        # set follows it: server/cforward.py)
        self.on_change: Callable[[Upstream], None] | None = None

    def enabled(self) -> bool:
        return self.interval > 0

    def trigger(self, up: Upstream) -> None:
        """An exchange with ``up`` failed: start probing it, unless already probing."""
        if not self.enabled():
            return
        task = self._loops.get(up)
        if task is not None and not task.done():
            return
        self._loops[up] = asyncio.get_running_loop().create_task(self._loop(up))

    def probing(self, up: Upstream) -> bool:
        task = self._loops.get(up)
        return task is not None and not task.done()

    async def check(self, up: Upstream) -> bool:
        """One probe; updates ``up.fails`` and its failure counter."""
        msg = probe_query(self.domain, self.recursion)
        q = wire.parse_query(msg)
        self.probes += 1
        try:
            await up.probe(msg, q.id, q, self.tcp, self.timeout)
        except UpstreamError:
            up.fails += 1
            up.healthcheck_failures += 1
            if self.on_change is not None:
                self.on_change(up)
            return False
        up.fails = 0
        if self.on_change is not None:
            self.on_change(up)
        return True

    async def _loop(self, up: Upstream) -> None:
        while not await self.check(up):
            await asyncio.sleep(self.interval)

    def close(self) -> None:
        for task in self._loops.values():
            task.cancel()
        self._loops.clear()
