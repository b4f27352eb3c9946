"""The control process's HTTP side: ``/metrics``, ``/health`` and ``/ready``.

Each path is served on the address its Corefile plugin names, exactly as
CoreDNS does: ``prometheus [ADDR]`` (default ``localhost:9153``, CoreDNS
``plugin/metrics/setup.go`` ``defaultAddr``), ``health [ADDR]`` (default
``:8080``, ``plugin/health/health.go``) and ``ready [ADDR]`` (default
``:8181``, ``plugin/ready/setup.go``). Plugins that name the same address
share one listener, so ``health :8080`` and ``ready :8080`` both work.

Probes (the kubelet) and scrapes (Prometheus) must keep working while the
control process is busy compiling a snapshot, so every listener runs the
stdlib ``ThreadingHTTPServer`` in a daemon thread; a handler only reads a
few flags under a lock or sums the shared-memory counters.

Behaviour copied from CoreDNS:
- ``/health`` always answers 200 ``OK``, also during lameduck: the kubelet
  must not restart a pod that is draining (``plugin/health/health.go``).
- ``/ready`` answers 200 ``OK`` when every plugin that reports readiness is
  ready; otherwise 503 with the sorted names of those that are not, joined
  by ``,`` (``plugin/ready/list.go`` ``Ready``); during lameduck 503
  ``Shutting down`` so Services stop sending traffic here
  (``plugin/ready/ready.go``).

Where fastdns differs: its DNS outlives the control process. ``/ready``
means "every worker serves a snapshot" (a generation is in force, each
worker has mapped one, and it is a complete one), so a restarted control
process reports the image its predecessor left in force
(``observability.image_in_force``) instead of waiting for a publish of its own.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest

log = logging.getLogger("fastdns.httpd")

# What CoreDNS's promhttp handler sends (client_golang's text format 0.0.4);
# prometheus-client >= 0.22 would label the same bytes version=1.0.0.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

DEFAULT_METRICS_ADDR = "localhost:9153"
DEFAULT_HEALTH_ADDR = ":8080"
DEFAULT_READY_ADDR = ":8181"

METRICS_PATH = "/metrics"
HEALTH_PATH = "/health"
READY_PATH = "/ready"


class ProbeState:
    """Readiness per plugin and the lameduck flag, shared by handler threads.

    The control process calls ``set_ready("kubernetes", True)`` after the
    first full sync; plugins that never report are not waited for (CoreDNS
    waits only for plugins that register a ``Readiness``).
    """

    def __init__(self, lameduck_source: Callable[[], bool] | None = None,
                 checks: dict[str, Callable[[], bool]] | None = None) -> None:
        self._lock = threading.Lock()
        self._plugins: dict[str, bool] = {}
        self._lameduck = False
        # The supervisor announces lameduck through shared memory
        # (SharedStats.lameduck); read at request time.
        self._lameduck_source = lameduck_source
        # Conditions read at request time, reported like plugins when false
        # (e.g. every worker has mapped a snapshot, so its sockets are bound).
        self._checks = dict(checks or {})

    def set_ready(self, plugin: str, ready: bool) -> None:
        with self._lock:
            self._plugins[plugin] = bool(ready)

    def plugins(self) -> list[str]:
        """Every plugin that reports readiness."""
        with self._lock:
            return list(self._plugins)

    def forget(self, plugin: str) -> None:
        """Stop waiting for a plugin (a reload removed it)."""
        with self._lock:
            self._plugins.pop(plugin, None)

    def start_lameduck(self) -> None:
        with self._lock:
            self._lameduck = True

    @property
    def lameduck(self) -> bool:
        with self._lock:
            if self._lameduck:
                return True
        src = self._lameduck_source
        return bool(src is not None and src())

    def not_ready(self) -> list[str]:
        """Sorted names of plugins (and checks) not ready yet (empty: ready)."""
        with self._lock:
            waiting = [name for name, ok in self._plugins.items() if not ok]
        waiting += [name for name, check in self._checks.items() if not check()]
        return sorted(waiting)

    def readiness(self) -> tuple[int, str]:
        """(HTTP status, body) of ``/ready`` right now."""
        if self.lameduck:
            return 503, "Shutting down"
        waiting = self.not_ready()
        if waiting:
            return 503, ",".join(waiting)
        return 200, "OK"


def parse_addr(addr: str) -> tuple[str, int]:
    """``host:port`` as Go's ``net.SplitHostPort`` reads it; ``:port`` = every address.

    Accepts ``:9153``, ``localhost:9153``, ``127.0.0.1:8080``, ``[::1]:8181``.
    """
    if addr.startswith("["):
        host, sep, rest = addr[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"address {addr!r}: missing port")
        port_s = rest[1:]
    else:
        host, sep, port_s = addr.rpartition(":")
        if not sep:
            raise ValueError(f"address {addr!r}: missing port")
        if ":" in host:
            raise ValueError(f"address {addr!r}: too many colons (bracket IPv6 addresses)")
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"address {addr!r}: bad port {port_s!r}")
    return host, int(port_s)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Go's net.Listen sets SO_REUSEADDR too; a restarted control process
    # must be able to rebind while old connections sit in TIME_WAIT.
    allow_reuse_address = True

    def __init__(self, host: str, port: int, routes: dict[str, object]) -> None:
        self.routes = routes
        family, bind_host = _bind_target(host, port)
        self.address_family = family
        super().__init__((bind_host, port), _Handler, bind_and_activate=False)
        try:
            if family == socket.AF_INET6 and bind_host == "::":
                # ":PORT" means every address, v4 and v6, as in Go.
                with contextlib.suppress(OSError):
                    self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.server_close()
            raise

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(host): a reverse DNS
        # lookup through the system resolver at startup, for a name nothing
        # uses. Bind without it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


def _bind_target(host: str, port: int) -> tuple[int, str]:
    if host == "":
        if socket.has_ipv6:
            try:
                s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                s.close()
                return socket.AF_INET6, "::"
            except OSError:
                pass
        return socket.AF_INET, "0.0.0.0"
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    # Go binds the first address "localhost" resolves to; prefer IPv4 like
    # its resolver does for localhost.
    infos.sort(key=lambda i: i[0] != socket.AF_INET)
    family, _, _, _, sockaddr = infos[0]
    return family, str(sockaddr[0])  # the address text (an int only for AF_PACKET)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "fastdns"
    sys_version = ""
    timeout = 5  # idle keep-alive connections go, as CoreDNS's IdleTimeout

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        route = self.server.routes.get(path)
        if route is None:
            self._send(404, b"404 page not found\n", "text/plain; charset=utf-8")
            return
        try:
            status, body, ctype = route()  # type: ignore[operator]
        except Exception:  # a broken collector must not kill the probe thread
            log.exception("handler for %s failed", path)
            self._send(500, b"internal error\n", "text/plain; charset=utf-8")
            return
        self._send(status, body, ctype)

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)


@dataclass(frozen=True)
class HttpConfig:
    """Which endpoints to serve where (empty: that plugin is not in the Corefile).

    Several server blocks may each name their own address; every one of them
    serves the same process-wide state (plugin/health/README.md).
    """

    metrics_addrs: tuple[str, ...] = ()
    health_addrs: tuple[str, ...] = ()
    ready_addrs: tuple[str, ...] = ()
    lameduck: float = 0.0  # seconds, from ``health { lameduck DURATION }``


HealthProbe = Callable[[float, bool], None]


class HttpEndpoints:
    """All HTTP listeners of the control process.

    ``start()`` binds every address (raising OSError if one is taken, which
    stops startup like CoreDNS does), ``stop()`` closes them. Port 0 binds an
    ephemeral port; ``address(path)`` tells which (tests use it).
    """

    def __init__(self, config: HttpConfig, registry: CollectorRegistry | None = None,
                 state: ProbeState | None = None, health_probe: HealthProbe | None = None,
                 probe_interval: float = 1.0) -> None:
        self.config = config
        self.registry = registry
        self.state = state if state is not None else ProbeState()
        self.health_probe = health_probe
        self.probe_interval = probe_interval
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self._where: dict[str, tuple[str, int]] = {}
        self._stopping = threading.Event()

    # -- API for the control process ---------------------------------------

    def set_ready(self, plugin: str, ready: bool) -> None:
        self.state.set_ready(plugin, ready)

    def start_lameduck(self) -> float:
        """Enter lameduck: ``/ready`` goes 503, ``/health`` stays 200.

        Returns the lameduck duration the Corefile asked for; the caller
        keeps serving for that long, then stops.
        """
        self.state.start_lameduck()
        return self.config.lameduck

    # -- handlers -----------------------------------------------------------

    def _metrics(self) -> tuple[int, bytes, str]:
        if self.registry is None:
            return 404, b"404 page not found\n", "text/plain; charset=utf-8"
        return 200, generate_latest(self.registry), METRICS_CONTENT_TYPE

    def _health(self) -> tuple[int, bytes, str]:
        return 200, b"OK", "text/plain; charset=utf-8"

    def _ready(self) -> tuple[int, bytes, str]:
        status, body = self.state.readiness()
        return status, body.encode(), "text/plain; charset=utf-8"

    # -- lifetime -------------------------------------------------------------

    def _plan(self) -> dict[tuple[str, int, str], dict[str, object]]:
        """(host, port, _) -> {path: handler}; plugins naming one address share it.

        Port 0 (tests) means "any free port", so those never share.
        """
        plan: dict[tuple[str, int, str], dict[str, object]] = {}

        def add(addr: str, path: str, fn: object) -> None:
            host, port = parse_addr(addr)
            plan.setdefault((host, port, path if port == 0 else ""), {})[path] = fn

        for addrs, path, fn in ((self.config.metrics_addrs, METRICS_PATH, self._metrics),
                                (self.config.health_addrs, HEALTH_PATH, self._health),
                                (self.config.ready_addrs, READY_PATH, self._ready)):
            for addr in dict.fromkeys(addrs):
                add(addr, path, fn)
        return plan

    def start(self) -> None:
        try:
            for (host, port, _), routes in self._plan().items():
                try:
                    srv = _Server(host, port, routes)
                except OSError as e:
                    # Go's wording: "listen tcp :9153: bind: address already in use"
                    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                    why = (e.strerror or str(e)).lower()
                    raise OSError(e.errno, f"listen tcp {where}: bind: {why}") from e
                self._servers.append(srv)
                bound = srv.server_address
                for path in routes:
                    self._where.setdefault(path, (str(bound[0]), int(bound[1])))
        except BaseException:
            self.stop()
            raise
        self._stopping.clear()
        for srv in self._servers:
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2},
                                 name=f"fastdns-http-{srv.server_address[1]}", daemon=True)
            t.start()
            self._threads.append(t)
        if self.health_probe is not None and HEALTH_PATH in self._where:
            t = threading.Thread(target=self._self_check, name="fastdns-health-self-check",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def _self_check(self) -> None:
        """GET our own ``/health`` once a second and report how long it took.

        CoreDNS ``plugin/health/overloaded.go``: a slow local answer is the
        symptom of an overloaded process (``coredns_health_request_*``).
        """
        assert self.health_probe is not None
        host, port = self.address(HEALTH_PATH)
        if host in ("::", "0.0.0.0", ""):
            host = "127.0.0.1"
        while not self._stopping.wait(self.probe_interval):
            start = time.monotonic()
            ok = False
            conn = http.client.HTTPConnection(host, port, timeout=3)
            try:
                conn.request("GET", HEALTH_PATH)
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except OSError as e:
                log.warning("Local health request to %s:%d failed: %s", host, port, e)
            finally:
                conn.close()
            elapsed = time.monotonic() - start
            if self._stopping.is_set():
                return
            if elapsed > 1.0:
                log.warning("Local health request to %s:%d took more than 1s: %.3fs",
                            host, port, elapsed)
            self.health_probe(elapsed, ok)

    def address(self, path: str) -> tuple[str, int]:
        """(host, port) actually bound for ``path`` (``/metrics``, ``/health``, ``/ready``)."""
        return self._where[path]

    def url(self, path: str) -> str:
        host, port = self.address(path)
        if host in ("::", "0.0.0.0", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}{path}"

    def stop(self) -> None:
        self._stopping.set()
        running = bool(self._threads)
        for srv in self._servers:
            if running:
                srv.shutdown()  # waits for serve_forever to return
            srv.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._servers.clear()
        self._threads.clear()
        self._where.clear()

    def __enter__(self) -> HttpEndpoints:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http_config(config: object) -> HttpConfig:
    """HttpConfig of a parsed Corefile: every prometheus/health/ready address.

    A block with several ports is several ServerBlocks sharing one plugin
    object, so addresses are deduplicated; the longest lameduck wins.
    """
    metrics: list[str] = []
    health: list[str] = []
    ready: list[str] = []
    lameduck = 0.0
    for b in getattr(config, "servers", ()):
        plugins = getattr(b, "plugins", {})
        if (p := plugins.get("prometheus")) is not None:
            metrics.append(getattr(p, "addr", DEFAULT_METRICS_ADDR) or DEFAULT_METRICS_ADDR)
        if (h := plugins.get("health")) is not None:
            health.append(getattr(h, "addr", DEFAULT_HEALTH_ADDR) or DEFAULT_HEALTH_ADDR)
            lameduck = max(lameduck, float(getattr(h, "lameduck", 0.0) or 0.0))
        if (r := plugins.get("ready")) is not None:
            ready.append(getattr(r, "addr", DEFAULT_READY_ADDR) or DEFAULT_READY_ADDR)
    return HttpConfig(metrics_addrs=tuple(dict.fromkeys(metrics)),
                      health_addrs=tuple(dict.fromkeys(health)),
                      ready_addrs=tuple(dict.fromkeys(ready)), lameduck=lameduck)


def serve(config: HttpConfig, registry: CollectorRegistry | None,
          ready_plugins: Iterable[str] = (), health_probe: HealthProbe | None = None
          ) -> HttpEndpoints:
    """Start the endpoints, waiting for ``ready_plugins`` before ``/ready`` says OK."""
    eps = HttpEndpoints(config, registry, health_probe=health_probe)
    for name in ready_plugins:
        eps.set_ready(name, False)
    eps.start()
    return eps
