"""What a worker does with a packet the fast path cannot answer.

The wire core hands back "slow" for a name in a zone whose misses are not
precompiled (``SLOW_MISS``: pod synthesis below ``pod.ZONE`` with ``pods
insecure``, forward-only zones, kubernetes fallthrough), for a name outside
every zone, for a class other than IN/ANY, and for names the response
cache has not (or no longer) got in the fast path's C table.

Routing follows CoreDNS: the server block is the image zone's ``block``
field when the name is in an image zone, else ``Config.select(port, qname)``
(``core/dnsserver/server.go`` ServeDNS: longest zone suffix); that block's
``forward`` (+ ``cache``) answers. A name no block serves is REFUSED
(``errorAndMetricsFunc(... dns.RcodeRefused)``); a block whose forwarder
declines the name (``except``, ``next``) answers SERVFAIL, which is
CoreDNS's ``plugin.NextOrFailure`` with no next plugin. An internal error
answers SERVFAIL and the worker goes on.

Forwarding is asynchronous: ``answer`` starts one task per packet and
returns None; the task hands the answer to the ``send`` callable it was
given (UDP ``sock.sendto``, or from a wildcard socket ``sendmsg`` with the
query's destination as the source, ``udpsource.py``: the worker's ``send``
closure carries it; TCP the connection's writer). Tasks in flight
are bounded per worker (``MAX_INFLIGHT``, REFUSED beyond it, as the
forwarder's own ``max_concurrent``), so a dead upstream cannot grow memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from fastdns import errors
from fastdns.codec import wire
from fastdns.constants import Qclass, Rcode
from fastdns.ipc import counters as ctr
from fastdns.ipc import image as img
from fastdns.ipc import layout
from fastdns.names import key_text
from fastdns.server import external
from fastdns.server.podsynth import synthesize as _synthesize

log = logging.getLogger(__name__)


ZONE_EXTERNAL = -2  # answer()'s zone for an image answer marked image.TF_EXTERNAL
MAX_INFLIGHT = 10000  # forwarded queries in flight per worker; REFUSED beyond


class Deferred:
    """answer()'s result when the answer goes out later through ``send``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFERRED"


DEFERRED = Deferred()
Send = Callable[[bytes | None], None]


class SlowPath:
    """Answers slow packets; ``answer`` never raises.

    ``get_image()`` returns the image the current batch is served from;
    ``route(block_index | None, qname_text, port)`` returns the resolver
    (``fastdns.forward.resolver.ForwardingResolver``) of the block that
    serves the name, or None (the worker owns the Corefile and the
    resolvers).
    """

    def __init__(self, get_image, counters: ctr.Counters, synthesize=_synthesize,
                 route=None) -> None:
        self._get_image = get_image
        self._counters = counters
        self._synthesize = synthesize
        self._route = route
        self._logged_error = False
        self.tasks: set[asyncio.Task] = set()
        #: the block index a rewritten query stays in while it is answered
        #: (beforechain.pinned): CoreDNS runs the rest of the original block's
        #: chain on it, whatever block its new name would select
        self.pinned: int | None = None
        #: ... and, when its new name is outside that block and the block
        #: forwards, it goes straight to the block's forwarder (Worker.lookup)
        self.direct = False

    def answer(self, data: bytes, zone: int, port: int = 0, send: Send | None = None,
               tcp: bool = False) -> bytes | Deferred | None:
        """The answer to ``data`` now, None to drop it, or DEFERRED: ``send`` gets it later."""
        try:
            q = wire.parse_query(data)
        except errors.DropPacket:
            return None
        except errors.WireError:
            # the fast path answers malformed queries itself; be safe anyway
            try:
                return wire.error_response(data, None, Rcode.FORMERR)
            except errors.WireError:
                return None
        try:
            if zone == ZONE_EXTERNAL:
                return self._external(data, q, port, send, tcp)
            resolver = self._resolver(q, zone, port)
            if resolver is None:
                return self._answer(data, q, zone)
            if send is None:
                # a caller that cannot wait (tests of the synchronous path)
                self._counters.incr(layout.W_SLOW_REFUSED)
                return wire.error_response(data, q, Rcode.REFUSED)
            if len(self.tasks) >= MAX_INFLIGHT:
                self._counters.incr(layout.W_SLOW_REFUSED)
                return wire.error_response(data, q, Rcode.REFUSED)
            return self.defer(lambda: self._forwarded(resolver, data, q, tcp), data, q, send)
        except Exception:
            return self._failed(data, q)

    def _external(self, data: bytes, q, port: int, send: Send | None, tcp: bool):
        """An ExternalName to an outside name: CNAME + the target's records (external.py)."""
        image = self._get_image()
        if image is None:
            return None
        if send is None or self._route is None or len(self.tasks) >= MAX_INFLIGHT:
            # cannot wait: the CNAME alone, as the image has it
            status, resp, _ = wire.answer(image, data, 0, 65535 if tcp else 0)
            return external.unmarked(resp) if resp is not None else None

        async def completed() -> bytes | None:
            # the image in force when the task runs, not the one it was queued
            # with: a remap in between may retire that one (shm.py)
            now = self._get_image()
            if now is None:
                return None
            resp = await external.complete(
                now, data, q, lambda name: self._route(None, name, port), tcp)
            self._counters.incr(layout.W_SLOW_FORWARDED)
            return resp

        return self.defer(completed, data, q, send)

    def defer(self, work: Callable[[], Awaitable[bytes | None]], data: bytes, q,
               send: Send) -> Deferred:
        """Start a task that awaits ``work()`` and hands the result to ``send``.

        One place for what every deferred answer owes its ``send``: a failure
        answers SERVFAIL (``_failed``), and a cancelled task (``close``) still
        calls ``send(None)`` so the query is counted, unanswered.
        """

        async def settle() -> None:
            try:
                resp = await work()
            except asyncio.CancelledError:
                send(None)
                raise
            except Exception:
                resp = self._failed(data, q)
            send(resp)

        task = asyncio.get_running_loop().create_task(settle())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return DEFERRED

    @property
    def busy(self) -> bool:
        """Whether no more answers can be deferred now (MAX_INFLIGHT)."""
        return len(self.tasks) >= MAX_INFLIGHT

    def _failed(self, data: bytes, q) -> bytes:
        if not self._logged_error:
            self._logged_error = True
            log.exception("slow path failed; answering SERVFAIL")
        self._counters.incr(layout.W_SLOW_SERVFAIL)
        return wire.error_response(data, q, Rcode.SERVFAIL)

    def _resolver(self, q, zone: int, port: int):
        """The forwarding resolver for ``q``, or None when no forwarder takes it."""
        if self._route is None:
            return None
        image = self._get_image()
        block = None
        if zone >= 0 and image is not None:
            _name, _flags, _neg, _ttl, zblock, kind = img.zone_entry(image, zone)
            if kind == img.ZK_POD and q.qclass in (Qclass.IN, Qclass.ANY):
                return None
            if kind == img.ZK_KUBERNETES:
                # kubernetes `fallthrough`: the next plugin of the kubernetes block
                block = zblock
            # a forward-only zone: its block is the one Config.select picks on
            # this port (the image has one zone table for every port)
        qname = key_text(q.key)
        if self.pinned is not None:
            block = self.pinned
        return self._route(block, qname, port)

    async def _forwarded(self, resolver, data: bytes, q, tcp: bool) -> bytes:
        resp = await resolver.resolve(data, q, tcp)
        if resp is None:
            # the forwarder declined (except / next): no next plugin
            self._counters.incr(layout.W_SLOW_SERVFAIL)
            return wire.error_response(data, q, Rcode.SERVFAIL)
        self._counters.incr(layout.W_SLOW_FORWARDED)
        return resp

    def _answer(self, data: bytes, q, zone: int) -> bytes:
        image = self._get_image()
        if zone >= 0 and image is not None and q.qclass in (Qclass.IN, Qclass.ANY):
            _name, _flags, negative, _ttl, _block, kind = img.zone_entry(image, zone)
            if kind == img.ZK_POD:
                return self._pod(image, data, q, zone, negative)
        # outside every zone, or a zone no forwarder of its block answers
        self._counters.incr(layout.W_SLOW_REFUSED)
        return wire.error_response(data, q, Rcode.REFUSED)

    def _pod(self, image, data: bytes, q, zone: int, negative: int) -> bytes:
        if self._synthesize is None:
            # Without synthesis a pod name cannot be known to be absent: SERVFAIL
            # (temporary), not NXDOMAIN (cached by the client, RFC 2308).
            self._counters.incr(layout.W_SLOW_SERVFAIL)
            return wire.error_response(data, q, Rcode.SERVFAIL)
        resp = self._synthesize(image, data, q)
        if resp is not None:
            self._counters.incr(layout.W_SLOW_POD)
            return resp
        if negative:
            # not a synthesizable pod name: the zone's NXDOMAIN with its SOA
            name = img.zone_entry(image, zone)[0]
            template = img.answer_variants(image, negative)[0]
            self._counters.incr(layout.W_SLOW_OTHER)
            return wire.respond(data, q, template, 12 + len(q.key) - len(name))
        self._counters.incr(layout.W_SLOW_OTHER)
        return wire.error_response(data, q, Rcode.NXDOMAIN)

    def close(self) -> None:
        for t in list(self.tasks):
            t.cancel()
