"""What a worker does with a packet the fast path cannot answer.

The wire core hands back "slow" for a name in a zone whose misses are not
precompiled (``SLOW_MISS``: pod synthesis below ``pod.ZONE`` with ``pods
insecure``, forward-only zones, kubernetes fallthrough), for a name outside
every zone, and for a class other than IN/ANY. Until the forwarder exists
(a later issue) anything but pod synthesis is REFUSED, which is what CoreDNS
answers for a name no server block serves (``core/dnsserver/server.go``:
``errorAndMetricsFunc(... dns.RcodeRefused)``). An internal error answers
SERVFAIL and the worker goes on.
"""

from __future__ import annotations

import logging

from fastdns import errors
from fastdns.codec import wire
from fastdns.constants import Qclass, Rcode
from fastdns.server import counters as ctr
from fastdns.zone import image as img

log = logging.getLogger(__name__)

try:  # the zone room's pod synthesis; optional until it lands
    from fastdns.zone.podsynth import synthesize as _synthesize
except ImportError:  # pragma: no cover - depends on the tree
    _synthesize = None


class SlowPath:
    """Answers slow packets synchronously; ``answer`` never raises.

    ``get_image()`` returns the image the current batch is served from.
    """

    def __init__(self, get_image, counters: ctr.Counters, synthesize=_synthesize) -> None:
        self._get_image = get_image
        self._counters = counters
        self._synthesize = synthesize
        self._logged_error = False

    def answer(self, data: bytes, zone: int) -> bytes | None:
        """The answer to ``data`` (a query the fast path passed on), None to drop it."""
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
            resp = self._answer(data, q, zone)
        except Exception:
            if not self._logged_error:
                self._logged_error = True
                log.exception("slow path failed; answering SERVFAIL")
            self._counters.incr(ctr.W_SLOW_SERVFAIL)
            return wire.error_response(data, q, Rcode.SERVFAIL)
        return resp

    def _answer(self, data: bytes, q, zone: int) -> bytes:
        image = self._get_image()
        if zone >= 0 and image is not None and q.qclass in (Qclass.IN, Qclass.ANY):
            _name, _flags, negative, _ttl, _block, kind = img.zone_entry(image, zone)
            if kind == img.ZK_POD:
                return self._pod(image, data, q, zone, negative)
        # outside every zone, or a zone only the forwarder can answer (later issue)
        self._counters.incr(ctr.W_SLOW_REFUSED)
        return wire.error_response(data, q, Rcode.REFUSED)

    def _pod(self, image, data: bytes, q, zone: int, negative: int) -> bytes:
        if self._synthesize is None:
            # Without synthesis a pod name cannot be known to be absent: SERVFAIL
            # (temporary), not NXDOMAIN (cached by the client, RFC 2308).
            self._counters.incr(ctr.W_SLOW_SERVFAIL)
            return wire.error_response(data, q, Rcode.SERVFAIL)
        resp = self._synthesize(image, data, q)
        if resp is not None:
            self._counters.incr(ctr.W_SLOW_POD)
            return resp
        if negative:
            # not a synthesizable pod name: the zone's NXDOMAIN with its SOA
            name = img.zone_entry(image, zone)[0]
            template = img.answer_variants(image, negative)[0]
            self._counters.incr(ctr.W_SLOW_OTHER)
            return wire.respond(data, q, template, 12 + len(q.key) - len(name))
        self._counters.incr(ctr.W_SLOW_OTHER)
        return wire.error_response(data, q, Rcode.NXDOMAIN)
