"""One upstream server: a UDP or TCP exchange, reused TCP connections, health state.

Anti-spoofing (RFC 5452): every UDP query goes out of a fresh connected
socket, so the kernel picks a random ephemeral source port (Linux
``udp_lib_get_port`` starts at a random point) and drops datagrams from any
other address; the caller puts a random 16-bit ID in the query. An answer
whose ID or question differs is counted and ignored, and we keep waiting for
the real one until the read timeout (CoreDNS ``plugin/pkg/proxy/connect.go``
does the same: it reads again while the ID does not match).

TCP connections are kept after use and reused until they have been idle for
``expire`` seconds (CoreDNS ``expire``, default 10 s); a reused connection
the server closed meanwhile is retried once on a fresh one (CoreDNS
``ErrCachedClosed``).
"""

from __future__ import annotations

import asyncio
import socket
import time

from fastdns import errors
from fastdns.codec import wire
from fastdns.forward.message import matches


class UpstreamError(Exception):
    """The exchange with one upstream failed (network error or closed connection)."""


class UpstreamTimeout(UpstreamError):
    """No matching answer arrived within the read timeout."""


class Upstream:
    """Runtime state of one ``forward`` TO: address, connection pool, health.

    ``fails`` counts consecutive failed health probes; the upstream is down
    when it exceeds ``max_fails`` (CoreDNS ``Proxy.Down``: "*more* fails
    than maxfails") and up again as soon as a probe gets any answer.
    """

    def __init__(self, host: str, port: int, *, expire: float = 10.0,
                 max_idle_conns: int = 0) -> None:
        self.host = host
        self.port = port
        # CoreDNS's `to` label: net.JoinHostPort (IPv6 bracketed).
        self.addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.expire = expire
        self.max_idle_conns = max_idle_conns
        self.fails = 0
        # counters
        self.sent_udp = 0
        self.sent_tcp = 0
        self.timeouts = 0
        self.errors = 0
        self.mismatched = 0  # answers dropped: wrong ID/question or unparsable
        self.healthcheck_failures = 0  # coredns_proxy_healthcheck_failures_total{to}
        self.tcp_opened = 0
        self.tcp_reused = 0
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    def __repr__(self) -> str:
        return f"<Upstream {self.addr} fails={self.fails}>"

    def down(self, max_fails: int) -> bool:
        return max_fails != 0 and self.fails > max_fails

    async def exchange(self, msg: bytes, qid: int, q, tcp: bool, timeout: float) -> bytes:
        """Send ``msg`` (already carrying ``qid``) and return the matching answer."""
        if tcp:
            self.sent_tcp += 1
            return await self._tcp(msg, qid, q, timeout)
        self.sent_udp += 1
        return await self._udp(msg, qid, q, timeout)

    def _accept(self, data: bytes, qid: int, q) -> bool:
        try:
            resp = wire.parse_response(data)
        except errors.WireError:
            self.mismatched += 1
            return False
        if not matches(resp, qid, q):
            self.mismatched += 1
            return False
        return True

    async def _udp(self, msg: bytes, qid: int, q, timeout: float) -> bytes:
        loop = asyncio.get_running_loop()
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((self.host, self.port))
            sock.send(msg)
            async with asyncio.timeout(timeout):
                while True:
                    data = await loop.sock_recv(sock, 65535)
                    if self._accept(data, qid, q):
                        return data
        except TimeoutError:
            self.timeouts += 1
            raise UpstreamTimeout(f"{self.addr}: no answer over UDP in {timeout:g}s") from None
        except OSError as e:  # ICMP port unreachable arrives as ConnectionRefusedError
            self.errors += 1
            raise UpstreamError(f"{self.addr}: {e}") from e
        finally:
            sock.close()

    # -- TCP with connection reuse

    def _take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        now = time.monotonic()
        while self._idle:
            reader, writer, used = self._idle.pop()
            if now - used < self.expire and not writer.is_closing() and not reader.at_eof():
                self.tcp_reused += 1
                return reader, writer
            writer.close()
        return None

    def _put(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        now = time.monotonic()
        # drop the expired ones first (oldest at the front)
        while self._idle and now - self._idle[0][2] >= self.expire:
            self._idle.pop(0)[1].close()
        if self.expire <= 0 or (self.max_idle_conns and len(self._idle) >= self.max_idle_conns):
            writer.close()
            return
        self._idle.append((reader, writer, now))

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def _tcp(self, msg: bytes, qid: int, q, timeout: float) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        frame = len(msg).to_bytes(2, "big") + msg
        while True:
            conn = self._take()
            reused = conn is not None
            writer = conn[1] if conn else None
            ok = False
            try:
                async with asyncio.timeout_at(deadline):
                    if conn is None:
                        conn = await asyncio.open_connection(self.host, self.port)
                        writer = conn[1]
                        self.tcp_opened += 1
                    reader, writer = conn
                    writer.write(frame)
                    while True:
                        n = int.from_bytes(await reader.readexactly(2), "big")
                        data = await reader.readexactly(n)
                        if self._accept(data, qid, q):
                            ok = True
                            self._put(reader, writer)
                            return data
            except (asyncio.IncompleteReadError, ConnectionError) as e:
                if reused:
                    continue  # the server closed a cached connection: one fresh try
                self.errors += 1
                raise UpstreamError(f"{self.addr}: TCP: {e!r}") from e
            except TimeoutError:
                self.timeouts += 1
                raise UpstreamTimeout(f"{self.addr}: no answer over TCP in {timeout:g}s") from None
            except OSError as e:
                self.errors += 1
                raise UpstreamError(f"{self.addr}: TCP: {e}") from e
            finally:
                if not ok and writer is not None:
                    writer.close()

    def close(self) -> None:
        """Close the idle TCP connections."""
        while self._idle:
            self._idle.pop()[1].close()
