"""A worker process: binds UDP and TCP with SO_REUSEPORT and answers from the snapshot.

The supervisor starts one per core with its launcher (``server/childproc.py``) and
``worker_main(spec)``. Every worker binds every listen address itself with
SO_REUSEPORT, so the kernel spreads clients over workers and a dead worker
takes only its own sockets with it (``socket(7)``).

Snapshots: the worker maps the image the control segment names and checks
the generation once per UDP batch (``_udp.FastPath``), on each TCP query and
on a slow timer for an idle worker; a new generation is mapped, reported
with ``set_mapped`` so the control process can unlink the old segment, and
the old mapping is closed only after the batch that used it finished.

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
import errno
import logging
import mmap
import os
import socket
import time
from dataclasses import dataclass

from fastdns import procsignals
from fastdns.codec import NO_EXTENSIONS, wire
from fastdns.ipc import counters as ctr
from fastdns.ipc import image as img
from fastdns.ipc import layout, shm, tables
from fastdns.server import udpsource
from fastdns.server.slowpath import DEFERRED, ZONE_EXTERNAL, SlowPath
from fastdns.server.tcp import MAX_MESSAGE, MAX_PER_CLIENT, TcpListener
from fastdns.server.worker_plugins import WorkerPlugins, reconfigure_if_changed

log = logging.getLogger(__name__)

_udp = None
if not NO_EXTENSIONS:
    try:
        from fastdns.server import _udp
    except ImportError:  # pragma: no cover - the extension was not built
        _udp = None

UDP, TCP = 0, 1  # the proto index of counters.PROTOS
GENERATION_POLL = 0.5  # s: how often an idle worker notices a publish
FIRST_IMAGE_POLL = 0.02  # s
REMAP_RETRY = 0.1  # s between attempts when a published image cannot be mapped
UDP_RCVBUF = 4 << 20  # octets asked for; the kernel caps it at net.core.rmem_max
PY_READ_BATCH = 64  # datagrams the Python path reads per readiness callback
_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs; pickled to the child by ``server/childproc.py``."""

    index: int
    instance: str
    listen: tuple[tuple[str, int], ...]
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 1000
    tcp_read_timeout: float = 3.0  # one whole message (server/tcp.py)
    tcp_max_per_client: int = MAX_PER_CLIENT  # connections per peer address; 0: no limit
    cpu: int | None = None  # pin to this CPU (benchmarks); None: leave the mask alone


def family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _family_label(af: int) -> int:
    return 2 if af == socket.AF_INET6 else 1


def _sockaddr(address: str, port: int) -> tuple:
    return (address, port, 0, 0) if ":" in address else (address, port)


def bind_udp(address: str, port: int) -> socket.socket:
    af = family_of(address)
    sock = socket.socket(af, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if af == socket.AF_INET6:
            # "::" must not also take the IPv4 port another listen entry binds
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
        except OSError:
            pass
        if udpsource.is_wildcard(address):
            udpsource.enable(sock)  # before bind: no query arrives without its destination
        sock.bind(_sockaddr(address, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_tcp(address: str, port: int) -> socket.socket:
    af = family_of(address)
    sock = socket.socket(af, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if af == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(_sockaddr(address, port))
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _PyUdpProtocol(asyncio.DatagramProtocol):
    """The pure-Python UDP path (FASTDNS_NO_EXTENSIONS=1 or no build): same answers.

    A socket bound to one address is served through an asyncio datagram
    transport. A wildcard socket is not (``sock`` given): a transport cannot
    send with ancillary data, so ``readable`` reads it with ``recvmsg`` from
    a loop reader and every answer goes out with ``sendmsg`` from its query's
    destination (``udpsource.py``).
    """

    def __init__(self, worker: Worker, family: int, sock: socket.socket | None = None) -> None:
        self.worker = worker
        self.family = family
        self.sock = sock
        self.sockname = sock.getsockname() if sock is not None else None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
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

    def datagram_received(self, data: bytes, addr) -> None:
        self.answer(data, addr, [])

    def answer(self, data: bytes, addr, anc: udpsource.Ancillary) -> None:
        """Answer one query; ``anc``: the ancillary data its reply is sent with."""
        sockname = self.sockname
        port = sockname[1] if sockname else 0
        row = self.worker.row_of(sockname, data)  # the metrics' (server, zone)
        plugins = self.worker.plugins  # log, whoami, loop (worker_plugins.py)
        t0 = time.perf_counter()
        if plugins.intercepts:
            resp = self.worker.intercept(data, addr, False, port)
            if resp is not None:
                self.worker.counters.query(UDP, self.family, data, row)
                self.worker.counters.response(UDP, resp, row)
                plugins.finished(data, addr, resp, False, port, t0)
                self._send(resp, addr, anc)
                return
        resp = self.worker.answer_py(data, UDP, self.family, port,
                                     self._sender(addr, anc, data, t0, row), row)
        if resp is not None:
            self._send(resp, addr, anc)
            plugins.finished(data, addr, resp, False, port, t0)

    def _send(self, resp: bytes, addr, anc: udpsource.Ancillary) -> bool:
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

    def _sender(self, addr, anc: udpsource.Ancillary, data: bytes = b"", t0: float = 0.0,
                row: int | None = None):
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


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.ctl = shm.ControlSegment.attach(spec.instance)
        self.counters = ctr.Counters(self.ctl.counters(spec.index))
        self._counters_block = self.ctl.counters(spec.index)
        self.image: shm.ImageSegment | None = None
        self.generation = 0
        self.rotation = 0
        self.router = None  # forward + cache: a forwarding.BlockRouter (imported when used)
        # the metrics' (server, zone) rows: server label -> its zones (ipc/tables.py)
        self._rows: dict[str, tables.ListenerRows] = {}
        self._rows_of_sock: dict[tuple, tables.ListenerRows] = {}  # (host, port) -> its rows
        self.slow = SlowPath(self.image_buf, self.counters, route=self._route)
        self._udp_by_fd: dict[int, tuple[socket.socket, int]] = {}
        self._udp_readers: set[int] = set()  # fds served by a loop reader (serve_udp)
        self._sockname_of_fd: dict[int, tuple] = {}  # configure_rows: fd -> (host, port)
        self.plugins = WorkerPlugins(None)  # log, errors, whoami (worker_plugins.py)
        self.config_version: int | None = None  # reload: the Corefile version in force
        self.tcp = TcpListener(self.answer_tcp, idle_timeout=spec.tcp_idle_timeout,
                               read_timeout=spec.tcp_read_timeout,
                               max_connections=spec.tcp_max_connections,
                               max_per_client=spec.tcp_max_per_client,
                               on_accept=lambda: self.counters.incr(layout.W_TCP_ACCEPTED),
                               on_reject=lambda: self.counters.incr(layout.W_TCP_REJECTED),
                               on_idle=lambda: self.counters.incr(layout.W_TCP_IDLE_CLOSED))
        self.udp_socks: list[tuple[socket.socket, int]] = []
        self.tcp_socks: list[tuple[socket.socket, int]] = []
        self.servers: list[asyncio.AbstractServer] = []
        self.transports: list[asyncio.BaseTransport] = []
        self._retry_at = 0.0
        self._lingering: list[shm.ImageSegment] = []  # let go of, a view still alive
        self._stop: asyncio.Event | None = None
        self._gen_map: mmap.mmap | None = None
        self._gen_view: memoryview | None = None
        self.fast = None
        self._logged_answer_error = False

    # -- snapshot ------------------------------------------------------------

    def image_buf(self) -> memoryview | None:
        return self.image.buf if self.image is not None else None

    def check_generation(self) -> None:
        if self.ctl.generation != self.generation:
            self.remap()

    def remap(self) -> None:
        """Map the published image if it is newer; keep the old one on failure."""
        now = time.monotonic()
        if now < self._retry_at:
            return
        i = self.spec.index
        seg = None
        try:
            # holds each generation it tries while it attaches (shm.py: retiring)
            seg = self.ctl.current(worker=i)
            if seg is None or seg.generation == self.generation:
                if seg is not None:
                    seg.close()
                self.ctl.set_attaching(i, 0)
                return
            img.read_header(seg.buf)
        except (shm.ShmError, OSError, img.ImageError) as e:
            if seg is not None:
                seg.close()
            self.ctl.set_attaching(i, 0)
            log.warning("worker %d: cannot map image generation %d: %s", i,
                        self.ctl.generation, e)
            self._retry_at = now + REMAP_RETRY
            return
        old = self.image
        self.image = seg
        self.generation = seg.generation
        if self.fast is not None:
            self.fast.set_image(seg.buf, seg.generation)  # releases the old buffer
        self.counters.w[layout.W_GENERATION] = seg.generation
        self.counters.incr(layout.W_REMAPS)
        self.ctl.set_mapped(i, seg.generation)
        self.ctl.set_attaching(i, 0)
        if old is not None and not old.close():
            self._lingering.append(old)  # a task still holds a view of it
        self._release_lingering()
        log.debug("worker %d: serving generation %d", i, seg.generation)

    def _release_lingering(self) -> None:
        """Unmap old images whose last view went; hold the oldest that remains."""
        if self._lingering:
            self._lingering = [s for s in self._lingering if not s.close()]
        self.ctl.set_lingering(self.spec.index,
                               min((s.generation for s in self._lingering), default=0))

    # -- answering (Python paths) ----------------------------------------------

    def answer_py(self, data: bytes, proto: int, family: int, port: int = 0,
                  send=None, row: int | None = None) -> bytes | None:
        """Count, answer and count the answer of one query (TCP, or UDP without _udp).

        A forwarded query's answer goes out later through ``send(resp)``,
        which counts it; None is returned for it here. ``row``: the query's
        (server, zone) row (``row_of``), None to count the totals only.
        """
        t0 = time.perf_counter()
        c = self.counters
        c.query(proto, family, data, row)
        self.check_generation()
        image = self.image.buf if self.image is not None else None
        resp: bytes | None
        if image is None:
            resp = None
        else:
            self.rotation = (self.rotation + 1) & 0xFFFFFFFF
            try:
                # TCP: the 65535-octet frame is the only limit (RFC 7766 §8)
                status, resp, zone = wire.answer(image, data, self.rotation,
                                                 MAX_MESSAGE if proto == TCP else 0)
            except Exception:
                # only a codec bug gets here: drop the query, keep the worker
                if not self._logged_answer_error:
                    self._logged_answer_error = True
                    log.exception("worker %d: wire.answer failed", self.spec.index)
                status, resp, zone = wire.ST_DROP, None, -1
            if status == wire.ST_ANSWER and resp is not None and resp[3] & img.TF_EXTERNAL:
                status, zone = wire.ST_SLOW, ZONE_EXTERNAL  # the slow path completes it
            if status == wire.ST_SLOW:
                c.incr(layout.W_SLOW)
                resp = self.slow.answer(data, zone, port, send, proto == TCP)
                if resp is DEFERRED:
                    return None
            elif status != wire.ST_ANSWER:
                resp = None
        c.response(proto, resp, row)
        c.latency(time.perf_counter() - t0, 1, row)
        return resp

    def answer_tcp(self, frame: bytes, family: int, conn=None) -> bytes | None:
        send = None
        t0 = time.perf_counter()
        plugins = self.plugins
        peer = (conn._transport.get_extra_info("peername")
                if conn is not None and plugins.wants_peer and conn._transport else None)
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
        if peer is not None and plugins.intercepts:
            resp = self.intercept(frame, peer, True, port)
            if resp is not None:
                self.counters.query(TCP, family, frame, row)
                self.counters.response(TCP, resp, row)
                plugins.finished(frame, peer, resp, True, port, t0)
                return resp
        resp = self.answer_py(frame, TCP, family, port, send, row)
        if resp is not None:
            plugins.finished(frame, peer, resp, True, port, t0)
        return resp

    def intercept(self, data: bytes, addr, tcp: bool, port: int) -> bytes | None:
        """whoami / loop count for a query the image would hand to the slow path
        (TCP and the Python UDP path; the Cython path asks in ``_slow_udp``)."""
        if self.image is None:
            return None
        try:
            status = wire.answer(self.image.buf, data, 0, MAX_MESSAGE if tcp else 0)[0]
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
        sock, port = self._udp_by_fd.get(fd, (None, 0))
        send = None
        plugins = self.plugins
        t0 = time.perf_counter()
        # the row _udp counted the query in (the same match, on the same table)
        row = self.row_of(self._sockname_of_fd.get(fd), data)
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
        if plugins.intercepts:  # loop detection, whoami (worker_plugins.py)
            resp = plugins.intercept(data, addr, False, port)
            if resp is not None:
                return resp  # logged with the batch by the fast path
        resp = self.slow.answer(data, zone, port, send)
        if resp is not DEFERRED:
            plugins.answered(data, resp, port)  # errors (the fast path logs it)
        if resp is DEFERRED:
            return None
        if resp is None:
            self.counters.response(UDP, None, row)  # dropped: _udp leaves None to us
        return resp

    # -- the metrics' (server, zone) rows ---------------------------------------

    def row_of(self, sockname, data: bytes) -> int | None:
        """The (server, zone) row of a query read on the socket bound to ``sockname``
        (ipc/tables.py; None before a Corefile gave the rows)."""
        if not self._rows or not sockname:
            return None
        key = (sockname[0], sockname[1])
        lr = self._rows_of_sock.get(key)
        if lr is None:
            lr = self._rows_of_sock[key] = tables.socket_rows(self._rows, key[0], key[1])
        return lr.match(data)

    def configure_rows(self, config) -> None:
        """Derive the row table from ``config`` (the exporter derives the same one
        from its copy) and hand every UDP socket's zones to the fast path."""
        self._rows_of_sock = {}
        self._sockname_of_fd = {fd: sock.getsockname()[:2]
                                for fd, (sock, _port) in self._udp_by_fd.items()}
        if config is None:
            self._rows = {}
            if self.fast is not None:
                self.fast.clear_rows()
            return
        listeners = tables.listener_zones(config)
        self.counters.take_rows(tables.row_table(listeners))
        self._rows = tables.listener_rows(listeners)
        if self.fast is not None:
            self.fast.clear_rows()
            for fd, (host, port) in list(self._sockname_of_fd.items()):
                lr = tables.socket_rows(self._rows, host, port)
                if not self.fast.set_rows(fd, lr.zones, lr.dropped):
                    del self._sockname_of_fd[fd]  # totals only, as _udp counts it
                    log.warning("worker %d: queries on %s:%d are not counted per zone",
                                self.spec.index, host, port)

    # -- forward + cache -------------------------------------------------------

    def configure_forward(self, config) -> None:
        """(Re)build the forwarders and caches of ``config`` (a corefile Config)."""
        self.configure_rows(config)  # the Corefile's blocks: also the metrics' rows
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
            self.router.attach_mirror(self.fast.cache)

    def _route(self, block: int | None, qname: str, port: int):
        return self.router.route(block, qname, port) if self.router is not None else None

    def _load_config(self):
        """The Corefile in force (the supervisor's shm copy), parsed; None without one."""
        try:
            from fastdns.control import reload
            from fastdns.corefile.config import parse_corefile

            text = reload.read_corefile(self.spec.instance)
            name = reload.read_corefile_name(self.spec.instance)  # relative imports
            return parse_corefile(text, name) if text else None
        except Exception:  # the supervisor validated it; never die of it here
            log.exception("worker %d: cannot read the Corefile; not forwarding",
                          self.spec.index)
            return None

    # -- lifetime --------------------------------------------------------------

    def bind(self) -> None:
        for address, port in self.spec.listen:
            fam = _family_label(family_of(address))
            try:
                udp = bind_udp(address, port)
            except OSError as e:
                # The IPv6 wildcard that stands for "every address" (no `bind`)
                # is optional on a host or container without IPv6.
                if (address == "::" and e.errno in _NO_IPV6 and len(self.spec.listen) > 1):
                    log.warning("worker %d: no IPv6 here, not listening on [::]:%d (%s)",
                                self.spec.index, port, e.strerror)
                    continue
                raise _bind_failed("udp", address, port, e) from None
            self.udp_socks.append((udp, fam))
            self._udp_by_fd[udp.fileno()] = (udp, port)
            try:
                self.tcp_socks.append((bind_tcp(address, port), fam))
            except OSError as e:
                raise _bind_failed("tcp", address, port, e) from None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        procsignals.loop_install(loop, self._stop.set)  # STOP; SIGTERM once orphaned
        self.counters.start(os.getpid())
        try:
            self.bind()
            while self.image is None and not self._stop.is_set():
                self.remap()
                if self.image is None:
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
        if _udp is not None:
            path = os.path.join(shm.SHM_DIR, self.ctl.name)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                self._gen_map = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ)
            finally:
                os.close(fd)
            self._gen_view = memoryview(self._gen_map)
            self.fast = _udp.FastPath(self._gen_view, self._counters_block, self.remap,
                                      self._slow_udp)
            assert self.image is not None
            self.fast.set_image(self.image.buf, self.generation)
        config = self._load_config()
        self.configure_forward(config)
        self.plugins = WorkerPlugins(config, self._port_of_fd,  # issue 6: log, errors, whoami
                                     loop=(self.spec.instance, self.spec.index))
        self.plugins.fast_path(self.fast)
        for sock, fam in self.udp_socks:
            await self.serve_udp(loop, sock, fam)
        for sock, fam in self.tcp_socks:
            self.servers.append(await loop.create_server(self.tcp.factory(fam), sock=sock))
        loop.call_later(GENERATION_POLL, self._poll_generation, loop)
        log.info("worker %d (pid %d): serving generation %d on %s (%s UDP path)",
                 self.spec.index, os.getpid(), self.generation,
                 ", ".join(f"{a}:{p}" for a, p in self.spec.listen),
                 "Cython" if self.fast is not None else "Python")

    async def serve_udp(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                        fam: int) -> None:
        """Start answering a bound UDP socket: the Cython fast path's reader, or
        the Python path (a reader of its own on a wildcard socket, a datagram
        transport otherwise)."""
        fd = sock.fileno()
        pktinfo = udpsource.is_wildcard(sock.getsockname()[0])
        if self.fast is not None:
            loop.add_reader(fd, self.fast.drain, fd, fam, pktinfo)
            self._udp_readers.add(fd)
        elif pktinfo:
            loop.add_reader(fd, _PyUdpProtocol(self, fam, sock).readable)
            self._udp_readers.add(fd)
        else:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _PyUdpProtocol(self, fam), sock=sock)
            self.transports.append(transport)

    def unserve_udp(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        """Stop reading ``sock`` (a transport stops when it is closed)."""
        fd = sock.fileno()
        if fd in self._udp_readers:
            self._udp_readers.discard(fd)
            loop.remove_reader(fd)

    def _poll_generation(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._stop is not None and self._stop.is_set():
            return
        self.check_generation()
        if self._lingering:
            self._release_lingering()
        if self.router is not None:
            self.router.export(self.counters)
        reconfigure_if_changed(self, loop)  # a reloaded Corefile (control/reload.py)
        self.plugins.tick()
        loop.call_later(GENERATION_POLL, self._poll_generation, loop)

    def _port_of_fd(self, fd: int) -> int:
        return self._udp_by_fd.get(fd, (None, 0))[1]

    async def _shutdown(self, loop: asyncio.AbstractEventLoop) -> None:
        for sock, _ in self.udp_socks:
            if sock.fileno() >= 0:
                self.unserve_udp(loop, sock)
        for server in self.servers:
            server.close()
        self.tcp.close_all()
        for transport in self.transports:
            transport.close()
        for sock, _ in self.udp_socks + self.tcp_socks:
            sock.close()
        for server in self.servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 1.0)
            except TimeoutError:
                pass
        self.slow.close()
        if self.router is not None:
            self.router.close()
            self.router = None
        await asyncio.sleep(0)  # let transports run connection_lost
        if self.fast is not None:
            self.fast.release()
            self.fast = None
        if self._gen_view is not None:
            self._gen_view.release()
            self._gen_map.close()
        if self.image is not None:
            self.image.close()
            self.image = None
        for seg in self._lingering:
            seg.close()
        self._lingering = []
        try:
            self.ctl.release_worker(self.spec.index)
        except (IndexError, ValueError):
            pass
        self.counters.release()
        self._counters_block = None
        self.ctl.close()


def _bind_failed(proto: str, address: str, port: int, e: OSError) -> SystemExit:
    """One line, as the supervisor's pre-check words it (server/portcheck.py), then
    exit 1: the supervisor stops the server when a worker fails at startup."""
    where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    log.error("listen %s %s: bind: %s", proto, where, (e.strerror or str(e)).lower())
    return SystemExit(1)


def _exit_now(signum, frame) -> None:
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
