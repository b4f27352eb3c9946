"""The sockets one worker serves on: bound at its start, changed by a reload.

At start every listen address of the spec is bound (``sockets.py``) before
the first image is mapped, so a port clash fails the worker at once (exit
1, one line, which the supervisor turns into the server's exit 1). The
IPv6 wildcard is the one exception: it is optional on a host without IPv6.
A reload binds what is new and closes what is gone, keeping every socket
that stays so nothing queued on it is lost. How a bound socket is read
(the fast path, the Python path, TCP) is the worker's choice; this class
keeps the books of what is open, for the stop to close it all.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from fastdns.names import host_port
from fastdns.server.sockets import (
    NO_IPV6,
    bind_tcp,
    bind_udp,
    family_label,
    family_of,
    sockaddr,
)
from fastdns.server.tcp import DnsTcpProtocol

log = logging.getLogger("fastdns.server.worker")

Listen = tuple[tuple[str, int], ...]


class Listeners:
    """Worker ``index``'s sockets, servers and readers."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.udp_socks: list[tuple[socket.socket, int]] = []  # (socket, family label)
        self.tcp_socks: list[tuple[socket.socket, int]] = []
        self.servers: list[asyncio.Server] = []
        self.transports: list[asyncio.BaseTransport] = []
        self.udp_by_fd: dict[int, tuple[socket.socket, int]] = {}  # fd -> (socket, port)
        self.readers: set[int] = set()  # fds served by a loop reader

    def bind(self, listen: Listen) -> None:
        """Bind every address of ``listen``; exit 1 (one log line) if one fails."""
        for address, port in listen:
            fam = family_label(family_of(address))
            try:
                udp = bind_udp(address, port)
            except OSError as e:
                # The IPv6 wildcard that stands for "every address" (no `bind`)
                # is optional on a host or container without IPv6.
                if (address == "::" and e.errno in NO_IPV6 and len(listen) > 1):
                    log.warning("worker %d: no IPv6 here, not listening on [::]:%d (%s)",
                                self.index, port, e.strerror)
                    continue
                raise _bind_failed("udp", address, port, e) from None
            self._add_udp(udp, fam, port)
            try:
                self.tcp_socks.append((bind_tcp(address, port), fam))
            except OSError as e:
                raise _bind_failed("tcp", address, port, e) from None

    def _add_udp(self, udp: socket.socket, fam: int, port: int) -> None:
        self.udp_socks.append((udp, fam))
        self.udp_by_fd[udp.fileno()] = (udp, port)

    def port_of_fd(self, fd: int) -> int:
        """The local port of UDP socket ``fd`` (0 if it is not one of ours)."""
        return self.udp_by_fd.get(fd, (None, 0))[1]

    def add(self, address: str, port: int) -> tuple[socket.socket, socket.socket, int] | None:
        """Bind one more address (a reload): (udp, tcp, family label), None if it cannot be."""
        fam = family_label(family_of(address))
        try:
            udp = bind_udp(address, port)
        except OSError as e:
            log.error("worker %d: cannot listen on %s:%d: %s", self.index, address,
                      port, e.strerror or e)
            return None
        try:
            tcp = bind_tcp(address, port)
        except OSError as e:
            udp.close()
            log.error("worker %d: cannot listen on %s:%d: %s", self.index, address,
                      port, e.strerror or e)
            return None
        self._add_udp(udp, fam, port)
        return udp, tcp, fam

    async def serve_tcp(self, loop: asyncio.AbstractEventLoop,
                        factory: Callable[[], DnsTcpProtocol], sock: socket.socket,
                        fam: int) -> None:
        """Accept on a TCP socket bound by ``add``."""
        self.tcp_socks.append((sock, fam))
        self.servers.append(await loop.create_server(factory, sock=sock))

    def drop(self, loop: asyncio.AbstractEventLoop, address: str, port: int) -> None:
        """Close one listen address (a reload); what is queued on it is for an
        address no longer served."""
        where = sockaddr(address, port)[:2]
        for sock, fam in list(self.udp_socks):
            if sock.getsockname()[:2] == where:
                self.unserve_udp(loop, sock)
                self.udp_by_fd.pop(sock.fileno(), None)
                self.udp_socks.remove((sock, fam))
                sock.close()
        for server in list(self.servers):
            if where in [s.getsockname()[:2] for s in server.sockets]:
                server.close()
                self.servers.remove(server)

    def unserve_udp(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        """Stop reading ``sock`` (a transport stops when it is closed)."""
        fd = sock.fileno()
        if fd in self.readers:
            self.readers.discard(fd)
            loop.remove_reader(fd)

    async def close(self, loop: asyncio.AbstractEventLoop, close_connections: Callable[[], None]
                    ) -> None:
        """Stop reading, close every server, connection (``close_connections``),
        transport and socket, and wait (1 s at most) for the servers to close."""
        for sock, _ in self.udp_socks:
            if sock.fileno() >= 0:
                self.unserve_udp(loop, sock)
        for server in self.servers:
            server.close()
        close_connections()
        for transport in self.transports:
            transport.close()
        for sock, _ in self.udp_socks + self.tcp_socks:
            sock.close()
        for server in self.servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 1.0)
            except TimeoutError:
                pass


def _bind_failed(proto: str, address: str, port: int, e: OSError) -> SystemExit:
    """One line, as the supervisor's pre-check words it (server/portcheck.py), then
    exit 1: the supervisor stops the server when a worker fails at startup."""
    log.error("listen %s %s: bind: %s", proto, host_port(address, port),
              (e.strerror or str(e)).lower())
    return SystemExit(1)
