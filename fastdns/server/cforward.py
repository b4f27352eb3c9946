"""Configure the fast path's C forwarder (``_udp.CForwarder``, ``_udp_forward.pxi``).

The C side forwards a UDP miss without a Python object; this side keeps
every decision that is not per packet:

- *which blocks*: a ``forward`` block without ``force_tcp``, with at most 16
  upstreams and 8 ``except`` zones, and either no ``cache`` or one kept in
  the host's shared table with its policy in C (``CacheTable.set_policy``,
  ``BlockRouter.attach_mirror``; every cache of NodeLocal's four). For such a
  block the C side stores each answer in the table and renders every
  waiter's reply from it, and concurrent misses of one key share one
  upstream query, as ``ForwardingResolver`` does; it takes only true misses
  (no entry in any state: stale entries, prefetch windows and keys this
  worker keeps privately stay with ``ForwardingResolver``), and what it
  cannot store or render comes back here (``_on_cached``). The C side
  serves a name only where
  ``BlockRouter.route`` would pick that block: per listener socket, the
  zones of every block on its port, longest first, as ``Config.select``
  orders them (a name under a zone of a block C leaves alone goes to
  Python), and only for names in no image zone (the image's kubernetes
  fallthrough and pod zones stay with the slow path).
- *sockets*: ``SOCKETS`` connected UDP sockets per upstream, registered with
  the event loop (``loop.add_reader`` -> ``CForwarder.drain``). A socket that
  sent ``ROTATE_AFTER`` queries is replaced by a fresh one (a new random
  source port, RFC 5452 §10); the old one keeps reading until the read
  timeout has passed, then closes.
- *health*: the forwarder's ``HealthChecker`` still probes; each probe
  pushes the upstream's state (``on_change``), and an attempt the C side
  saw fail starts the probes (``HealthChecker.trigger``) as a failed
  Python exchange does.
- *time*: while anything is pending a timer calls ``expire`` every
  ``TICK`` s (the C side asks for it through ``on_pending``).
- *counts*: the C side's per-upstream words are added to the Python
  forwarders' in ``BlockRouter.export`` (``router.c_forward``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from fastdns import errors
from fastdns.codec import wire
from fastdns.ipc import layout
from fastdns.names import zone_key

log = logging.getLogger(__name__)

SOCKETS = 4  # connected sockets per upstream (_udp_forward.pxi CF_NSOCK)
ROTATE_AFTER = 2048  # queries per socket before it is replaced
TICK = 0.05  # s between expiry passes while something is pending
MAX_UPSTREAMS = 16
MAX_EXCEPT = 8
_POLICY = {"random": 0, "round_robin": 1, "sequential": 2}


def eligible(resolver: Any, table: Any = None) -> bool:
    """Can the C side take this block's UDP misses? ``table``: the shared
    CacheTable, whose caches with a policy in C it can store for."""
    f = resolver.forwarder
    c = f.config
    cache = resolver.cache
    cached = cache is None or (table is not None and cache.shared is table
                               and table.policy_active(cache.index))
    return (cached and not c.force_tcp and c.tls is None
            and all(u.transport == "dns" for u in c.to)
            and c.read_timeout in (None, 2.0) and c.source_address is None
            and c.policy in _POLICY and 0 < len(f.upstreams) <= MAX_UPSTREAMS
            and len(f.except_zones) <= MAX_EXCEPT)


class CForward:
    """One Corefile's C forwarder, for one worker (``attach`` builds it)."""

    def __init__(self, module: Any, fast: Any, router: Any,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.router = router
        self.fast = fast
        self.c = module.CForwarder(layout.FWD_END - layout.W_FWD,
                                   layout.W_FWD_BROKEN - layout.W_FWD, layout.FWD_HIST,
                                   self._on_pending, self._on_refused)
        self.socks: dict[int, socket.socket] = {}  # fd -> socket, every one we read
        self.ups: list[tuple[Any, Any, list[int]]] = []  # C index -> (Forwarder, Upstream, fds)
        self._timer: asyncio.TimerHandle | None = None
        self._retiring: list[asyncio.TimerHandle] = []
        self._closed = False
        self.blocks = 0
        self.resolvers: dict[int, Any] = {}  # C block -> ForwardingResolver
        self.port_of: dict[int, int] = {}  # listener fd -> its port (the errors reports)
        self.plugins: Any = None  # WorkerPlugins (sync)

    def build(self, config: Any, udp_by_fd: dict) -> None:
        """Add the blocks, upstreams and listener routes of ``config``."""
        router = self.router
        table = self.fast.cache if getattr(router, "c_cache", False) else None
        if table is not None:
            self.c.set_cache(table, self._on_cached)
        blocks: dict[int, int] = {}  # id(resolver) -> C block
        for b in config.servers:
            r = router.resolver_for(b)
            if r is None or id(r) in blocks or not eligible(r, table):
                continue
            bid = self._add_block(r)
            if bid >= 0:
                blocks[id(r)] = bid
        self.blocks = len(blocks)
        if not blocks:
            return
        ports: dict[int, list[tuple[bytes, int]]] = {}
        for fd, (_sock, port) in udp_by_fd.items():
            self.port_of[fd] = port
            if port not in ports:
                ports[port] = self._routes(config, router, port, blocks)
            if not self.c.set_route(fd, ports[port]):
                log.info("C forwarder: no room for listener fd %d; its misses go to Python", fd)
        router.c_forward = self.c

    def _add_block(self, r: Any) -> int:
        f = r.forwarder
        c = f.config
        handover = 0
        for rc in (*c.next_rcodes, *c.failover_rcodes):
            if 0 <= rc < 16:
                handover |= 1 << rc
        bid = self.c.add_block(f.from_zone, list(f.except_zones), _POLICY[c.policy],
                               c.max_concurrent, c.failfast_all_unhealthy_upstreams, handover,
                               f.read_timeout, f.timeout,
                               r.cache.index if r.cache is not None else -1)
        if bid < 0:
            return -1
        self.resolvers[bid] = r
        for up in f.upstreams:
            fds = [self._open(up) for _ in range(SOCKETS)]
            slot = self.router.slot_of(up.addr)
            u = self.c.add_upstream(bid, fds, slot + layout.FS_CONN + 1,  # udp misses
                                    slot + layout.FS_DURATIONS)
            if u < 0:  # cannot happen within the limits eligible() checks
                raise RuntimeError("C forwarder: upstream table full")
            self.ups.append((f, up, fds))
            self.c.set_healthy(u, not up.down(f.max_fails))
        f.health.on_change = self._health_changed
        return bid

    @staticmethod
    def _routes(config: Any, router: Any, port: int,
                blocks: dict[int, int]) -> list[tuple[bytes, int]]:
        """Config.select's table for ``port``: each zone's first block, longest first."""
        zones: dict[bytes, int] = {}
        for b in config.servers:
            if b.port != port:
                continue
            r = router.resolver_for(b)
            bid = blocks.get(id(r), -1) if r is not None else -1
            for z in b.zones:
                zones.setdefault(zone_key(z), bid)
        return sorted(zones.items(), key=lambda kv: -len(kv[0]))

    def _open(self, up: Any) -> int:
        s = socket.socket(up.family, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect((up.host, up.port))
        fd = s.fileno()
        self.socks[fd] = s
        self.loop.add_reader(fd, self.c.drain, fd)
        return fd

    def _close_fd(self, fd: int) -> None:
        s = self.socks.pop(fd, None)
        if s is None:
            return
        self.loop.remove_reader(fd)
        self.c.forget_fd(fd)
        s.close()

    # -- callbacks --------------------------------------------------------------

    def _on_cached(self, bid: int, query: bytes, raw: bytes, store: bool) -> bytes | None:
        """A cached block's reply where C could not give it: ``store``, the answer
        ``raw`` is one ``insert_response`` left undecided (ResponseCache.put
        decides; one larger than a slot stays in this worker's store, and its
        later misses come to Python); then the reply as
        ForwardingResolver._forward renders it."""
        r = self.resolvers.get(bid)
        if r is None or r.cache is None:
            return None
        try:
            q = wire.parse_query(query)
        except errors.WireError:
            return None
        if store:
            r.cache.put(raw, q, r.clock())
            if r.cache.holds_private(q):
                self.c.note_private(r.cache.key(q))
        try:
            return r.cached_reply(raw, query, q)
        except errors.WireError:
            return None

    def _health_changed(self, up: Any) -> None:
        for i, (f, u, _fds) in enumerate(self.ups):
            if u is up:
                self.c.set_healthy(i, not u.down(f.max_fails))

    def _on_refused(self, fd: int) -> None:
        # libuv stops polling a socket whose poll reported an error (uv__poll_io,
        # POLLERR): register it again once this callback has returned
        self.loop.call_soon(self._rearm, fd)
        self._failed(self.c.take_failed())

    def _rearm(self, fd: int) -> None:
        if fd in self.socks and not self._closed:
            self.loop.remove_reader(fd)
            self.loop.add_reader(fd, self.c.drain, fd)

    def _on_pending(self) -> None:
        if self._timer is None and not self._closed:
            self._timer = self.loop.call_later(TICK, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._closed:
            return
        self._failed(self.c.expire())
        self._report()
        self._rotate()
        if self.c.pending:
            self._timer = self.loop.call_later(TICK, self._tick)
        else:
            self.c.timer_armed = False

    def _failed(self, mask: int) -> None:
        """Start the probes of the upstreams in ``mask`` (bit u: C upstream u), as a
        failed Python exchange does (Forwarder._exchange: ``health.trigger``)."""
        i = 0
        while mask:
            if mask & 1 and i < len(self.ups):
                f, up, _fds = self.ups[i]
                f.health.trigger(up)
            mask >>= 1
            i += 1

    def _report(self) -> None:
        """The SERVFAILs the C side answered, to the errors plugin (at most
        CF_REPORTS per tick; the rest are counted in ``reports_dropped``)."""
        if self.plugins is None or not self.c.reports:
            return
        for query, fd in self.c.take_reports():
            self.plugins.report_servfail(query, self.port_of.get(fd, 0))

    def _rotate(self) -> None:
        for i, (f, up, fds) in enumerate(self.ups):
            for k in range(len(fds)):
                if self.c.socket_sent(i, k) < ROTATE_AFTER:
                    continue
                try:
                    fd = self._open(up)
                except OSError:
                    continue
                old = self.c.replace_socket(i, k, fd)
                fds[k] = fd
                self._retiring.append(
                    self.loop.call_later(f.read_timeout + 1.0, self._close_fd, old))
        if len(self._retiring) > 64:
            self._retiring = [h for h in self._retiring if not h.cancelled()
                              and h.when() > self.loop.time()]

    def sync(self, plugins: Any) -> None:
        """Turn the C path on or off for what the plugins need now (``wanted``)."""
        if not self._closed:
            self.plugins = plugins
            self.c.report_errors = plugins.reports_errors
            self.fast.set_forward(self.c, wanted(plugins))

    def close(self) -> None:
        """Stop reading the upstream sockets and close them (reload, shutdown)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for h in self._retiring:
            h.cancel()
        self._retiring.clear()
        for fd in list(self.socks):
            self._close_fd(fd)
        for f, _up, _fds in self.ups:
            f.health.on_change = None
        self.c.close()
        if self.router.c_forward is self.c:
            self.router.c_forward = None


def wanted(plugins: Any) -> bool:
    """Plugins that must see each slow query (log, whoami, an armed loop probe)
    keep every miss in Python; ``errors`` hears of the SERVFAILs the C side
    answers from its reports (``_report``), so it does not."""
    return not plugins.intercepts and plugins.qlog is None


def attach(module: Any, fast: Any, router: Any, config: Any, udp_by_fd: dict,
           plugins: Any) -> CForward | None:
    """Build the C forwarder of ``config`` and hand it to ``fast``; None when no
    block qualifies or it cannot be built (everything then goes to Python, as
    before)."""
    cf = CForward(module, fast, router, asyncio.get_running_loop())
    try:
        cf.build(config, udp_by_fd)
    except (OSError, RuntimeError):
        log.exception("the C forwarder is off")
        cf.close()
        fast.set_forward(None)
        return None
    if not cf.blocks:
        cf.close()
        fast.set_forward(None)
        return None
    cf.sync(plugins)
    return cf
