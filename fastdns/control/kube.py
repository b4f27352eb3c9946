"""The Kubernetes source: list then watch the objects DNS is made of.

Client choice (the sync client, a thread per kind): fastdns/control/kubeclient.py.

Per kind (CoreDNS ``plugin/kubernetes/controller.go`` semantics, client-go
Reflector protocol, https://kubernetes.io/docs/reference/using-api/api-concepts/):
list in pages of ``page_size`` (``limit``/``continue``), then watch from the
list's resourceVersion with ``allowWatchBookmarks`` and ``timeoutSeconds``
(300 s +/- 10 % so many replicas do not reconnect together); a watch that
ends cleanly is reopened from the last resourceVersion seen (events and
bookmarks both advance it); ``410 Expired`` (an ERROR line inside the 200
stream, or an HTTP 410) means relist; other errors and 429 back off
exponentially with jitter, honouring ``Retry-After``. Raw JSON only
(``kubeclient.list_call``), never the client's model classes: objects are
stripped at once (``fastdns.zone.objects.strip``), which is what keeps
CoreDNS-sized clusters within memory.

Refusals: a 401 (a token the apiserver no longer accepts) or a 403 (RBAC:
the ClusterRole that grants list/watch is missing) is retried like any
failure, with one warning per backoff step that names the resource, the
status and the apiserver's Status message, e.g. ``failed to list services:
HTTP 403 Forbidden: services is forbidden: User "system:serviceaccount:
kube-system:coredns" cannot list resource "services" ...``. Until every kind
has listed once, ``on_synced`` is not called (so ``/ready`` stays 503). With
the in-cluster configuration a 401 first reloads the service account, so a
token the kubelet has just rotated is used on the next try, not a minute
later when the client's own cache of the file expires.

Callbacks: ``on_event(kind, event_type, obj)`` and ``on_synced()`` are called
from the watch threads, one at a time (a lock serialises them), never from
the thread that called ``start()``; every event of a kind's first list is
delivered before ``on_synced``, which comes once, after the last kind's
first list. ``event_type`` is ADDED, MODIFIED or DELETED; ``obj`` is the
stripped object (for DELETED: the last one delivered for that key;
``obj.key`` is the key). A MODIFIED whose stripped form did not change is
not delivered (a Pod status change that moves no IP, an EndpointSlice
change in fields DNS ignores), and a relist delivers only the differences
against what was delivered before.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import urllib3

from fastdns.control.apilimit import ApiLimiter
from fastdns.control.backoff import Backoff
from fastdns.control.kubeclient import (
    RESOURCE_NAMES,
    KubeConfig,
    bearer,
    client_configuration,
    describe,
    iter_lines,
    list_call,
    retry_after,
)
from fastdns.zone.objects import Obj, Service, StateError, strip

log = logging.getLogger("fastdns.control.kube")

# Pods that finished hold no IP DNS may answer with (CoreDNS controller.go
# watches pods with the same selector when `pods verified`).
POD_FIELD_SELECTOR = "status.phase!=Succeeded,status.phase!=Failed"

EventCallback = Callable[[str, str, Obj], None]


class _Expired(Exception):
    """The resourceVersion is too old (410): relist."""


class _StreamError(Exception):
    """A non-410 ERROR event inside a watch stream."""

    def __init__(self, status: dict[str, Any]) -> None:
        super().__init__(f"{status.get('code')} {status.get('reason')}: {status.get('message')}")
        self.status = status


def _raw_key(kind: str, obj: dict[str, Any]) -> tuple[str, str] | None:
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str):
        return None
    if kind == "Namespace":
        return ("", name)
    return (meta.get("namespace") or "default", name)


@dataclass
class WatchCounters:
    lists: int = 0  # list calls that completed (first list included)
    relists: int = 0  # lists after the first (410, restarts)
    watches: int = 0  # watch requests opened
    events: int = 0  # events delivered to on_event
    unchanged: int = 0  # MODIFIED/relisted objects whose stripped form was equal
    bookmarks: int = 0
    errors: int = 0  # failed requests / broken streams
    read_timeouts: int = 0  # silent streams noticed
    skipped: int = 0  # objects strip() rejected

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Watch:
    kind: str
    list_fn: Callable[..., Any]
    field_selector: str | None = None
    label_selector: str | None = None
    known: dict[tuple[str, str], Obj] = field(default_factory=dict)
    rv: str = ""
    synced: bool = False
    counters: WatchCounters = field(default_factory=WatchCounters)
    resp: Any = None
    thread: threading.Thread | None = None
    opened_at: float | None = None  # when the current watch stream got its 200
    lines: int = 0  # lines the current watch stream brought


class KubeSource:
    """List+watch Namespaces, Services, EndpointSlices (and Pods) into callbacks.

    ``start()`` raises ``kubernetes.config.ConfigException`` when the
    configuration cannot be used (no kubeconfig file, not in a cluster);
    after that every failure is retried forever. ``api_client`` replaces
    the client built from ``config`` (tests, shared clients).
    """

    def __init__(self, config: KubeConfig, on_event: EventCallback,
                 on_synced: Callable[[], None] | None = None, *,
                 api_client: Any = None, rng: random.Random | None = None) -> None:
        self.config = config
        self._on_event = on_event
        self._on_synced = on_synced
        self._api_client = api_client
        self._own_client = api_client is None
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._emit_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._watches: list[_Watch] = []
        self._synced = threading.Event()
        # In-cluster token rotation: a bound service-account token is replaced
        # about hourly and the old one is refused some time later; the client
        # only re-reads the file once a minute, so a 401 reloads it at once
        # (as client-go's cached token source is reset on a 401,
        # transport/token_source.go). _token_gen counts the reloads that
        # brought a different token: a request that failed with an older
        # generation is retried without waiting for the backoff.
        self._auth_lock = threading.Lock()
        self._token_gen = 0
        # Services without spec.selector: the stripped form drops the selector
        # (DNS does not need it) but the programming-latency metric's
        # service_kind does (headless_with_selector / headless_without_selector)
        self._selectorless: set[tuple[str, str]] = set()

    # -------------------------------------------------------------- public

    def start(self) -> None:
        from kubernetes import client

        if self._api_client is None:
            self._api_client = client.ApiClient(client_configuration(self.config))
        cfg = self.config
        api, lim = self._api_client, ApiLimiter(cfg.api_qps, cfg.api_burst, cfg.api_max_inflight)
        fns: dict[str, tuple[Callable[..., Any], str | None, str | None]] = {
            "Namespace": (list_call(api, "Namespace", lim), None, cfg.namespace_label_selector),
            "Service": (list_call(api, "Service", lim), None, cfg.label_selector),
            "EndpointSlice": (list_call(api, "EndpointSlice", lim), None, cfg.label_selector),
            "Pod": (list_call(api, "Pod", lim), POD_FIELD_SELECTOR, None),
        }
        self._stop.clear()
        self._watches = [_Watch(k, *fns[k]) for k in cfg.kinds()]
        for w in self._watches:
            w.thread = threading.Thread(target=self._run, args=(w,), daemon=True,
                                        name=f"kube-watch-{w.kind}")
            w.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the watch threads (an open stream is shut down, not waited for)."""
        self._stop.set()
        for w in self._watches:
            self._abort(w)
        deadline = time.monotonic() + timeout
        for w in self._watches:
            if w.thread is not None:
                w.thread.join(max(0.0, deadline - time.monotonic()))
        if self._own_client and self._api_client is not None:
            self._api_client.close()
            self._api_client = None

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    def resource_versions(self) -> dict[str, str]:
        return {w.kind: w.rv for w in self._watches}

    def counters(self) -> dict[str, dict[str, int]]:
        """Per kind: lists, relists, watches, events, unchanged, bookmarks, errors,
        read_timeouts, skipped (for the metrics endpoint)."""
        return {w.kind: w.counters.as_dict() for w in self._watches}

    def total(self, name: str) -> int:
        return sum(getattr(w.counters, name) for w in self._watches)

    def service_kind(self, svc: Service) -> str:
        """CoreDNS's ``service_kind`` label of a Service (plugin/kubernetes/object/
        metrics.go): cluster_ip, headless_with_selector or headless_without_selector."""
        if not svc.headless:
            return "cluster_ip"
        if svc.key in self._selectorless:
            return "headless_without_selector"
        return "headless_with_selector"

    def _note_selector(self, w: _Watch, key: tuple[str, str], raw: dict[str, Any]) -> None:
        if w.kind != "Service":
            return
        spec = raw.get("spec")
        if isinstance(spec, dict) and spec.get("selector"):
            self._selectorless.discard(key)
        else:
            self._selectorless.add(key)

    # ------------------------------------------------------------- threads

    def _abort(self, w: _Watch) -> None:
        resp = w.resp
        if resp is not None:
            try:
                resp.shutdown()  # urllib3 >= 2.3: wakes a blocked read at once
            except (AttributeError, ValueError, RuntimeError, OSError):
                pass

    def _run(self, w: _Watch) -> None:
        backoff = Backoff(self.config.backoff_base, self.config.backoff_cap, rng=self._rng)
        need_list = True
        while not self._stop.is_set():
            w.opened_at, w.lines = None, 0
            token_gen = self._token_gen
            try:
                if need_list:
                    self._relist(w)
                    need_list = False
                    backoff.reset()
                started = time.monotonic()
                lines = self._watch(w)
                if lines or time.monotonic() - started >= 1.0:
                    backoff.reset()
                elif not self._stop.is_set():
                    # An empty watch that ended at once would make this loop
                    # spin (kubernetes#104171); client-go treats a "very short
                    # watch" as an error (reflector.go), so does this.
                    w.counters.errors += 1
                    delay = backoff.next()
                    log.warning("%s watch ended at once without events; retrying in %.2fs",
                                w.kind, delay)
                    self._stop.wait(delay)
            except _Expired as exc:
                log.info("%s watch: %s; relisting", w.kind, exc)
                need_list = True
            except urllib3.exceptions.ReadTimeoutError:
                # A silent stream (no event, no bookmark for read_timeout):
                # reopen from the same resourceVersion, no relist needed.
                w.counters.read_timeouts += 1
                log.info("%s watch silent for %.0fs; reconnecting", w.kind,
                         self.config.read_timeout)
            except Exception as exc:  # every other failure backs off and retries
                if self._stop.is_set():
                    break
                if w.opened_at is not None and (
                        w.lines or time.monotonic() - w.opened_at >= 1.0):
                    # a watch that worked and then broke starts a new series:
                    # the first retry is quick (client-go resets its backoff
                    # after a watch that lasted, reflector.go)
                    backoff.reset()
                status = getattr(exc, "status", None)
                if status == 410:  # HTTP 410 Gone/Expired on the watch or a list
                    log.info("%s: HTTP 410; relisting", w.kind)
                    need_list = True
                    continue
                w.counters.errors += 1
                verb = "list" if need_list else "watch"
                note = ""
                if status == 401 and self._reloads_token():
                    if self._reload_incluster() or self._token_gen != token_gen:
                        log.info("failed to %s %s: HTTP 401 Unauthorized; the service "
                                 "account token changed: retrying with the new one",
                                 verb, RESOURCE_NAMES[w.kind])
                        continue
                    note = " (the service account token file still holds the refused token)"
                delay = backoff.next(retry_after(exc) if status == 429 else None)
                # one line per backoff step, naming the resource and the apiserver's
                # Status message (a 403 says which user lacks which permission)
                log.warning("failed to %s %s: %s%s; retrying in %.2fs", verb,
                            RESOURCE_NAMES[w.kind], describe(exc), note, delay)
                self._stop.wait(delay)

    def _reloads_token(self) -> bool:
        return self._own_client and self.config.in_cluster and self._api_client is not None

    def _reload_incluster(self) -> bool:
        """Load the in-cluster configuration again into the client's Configuration
        (the client's own loader, which re-reads the token file); True if the
        token changed. Raises nothing: a file caught missing is the next retry's."""
        from kubernetes import config
        from kubernetes.config.config_exception import ConfigException

        with self._auth_lock:
            conf = self._api_client.configuration
            before = bearer(conf)
            try:
                config.load_incluster_config(client_configuration=conf)
            except (ConfigException, OSError) as exc:
                log.warning("re-reading the service account token failed: %s", exc)
                return False
            if bearer(conf) == before:
                return False
            self._token_gen += 1
            return True

    def _relist(self, w: _Watch) -> None:
        """Full paged list; deliver the differences to what was delivered."""
        cfg = self.config
        fresh: dict[tuple[str, str], Obj] = {}
        cont: str | None = None
        limit = cfg.page_size
        rv = ""
        while True:
            kwargs: dict[str, Any] = {"limit": limit} if limit else {}
            if cont:
                kwargs["_continue"] = cont
            if w.field_selector:
                kwargs["field_selector"] = w.field_selector
            if w.label_selector:
                kwargs["label_selector"] = w.label_selector
            try:
                body = self._get_json(w, kwargs, cfg.list_read_timeout)
            except Exception as exc:
                if cont and getattr(exc, "status", None) == 410:
                    # The continue token expired mid-list: client-go falls back
                    # to one unpaged list (reflector.go).
                    log.info("%s: continue token expired; listing without paging", w.kind)
                    fresh.clear()
                    cont, limit = None, 0
                    continue
                raise
            meta = body.get("metadata") or {}
            if not cont:
                rv = str(meta.get("resourceVersion") or "")
            for item in body.get("items") or ():
                try:
                    obj = strip(w.kind, item)
                except StateError as exc:
                    w.counters.skipped += 1
                    log.warning("skipping %s: %s", w.kind, exc)
                    continue
                prev = w.known.get(obj.key)
                # an unchanged object stays the one already delivered: a relist
                # of 100k endpoints then holds one copy of the state, not two
                fresh[obj.key] = prev if prev == obj else obj
                self._note_selector(w, obj.key, item)
            cont = meta.get("continue") or None
            if not cont:
                break
            if self._stop.is_set():
                return
        old = w.known
        for key, obj in fresh.items():
            prev = old.get(key)
            if prev is None:
                self._emit(w, "ADDED", obj)
            elif prev is not obj:
                self._emit(w, "MODIFIED", obj)
            else:
                w.counters.unchanged += 1
        for key, prev in old.items():
            if key not in fresh:
                self._emit(w, "DELETED", prev)
                self._selectorless.discard(key)
        w.known = fresh
        w.rv = rv
        w.counters.lists += 1
        if w.synced:
            w.counters.relists += 1
        if not w.synced:
            w.synced = True
            self._check_synced()

    def _get_json(self, w: _Watch, kwargs: dict[str, Any], read_timeout: float) -> Any:
        resp = w.list_fn(_request_timeout=(self.config.connect_timeout, read_timeout), **kwargs)
        try:
            return json.loads(resp.data)
        finally:
            resp.release_conn()

    def _watch(self, w: _Watch) -> int:
        """One watch request until it ends cleanly (timeoutSeconds); returns the
        number of lines (events and bookmarks) it brought."""
        cfg = self.config
        timeout = max(1, round(cfg.watch_timeout * self._rng.uniform(0.9, 1.1)))
        kwargs: dict[str, Any] = {}
        if w.field_selector:
            kwargs["field_selector"] = w.field_selector
        if w.label_selector:
            kwargs["label_selector"] = w.label_selector
        resp = w.list_fn(watch=True, resource_version=w.rv, allow_watch_bookmarks=True,
                         timeout_seconds=timeout,
                         _request_timeout=(cfg.connect_timeout, cfg.read_timeout), **kwargs)
        w.resp = resp
        w.opened_at = time.monotonic()
        w.counters.watches += 1
        try:
            if self._stop.is_set():
                return 0
            for line in iter_lines(resp):
                self._handle(w, json.loads(line))
                w.lines += 1
            return w.lines
        finally:
            w.resp = None
            resp.close()  # never hand a half-read stream back to the pool
            resp.release_conn()

    def _handle(self, w: _Watch, ev: dict[str, Any]) -> None:
        etype = ev.get("type")
        raw = ev.get("object") or {}
        if etype == "ERROR":
            if raw.get("code") == 410 or raw.get("reason") in ("Expired", "Gone"):
                raise _Expired(raw.get("message") or "resource version expired")
            raise _StreamError(raw)
        rv = (raw.get("metadata") or {}).get("resourceVersion")
        if etype == "BOOKMARK":
            w.counters.bookmarks += 1
        elif etype in ("ADDED", "MODIFIED"):
            try:
                obj = strip(w.kind, raw)
            except StateError as exc:
                w.counters.skipped += 1
                log.warning("skipping %s event: %s", w.kind, exc)
            else:
                self._note_selector(w, obj.key, raw)
                prev = w.known.get(obj.key)
                if prev == obj:
                    w.counters.unchanged += 1
                else:
                    w.known[obj.key] = obj
                    self._emit(w, "ADDED" if prev is None else "MODIFIED", obj)
        elif etype == "DELETED":
            key = _raw_key(w.kind, raw)
            prev = w.known.pop(key, None) if key is not None else None
            if prev is not None:
                self._emit(w, "DELETED", prev)
                self._selectorless.discard(prev.key)
        else:
            raise _StreamError({"message": f"unknown watch event type {etype!r}"})
        if rv:
            w.rv = str(rv)

    def _emit(self, w: _Watch, etype: str, obj: Obj) -> None:
        w.counters.events += 1
        with self._emit_lock:
            try:
                self._on_event(w.kind, etype, obj)
            except Exception:
                log.exception("on_event(%s, %s) failed", w.kind, etype)

    def _check_synced(self) -> None:
        with self._state_lock:
            if self._synced.is_set() or not all(x.synced for x in self._watches):
                return
            self._synced.set()
        if self._on_synced is not None:
            with self._emit_lock:
                try:
                    self._on_synced()
                except Exception:
                    log.exception("on_synced failed")
