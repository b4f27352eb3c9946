"""DNS over TCP for one worker: framing, pipelining, idle timeout, a connection cap.

RFC 1035 §4.2.2 / RFC 7766 §8: each message is prefixed with its 2-octet
length. A client may pipeline several queries before reading (RFC 7766
§6.2.1.1) and answers may go out in any order; here each complete frame is
answered as soon as it arrives. RFC 7766 §6.2.3 lets a server close a
connection that sat idle; CoreDNS's default idle timeout is 10 s. A TCP
answer is never truncated below the 65535-octet frame limit, so a client
that got TC=1 over UDP gets the whole answer here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

MAX_MESSAGE = 65535
# Stop reading from a client that does not read its answers once this much
# is queued for it; pipelining must not grow a worker's memory without bound.
WRITE_HIGH_WATER = 256 * 1024


class TcpListener:
    """State shared by every connection of one worker: the cap, the timeout, the answerer.

    ``answer(frame, family, conn) -> bytes | None`` does the counting and the
    lookup (the worker's ``answer_tcp``); an answer that takes time (the
    forwarder) comes later through ``conn.send_later(resp)``, out of order
    as RFC 7766 §7 allows. ``on_accept``/``on_reject``/``on_idle`` are
    counter hooks.
    """

    def __init__(self, answer: Callable[[bytes, int, DnsTcpProtocol], bytes | None], *,
                 idle_timeout: float = 10.0, max_connections: int = 1000,
                 on_accept: Callable[[], None] = lambda: None,
                 on_reject: Callable[[], None] = lambda: None,
                 on_idle: Callable[[], None] = lambda: None) -> None:
        self.answer = answer
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.on_accept = on_accept
        self.on_reject = on_reject
        self.on_idle = on_idle
        self.connections: set[DnsTcpProtocol] = set()

    def factory(self, family: int) -> Callable[[], DnsTcpProtocol]:
        return lambda: DnsTcpProtocol(self, family)

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()


class DnsTcpProtocol(asyncio.Protocol):
    __slots__ = ("_listener", "_family", "_transport", "_buf", "_last", "_timer", "_loop",
                 "local_port", "local_host")

    def __init__(self, listener: TcpListener, family: int) -> None:
        self._listener = listener
        self._family = family
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._last = 0.0
        self.local_port = 0
        self.local_host = ""  # the address the connection came in on (the metrics' server)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        lst = self._listener
        if len(lst.connections) >= lst.max_connections:
            lst.on_reject()
            transport.abort()
            return
        self._transport = transport
        sockname = transport.get_extra_info("sockname")
        self.local_port = sockname[1] if sockname else 0
        self.local_host = sockname[0] if sockname else ""
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        lst.connections.add(self)
        lst.on_accept()
        self._last = self._loop.time()
        self._timer = self._loop.call_later(lst.idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        # One timer per connection, re-armed lazily: data_received only
        # stamps the time, so a busy connection costs no timer churn.
        if self._transport is None:
            return
        idle_for = self._loop.time() - self._last
        if idle_for >= self._listener.idle_timeout:
            self._listener.on_idle()
            self._transport.close()
            return
        self._timer = self._loop.call_later(self._listener.idle_timeout - idle_for,
                                            self._check_idle)

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        self._last = self._loop.time()
        buf = self._buf
        buf += data
        pos, n = 0, len(buf)
        out = []
        while n - pos >= 2:
            size = buf[pos] << 8 | buf[pos + 1]
            if n - pos - 2 < size:
                break
            frame = bytes(buf[pos + 2 : pos + 2 + size])
            pos += 2 + size
            resp = self._listener.answer(frame, self._family, self)
            if resp is not None:
                out.append(len(resp).to_bytes(2, "big"))
                out.append(resp)
        if pos:
            del buf[:pos]
        if out and self._transport is not None:
            self._transport.write(b"".join(out))

    def send_later(self, resp: bytes | None) -> bool:
        """Write one answer that was not ready in ``data_received``; False if gone."""
        if resp is None or self._transport is None or self._transport.is_closing():
            return False
        self._transport.write(len(resp).to_bytes(2, "big") + resp)
        return True

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # half-close from the client: close once our answers are written

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
