"""Pooled, pipelined TCP connections to one upstream (one pool per upstream per worker).

CoreDNS keeps its upstream connections in a per-upstream cache
(``plugin/pkg/proxy/persistent.go``): ``Dial`` takes a cached connection
unless it has been idle longer than ``expire`` (default 10 s) and counts a
``coredns_proxy_conn_cache_hits_total``, else dials and counts a miss;
``Yield`` gives it back unless ``max_idle_conns`` (0 = unlimited) idle ones
are already kept. CoreDNS has one query in flight per connection; we
pipeline instead (RFC 7766 §6.2.1.1): a query goes out on an open
connection while earlier ones are still unanswered, so a burst of
``force_tcp`` misses (NodeLocal DNSCache toward kube-dns) costs one
connection and no handshake per query. Answers may come in any order; each
is matched to its waiter by ID (unique among the connection's queries in
flight) and then by question (RFC 5452 §9.1); anything else is counted as
mismatched and dropped.

Rules, as this module applies them:

- a query takes the first open (or opening) connection with fewer than
  ``PIPELINE`` queries in flight: a hit. Only when none has room does it
  dial: a miss. So hits + misses = TCP queries sent, and concurrent queries
  arriving during one dial share that dial.
- a connection is idle when nothing is in flight on it. An idle connection
  is closed ``expire`` seconds after its last answer (a timer; ``Dial``'s
  check ``time.Since(pc.used) > expire`` is applied too), at once when
  ``expire`` is 0, and at once when ``max_idle_conns`` idle ones are
  already kept (CoreDNS ``Yield``).
- an upstream that closes the connection (EOF or reset) fails every query
  in flight on it with ``ConnClosed``; ``exchange`` sends each such query
  once more on another connection (CoreDNS retries ``ErrCachedClosed``
  once), then gives up.
- a query that times out while its connection has read nothing since that
  query was sent retires the connection: it takes no new queries and closes
  when its last one ends, so one stalled connection does not swallow every
  later query until the health checks notice.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import Any

# Queries in flight on one connection before another is dialed. Unbound
# (outside_network ``max_reuse_tcp_queries``) uses 200 as well.
PIPELINE = 200


class ConnClosed(Exception):
    """The upstream closed the connection before this query's answer arrived."""


class _Conn(asyncio.Protocol):
    """One TCP connection: a length-prefixed frame reader (RFC 1035 §4.2.2) and its waiters."""

    def __init__(self, pool: TcpPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future = loop.create_future()
        self.ready.add_done_callback(_consume)
        self.pending: dict[int, tuple[Any, asyncio.Future]] = {}  # ID -> (question, waiter)
        self.load = 0  # queries given to it and not finished (sent, or waiting for the dial)
        self.buf = bytearray()
        self.closed = False
        self.retired = False
        self.used = time.monotonic()  # when it last became idle
        self.born = self.used
        self.reads = 0  # frames read, to tell a stalled connection from a slow answer
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport) -> None:
        self.transport = transport
        if not self.ready.done():
            self.ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        start, end = 0, len(buf)
        while end - start >= 2:
            n = (buf[start] << 8) | buf[start + 1]
            if end - start - 2 < n:
                break
            self._frame(bytes(buf[start + 2 : start + 2 + n]))
            start += 2 + n
        if start:
            del buf[:start]

    def eof_received(self) -> bool:
        self._lost()
        return False  # let the transport close

    def connection_lost(self, exc) -> None:
        self._lost()

    # -- queries

    def usable(self, now: float) -> bool:
        if self.closed or self.retired:
            return False
        if self.transport is not None and self.transport.is_closing():
            return False
        if not self.load and self.ready.done() and now - self.used > self.pool.expire:
            return False  # CoreDNS Dial: idle for longer than expire
        if self.pool.max_age and now - self.born > self.pool.max_age:
            self.retired = True  # forward max_age: finishes what it has, takes no more
            return False
        return self.load < PIPELINE

    async def ask(self, msg: bytes, qid: int, q) -> bytes:
        """Send ``msg`` with ID ``qid`` (another if taken) and wait for its answer.

        ``load`` was raised by ``TcpPool._take``; this lowers it again.
        """
        try:
            return await self._ask(msg, qid, q)
        finally:
            self.load -= 1
            if not self.load:
                self._idle()

    async def _ask(self, msg: bytes, qid: int, q) -> bytes:
        if not self.ready.done():
            await asyncio.shield(self.ready)  # one waiter's timeout must not cancel the dial
        self.ready.result()  # the dial's OSError
        if self.closed or self.transport is None:
            raise ConnClosed("closed before the query was sent")
        pending = self.pending
        while qid in pending:  # IDs unique among this connection's queries in flight
            qid = secrets.randbits(16)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        fut = asyncio.get_running_loop().create_future()
        pending[qid] = (q, fut)
        reads = self.reads
        self.transport.write(len(msg).to_bytes(2, "big") + qid.to_bytes(2, "big") + msg[2:])
        try:
            return await fut
        except asyncio.CancelledError:
            if self.reads == reads and not self.closed:
                self.retired = True  # nothing came back since we sent: stalled
            raise
        finally:
            if pending.get(qid, (None, None))[1] is fut:
                del pending[qid]

    def _frame(self, data: bytes) -> None:
        self.reads += 1
        pool = self.pool
        waiter = self.pending.get(int.from_bytes(data[:2], "big")) if len(data) >= 12 else None
        if waiter is None or waiter[1].done() or not pool.accept(data, waiter[0]):
            pool.mismatched += 1
            return
        waiter[1].set_result(data)

    # -- lifecycle

    def _idle(self) -> None:
        pool = self.pool
        self.used = time.monotonic()
        if self.closed:
            return
        if self.retired or pool.expire <= 0 or (
                pool.max_idle_conns and pool.idle_count() > pool.max_idle_conns):
            self.close()
            return
        self._timer = asyncio.get_running_loop().call_later(pool.expire, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if not self.load:
            self.close()

    def _lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.pool.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.ready.done():
            self.ready.set_exception(ConnClosed("closed while connecting"))
        for _q, fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnClosed("the upstream closed the connection"))
        self.pending.clear()

    def close(self) -> None:
        transport = self.transport
        self._lost()
        if transport is not None:
            transport.close()


def _consume(fut: asyncio.Future) -> None:
    """Mark a dial's failure as retrieved: every waiter sees it through ``result()``."""
    if not fut.cancelled():
        fut.exception()


class TcpPool:
    """The TCP connections of one upstream in one event loop.

    ``accept(data, q)`` says whether ``data`` (ID already matched) answers
    ``q``; ``opened`` counts dials (conn cache misses), ``reused`` queries
    sent on a connection already open or opening (hits), ``mismatched``
    frames that answered nothing in flight.
    """

    def __init__(self, host: str, port: int, *, expire: float, max_idle_conns: int,
                 accept: Callable[[bytes, Any], bool], tls: Any = None,
                 server_hostname: str | None = None, max_age: float = 0.0,
                 source: str | None = None) -> None:
        self.host = host
        self.port = port
        self.tls = tls  # an ssl.SSLContext: DNS over TLS (forward/tlsclient.py)
        self.server_hostname = server_hostname
        self.max_age = max_age  # forward max_age: a connection older is not reused
        self.source = source  # forward source_address
        self.expire = expire
        self.max_idle_conns = max_idle_conns
        self.accept = accept
        self.conns: list[_Conn] = []
        self.opened = self.reused = self.mismatched = 0
        self._dials: set[asyncio.Task] = set()

    def idle_count(self) -> int:
        return sum(1 for c in self.conns if not c.load and not c.closed and not c.retired)

    def forget(self, conn: _Conn) -> None:
        if conn in self.conns:
            self.conns.remove(conn)

    def _take(self) -> _Conn:
        now = time.monotonic()
        for conn in list(self.conns):
            if conn.usable(now):
                self.reused += 1
                conn.load += 1
                return conn
            if not conn.load:  # expired, or retired and done
                conn.close()
        conn = self._dial()
        conn.load += 1
        return conn

    def _dial(self) -> _Conn:
        self.opened += 1
        conn = _Conn(self)
        self.conns.append(conn)
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._connect(loop, conn))
        self._dials.add(task)
        task.add_done_callback(self._dials.discard)
        return conn

    async def _connect(self, loop, conn: _Conn) -> None:
        try:
            await loop.create_connection(
                lambda: conn, self.host, self.port, ssl=self.tls,
                server_hostname=self.server_hostname if self.tls is not None else None,
                local_addr=(self.source, 0) if self.source else None)
        except (OSError, asyncio.CancelledError) as e:
            self.forget(conn)
            conn.closed = True
            if not conn.ready.done():  # the waiters see the OSError, or a clean ConnClosed
                conn.ready.set_exception(e if isinstance(e, OSError)
                                         else ConnClosed("the pool closed while connecting"))
            if isinstance(e, asyncio.CancelledError):
                raise

    async def exchange(self, msg: bytes, qid: int, q) -> bytes:
        """The answer to ``msg`` (its ID is ``qid`` unless taken on the connection).

        Raises ``ConnClosed`` when the upstream closed the connection twice
        under this query, ``OSError`` when a dial failed; the caller bounds
        the time (cancellation is clean: the query leaves its connection).
        """
        try:
            return await self._take().ask(msg, qid, q)
        except ConnClosed:
            return await self._take().ask(msg, qid, q)

    @property
    def idle_connections(self) -> int:
        return self.idle_count()

    def close(self) -> None:
        """Close every connection (queries in flight on them fail) and stop the dials."""
        for task in list(self._dials):
            task.cancel()
        for conn in list(self.conns):
            conn.close()
