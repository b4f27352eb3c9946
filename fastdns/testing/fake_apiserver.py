"""A fake Kubernetes API server that speaks the real list/watch protocol.

The tests and benchmarks of the control plane need an API server that fails
the way a real one does: paged lists with ``continue`` tokens, chunked watch
streams that end at ``timeoutSeconds``, BOOKMARK events, a bounded event
history whose end is a ``410 Expired`` ERROR line *inside* a 200 stream,
429s with ``Retry-After``, and a server that vanishes and comes back. Only
the four kinds DNS watches are served (Namespaces, Services, EndpointSlices,
Pods), cluster-wide and namespaced, plus the discovery stubs clients call.

Protocol references: https://kubernetes.io/docs/reference/using-api/api-concepts/
(efficient detection of changes, watch bookmarks, retrieving large results
sets in chunks, 410 Gone responses) and the apiserver watch cache
(``staging/src/k8s.io/apiserver/pkg/storage/cacher``): one resourceVersion
counter shared by all kinds (etcd's revision), "too old resource version: X
(Y)" when X is older than the cache's history.

Use from tests::

    with FakeApiServer() as api:            # real HTTP on 127.0.0.1:<ephemeral>
        api.create("Service", {...})
        api.url, api.write_kubeconfig(path)

or standalone (benchmarks, subprocesses)::

    python3 -m fastdns.testing.fake_apiserver --port 0 --state cluster.yaml

which prints ``listening on http://127.0.0.1:PORT`` once it serves. Objects
can then be changed over HTTP like on a real server (POST to a namespaced
collection, PUT/DELETE on an object), and the test controls are under
``/_fake/`` (``POST /_fake/compact``, ``/_fake/down?seconds=2``, ...).

Like a cluster's apiserver it can serve HTTPS (``tls=(cert, key)``, see
``fastdns.testing.pki``) and authenticate bearer tokens that rotate
(``rotate_token``: bound service-account tokens are replaced about hourly
and the old one stays valid for a while), and it can refuse a resource the
way RBAC does (``forbid("services")``: a 403 whose Status names the user,
the verb and the resource), so a missing ClusterRole can be shown.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import collections
import contextlib
import copy
import datetime
import json
import re
import secrets
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = ["DEFAULT_USER", "FakeApiServer", "RESOURCES", "load_state_file", "main",
           "parse_field_selector", "parse_label_selector", "status_object"]

# Who a token authenticates as: CoreDNS's service account in kubeadm's manifest.
DEFAULT_USER = "system:serviceaccount:kube-system:coredns"


@dataclass(frozen=True)
class Resource:
    kind: str
    api_version: str  # "v1", "discovery.k8s.io/v1"
    prefix: str  # "/api/v1", "/apis/discovery.k8s.io/v1"
    plural: str
    namespaced: bool

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def group(self) -> str:
        """The API group ("" for the core group)."""
        return self.api_version.rpartition("/")[0]

    @property
    def qualified(self) -> str:
        """``services``, ``endpointslices.discovery.k8s.io`` (schema.GroupResource.String)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES: dict[str, Resource] = {
    r.kind: r
    for r in (
        Resource("Namespace", "v1", "/api/v1", "namespaces", False),
        Resource("Service", "v1", "/api/v1", "services", True),
        Resource("Pod", "v1", "/api/v1", "pods", True),
        Resource("EndpointSlice", "discovery.k8s.io/v1", "/apis/discovery.k8s.io/v1",
                 "endpointslices", True),
    )
}
_BY_PLURAL = {(r.prefix, r.plural): r for r in RESOURCES.values()}
_ALIASES = {a: r.kind for r in RESOURCES.values()
            for a in (r.kind, r.kind.lower(), r.plural, r.qualified)}

_REASONS = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
    409: "AlreadyExists", 410: "Expired", 429: "TooManyRequests", 500: "InternalError",
    503: "ServiceUnavailable", 504: "Timeout",
}

# Message of the 410 an expired `continue` token gets (apiserver storage/errors.go).
_CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. "
    "You can start a new list without the continue parameter, or use the continue "
    "token in this response to retrieve the remainder of the results. Continuing with "
    "the provided token results in an inconsistent list - objects that were created, "
    "modified, or deleted between the time the first chunk was returned and now may "
    "show up in the list."
)


def _kind(kind: str) -> str:
    try:
        return _ALIASES[kind]
    except KeyError:
        raise ValueError(f"fake API server does not serve kind {kind!r}") from None


def status_object(code: int, message: str, reason: str | None = None,
                  details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A metav1.Status as the apiserver writes it (field order included)."""
    st: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                          "status": "Failure", "message": message,
                          "reason": reason or _REASONS.get(code, "InternalError")}
    if details:
        st["details"] = details
    st["code"] = code
    return st


# --------------------------------------------------------------------------
# selectors

_SET_RE = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(text: str) -> list[str]:
    """Split on commas outside parentheses (``a in (x,y),b`` has two terms)."""
    terms, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    terms.append("".join(cur))
    return [t.strip() for t in terms if t.strip()]


def parse_label_selector(text: str | None) -> Callable[[dict[str, Any]], bool] | None:
    """Label selector grammar of apimachinery ``labels.Parse`` (=, ==, !=, in,
    notin, exists, !exists); returns a predicate on an object, None = all."""
    if not text:
        return None
    tests: list[Callable[[dict[str, str]], bool]] = []
    for term in _split_selector(text):
        m = _SET_RE.match(term)
        if m:
            key, op, vals = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if op == "in":
                tests.append(lambda lb, k=key, vs=vals: lb.get(k) in vs)
            else:
                tests.append(lambda lb, k=key, vs=vals: lb.get(k) not in vs)
        elif "!=" in term:
            k, v = (s.strip() for s in term.split("!=", 1))
            tests.append(lambda lb, k=k, v=v: lb.get(k) != v)
        elif "=" in term:
            k, v = (s.strip() for s in re.split(r"==?", term, maxsplit=1))
            tests.append(lambda lb, k=k, v=v: lb.get(k) == v)
        elif term.startswith("!"):
            absent = term[1:].strip()
            tests.append(lambda lb, k=absent: k not in lb)
        else:
            tests.append(lambda lb, k=term: k in lb)

    def match(obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(t(labels) for t in tests)

    return match


def _field(obj: dict[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    return "" if cur is None else str(cur)


def parse_field_selector(text: str | None) -> Callable[[dict[str, Any]], bool] | None:
    """Field selectors (``status.phase!=Succeeded,metadata.name=x``): =, ==, !=
    on dotted paths; a missing field compares as the empty string."""
    if not text:
        return None
    tests: list[tuple[str, bool, str]] = []
    for term in _split_selector(text):
        if "!=" in term:
            path, value = term.split("!=", 1)
            tests.append((path.strip(), False, value.strip()))
        elif "=" in term:
            path, value = re.split(r"==?", term, maxsplit=1)
            tests.append((path.strip(), True, value.strip()))
        else:
            raise ValueError(f"invalid field selector term {term!r}")

    def match(obj: dict[str, Any]) -> bool:
        return all((_field(obj, p) == v) is eq for p, eq, v in tests)

    return match


# --------------------------------------------------------------------------
# the store


@dataclass(frozen=True)
class _Event:
    rv: int
    kind: str
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]  # without kind/apiVersion
    prev: dict[str, Any] | None
    raw: bytes  # obj as compact JSON


@dataclass
class _Failure:
    remaining: int
    status: int
    retry_after: float | None
    path: str | None
    watch: bool | None
    message: str | None
    when: Callable[[str, Mapping[str, str]], bool] | None


def _key(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        raise ValueError(f"{kind} without metadata.name")
    ns = "" if not RESOURCES[kind].namespaced else (meta.get("namespace") or "default")
    return ns, meta["name"]


def _now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _event_rv(ev: _Event) -> int:
    return ev.rv


def _with_kind(res: Resource, obj: dict[str, Any]) -> dict[str, Any]:
    out = {"kind": res.kind, "apiVersion": res.api_version}
    out.update(obj)
    return out


class FakeApiServer:
    """In-process fake kube-apiserver on 127.0.0.1 (see the module docstring).

    Every public method is thread-safe: the HTTP side runs on its own event
    loop thread (``start()``) or on the caller's loop (``serve_async()``).

    The event history is one window over all kinds (``history_size`` events,
    like an etcd compaction window), not the apiserver's per-resource watch
    caches: a quiet kind's resourceVersion ages with every other kind's
    changes, which is exactly what bookmarks are for. Watches get a
    BOOKMARK every ``bookmark_interval`` seconds when they allow them (the
    apiserver's ``defaultBookmarkFrequency`` is one minute).

    Test controls: ``create/update/apply/delete(kind, obj)``, ``load``,
    ``compact()``, ``fail_next(n, status, retry_after, path=, watch=)``,
    ``set_down(bool)``, ``slow(seconds)``, ``hang_watches()``,
    ``end_watches()``, ``empty_watches(n)``, ``set_tokens(*tokens)``,
    ``rotate_token(new, grace=)``, ``forbid(resource, *verbs)``,
    ``allow(resource)``, ``requests(path, watch=)``, ``request_log``,
    ``open_watches``, ``write_kubeconfig(path)``.

    Authentication: with no token every request is served (an apiserver with
    anonymous access and no RBAC); with tokens, an API request without one of
    them is answered ``401 Unauthorized`` before anything else is looked at,
    as the apiserver's authentication filter does. ``tls=(certfile, keyfile)``
    serves HTTPS (``url`` is then ``https://``).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, history_size: int = 1000,
                 bookmark_interval: float = 60.0, default_watch_timeout: float = 1800.0,
                 token: str | None = None, snapshot_cache: int = 64,
                 tls: tuple[str, str] | None = None, user: str = DEFAULT_USER) -> None:
        self.host = host
        self.port = port
        self.history_size = history_size
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        self.tls = tls
        self.user = user
        self._lock = threading.RLock()
        # accepted bearer tokens -> when they stop being accepted (monotonic
        # seconds; None: never), newest last
        self._tokens: dict[str, float | None] = {token: None} if token else {}
        # kind -> the verbs refused (None: all of them), see forbid()
        self._forbidden: dict[str, frozenset[str] | None] = {}
        self._end_epoch = 0
        self._objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
            k: {} for k in RESOURCES}
        # each object's JSON, encoded once per change: lists and watch lines
        # are then joins, so a 100k-endpoint list is served as fast as a real
        # apiserver serves it from its watch cache
        self._enc: dict[str, dict[tuple[str, str], bytes]] = {k: {} for k in RESOURCES}
        self._rv = 1
        self._history: list[_Event] = []  # live part starts at _hist_start
        self._hist_start = 0
        self._floor = 1  # watches from rv >= floor can be served from history
        self._snapshots: collections.OrderedDict[
            tuple, list[tuple[tuple[str, str], dict, bytes]]] = collections.OrderedDict()
        self._snapshot_cache = snapshot_cache
        self._failures: list[_Failure] = []
        self._delay = 0.0
        self._down = False
        self._down_epoch = 0
        self._hang_epoch = 0
        self._empty_watches = 0
        self._counts: collections.Counter[tuple[str, bool]] = collections.Counter()
        self.request_log: collections.deque[tuple[str, str, dict[str, str]]] = (
            collections.deque(maxlen=1000))
        self._open_watches = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
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

    def _ssl_context(self) -> ssl.SSLContext | None:
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
                loop.run_until_complete(self._stopping.wait())  # type: ignore[union-attr]
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
        self._loop.call_soon_threadsafe(self._stopping.set)  # type: ignore[union-attr]
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
            await self._stopping.wait()  # type: ignore[union-attr]
        finally:
            await self._shutdown()

    async def _startup(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        self._ssl = self._ssl_context()  # a bad certificate fails start(), not a request
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
        self._down_epoch += 1
        self._pulse()
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

    def _pulse(self) -> None:
        """Wake every watch stream (runs on the server loop)."""
        old, self._changed = self._changed, asyncio.Event()
        if old is not None:
            old.set()

    def _notify(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closing
                self._loop.call_soon_threadsafe(self._pulse)

    # ------------------------------------------------------- test controls

    def create(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Add an object (ValueError if it exists); returns it with metadata set."""
        return self._mutate(_kind(kind), obj, "create")

    def update(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Replace an existing object (KeyError if missing)."""
        return self._mutate(_kind(kind), obj, "update")

    def apply(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace."""
        return self._mutate(_kind(kind), obj, "apply")

    def delete(self, kind: str, obj: dict[str, Any] | tuple[str, str]) -> dict[str, Any]:
        """Delete by object (its metadata) or (namespace, name) key."""
        k = _kind(kind)
        key = obj if isinstance(obj, tuple) else _key(k, obj)
        if not RESOURCES[k].namespaced:
            key = ("", key[1])
        with self._lock:
            old = self._objects[k].pop(key)
            del self._enc[k][key]
            self._rv += 1
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(self._rv)
            self._record(_Event(self._rv, k, "DELETED", gone, old, _encode(gone)))
        self._notify()
        return gone

    def load(self, objects: Iterable[dict[str, Any]]) -> int:
        """Create/replace objects that carry their own ``kind`` (kubectl output)."""
        n = 0
        for obj in objects:
            kind = obj.get("kind")
            if kind == "List" or kind is None and "items" in obj:
                n += self.load(obj.get("items") or [])
                continue
            if kind not in _ALIASES:
                continue
            body = {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
            self.apply(kind, body)
            n += 1
        return n

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        k = _kind(kind)
        with self._lock:
            obj = self._objects[k].get(("" if not RESOURCES[k].namespaced else namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def objects(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(o) for _, o in sorted(self._objects[_kind(kind)].items())]

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def compact(self) -> None:
        """Drop the whole event history: every watch from an older rv gets 410."""
        with self._lock:
            self._history.clear()
            self._hist_start = 0
            self._floor = self._rv
            self._snapshots.clear()

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
            self._failures.append(
                _Failure(n, status, retry_after, path, watch, message, when))

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
            self._down_epoch += 1
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            self._abort_connections()
            self._pulse()
        else:
            await self._listen()

    def slow(self, seconds: float) -> None:
        """Delay every response (headers included) by this many seconds."""
        with self._lock:
            self._delay = seconds

    def hang_watches(self) -> None:
        """Open watch streams go silent (no events, no bookmarks), like a dead
        peer behind a NAT; new watches work normally."""
        with self._lock:
            self._hang_epoch += 1
        self._notify()

    def end_watches(self) -> None:
        """Open watch streams end now, cleanly, as at their ``timeoutSeconds`` (or an
        apiserver rollout): every client must open a new, authenticated watch."""
        with self._lock:
            self._end_epoch += 1
        self._notify()

    # -- authentication and authorization

    @property
    def token(self) -> str | None:
        """The newest accepted bearer token (None: authentication is off)."""
        with self._lock:
            return next(reversed(self._tokens), None)

    @token.setter
    def token(self, value: str | None) -> None:
        self.set_tokens(*([value] if value else []))

    def set_tokens(self, *tokens: str) -> None:
        """Accept exactly these bearer tokens from now on; none: no authentication."""
        with self._lock:
            self._tokens = dict.fromkeys(tokens)

    def rotate_token(self, new: str | None = None, *, grace: float = 0.0) -> str:
        """Accept ``new`` (a fresh random token when None) and stop accepting the
        others ``grace`` seconds from now (0: at once). A projected service-account
        token is rotated by the kubelet at 80 % of its lifetime and the old one
        stays valid until it expires, so a client that does not re-read the
        file is refused some time after the rotation. Returns the new token."""
        token = new or secrets.token_urlsafe(32)
        with self._lock:
            until = time.monotonic() + grace
            for old, expiry in self._tokens.items():
                if old != token and (expiry is None or expiry > until):
                    self._tokens[old] = until
            self._tokens.pop(token, None)
            self._tokens[token] = None
        return token

    def forbid(self, resource: str, *verbs: str) -> None:
        """Refuse ``resource`` (``services``, ``Service``, ...) with RBAC's 403, for
        ``verbs`` (get, list, watch, create, update, delete) or every verb: what
        a ServiceAccount without the ClusterRole that grants them gets."""
        kind = _kind(resource)
        with self._lock:
            self._forbidden[kind] = frozenset(verbs) if verbs else None

    def allow(self, resource: str | None = None) -> None:
        """Lift ``forbid`` for one resource, or for all of them."""
        with self._lock:
            if resource is None:
                self._forbidden.clear()
            else:
                self._forbidden.pop(_kind(resource), None)

    def _authenticated(self, header: str | None) -> bool:
        """The bearer-token authenticator (apiserver pkg/authentication/request/
        bearertoken/bearertoken.go): ``Authorization: Bearer TOKEN``, the scheme
        case-insensitive (the Python client's in-cluster loader sends ``bearer``)."""
        with self._lock:
            if not self._tokens:
                return True
            parts = (header or "").strip().split(" ", 2)
            if len(parts) < 2 or parts[0].lower() != "bearer" or not parts[1]:
                return False
            expiry = self._tokens.get(parts[1], 0.0)
            if expiry is None:
                return True
            if expiry <= time.monotonic():
                self._tokens.pop(parts[1], None)  # expired for good
                return False
            return True

    def _forbidden_response(self, request: web.Request) -> web.Response | None:
        """RBAC's refusal of this request, if ``forbid`` covers it."""
        with self._lock:
            if not self._forbidden:
                return None
        route = self._route(request.path.rstrip("/"))
        if route is None:
            return None
        res, namespace, name = route
        if request.method == "GET":
            watch = request.query.get("watch") in ("1", "true", "True")
            verb = "get" if name else "watch" if watch else "list"
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                    "DELETE": "delete"}.get(request.method, request.method.lower())
        with self._lock:
            if res.kind not in self._forbidden:
                return None
            verbs = self._forbidden[res.kind]
        if verbs is not None and verb not in verbs:
            return None
        user = self.user if self._tokens else "system:anonymous"
        # apiserver endpoints/handlers/responsewriters/errors.go (forbiddenMessage)
        # and apimachinery api/errors NewForbidden
        scope = (f'in the namespace "{namespace}"' if namespace is not None
                 else "at the cluster scope")
        reason = (f'User "{user}" cannot {verb} resource "{res.plural}" '
                  f'in API group "{res.group}" {scope}')
        what = f'{res.qualified} "{name}"' if name else res.qualified
        details: dict[str, Any] = {}
        if name:
            details["name"] = name
        if res.group:
            details["group"] = res.group
        details["kind"] = res.plural
        return self._status(403, f"{what} is forbidden: {reason}", "Forbidden",
                            details=details)

    def empty_watches(self, n: int) -> None:
        """The next n watch requests get a 200 that ends at once with no line
        (the apiserver did that for Events with a stale rv, kubernetes#104171)."""
        with self._lock:
            self._empty_watches = n

    def requests(self, path: str | None = None, *, watch: bool | None = None) -> int:
        """How many API requests arrived, optionally for one path / watch or not."""
        with self._lock:
            return sum(c for (p, w), c in self._counts.items()
                       if (path is None or p == path) and (watch is None or w == watch))

    @property
    def open_watches(self) -> int:
        return self._open_watches

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

    # ----------------------------------------------------------- the store

    def _mutate(self, kind: str, obj: dict[str, Any], mode: str) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        obj.pop("kind", None)
        obj.pop("apiVersion", None)
        key = _key(kind, obj)
        meta = obj["metadata"]
        if RESOURCES[kind].namespaced:
            meta["namespace"] = key[0]
        else:
            meta.pop("namespace", None)
        with self._lock:
            table = self._objects[kind]
            old = table.get(key)
            if mode == "create" and old is not None:
                raise ValueError(f"{kind} {key} already exists")
            if mode == "update" and old is None:
                raise KeyError(f"{kind} {key} not found")
            self._rv += 1
            if old is None:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", _now_rfc3339())
            else:
                meta["uid"] = old["metadata"].get("uid")
                meta["creationTimestamp"] = old["metadata"].get("creationTimestamp")
            meta["resourceVersion"] = str(self._rv)
            table[key] = obj
            raw = self._enc[kind][key] = _encode(obj)
            self._record(_Event(self._rv, kind, "ADDED" if old is None else "MODIFIED", obj, old,
                                raw))
        self._notify()
        return _with_kind(RESOURCES[kind], copy.deepcopy(obj))

    def _record(self, ev: _Event) -> None:
        """Append to the bounded history; the oldest event dropped sets the floor."""
        if self.history_size <= 0:
            self._floor = ev.rv
            return
        hist = self._history
        hist.append(ev)
        if len(hist) - self._hist_start > self.history_size:
            self._floor = hist[self._hist_start].rv
            self._hist_start += 1
            if self._hist_start >= self.history_size:  # amortised trim
                del hist[:self._hist_start]
                self._hist_start = 0

    def _events_since(self, rv: int) -> list[_Event]:
        """Events with resourceVersion > rv (lock held; rv >= floor)."""
        i = bisect.bisect_right(self._history, rv, lo=self._hist_start, key=_event_rv)
        return self._history[i:]

    # -------------------------------------------------------------- HTTP

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        watch = request.query.get("watch") in ("1", "true", "True")
        with self._lock:
            self._counts[(request.path, watch)] += 1
            self.request_log.append((request.method, request.path, dict(request.query)))
            delay = self._delay
            failure = self._take_failure(request.path, request.query, watch)
        if delay:
            await asyncio.sleep(delay)
            if request.transport is None or request.transport.is_closing():
                # the client gave up meanwhile; aiohttp drops this quietly
                return web.Response(status=499)
        if failure is not None:
            return self._failure_response(failure)
        if request.path.startswith(("/api", "/apis")):
            # the apiserver's filter order: authentication, then authorization
            if not self._authenticated(request.headers.get("Authorization")):
                return self._status(401, "Unauthorized")
            refused = self._forbidden_response(request)
            if refused is not None:
                return refused
        return await handler(request)

    def _take_failure(self, path: str, query: Mapping[str, str],
                      watch: bool) -> _Failure | None:
        for f in self._failures:
            if f.path is not None and not path.startswith(f.path):
                continue
            if f.watch is not None and f.watch != watch:
                continue
            if f.when is not None and not f.when(path, query):
                continue
            f.remaining -= 1
            if f.remaining <= 0:
                self._failures.remove(f)
            return f
        return None

    def _failure_response(self, f: _Failure) -> web.Response:
        headers = {}
        details = None
        if f.retry_after is not None:
            headers["Retry-After"] = str(int(f.retry_after)) if float(
                f.retry_after).is_integer() else str(f.retry_after)
            details = {"retryAfterSeconds": max(1, int(f.retry_after))}
        default = {429: "Too many requests, please try again later.",
                   410: "The resourceVersion for the provided list is too old."}
        msg = f.message or default.get(f.status, f"fake failure {f.status}")
        return self._status(f.status, msg, details=details, headers=headers)

    @staticmethod
    def _status(code: int, message: str, reason: str | None = None, *,
                details: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(status=code, headers=headers,
                            body=json.dumps(status_object(code, message, reason, details)),
                            content_type="application/json")

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path.startswith("/_fake/"):
            return self._control(path[len("/_fake/"):], request)
        if request.method == "GET":
            stub = self._discovery(path)
            if stub is not None:
                return web.json_response(stub)
        route = self._route(path)
        if route is None:
            return self._status(404, "the server could not find the requested resource")
        res, namespace, name = route
        try:
            if request.method == "GET" and name is None:
                if request.query.get("watch") in ("1", "true", "True"):
                    return await self._watch(request, res, namespace)
                return self._list(request, res, namespace)
            if request.method == "GET":
                return self._get_one(res, namespace, name)
            if request.method in ("POST", "PUT", "DELETE"):
                return await self._write(request, res, namespace, name)
        except ValueError as exc:
            return self._status(400, str(exc))
        return self._status(405, f"method {request.method} not allowed", "MethodNotAllowed")

    def _control(self, verb: str, request: web.Request) -> web.Response:
        """The test controls over HTTP, for a standalone server driven by another
        process (benchmarks, image tests): POST /_fake/{compact,hang,end-watches,
        slow,fail,down,rotate-token,tokens,forbid,allow}, GET /_fake/requests.
        ``down?seconds=S`` comes back up after S seconds; ``rotate-token?token=T
        &grace=S``; ``tokens?token=A&token=B``; ``forbid?resource=services&verb=list``;
        ``allow[?resource=services]``. The controls need no token."""
        q = request.query
        if verb == "requests" and request.method == "GET":
            with self._lock:
                counts = [{"path": p, "watch": w, "count": c}
                          for (p, w), c in sorted(self._counts.items())]
            return web.json_response({"resourceVersion": str(self.resource_version),
                                      "requests": counts})
        if request.method != "POST":
            return self._status(405, "controls are POST", "MethodNotAllowed")
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
                return self._status(400, str(exc))
        elif verb == "allow":
            try:
                self.allow(q.get("resource"))
            except ValueError as exc:
                return self._status(400, str(exc))
        elif verb == "slow":
            self.slow(float(q.get("seconds", "0")))
        elif verb == "fail":
            watch = q.get("watch")
            self.fail_next(int(q.get("n", "1")), int(q.get("status", "500")),
                           float(q["retry_after"]) if "retry_after" in q else None,
                           path=q.get("path"),
                           watch=None if watch is None else watch in ("1", "true", "True"))
        elif verb == "down":
            seconds = float(q.get("seconds", "1"))
            loop = asyncio.get_running_loop()
            # answer first, then go down: the caller gets its 200
            loop.call_soon(lambda: loop.create_task(self._set_down(True)))
            loop.call_later(seconds, lambda: loop.create_task(self._set_down(False)))
        else:
            return self._status(404, f"no control {verb!r}")
        return web.json_response({"ok": True, "resourceVersion": str(self.resource_version)})

    def _route(self, path: str) -> tuple[Resource, str | None, str | None] | None:
        """Map an API path to (resource, namespace or None, object name or None)."""
        for prefix in ("/api/v1", "/apis/discovery.k8s.io/v1"):
            if not path.startswith(prefix + "/"):
                continue
            parts = path[len(prefix) + 1:].split("/")
            if prefix == "/api/v1" and parts[0] == "namespaces" and len(parts) <= 2:
                return RESOURCES["Namespace"], None, parts[1] if len(parts) == 2 else None
            if parts[0] == "namespaces" and len(parts) in (3, 4):
                res = _BY_PLURAL.get((prefix, parts[2]))
                if res is None or not res.namespaced:
                    return None
                return res, parts[1], parts[3] if len(parts) == 4 else None
            if len(parts) == 1:
                res = _BY_PLURAL.get((prefix, parts[0]))
                if res is not None:
                    return res, None, None
        return None

    def _discovery(self, path: str) -> dict[str, Any] | None:
        if path == "/version":
            return {"major": "1", "minor": "31", "gitVersion": "v1.31.0-fastdns-fake",
                    "gitCommit": "0" * 40, "gitTreeState": "clean",
                    "buildDate": "2024-08-13T00:00:00Z", "goVersion": "go1.22.5",
                    "compiler": "gc", "platform": "linux/amd64"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}]}
        if path == "/apis":
            gv = {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}
            return {"kind": "APIGroupList", "apiVersion": "v1",
                    "groups": [{"name": "discovery.k8s.io", "versions": [gv],
                                "preferredVersion": gv}]}
        for prefix, gv_name in (("/api/v1", "v1"),
                                ("/apis/discovery.k8s.io/v1", "discovery.k8s.io/v1")):
            if path == prefix:
                return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv_name,
                        "resources": [
                            {"name": r.plural, "singularName": r.kind.lower(),
                             "namespaced": r.namespaced, "kind": r.kind,
                             "verbs": ["create", "delete", "get", "list", "update", "watch"]}
                            for r in RESOURCES.values() if r.prefix == prefix]}
        if path in ("/healthz", "/readyz", "/livez"):
            return None
        return None

    # ---------------------------------------------------------------- list

    def _list(self, request: web.Request, res: Resource, namespace: str | None) -> web.Response:
        q = request.query
        label = parse_label_selector(q.get("labelSelector"))
        field = parse_field_selector(q.get("fieldSelector"))
        limit = int(q.get("limit") or 0)
        cont = q.get("continue") or ""
        with self._lock:
            if cont:
                try:
                    tok = json.loads(base64.b64decode(cont))
                    list_rv, start = int(tok["rv"]), str(tok["start"])
                except (ValueError, KeyError, TypeError):
                    return self._status(400, "continue key is not valid")
                skey = (res.kind, namespace, q.get("labelSelector"), q.get("fieldSelector"),
                        list_rv)
                items = self._snapshots.get(skey)
                if items is None or list_rv < self._floor:
                    return self._status(410, _CONTINUE_EXPIRED, "Expired")
                self._snapshots.move_to_end(skey)
            else:
                list_rv = self._rv
                start = ""
                enc = self._enc[res.kind]
                items = [(k, o, enc[k]) for k, o in sorted(self._objects[res.kind].items())
                         if (namespace is None or k[0] == namespace)
                         and (label is None or label(o)) and (field is None or field(o))]
                skey = (res.kind, namespace, q.get("labelSelector"), q.get("fieldSelector"),
                        list_rv)
        keys = [f"{k[0]}/{k[1]}" if k[0] else k[1] for k, _, _ in items]
        lo = bisect.bisect_left(keys, start) if start else 0
        hi = len(items) if limit <= 0 else min(len(items), lo + limit)
        meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
        if hi < len(items):
            nxt = keys[hi - 1] + "\x00"
            meta["continue"] = base64.b64encode(json.dumps(
                {"v": "meta.k8s.io/v1", "rv": list_rv, "start": nxt},
                separators=(",", ":")).encode()).decode()
            meta["remainingItemCount"] = len(items) - hi
            with self._lock:
                self._snapshots[skey] = items
                self._snapshots.move_to_end(skey)
                while len(self._snapshots) > self._snapshot_cache:
                    self._snapshots.popitem(last=False)
        head = _encode({"kind": res.list_kind, "apiVersion": res.api_version, "metadata": meta})
        body = b"".join((head[:-1], b',"items":[', b",".join(r for _, _, r in items[lo:hi]),
                         b"]}"))
        return web.Response(body=body, content_type="application/json")

    def _get_one(self, res: Resource, namespace: str | None, name: str) -> web.Response:
        with self._lock:
            obj = self._objects[res.kind].get((namespace or "", name))
        if obj is None:
            return self._status(404, f'{res.plural} "{name}" not found')
        return web.json_response(_with_kind(res, obj))

    async def _write(self, request: web.Request, res: Resource, namespace: str | None,
                     name: str | None) -> web.Response:
        if res.namespaced and namespace is None:
            return self._status(405, "writes need a namespaced path", "MethodNotAllowed")
        if request.method == "DELETE":
            if name is None:
                return self._status(405, "collection delete unsupported", "MethodNotAllowed")
            try:
                gone = self.delete(res.kind, (namespace or "", name))
            except KeyError:
                return self._status(404, f'{res.plural} "{name}" not found')
            return web.json_response(_with_kind(res, gone))
        try:
            body = await request.json()
        except ValueError:
            return self._status(400, "request body is not JSON")
        if not isinstance(body, dict):
            return self._status(400, "request body is not an object")
        meta = body.setdefault("metadata", {})
        if name is not None:
            meta.setdefault("name", name)
        if namespace is not None:
            meta["namespace"] = namespace
        try:
            mode = "create" if request.method == "POST" else "update"
            obj = self._mutate(res.kind, body, mode)
        except ValueError:
            return self._status(409, f'{res.plural} "{meta.get("name")}" already exists')
        except KeyError:
            return self._status(404, f'{res.plural} "{meta.get("name")}" not found')
        return web.json_response(obj, status=201 if request.method == "POST" else 200)

    # --------------------------------------------------------------- watch

    async def _watch(self, request: web.Request, res: Resource,
                     namespace: str | None) -> web.StreamResponse:
        q = request.query
        label = parse_label_selector(q.get("labelSelector"))
        field = parse_field_selector(q.get("fieldSelector"))
        bookmarks = q.get("allowWatchBookmarks") in ("1", "true", "True")
        timeout = float(q.get("timeoutSeconds") or self.default_watch_timeout)
        rv_text = q.get("resourceVersion") or ""
        try:
            start_rv = int(rv_text) if rv_text not in ("", "0") else None
        except ValueError:
            return self._status(400, f"resourceVersion {rv_text!r} is not a number")
        if start_rv is not None and start_rv > self.resource_version:
            # The watch cache waits up to 3 s to catch up, then gives up.
            deadline = time.monotonic() + 3.0
            while start_rv > self.resource_version and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if start_rv > self.resource_version:
                return self._status(504, f"Too large resource version: {start_rv}, "
                                    f"current: {self.resource_version}", "Timeout",
                                    details={"retryAfterSeconds": 1})

        def selected(obj: dict[str, Any] | None) -> bool:
            if obj is None:
                return False
            if namespace is not None and obj["metadata"].get("namespace") != namespace:
                return False
            return (label is None or label(obj)) and (field is None or field(obj))

        with self._lock:
            empty = self._empty_watches > 0
            self._empty_watches -= empty
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
        except ConnectionResetError:
            return web.Response(status=499)  # the client is gone; dropped quietly
        if empty:
            await resp.write_eof()
            return resp
        down_epoch, hang_epoch, end_epoch = self._down_epoch, self._hang_epoch, self._end_epoch
        loop_deadline = time.monotonic() + timeout
        next_bookmark = time.monotonic() + self.bookmark_interval
        self._open_watches += 1
        try:
            lines: list[bytes] = []
            with self._lock:
                if start_rv is None:
                    # rv unset or "0": synthetic ADDED events for the current state
                    cursor = self._rv
                    enc = self._enc[res.kind]
                    for key, obj in sorted(self._objects[res.kind].items()):
                        if selected(obj):
                            lines.append(self._line("ADDED", res, enc[key]))
                elif start_rv < self._floor:
                    lines.append(self._expired_line(start_rv))
                    cursor = -1
                else:
                    cursor = start_rv
            if lines:
                await resp.write(b"".join(lines))
            if cursor < 0:
                return resp  # the 410 ERROR line ends the stream
            while True:
                changed = self._changed
                assert changed is not None
                if self._down_epoch != down_epoch:
                    if request.transport is not None:
                        request.transport.abort()
                    return resp
                now = time.monotonic()
                if now >= loop_deadline:
                    break  # timeoutSeconds: the stream just ends
                # end_watches(): what happened before it is sent, then the end
                ending = self._end_epoch != end_epoch
                if self._hang_epoch != hang_epoch:
                    await self._wait(changed, loop_deadline - now)
                    continue
                if request.transport is None or request.transport.is_closing():
                    return resp  # the client went away
                lines = []
                expired = False
                with self._lock:
                    if cursor < self._floor:
                        # this watcher fell behind the history: like a slow
                        # watcher terminated by the cacher, it must relist
                        lines.append(self._expired_line(cursor))
                        expired = True
                        events: list[_Event] = []
                    else:
                        events = self._events_since(cursor)
                        cursor = self._rv
                lines += self._event_lines(events, res, selected)
                if expired:
                    await resp.write(b"".join(lines))
                    return resp
                if bookmarks and time.monotonic() >= next_bookmark:
                    lines.append(_encode({"type": "BOOKMARK", "object": {
                        "kind": res.kind, "apiVersion": res.api_version,
                        "metadata": {"resourceVersion": str(cursor)}}}) + b"\n")
                    next_bookmark = time.monotonic() + self.bookmark_interval
                if lines:
                    await resp.write(b"".join(lines))
                if ending:
                    break
                wait = loop_deadline - time.monotonic()
                if bookmarks:
                    wait = min(wait, next_bookmark - time.monotonic())
                await self._wait(changed, wait)
            await resp.write_eof()
        except ConnectionResetError:
            return resp
        finally:
            self._open_watches -= 1
        return resp

    def _expired_line(self, rv: int) -> bytes:
        """The 410 ERROR line of apiserver watch_cache.go (lock held)."""
        err = status_object(410, f"too old resource version: {rv} ({self._floor + 1})",
                            "Expired")
        return _encode({"type": "ERROR", "object": err}) + b"\n"

    def _event_lines(self, events: list[_Event], res: Resource,
                     selected: Callable[[dict[str, Any] | None], bool]) -> list[bytes]:
        """Watch lines for one watcher, with the cacher's selector transitions."""
        lines = []
        for ev in events:
            if ev.kind != res.kind:
                continue
            was = selected(ev.prev)
            if ev.type == "DELETED":
                if was:
                    lines.append(self._line("DELETED", res, ev.raw))
            elif selected(ev.obj):
                lines.append(self._line("MODIFIED" if was else "ADDED", res, ev.raw))
            elif was:
                # left the selection (a pod became Succeeded): the cacher sends
                # DELETED with the previous object at the event's resourceVersion
                gone = copy.deepcopy(ev.prev)
                assert gone is not None
                gone["metadata"]["resourceVersion"] = str(ev.rv)
                lines.append(self._line("DELETED", res, _encode(gone)))
        return lines

    @staticmethod
    async def _wait(event: asyncio.Event, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    @staticmethod
    def _line(etype: str, res: Resource, raw: bytes) -> bytes:
        """One watch line; the object gets kind/apiVersion first, as the apiserver
        writes them (raw is the object's JSON, never empty: it has metadata)."""
        return b"".join((b'{"type":"', etype.encode(), b'","object":{"kind":"',
                         res.kind.encode(), b'","apiVersion":"', res.api_version.encode(),
                         b'",', raw[1:], b"}\n"))


# --------------------------------------------------------------------------
# standalone


def load_state_file(path: str) -> list[dict[str, Any]]:
    """Objects of a ``kubectl get -o yaml|json`` file (a List or multi-document YAML)."""
    with open(path) as f:
        text = f.read()
    if text.lstrip().startswith("{"):
        with contextlib.suppress(ValueError):  # JSON is YAML, but json is 50x faster
            return [json.loads(text)]
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [d for d in yaml.load_all(text, Loader=loader) if isinstance(d, dict)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m fastdns.testing.fake_apiserver",
                                description="fake Kubernetes API server (list/watch)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--state", metavar="FILE", action="append", default=[],
                   help="kubectl -o yaml/json output to serve (repeatable)")
    p.add_argument("--history", type=int, default=10000, help="watch event history size")
    p.add_argument("--bookmark-interval", type=float, default=60.0)
    p.add_argument("--token", default=None, help="require this bearer token")
    p.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate "
                   "(PEM; python3 -m fastdns.testing.pki makes one)")
    p.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    p.add_argument("--forbid", metavar="RESOURCE", action="append", default=[],
                   help="answer 403 Forbidden for this resource (services, ...; repeatable)")
    args = p.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    api = FakeApiServer(host=args.host, port=args.port, history_size=args.history,
                        bookmark_interval=args.bookmark_interval, token=args.token, tls=tls)
    try:
        for resource in args.forbid:
            api.forbid(resource)
        n = sum(api.load(load_state_file(path)) for path in args.state)
        if tls:
            api._ssl_context()  # an unreadable or mismatched pair: one line, exit 2
    except (OSError, ValueError, ssl.SSLError) as exc:
        print(f"fake_apiserver: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        task = asyncio.create_task(api.serve_async())
        while api._listener is None and not task.done():
            await asyncio.sleep(0.01)
        print(f"listening on {api.url} ({n} objects, resourceVersion {api.resource_version})",
              flush=True)
        await task

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
