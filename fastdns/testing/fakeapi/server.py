"""FakeApiServer: the fake's life cycle, its test controls and its HTTP entry.

The parts it wires together live beside it: the store and its history
(``store``), list/get/write (``listing``), watch streams (``watch``),
tokens and RBAC (``auth``), injected failures (``faults``) and the API's
paths and Status (``resources``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiohttp import web

from fastdns.testing.fakeapi.auth import Auth
from fastdns.testing.fakeapi.faults import Failure, Gate
from fastdns.testing.fakeapi.listing import get_response, list_response, write_response
from fastdns.testing.fakeapi.resources import (
    ALIASES,
    DEFAULT_USER,
    RESOURCES,
    discovery,
    is_true,
    is_watch,
    resolve_kind,
    route,
    status_response,
)
from fastdns.testing.fakeapi.store import Store, object_key
from fastdns.testing.fakeapi.watch import Watches

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeApiServer:
    """In-process fake kube-apiserver on 127.0.0.1 (see ``fastdns.testing.fakeapi``).

    Every public method is thread-safe: the HTTP side runs on its own event
    loop thread (``start()``) or on the caller's loop (``serve_async()``).

    The event history is one window over all kinds (``history_size`` events,
    like an etcd compaction window, see ``store``). Watches get a BOOKMARK
    every ``bookmark_interval`` seconds when they allow them (the
    apiserver's ``defaultBookmarkFrequency`` is one minute).

    Test controls: ``create/update/apply/delete(kind, obj)``, ``load``,
    ``compact()``, ``fail_next(n, status, retry_after, path=, watch=)``,
    ``set_down(bool)``, ``slow(seconds)``, ``hang_watches()``,
    ``end_watches()``, ``empty_watches(n)``, ``set_tokens(*tokens)``,
    ``rotate_token(new, grace=)``, ``forbid(resource, *verbs)``,
    ``allow(resource)``, ``requests(path, watch=)``, ``request_log``,
    ``open_watches``, ``write_kubeconfig(path)``.

    Authentication (``auth``): with no token every request is served; with
    tokens, an API request without one of them is answered ``401
    Unauthorized`` before anything else is looked at, as the apiserver's
    authentication filter does. ``tls=(certfile, keyfile)`` serves HTTPS
    (``url`` is then ``https://``).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, history_size: int = 1000,
                 bookmark_interval: float = 60.0, default_watch_timeout: float = 1800.0,
                 token: str | None = None, snapshot_cache: int = 64,
                 tls: tuple[str, str] | None = None, user: str = DEFAULT_USER) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.store = Store(history_size, snapshot_cache, self._notify)
        self.watches = Watches(self.store, bookmark_interval, default_watch_timeout)
        self.auth = Auth(token, user)
        self._lock = self.store.lock
        self.gate = Gate(self._lock)
        self.request_log = self.gate.log
        self._down = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._ssl: ssl.SSLContext | None = None

    # ------------------------------------------------------------------ life

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def listening(self) -> bool:
        """Whether the port is open (after start, and while not ``set_down``)."""
        return self._listener is not None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server side of ``tls`` (None: plain HTTP); a bad pair raises here."""
        if not self.tls:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # the apiserver's default minimum
        ctx.load_cert_chain(*self.tls)
        return ctx

    def start(self) -> FakeApiServer:
        """Serve from a background thread with its own event loop."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self._startup())
            except BaseException as exc:  # surfaced to the caller of start()
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_until_complete(self._stopped().wait())
                loop.run_until_complete(self._shutdown())
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-apiserver", daemon=True)
        self._thread.start()
        ready.wait()
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._stopped().set)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def serve_async(self) -> None:
        """Serve on the running loop until cancelled (the standalone mode)."""
        await self._startup()
        try:
            await self._stopped().wait()
        finally:
            await self._shutdown()

    def _stopped(self) -> asyncio.Event:
        """The event stop() sets (exists once _startup ran)."""
        assert self._stopping is not None
        return self._stopping

    async def _startup(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.watches.changed = asyncio.Event()
        self._stopping = asyncio.Event()
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        self._ssl = self.ssl_context()  # a bad certificate fails start(), not a request
        await self._listen()
        if self._down:  # set_down(True) before start(): the port is reserved, then closed
            assert self._listener is not None
            self._listener.close()
            self._listener = None

    async def _listen(self) -> None:
        assert self._runner is not None and self._runner.server is not None
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(self._runner.server, self.host, self.port,
                                                  reuse_address=True, ssl=self._ssl)
        self.port = self._listener.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        self.watches.drop()
        if self._listener is not None:
            self._listener.close()
        self._abort_connections()
        if self._runner is not None:
            await self._runner.cleanup()

    def _abort_connections(self) -> None:
        assert self._runner is not None
        server = self._runner.server
        for handler in server.connections if server is not None else ():
            if handler.transport is not None:
                handler.transport.abort()

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the server loop (directly when already there) and wait."""
        loop = self._loop
        if loop is None:
            return fn()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            res = fn()
            return asyncio.ensure_future(res) if asyncio.iscoroutine(res) else res

        async def wrap() -> Any:
            res = fn()
            if asyncio.iscoroutine(res):
                res = await res
            return res

        return asyncio.run_coroutine_threadsafe(wrap(), loop).result(15)

    def _notify(self) -> None:
        """Wake the watch streams, from any thread."""
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closing
                self._loop.call_soon_threadsafe(self.watches.pulse)

    # ------------------------------------------------------- test controls

    def create(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Add an object (ValueError if it exists); returns it with metadata set."""
        return self.store.mutate(resolve_kind(kind), obj, "create")

    def update(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Replace an existing object (KeyError if missing)."""
        return self.store.mutate(resolve_kind(kind), obj, "update")

    def apply(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace."""
        return self.store.mutate(resolve_kind(kind), obj, "apply")

    def delete(self, kind: str, obj: dict[str, Any] | tuple[str, str]) -> dict[str, Any]:
        """Delete by object (its metadata) or (namespace, name) key."""
        k = resolve_kind(kind)
        return self.store.delete(k, obj if isinstance(obj, tuple) else object_key(k, obj))

    def load(self, objects: Iterable[dict[str, Any]]) -> int:
        """Create/replace objects that carry their own ``kind`` (kubectl output)."""
        n = 0
        for obj in objects:
            kind = obj.get("kind")
            if kind == "List" or kind is None and "items" in obj:
                n += self.load(obj.get("items") or [])
                continue
            if kind not in ALIASES:
                continue
            body = {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
            self.apply(kind, body)
            n += 1
        return n

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        k = resolve_kind(kind)
        return self.store.get(k, ("" if not RESOURCES[k].namespaced else namespace, name))

    def objects(self, kind: str) -> list[dict[str, Any]]:
        return self.store.all(resolve_kind(kind))

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self.store.rv

    def compact(self) -> None:
        """Drop the whole event history: every watch from an older rv gets 410."""
        self.store.compact()

    def fail_next(self, n: int = 1, status: int = 500, retry_after: float | None = None, *,
                  path: str | None = None, watch: bool | None = None,
                  message: str | None = None,
                  when: Callable[[str, Mapping[str, str]], bool] | None = None) -> None:
        """Answer the next n matching API requests with an HTTP error Status.

        ``path`` restricts it to requests whose path starts with it; ``watch``
        to watch (True) or non-watch (False) requests; ``when(path, query)``
        to requests it accepts; 429 responses carry ``Retry-After`` and
        ``details.retryAfterSeconds`` when retry_after is set.
        """
        with self._lock:
            self.gate.failures.append(
                Failure(n, status, retry_after, path, watch, message, when))

    def set_down(self, down: bool = True) -> None:
        """Down: stop listening (connections refused) and reset open connections;
        up again: listen on the same port. The store can change meanwhile."""
        if self._loop is None:
            self._down = down
            return
        self._call(lambda: self._set_down(down))

    async def _set_down(self, down: bool) -> None:
        if down == self._down:
            return
        self._down = down
        if down:
            self.watches.drop()
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            self._abort_connections()
        else:
            await self._listen()

    def slow(self, seconds: float) -> None:
        """Delay every response (headers included) by this many seconds."""
        with self._lock:
            self.gate.delay = seconds

    def hang_watches(self) -> None:
        """Open watch streams go silent (no events, no bookmarks), like a dead
        peer behind a NAT; new watches work normally."""
        self.watches.hang()
        self._notify()

    def end_watches(self) -> None:
        """Open watch streams end now, cleanly, as at their ``timeoutSeconds`` (or an
        apiserver rollout): every client must open a new, authenticated watch."""
        self.watches.end()
        self._notify()

    def empty_watches(self, n: int) -> None:
        """The next n watch requests get a 200 that ends at once with no line
        (the apiserver did that for Events with a stale rv, kubernetes#104171)."""
        self.watches.empty(n)

    # -- authentication and authorization (auth.Auth)

    @property
    def token(self) -> str | None:
        """The newest accepted bearer token (None: authentication is off)."""
        return self.auth.token

    @token.setter
    def token(self, value: str | None) -> None:
        self.auth.set_tokens(*([value] if value else []))

    def set_tokens(self, *tokens: str) -> None:
        """Accept exactly these bearer tokens from now on; none: no authentication."""
        self.auth.set_tokens(*tokens)

    def rotate_token(self, new: str | None = None, *, grace: float = 0.0) -> str:
        """Accept ``new`` and stop accepting the others after ``grace`` (auth.Auth)."""
        return self.auth.rotate_token(new, grace=grace)

    def forbid(self, resource: str, *verbs: str) -> None:
        """Refuse ``resource`` with RBAC's 403 for ``verbs`` or every verb (auth.Auth)."""
        self.auth.forbid(resource, *verbs)

    def allow(self, resource: str | None = None) -> None:
        """Lift ``forbid`` for one resource, or for all of them."""
        self.auth.allow(resource)

    # -- observation

    def requests(self, path: str | None = None, *, watch: bool | None = None) -> int:
        """How many API requests arrived, optionally for one path / watch or not."""
        return self.gate.requests(path, watch=watch)

    @property
    def open_watches(self) -> int:
        return self.watches.open

    def kubeconfig(self, *, token: str | None = None,
                   ca_file: str | None = None) -> dict[str, Any]:
        """A kubeconfig for this server; ``ca_file`` is the CA that signed its TLS
        certificate (``certificate-authority``)."""
        token = token or self.token
        user: dict[str, Any] = {"token": token} if token else {}
        cluster: dict[str, Any] = {"server": self.url}
        if ca_file:
            cluster["certificate-authority"] = ca_file
        return {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "fake", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }

    def write_kubeconfig(self, path: str, *, token: str | None = None,
                         ca_file: str | None = None) -> str:
        with open(path, "w") as f:
            json.dump(self.kubeconfig(token=token, ca_file=ca_file), f)  # JSON is YAML
        return path

    # -------------------------------------------------------------- HTTP

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        failed = await self.gate.admit(request)
        if failed is not None:
            return failed
        if request.path.startswith(("/api", "/apis")):
            # the apiserver's filter order: authentication, then authorization
            if not self.auth.authenticated(request.headers.get("Authorization")):
                return status_response(401, "Unauthorized")
            refused = self.auth.refusal(request)
            if refused is not None:
                return refused
        return await handler(request)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path.startswith("/_fake/"):
            return self._control(path[len("/_fake/"):], request)
        if request.method == "GET":
            stub = discovery(path, self.host, self.port)
            if stub is not None:
                return web.json_response(stub)
        found = route(path)
        if found is None:
            return status_response(404, "the server could not find the requested resource")
        res, namespace, name = found
        try:
            if request.method == "GET" and name is None:
                if is_watch(request.query):
                    return await self.watches.serve(request, res, namespace)
                return list_response(self.store, request, res, namespace)
            if request.method == "GET":
                assert name is not None
                return get_response(self.store, res, namespace, name)
            if request.method in ("POST", "PUT", "DELETE"):
                return await write_response(self.store, request, res, namespace, name)
        except ValueError as exc:
            return status_response(400, str(exc))
        return status_response(405, f"method {request.method} not allowed", "MethodNotAllowed")

    def _control(self, verb: str, request: web.Request) -> web.Response:
        """The test controls over HTTP, for a standalone server driven by another
        process (benchmarks, image tests): POST /_fake/{compact,hang,end-watches,
        slow,fail,down,rotate-token,tokens,forbid,allow}, GET /_fake/requests.
        ``down?seconds=S`` comes back up after S seconds; ``rotate-token?token=T
        &grace=S``; ``tokens?token=A&token=B``; ``forbid?resource=services&verb=list``;
        ``allow[?resource=services]``. The controls need no token."""
        q = request.query
        if verb == "requests" and request.method == "GET":
            return web.json_response({"resourceVersion": str(self.resource_version),
                                      "requests": self.gate.count_list()})
        if request.method != "POST":
            return status_response(405, "controls are POST", "MethodNotAllowed")
        if verb == "compact":
            self.compact()
        elif verb == "hang":
            self.hang_watches()
        elif verb == "end-watches":
            self.end_watches()
        elif verb == "rotate-token":
            token = self.rotate_token(q.get("token"), grace=float(q.get("grace", "0")))
            return web.json_response({"ok": True, "token": token})
        elif verb == "tokens":
            self.set_tokens(*q.getall("token", []))
        elif verb == "forbid" and "resource" in q:
            try:
                self.forbid(q["resource"], *q.getall("verb", []))
            except ValueError as exc:
                return status_response(400, str(exc))
        elif verb == "allow":
            try:
                self.allow(q.get("resource"))
            except ValueError as exc:
                return status_response(400, str(exc))
        elif verb == "slow":
            self.slow(float(q.get("seconds", "0")))
        elif verb == "fail":
            watch = q.get("watch")
            self.fail_next(int(q.get("n", "1")), int(q.get("status", "500")),
                           float(q["retry_after"]) if "retry_after" in q else None,
                           path=q.get("path"), watch=None if watch is None else is_true(watch))
        elif verb == "down":
            seconds = float(q.get("seconds", "1"))
            loop = asyncio.get_running_loop()
            # answer first, then go down: the caller gets its 200
            loop.call_soon(lambda: loop.create_task(self._set_down(True)))
            loop.call_later(seconds, lambda: loop.create_task(self._set_down(False)))
        else:
            return status_response(404, f"no control {verb!r}")
        return web.json_response({"ok": True, "resourceVersion": str(self.resource_version)})
