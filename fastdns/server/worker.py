"""A worker process: binds UDP and TCP with SO_REUSEPORT and answers from the snapshot.

The supervisor starts one per core with its launcher (``server/childproc.py``) and
``worker_main(spec)``. Its parts, one concern each: the sockets
(``sockets.py``: every worker binds every listen address with SO_REUSEPORT),
the snapshot it answers from (``imagemap.py``), the UDP readers (the Cython
``_udp.FastPath``, or ``pyudp.py``), TCP (``tcp.py``), the slow path
(``slowpath.py``, ``forwarding.py``) and the per-query plugins
(``worker_plugins.py``). This module joins them and runs the loop.

A reloaded Corefile (``fastdns/control/reload.py``) is taken up on the
worker's 0.5 s timer (``reconfigure_if_changed``): the sockets of listen
addresses that stay are kept, so nothing queued on them is lost.

Before the first publish a worker has its sockets bound (so a port clash
fails at once) but does not read them: queries wait in the socket buffers
and are answered as soon as the first image is mapped. Answering SERVFAIL
instead would teach clients' negative caches nothing useful, and the image
itself carries CoreDNS's "SERVFAIL until synced" behaviour (IMG_SYNCED).

Wildcard UDP sockets (``.:53`` without ``bind``: 0.0.0.0 and ::) answer
every query from the address it was sent to, as CoreDNS does
(``server/udpsource.py``); a socket bound to one address needs nothing for
that and keeps the plain path.

Stop (``procsignals.STOP`` from the supervisor; SIGTERM/SIGINT when no
supervisor started it, or once it is gone): stop reading, close the sockets
and connections, unmap, return (exit status 0).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import mmap
import os
import socket
import time
from collections.abc import Callable
from types import FrameType, ModuleType
from typing import TYPE_CHECKING

from fastdns import procsignals
from fastdns.codec import NO_EXTENSIONS, wire
from fastdns.corefile.listen import listen_addresses
from fastdns.corefile.model import Config
from fastdns.ipc import counters as ctr
from fastdns.ipc import image as img
from fastdns.ipc import layout, shm
from fastdns.plugins import timeouts
from fastdns.server import beforechain, handover, udpsource
from fastdns.server.beforechain import ZONE_PRELOOKUP
from fastdns.server.corefile_in_force import CorefileInForce
from fastdns.server.imagemap import ImageMap
from fastdns.server.listeners import Listeners
from fastdns.server.pyudp import PyUdpProtocol
from fastdns.server.rows import QueryRows
from fastdns.server.slowpath import ZONE_EXTERNAL, Deferred, SlowPath
from fastdns.server.sockets import TCP, UDP
from fastdns.server.tcp import MAX_MESSAGE, DnsTcpProtocol, TcpListener
from fastdns.server.worker_plugins import WorkerPlugins
from fastdns.server.workerspec import WorkerSpec

if TYPE_CHECKING:
    from fastdns.server._udp import FastPath
    from fastdns.server.cforward import CForward
    from fastdns.server.forwarding import BlockRouter, ForwardingResolver

log = logging.getLogger(__name__)

_udp: ModuleType | None = None  # None: the Python UDP path (pyudp.py)
if not NO_EXTENSIONS:
    try:
        from fastdns.server import _udp
    except ImportError:  # pragma: no cover - the extension was not built
        _udp = None

GENERATION_POLL = 0.5  # s: an idle worker's timer (a publish rings it at once: ipc/doorbell.py)
FIRST_IMAGE_POLL = 0.02  # s


class Worker:
    """One worker process: its parts, joined; ``run`` is its whole life.

    The public methods are what the parts call back (``answer_py``,
    ``row_of`` and ``intercept`` from the Python UDP path, ``answer_tcp``
    from TCP, ``port_of_fd`` from the plugins) and what a reload changes
    (``add_listener``, ``drop_listener``, ``configure_forward``).
    """

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.ctl = shm.ControlSegment.attach(spec.instance)
        self.counters = ctr.Counters(self.ctl.counters(spec.index))
        self._counters_block: memoryview | None = self.ctl.counters(spec.index)
        self.images = ImageMap(self.ctl, spec.index, self.counters)
        self.rotation = 0
        self.router: BlockRouter | None = None  # forward + cache (imported when used)
        self.cforward: CForward | None = None  # the fast path's C forwarder (cforward.py)
        self.rows = QueryRows(self.counters, spec.index)  # the metrics' (server, zone)
        self.slow = SlowPath(self.images.buf, self.counters, route=self._route)
        self.listeners = Listeners(spec.index)  # sockets, servers, readers
        self.plugins = WorkerPlugins(None)  # log, errors, whoami (worker_plugins.py)
        self.corefile = CorefileInForce(spec.instance, spec.index)  # reload: what is in force
        self.tcp = TcpListener(self.answer_tcp, idle_timeout=spec.tcp_idle_timeout,
                               read_timeout=spec.tcp_read_timeout,
                               max_connections=spec.tcp_max_connections,
                               max_per_client=spec.tcp_max_per_client,
                               on_accept=lambda: self.counters.incr(layout.W_TCP_ACCEPTED),
                               on_reject=lambda: self.counters.incr(layout.W_TCP_REJECTED),
                               on_idle=lambda: self.counters.incr(layout.W_TCP_IDLE_CLOSED))
        self._stop: asyncio.Event | None = None
        self._gen_map: mmap.mmap | None = None
        self._gen_view: memoryview | None = None
        self.fast: FastPath | None = None
        self._logged_answer_error = False

    # -- answering (Python paths) ----------------------------------------------

    def answer_py(self, data: bytes, proto: int, family: int, port: int = 0,
                  send: Callable[[bytes | None], None] | None = None,
                  row: int | None = None) -> bytes | None:
        """Count, answer and count the answer of one query (TCP, or UDP without _udp).

        A forwarded query's answer goes out later through ``send(resp)``,
        which counts it; None is returned for it here. ``row``: the query's
        (server, zone) row (``row_of``), None to count the totals only.
        """
        t0 = time.perf_counter()
        c = self.counters
        c.query(proto, family, data, row)
        resp = self.lookup(data, proto, port, send)
        if isinstance(resp, Deferred):
            return None
        c.response(proto, resp, row)
        c.latency(time.perf_counter() - t0, 1, row)
        return resp

    def lookup(self, data: bytes, proto: int, port: int = 0,
               send: Callable[[bytes | None], None] | None = None) -> bytes | Deferred | None:
        """The image's answer, else the slow path's (DEFERRED: ``send`` gets
        it later); nothing counted."""
        self.images.check()
        image = self.images.buf()
        if image is None:
            return None
        self.rotation = (self.rotation + 1) & 0xFFFFFFFF
        if self.slow.direct:  # a rewritten name outside its block (beforechain.pinned)
            self.counters.incr(layout.W_SLOW)
            return self.slow.answer(data, -1, port, send, proto == TCP)
        try:
            # TCP: the 65535-octet frame is the only limit (RFC 7766 §8)
            status, resp, zone = wire.answer(image, data, self.rotation,
                                             MAX_MESSAGE if proto == TCP else 0)
        except Exception:
            # only a codec bug gets here: drop the query, keep the worker
            if not self._logged_answer_error:
                self._logged_answer_error = True
                log.exception("worker %d: wire.answer failed", self.spec.index)
            return None
        if status == wire.ST_ANSWER and resp is not None and resp[3] & img.TF_EXTERNAL:
            status, zone = wire.ST_SLOW, ZONE_EXTERNAL  # the slow path completes it
        if status == wire.ST_SLOW:
            self.counters.incr(layout.W_SLOW)
            slow = self.slow.answer(data, zone, port, send, proto == TCP)
            return slow
        return resp if status == wire.ST_ANSWER else None

    def answer_tcp(self, frame: bytes, family: int,
                   conn: DnsTcpProtocol | None = None) -> bytes | None:
        send = None
        t0 = time.perf_counter()
        plugins = self.plugins
        peer = conn.peername() if conn is not None and plugins.wants_peer else None
        port = conn.local_port if conn else 0
        row = self.row_of((conn.local_host, port), frame) if conn else None
        if conn is not None:
            def send(resp: bytes | None) -> None:
                if not conn.send_later(resp):
                    resp = None
                self.counters.response(TCP, resp, row)
                # a deferred answer's time (answer_py returned before counting it)
                self.counters.latency(time.perf_counter() - t0, 1, row)
                plugins.finished(frame, peer, resp, True, port, t0)
        return beforechain.answer(self, frame, peer, TCP, family, port, send, row, t0)

    def intercept(self, data: bytes, addr: tuple, tcp: bool, port: int) -> bytes | None:
        """whoami / loop count for a query the image would hand to the slow path
        (TCP and the Python UDP path; the Cython path asks in ``_slow_udp``)."""
        image = self.images.buf()
        if image is None:
            return None
        try:
            status = wire.answer(image, data, 0, MAX_MESSAGE if tcp else 0)[0]
        except Exception:  # noqa: BLE001 - answer_py deals with it
            return None
        if status != wire.ST_SLOW:
            return None
        return self.plugins.intercept(data, addr, tcp, port)

    def _slow_udp(self, data: bytes, addr: tuple, zone: int, fd: int = -1,
                  anc: udpsource.Ancillary = ()) -> bytes | None:
        """The fast path's hand-over (``FastPath`` ``slow``): an answer for its
        batch, or None when it goes out later through ``send`` (then with
        ``anc``, from a wildcard socket the ancillary data that sends it from
        the query's destination)."""
        sock, port = self.listeners.udp_by_fd.get(fd, (None, 0))
        send = None
        plugins = self.plugins
        t0 = time.perf_counter()
        # the row _udp counted the query in (the same match, on the same table)
        row = self.rows.row_of_fd(fd, data)
        if sock is not None:
            def send(resp: bytes | None) -> None:
                if resp is not None:
                    try:
                        udpsource.send(sock, resp, addr, anc)
                    except OSError:  # buffer full, or a firewall: UDP may drop
                        self.counters.incr(layout.W_SEND_ERRORS)
                        resp = None
                self.counters.response(UDP, resp, row)
                plugins.finished(data, addr, resp, False, port, t0)
        if zone == ZONE_PRELOOKUP:  # a C hook handed it on: the plugins' before
            resp = beforechain.handed_on(self, data, addr, port, send)
            if resp is None:
                self.counters.response(UDP, None, row)
            return None if isinstance(resp, Deferred) else resp
        if plugins.intercepts:  # loop detection, whoami (worker_plugins.py)
            resp = plugins.intercept(data, addr, False, port)
            if resp is not None:
                return resp  # logged with the batch by the fast path
        slow = self.slow.answer(data, zone, port, send)
        if isinstance(slow, Deferred):
            return None
        resp = slow
        plugins.answered(data, resp, port)  # errors (the fast path logs it)
        if resp is None:
            self.counters.response(UDP, None, row)  # dropped: _udp leaves None to us
        return resp

    # -- the metrics' (server, zone) rows (rows.py) ----------------------------

    def row_of(self, sockname: tuple | None, data: bytes) -> int | None:
        return self.rows.row_of(sockname, data)

    def configure_rows(self, config: Config | None) -> None:
        self.rows.configure(
            config, {fd: s for fd, (s, _port) in self.listeners.udp_by_fd.items()}, self.fast)

    # -- forward + cache -------------------------------------------------------

    def configure_forward(self, config: Config | None) -> None:
        """(Re)build the forwarders and caches of ``config`` (a corefile Config)."""
        self.configure_rows(config)  # the Corefile's blocks: also the metrics' rows
        self._drop_cforward()
        if self.router is not None:
            self.router.close()
            if self.fast is not None:
                self.fast.cache.configure(0)
        if config is None or not any("forward" in b.plugins for b in config.servers):
            self.router = None
            return
        # imported here: a worker binds its sockets before it gets this far
        from fastdns.server.forwarding import BlockRouter

        self.router = BlockRouter(config)
        if self.fast is not None:
            self.router.attach_mirror(self.fast.cache, self.spec.instance, self.spec.index)
            self._attach_cforward(config)

    def _attach_cforward(self, config: Config) -> None:
        """Let the fast path forward the misses of the blocks it can (cforward.py)."""
        from fastdns.server import cforward

        self.cforward = cforward.attach(_udp, self.fast, self.router, config,
                                        self.listeners.udp_by_fd, self.plugins)

    def _sync_cforward(self) -> None:
        if self.cforward is not None:
            self.cforward.sync(self.plugins)  # log, a loop probe see each miss

    def _drop_cforward(self) -> None:
        if self.cforward is not None:
            self.cforward.close()
            self.cforward = None
        if self.fast is not None:
            self.fast.set_forward(None)

    def _route(self, block: int | None, qname: str, port: int) -> ForwardingResolver | None:
        return self.router.route(block, qname, port) if self.router is not None else None

    def load_config(self) -> Config | None:
        """The Corefile in force, parsed; None without one (or if it cannot be read)."""
        return self.corefile.load()

    # -- listening (listeners.py) ----------------------------------------------

    def bind(self) -> None:
        """Bind every listen address of the spec; exit 1 (one log line) if one fails."""
        self.listeners.bind(self.spec.listen)

    def add_listener(self, loop: asyncio.AbstractEventLoop, address: str, port: int) -> bool:
        """Bind and serve one more listen address (a reload); False if it cannot be bound."""
        bound = self.listeners.add(address, port)
        if bound is None:
            return False
        udp, tcp, fam = bound
        loop.create_task(self.serve_udp(loop, udp, fam))
        loop.create_task(self.listeners.serve_tcp(loop, self.tcp.factory(fam), tcp, fam))
        return True

    def drop_listener(self, loop: asyncio.AbstractEventLoop, address: str, port: int) -> None:
        """Close one listen address (a reload)."""
        self.listeners.drop(loop, address, port)

    def port_of_fd(self, fd: int) -> int:
        """The local port of UDP socket ``fd`` (0 if it is not one of ours)."""
        return self.listeners.port_of_fd(fd)

    async def serve_udp(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                        fam: int) -> None:
        """Start answering a bound UDP socket: the Cython fast path's reader, or
        the Python path (a reader of its own on a wildcard socket, a datagram
        transport otherwise)."""
        fd = sock.fileno()
        pktinfo = udpsource.is_wildcard(sock.getsockname()[0])
        if self.fast is not None:
            loop.add_reader(fd, self.fast.drain, fd, fam, pktinfo)
            self.listeners.readers.add(fd)
        elif pktinfo:
            loop.add_reader(fd, PyUdpProtocol(self, fam, sock).readable)
            self.listeners.readers.add(fd)
        else:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: PyUdpProtocol(self, fam), sock=sock)
            self.listeners.transports.append(transport)

    # -- reload ----------------------------------------------------------------

    def reconfigure_if_changed(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Take a reloaded Corefile into use (``fastdns/control/reload.py``).

        Called on the worker's 0.5 s timer. The sockets of listen addresses that
        stay are kept (so nothing queued on them is lost); new ones are bound and
        served, gone ones closed; the forwarders and the per-query plugins are
        rebuilt from the new text.
        """
        version = self.corefile.moved()
        if version is None:
            return False
        config = self.load_config()
        if config is None:
            return False
        self._apply_listen(loop, listen_addresses(config))
        self.configure_forward(config)
        self.use_plugins(config)
        log.info("worker %d: Corefile version %d in force", self.spec.index, version)
        return True

    def use_plugins(self, config: Config | None) -> None:
        """The per-query plugins of ``config``: one place for the start and every reload."""
        self.plugins = WorkerPlugins(config, self.port_of_fd,
                                     loop=(self.spec.instance, self.spec.index))
        self.plugins.install()
        self.plugins.fast_path(self.fast)
        timeouts.apply(config, self.tcp)  # the TCP listener's read/write/idle, maxtcpqueries
        self._sync_cforward()

    def _apply_listen(self, loop: asyncio.AbstractEventLoop,
                      listen: tuple[tuple[str, int], ...]) -> None:
        old = self.spec.listen
        if listen == old:
            return
        for address, port in old:
            if (address, port) not in listen:
                self.drop_listener(loop, address, port)
        for address, port in listen:
            if (address, port) not in old:
                self.add_listener(loop, address, port)
        self.spec = dataclasses.replace(self.spec, listen=listen)

    # -- lifetime --------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        procsignals.loop_install(loop, self._stop.set)  # STOP; SIGTERM once orphaned
        self.counters.start(os.getpid())
        try:
            self.bind()
            while self.images.image is None and not self._stop.is_set():
                self.images.remap()
                if self.images.image is None:
                    try:
                        await asyncio.wait_for(self._stop.wait(), FIRST_IMAGE_POLL)
                    except TimeoutError:
                        pass
            if not self._stop.is_set():
                await self._serve(loop)
                await self._stop.wait()
        finally:
            await self._shutdown(loop)

    async def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        image = self.images.image
        assert image is not None
        if _udp is not None:
            path = os.path.join(shm.SHM_DIR, self.ctl.name)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                self._gen_map = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ)
            finally:
                os.close(fd)
            self._gen_view = memoryview(self._gen_map)
            self.fast = _udp.FastPath(self._gen_view, self._counters_block, self.images.remap,
                                      self._slow_udp)
            self.fast.set_image(image.buf, self.images.generation)
            self.images.on_map = self.fast.set_image
        config = self.load_config()
        self.configure_forward(config)
        self.use_plugins(config)
        beforechain.image_of = self.images.buf  # autopath's search walk (plugins/autopath.py)
        for sock, fam in self.listeners.udp_socks:
            await self.serve_udp(loop, sock, fam)
        for sock, fam in self.listeners.tcp_socks:
            self.listeners.servers.append(
                await loop.create_server(self.tcp.factory(fam), sock=sock))
        loop.call_later(GENERATION_POLL, self._poll_generation, loop)
        self.images.listen(loop)
        log.info("worker %d (pid %d): serving generation %d on %s (%s UDP path)",
                 self.spec.index, os.getpid(), self.images.generation,
                 ", ".join(f"{a}:{p}" for a, p in self.spec.listen),
                 "Cython" if self.fast is not None else "Python")

    def _poll_generation(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._stop is not None and self._stop.is_set():
            return
        self.images.move()
        if self.router is not None:
            self.router.export(self.counters)
        self.plugins.export(self.counters)  # the plugins' counters (plugins/counting.py)
        self.reconfigure_if_changed(loop)  # a reloaded Corefile (control/reload.py)
        self.plugins.tick()
        self._sync_cforward()  # a loop probe disarmed
        loop.call_later(GENERATION_POLL, self._poll_generation, loop)

    async def _shutdown(self, loop: asyncio.AbstractEventLoop) -> None:
        # new datagrams to the instance replacing us; ours answered first (handover.py)
        await handover.drain([s for s, _ in self.listeners.udp_socks], lambda: len(
            self.slow.tasks) + (self.cforward.c.pending if self.cforward is not None else 0))
        await self.listeners.close(loop, self.tcp.close_all)
        self.slow.close()
        self._drop_cforward()
        if self.router is not None:
            self.router.close()
            self.router = None
        await asyncio.sleep(0)  # let transports run connection_lost
        if self.fast is not None:
            self.fast.release()
            self.fast = None
            self.images.on_map = None
        if self._gen_view is not None:
            self._gen_view.release()
        if self._gen_map is not None:
            self._gen_map.close()
        self.images.close()
        try:
            self.ctl.release_worker(self.spec.index)
        except (IndexError, ValueError):
            pass
        self.counters.release()
        self._counters_block = None
        self.ctl.close()


def _exit_now(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def worker_main(spec: WorkerSpec) -> None:
    """Entry point of a worker process; returns (exit 0) after SIGTERM/SIGINT."""
    import uvloop

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if spec.cpu is not None:
        os.sched_setaffinity(0, {spec.cpu})
    # Until the loop installs its handlers, a stop signal must still end the
    # worker with status 0; a group SIGTERM/SIGINT (Ctrl-C) is the
    # supervisor's to judge while it lives (fastdns/procsignals.py).
    procsignals.install(_exit_now)
    worker = Worker(spec)
    uvloop.run(worker.run())
