"""One upstream server: a UDP or TCP exchange, pooled TCP connections, health state.

Anti-spoofing (RFC 5452): every UDP query goes out of a fresh connected
socket, so the kernel picks a random ephemeral source port (Linux
``udp_lib_get_port`` starts at a random point) and drops datagrams from any
other address; the caller puts a random 16-bit ID in the query. An answer
whose ID or question differs is counted and ignored, and we keep waiting for
the real one until the read timeout (CoreDNS ``plugin/pkg/proxy/connect.go``
does the same: it reads again while the ID does not match).

TCP goes through the upstream's ``TcpPool`` (``tcppool.py``): connections
kept open until idle for ``expire`` seconds, several queries pipelined on
one, a connection the server closed retried once on another.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from fastdns import errors
from fastdns.codec import wire
from fastdns.forward.message import matches
from fastdns.forward.tcppool import ConnClosed, TcpPool


class UpstreamError(Exception):
    """The exchange with one upstream failed (network error or closed connection)."""


class UpstreamTimeout(UpstreamError):
    """No matching answer arrived within the read timeout."""


def _pool_count(name: str) -> property:
    """An Upstream counter kept on its TcpPool, read and written through."""
    return property(lambda self: getattr(self.tcp, name),
                    lambda self, n: setattr(self.tcp, name, n), doc=f"``TcpPool.{name}``")


class Upstream:
    """Runtime state of one ``forward`` TO: address, connection pool, health.

    ``fails`` counts consecutive failed health probes; the upstream is down
    when it exceeds ``max_fails`` (CoreDNS ``Proxy.Down``: "*more* fails
    than maxfails") and up again as soon as a probe gets any answer.
    """

    def __init__(self, host: str, port: int, *, expire: float = 10.0,
                 max_idle_conns: int = 0, tls: Any = None, server_hostname: str | None = None,
                 max_age: float = 0.0, source: str | None = None) -> None:
        self.host = host
        self.port = port
        self.tls = tls  # an ssl.SSLContext for a tls:// upstream (always TCP)
        self.server_hostname = server_hostname
        self.source = source
        # CoreDNS's `to` label: net.JoinHostPort (IPv6 bracketed).
        self.addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.expire = expire
        self.max_idle_conns = max_idle_conns
        self.fails = 0
        # counters (the TCP ones live on the pool: tcp_opened, tcp_reused)
        self.sent_udp = self.sent_tcp = self.timeouts = self.errors = 0
        self.udp_mismatched = 0  # UDP answers dropped: wrong ID/question or unparsable
        self.healthcheck_failures = 0  # coredns_proxy_healthcheck_failures_total{to}
        self.tcp = TcpPool(host, port, expire=expire, max_idle_conns=max_idle_conns,
                           accept=self._answers, tls=tls, server_hostname=server_hostname,
                           max_age=max_age, source=source)

    def __repr__(self) -> str:
        return f"<Upstream {self.addr} fails={self.fails}>"

    def down(self, max_fails: int) -> bool:
        return max_fails != 0 and self.fails > max_fails

    async def exchange(self, msg: bytes, qid: int, q, tcp: bool, timeout: float) -> bytes:
        """Send ``msg`` (already carrying ``qid``) and return the matching answer."""
        if tcp or self.tls is not None:
            self.sent_tcp += 1
            return await self._tcp(msg, qid, q, timeout)
        self.sent_udp += 1
        return await self._udp(msg, qid, q, timeout)

    async def probe(self, msg: bytes, qid: int, q, tcp: bool, timeout: float) -> bytes:
        """A health probe's exchange: over UDP as any other; over TCP on a connection
        of its own, closed after. CoreDNS's checker (plugin/pkg/proxy/health.go
        ``dnsHc.send``) has its own ``dns.Client``, outside the connection cache,
        so a probe neither takes nor counts a pooled connection
        (coredns_proxy_conn_cache_*)."""
        if not tcp and self.tls is None:
            return await self._udp(msg, qid, q, timeout)
        writer = None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self.tls,
                    server_hostname=self.server_hostname if self.tls is not None else None,
                    local_addr=(self.source, 0) if self.source else None)
                writer.write(len(msg).to_bytes(2, "big") + msg)
                while True:
                    n = int.from_bytes(await reader.readexactly(2), "big")
                    data = await reader.readexactly(n)
                    if self._answers(data, q, qid):
                        return data
        except TimeoutError:
            raise UpstreamTimeout(f"{self.addr}: no probe answer over TCP in {timeout:g}s") \
                from None
        except (OSError, asyncio.IncompleteReadError) as e:  # ssl.SSLError is an OSError
            raise UpstreamError(f"{self.addr}: TCP probe: {e!r}") from e
        finally:
            if writer is not None:
                writer.close()

    @property
    def mismatched(self) -> int:
        """Answers dropped, both transports: wrong ID or question, or unparsable."""
        return self.udp_mismatched + self.tcp.mismatched

    # CoreDNS proxy.Connect counts a cached connection as a hit, a dial as a miss
    tcp_opened = _pool_count("opened")
    tcp_reused = _pool_count("reused")

    @property
    def idle_connections(self) -> int:
        return self.tcp.idle_count()

    @staticmethod
    def _answers(data: bytes, q, qid: int | None = None) -> bool:
        """Is ``data`` a well-formed answer to ``q`` with ID ``qid`` (default: its own)?"""
        try:
            resp = wire.parse_response(data)
        except errors.WireError:
            return False
        return matches(resp, resp.id if qid is None else qid, q)

    def _accept(self, data: bytes, qid: int, q) -> bool:
        if self._answers(data, q, qid):
            return True
        self.udp_mismatched += 1
        return False

    async def _udp(self, msg: bytes, qid: int, q, timeout: float) -> bytes:
        loop = asyncio.get_running_loop()
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if self.source:
                sock.bind((self.source, 0))
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

    async def _tcp(self, msg: bytes, qid: int, q, timeout: float) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self.tcp.exchange(msg, qid, q)
        except TimeoutError:
            self.timeouts += 1
            raise UpstreamTimeout(f"{self.addr}: no answer over TCP in {timeout:g}s") from None
        except (ConnClosed, OSError) as e:  # ssl.SSLError is an OSError
            self.errors += 1
            raise UpstreamError(f"{self.addr}: TCP: {e!r}") from e

    def close(self) -> None:
        """Close the TCP connections."""
        self.tcp.close()
