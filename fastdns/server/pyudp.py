"""The pure-Python UDP path: what a worker runs without the Cython fast path.

``FASTDNS_NO_EXTENSIONS=1``, or a build without ``_udp``: every query is
answered here, one datagram at a time, with the same answers and the same
counting as ``_udp.FastPath`` (tests compare the two). It lives apart from
the worker because it is one of two interchangeable readers of a UDP
socket; the worker picks one in ``serve_udp``.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Protocol, cast

from fastdns.ipc import layout
from fastdns.ipc.counters import Counters
from fastdns.server import beforechain, udpsource
from fastdns.server.sockets import UDP
from fastdns.server.tcp import MAX_MESSAGE
from fastdns.server.worker_plugins import WorkerPlugins

PY_READ_BATCH = 64  # datagrams the Python path reads per readiness callback

Address = tuple  # a peer as the socket module gives it: (host, port[, flow, scope])


class UdpAnswerer(Protocol):
    """What the Python UDP path asks of its worker (``worker.Worker``)."""

    counters: Counters
    plugins: WorkerPlugins

    def row_of(self, sockname: tuple | None, data: bytes) -> int | None: ...

    def intercept(self, data: bytes, addr: Address, tcp: bool, port: int) -> bytes | None: ...

    def answer_py(self, data: bytes, proto: int, family: int, port: int = 0,
                  send: Callable[[bytes | None], None] | None = None,
                  row: int | None = None) -> bytes | None: ...


class PyUdpProtocol(asyncio.DatagramProtocol):
    """The pure-Python UDP path (FASTDNS_NO_EXTENSIONS=1 or no build): same answers.

    A socket bound to one address is served through an asyncio datagram
    transport. A wildcard socket is not (``sock`` given): a transport cannot
    send with ancillary data, so ``readable`` reads it with ``recvmsg`` from
    a loop reader and every answer goes out with ``sendmsg`` from its query's
    destination (``udpsource.py``).
    """

    def __init__(self, worker: UdpAnswerer, family: int,
                 sock: socket.socket | None = None) -> None:
        self.worker = worker
        self.family = family
        self.sock = sock
        self.sockname = sock.getsockname() if sock is not None else None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.sockname = transport.get_extra_info("sockname")

    def readable(self) -> None:
        """The loop's reader callback of a wildcard socket: answer what is queued."""
        assert self.sock is not None
        for _ in range(PY_READ_BATCH):
            try:
                data, ancdata, _flags, addr = self.sock.recvmsg(MAX_MESSAGE,
                                                                udpsource.ANCBUFSIZE)
            except OSError:  # EAGAIN: drained; anything else a reader cannot mend
                return
            self.answer(data, addr, udpsource.reply_ancillary(ancdata))

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.answer(data, addr, [])

    def answer(self, data: bytes, addr: Address, anc: udpsource.Ancillary) -> None:
        """Answer one query; ``anc``: the ancillary data its reply is sent with."""
        sockname = self.sockname
        port = sockname[1] if sockname else 0
        row = self.worker.row_of(sockname, data)  # the metrics' (server, zone)
        t0 = time.perf_counter()  # before, whoami, loop, log: beforechain.answer
        resp = beforechain.answer(self.worker, data, addr, UDP, self.family, port,
                                  self._sender(addr, anc, data, t0, row), row, t0)
        if resp is not None:
            self._send(resp, addr, anc)

    def _send(self, resp: bytes, addr: Address, anc: udpsource.Ancillary) -> bool:
        """Send one answer; False when it could not go (counted as a send error)."""
        if self.sock is not None:
            try:
                udpsource.send(self.sock, resp, addr, anc)
            except OSError:  # buffer full, or a firewall: UDP may drop
                self.worker.counters.incr(layout.W_SEND_ERRORS)
                return False
            return True
        if self.transport is None:
            return False
        self.transport.sendto(resp, addr)
        return True

    def _sender(self, addr: Address, anc: udpsource.Ancillary, data: bytes = b"",
                t0: float = 0.0, row: int | None = None) -> Callable[[bytes | None], None]:
        plugins = self.worker.plugins
        port = self.sockname[1] if self.sockname else 0

        def send(resp: bytes | None) -> None:
            if resp is not None and not self._send(resp, addr, anc):
                resp = None
            self.worker.counters.response(UDP, resp, row)
            # a deferred answer's time (answer_py returned before counting it)
            self.worker.counters.latency(time.perf_counter() - t0, 1, row)
            plugins.finished(data, addr, resp, False, port, t0)
        return send

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors for earlier answers: nothing to do (RFC 1122 §4.1.3.3)
