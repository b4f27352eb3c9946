"""DNS over TCP for one worker: framing, pipelining, and who may hold a connection.

RFC 1035 §4.2.2 / RFC 7766 §8: each message is prefixed with its 2-octet
length. A client may pipeline several queries before reading (RFC 7766
§6.2.1.1) and answers may go out in any order (§7); here each complete frame
is answered as soon as it arrives. A TCP answer is never truncated below the
65535-octet frame limit, so a client that got TC=1 over UDP gets the whole
answer here.

Connections cost a worker a slot and a file descriptor, so a client must not
be able to hold them for free (RFC 7766 §10 asks for limits on the total, per
source address, and on idle time). The policy, CoreDNS's plus what its
fixed limits lack:

- **A deadline per message.** A whole message must arrive within
  ``read_timeout`` of its first byte; the first message's clock starts at
  accept. A byte buys no time, so a client trickling one byte a second is
  closed after 3 s rather than kept forever. miekg/dns (which CoreDNS
  serves with) does the same: ``server.go`` ``readTCP`` sets one read
  deadline before the length and the body of each message, and
  ``serveTCPConn`` gives the first message the read timeout; CoreDNS's
  ``core/dnsserver/server.go`` sets ReadTimeout 3 s, WriteTimeout 5 s,
  IdleTimeout 10 s (the ``timeouts`` plugin changes them).
- **An idle timeout that shrinks with load.** Between messages a connection
  may wait ``idle_timeout`` while the worker is at most half full; from
  there to the cap the allowance falls linearly to ``min_idle_timeout``
  (RFC 7766 §6.2.3: the idle period may vary with resources, down to zero
  under attack). A connection that never sent anything gets at most
  ``read_timeout``. Idle is the server's idle of RFC 7766 §3: every query
  received has been answered. A forwarded answer still to come, or answers
  the client does not read (over the write high-water mark, for at most
  ``write_timeout``), keep a connection busy instead.
- **A limit per client address.** At most ``max_per_client`` connections
  per peer address per worker; one more is closed at once.
- **A bounded total that stays open to newcomers.** At ``max_connections``
  the connection idle the longest is closed to admit the new one; only when
  none is idle (every one mid-message, or owed answers) is the newcomer
  refused.

Idle connections sit in two OrderedDicts in the order they went idle (those
that never sent a message, and those between messages), so the sweep that
closes expired ones and the eviction both look at one end only: O(1) per
accept, per closed connection, whatever the number held.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import cast

log = logging.getLogger(__name__)

MAX_MESSAGE = 65535
# Stop reading from a client that does not read its answers once this much
# is queued for it; pipelining must not grow a worker's memory without bound.
WRITE_HIGH_WATER = 256 * 1024

READ_TIMEOUT = 3.0  # s: CoreDNS core/dnsserver/server.go ReadTimeout (one whole message)
WRITE_TIMEOUT = 5.0  # s: CoreDNS WriteTimeout (answers the client does not take)
IDLE_TIMEOUT = 10.0  # s: CoreDNS IdleTimeout (between messages, when there is room)
MIN_IDLE_TIMEOUT = 0.5  # s: the idle allowance at the connection cap
SHRINK_FROM = 0.5  # the idle allowance starts to shrink at this fraction of the cap
MAX_CONNECTIONS = 1000  # per worker
MAX_PER_CLIENT = 256  # per peer address, per worker: room for a busy NodeLocal DNSCache
# forwarding with force_tcp from one node address (one connection per query in flight)
# A query whose answer was deferred (forwarded) keeps its connection busy
# until the answer is sent. The slow path always settles a deferral (an
# answer, SERVFAIL, or send(None) when cancelled) within the forwarder's 5 s
# overall timeout (CoreDNS forward defaultTimeout); this is only a backstop
# for a query that was dropped without a word.
PENDING_GRACE = 6.0  # s
_EPS = 1e-3  # s: a timer may fire this much early (loop clock resolution)
# The sweep may run this much after an idle connection's allowance ran out:
# each accept moves the allowance a little, and re-arming the timer for every
# one would cost more than the slot is worth (accepts expire what is due).
SWEEP_SLACK = 0.1  # s


def idle_allowance(n: int, cap: int, full: float, floor: float) -> float:
    """Seconds a connection may sit idle when ``n`` of ``cap`` slots are taken.

    ``full`` up to ``SHRINK_FROM * cap``, then linearly down to ``floor`` at
    the cap (RFC 7766 §6.2.3).
    """
    if floor > full:
        floor = full
    start = cap * SHRINK_FROM
    if n <= start:
        return full
    if n >= cap:
        return floor
    return full - (full - floor) * (n - start) / (cap - start)


def _looks_like_query(frame: bytes) -> bool:
    # What the codec drops without an answer (wire._parse: shorter than a
    # header, or QR=1) is not waited for; anything else unanswered now is.
    return len(frame) >= 12 and not frame[2] & 0x80


class TcpListener:
    """State shared by every connection of one worker: the limits, the clocks, the answerer.

    ``answer(frame, family, conn) -> bytes | None`` does the counting and the
    lookup (the worker's ``answer_tcp``); an answer that takes time (the
    forwarder) comes later through ``conn.send_later(resp)``, out of order
    as RFC 7766 §7 allows. Counter hooks, each called once per event:
    ``on_accept`` (admitted), ``on_reject`` (refused: at the cap and nothing
    idle to close), ``on_idle`` (closed after its idle allowance),
    ``on_client_limit`` (refused: its address holds ``max_per_client``),
    ``on_evict`` (idle, closed to admit a newcomer at the cap) and
    ``on_deadline`` (a message not read within ``read_timeout``, or answers
    not taken within ``write_timeout``). ``loop`` is for tests with a fake
    clock; by default the running loop.
    """

    def __init__(self, answer: Callable[[bytes, int, DnsTcpProtocol], bytes | None], *,
                 idle_timeout: float = IDLE_TIMEOUT, read_timeout: float = READ_TIMEOUT,
                 write_timeout: float = WRITE_TIMEOUT,
                 min_idle_timeout: float = MIN_IDLE_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS, max_per_client: int = MAX_PER_CLIENT,
                 on_accept: Callable[[], None] = lambda: None,
                 on_reject: Callable[[], None] = lambda: None,
                 on_idle: Callable[[], None] = lambda: None,
                 on_client_limit: Callable[[], None] = lambda: None,
                 on_evict: Callable[[], None] = lambda: None,
                 on_deadline: Callable[[], None] = lambda: None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if max_per_client < 0:
            raise ValueError("max_per_client must be 0 (no limit) or more")
        self.answer = answer
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.min_idle_timeout = min_idle_timeout
        self.max_queries = -1  # per connection; -1: no bound (timeouts' maxtcpqueries)
        # what the worker was started with: a Corefile without ``timeouts`` goes back to them
        self.defaults = (read_timeout, write_timeout, idle_timeout)
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.on_accept = on_accept
        self.on_reject = on_reject
        self.on_idle = on_idle
        self.on_client_limit = on_client_limit
        self.on_evict = on_evict
        self.on_deadline = on_deadline
        self.loop = loop
        self.connections: set[DnsTcpProtocol] = set()
        self.per_client: dict[str, int] = {}
        # idle connections, oldest first: never sent a message / between messages
        self._fresh: OrderedDict[DnsTcpProtocol, None] = OrderedDict()
        self._idle: OrderedDict[DnsTcpProtocol, None] = OrderedDict()
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._sweep_at = 0.0
        # the idle allowances at the present occupancy (recomputed when it changes)
        self._allow = self._fresh_allow = 0.0
        self._occupancy_changed()

    def factory(self, family: int) -> Callable[[], DnsTcpProtocol]:
        return lambda: DnsTcpProtocol(self, family)

    def close_all(self) -> None:
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        for conn in list(self.connections):
            conn.abort()

    def allowance(self) -> float:
        """The idle allowance now, for a connection between messages."""
        return self._allow

    def _occupancy_changed(self) -> None:
        allow = idle_allowance(len(self.connections), self.max_connections,
                               self.idle_timeout, self.min_idle_timeout)
        self._allow = allow
        self._fresh_allow = allow if allow < self.read_timeout else self.read_timeout

    def idle_count(self) -> int:
        return len(self._fresh) + len(self._idle)

    # -- admission --------------------------------------------------------------

    def _admit(self, conn: DnsTcpProtocol, peer: str, now: float) -> bool:
        self._expire(now)
        if self.max_per_client and self.per_client.get(peer, 0) >= self.max_per_client:
            self.on_client_limit()
            return False
        if len(self.connections) >= self.max_connections:
            victim = self._oldest_idle()
            if victim is None:
                self.on_reject()
                return False
            victim.shut()
            self.on_evict()
        self.connections.add(conn)
        self._occupancy_changed()
        self.per_client[peer] = self.per_client.get(peer, 0) + 1
        conn._peer = peer
        conn._since = conn._msg_start = now
        self._fresh[conn] = None
        self.on_accept()
        self._arm_sweep()
        return True

    def _oldest_idle(self) -> DnsTcpProtocol | None:
        fresh = next(iter(self._fresh), None)
        idle = next(iter(self._idle), None)
        if fresh is None or (idle is not None and idle._since < fresh._since):
            return idle
        return fresh

    def _forget(self, conn: DnsTcpProtocol) -> None:
        peer = conn._peer
        if peer is None:
            return
        conn._peer = None
        self.connections.discard(conn)
        self._occupancy_changed()
        left = self.per_client.get(peer, 0) - 1
        if left > 0:
            self.per_client[peer] = left
        else:
            self.per_client.pop(peer, None)
        self._fresh.pop(conn, None)
        self._idle.pop(conn, None)

    # -- idle connections -------------------------------------------------------

    def _went_idle(self, conn: DnsTcpProtocol, now: float) -> None:
        self._fresh.pop(conn, None)
        conn._since = now
        self._idle[conn] = None
        self._idle.move_to_end(conn)
        # the queue's newest: a sweep armed in time for it is in time for all
        if self._sweep_timer is None or self._sweep_at > now + self._allow + SWEEP_SLACK:
            self._arm_sweep()

    def _expire(self, now: float) -> None:
        """Close every idle connection past its allowance at the present occupancy."""
        for queue, first_message in ((self._fresh, True), (self._idle, False)):
            while queue:
                conn = next(iter(queue))
                # each close frees room, so the allowance is read again
                limit = self._fresh_allow if first_message else self._allow
                if now - conn._since < limit - _EPS:
                    break
                conn.shut()
                self.on_idle()

    def _arm_sweep(self) -> None:
        at = None
        if self._fresh:
            at = next(iter(self._fresh))._since + self._fresh_allow
        if self._idle:
            t = next(iter(self._idle))._since + self._allow
            if at is None or t < at:
                at = t
        if at is None:
            return
        if self._sweep_timer is not None:
            if self._sweep_at <= at + SWEEP_SLACK:
                return  # fires in time (or nearly); it re-arms for what is left
            self._sweep_timer.cancel()
        self._sweep_at = at
        assert self.loop is not None
        self._sweep_timer = self.loop.call_at(at, self._on_sweep)

    def _on_sweep(self) -> None:
        self._sweep_timer = None
        assert self.loop is not None
        self._expire(self.loop.time())
        self._arm_sweep()


class DnsTcpProtocol(asyncio.Protocol):
    """One client connection: frames in, answers out, its place in the listener's policy."""

    __slots__ = ("_listener", "_family", "_transport", "_buf", "_timer", "_timer_at", "_loop",
                 "_peer", "_since", "_served", "_msg_start", "_pending", "_pending_until",
                 "_paused_at", "local_port", "local_host", "_queries")

    def __init__(self, listener: TcpListener, family: int) -> None:
        if listener.loop is None:
            listener.loop = asyncio.get_running_loop()
        self._listener = listener
        self._family = family
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._loop = listener.loop
        self._peer: str | None = None  # the counted client address; None: not (or no longer) held
        self._since = 0.0  # accepted, or went idle (the order of the idle queues)
        self._served = False  # a whole message was read
        self._msg_start = 0.0  # when the message being read began (accept, for the first)
        self._pending = 0  # deferred answers still owed
        self._pending_until = 0.0
        self._paused_at: float | None = None  # when writing went over the high-water mark
        self.local_port = 0
        self.local_host = ""  # the address the connection came in on (the metrics' server)
        self._queries = 0  # messages read (timeouts' maxtcpqueries closes at its bound)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if peername else ""
        tr = cast(asyncio.Transport, transport)  # a stream server's transport
        if not self._listener._admit(self, peer, self._loop.time()):
            tr.abort()
            return
        self._transport = tr
        sockname = transport.get_extra_info("sockname")
        self.local_port = sockname[1] if sockname else 0
        self.local_host = sockname[0] if sockname else ""
        self._transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._peer is None:
            return
        now = self._loop.time()
        buf = self._buf
        if not buf and self._served:
            self._msg_start = now  # the first byte of the next message
        buf += data
        pos, n = 0, len(buf)
        out = []
        if 0 < self._listener.max_queries <= self._queries:
            pos = n  # past maxtcpqueries: read nothing more, close once answered
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
            elif _looks_like_query(frame):
                self._pending += 1  # send_later owes it (or it expires, PENDING_GRACE)
                self._pending_until = now + PENDING_GRACE
            self._queries += 1
            if 0 < self._listener.max_queries <= self._queries:
                pos = n  # the bound: nothing more is read on this connection
                break
        if pos:
            del buf[:pos]
            self._served = True
            if buf:
                self._msg_start = now
        if out and self._transport is not None:
            self._transport.write(b"".join(out))
        if self._spent():
            return
        self._settle(now, activity=pos > 0)

    def _spent(self) -> bool:
        """At ``maxtcpqueries`` with every answer written: close (CoreDNS's server
        closes the connection after its last allowed query is answered)."""
        if not 0 < self._listener.max_queries <= self._queries or self._pending:
            return False
        t = self._transport
        if t is not None and not t.is_closing():
            self._listener._forget(self)
            self._cancel_timer()
            t.close()  # written answers are flushed first
        return True

    def peername(self) -> tuple | None:
        """The client's address as the socket gives it (whoami, log); None once closed."""
        t = self._transport
        return t.get_extra_info("peername") if t is not None else None

    def send_later(self, resp: bytes | None) -> bool:
        """Write one answer that was not ready in ``data_received``; False if gone."""
        if self._pending:
            self._pending -= 1
            if not self._pending and self._peer is not None:
                self._settle(self._loop.time(), activity=True)
        if resp is None or self._transport is None or self._transport.is_closing():
            return False
        self._transport.write(len(resp).to_bytes(2, "big") + resp)
        self._spent()
        return True

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()
            self._paused_at = self._loop.time()
            self._settle(self._paused_at, activity=False)

    def resume_writing(self) -> None:
        self._paused_at = None
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()
            self._settle(self._loop.time(), activity=True)

    def eof_received(self) -> bool:
        return False  # half-close from the client: close once our answers are written

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener._forget(self)
        self._cancel_timer()
        self._transport = None

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def shut(self) -> None:
        """Close for the policy: out of the counts at once; a reset when answers are queued."""
        self._listener._forget(self)
        self._cancel_timer()
        t = self._transport
        if t is not None and not t.is_closing():
            if t.get_write_buffer_size():
                t.abort()  # a client that does not read would hold a closing socket
            else:
                t.close()

    # -- where the connection stands ----------------------------------------------

    def _busy_until(self) -> float | None:
        """The earliest deadline of what keeps this connection busy; None when idle."""
        lst = self._listener
        at = None
        if self._buf:
            at = self._msg_start + lst.read_timeout
        if self._paused_at is not None:
            t = self._paused_at + lst.write_timeout
            at = t if at is None else min(at, t)
        if self._pending:
            at = self._pending_until if at is None else min(at, self._pending_until)
        return at

    def _settle(self, now: float, activity: bool) -> None:
        """Busy: out of the idle queues, a timer at its deadline. Idle: at the queue's
        end if something happened (or it was not queued), else left where it is."""
        if self._peer is None:
            return
        lst = self._listener
        at = self._busy_until()
        if at is not None:
            lst._fresh.pop(self, None)
            lst._idle.pop(self, None)
            self._arm(at)
        elif self._served and (activity or self not in lst._idle):
            lst._went_idle(self, now)

    def _arm(self, at: float) -> None:
        # One timer per busy connection, re-armed lazily: a timer that fires
        # early finds less to do and re-arms; one that fires late would not do.
        if self._timer is not None:
            if self._timer_at <= at + _EPS:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self._peer is None:
            return
        lst = self._listener
        now = self._loop.time()
        if (self._buf and now >= self._msg_start + lst.read_timeout - _EPS) or \
                (self._paused_at is not None
                 and now >= self._paused_at + lst.write_timeout - _EPS):
            self.shut()
            lst.on_deadline()
            return
        activity = False
        if self._pending and now >= self._pending_until - _EPS:
            self._pending = 0
            activity = True
        self._settle(now, activity)
