"""Watch streams: chunked JSON lines from a resourceVersion, as the apiserver's cacher sends them.

A stream starts with synthetic ADDED events (rv unset or "0") or the
history after the client's rv, then follows the store; it carries BOOKMARKs
when the client allows them, ends cleanly at ``timeoutSeconds``, and ends
with a ``410 Expired`` ERROR line *inside* the 200 when its rv is older
than the history. The test controls reach open streams through epochs:
``drop`` (the server went down: connections reset), ``hang`` (silent, like
a dead peer behind a NAT) and ``end`` (a clean end, as at an apiserver
rollout).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from fastdns.testing.fakeapi.resources import Resource, is_true, status_object, status_response
from fastdns.testing.fakeapi.selectors import parse_field_selector, parse_label_selector
from fastdns.testing.fakeapi.store import Event, Store, encode


class Watches:
    """The open watch streams of one server and the controls that reach them.

    ``changed`` and ``pulse`` belong to the server's event loop: every
    stream waits on ``changed``, and ``pulse`` replaces it after setting it,
    so each change wakes every stream once.
    """

    def __init__(self, store: Store, bookmark_interval: float,
                 default_timeout: float) -> None:
        self.store = store
        self.bookmark_interval = bookmark_interval
        self.default_timeout = default_timeout
        self.changed: asyncio.Event | None = None
        self.open = 0
        self._down_epoch = 0
        self._hang_epoch = 0
        self._end_epoch = 0
        self._empty = 0

    def pulse(self) -> None:
        """Wake every watch stream (runs on the server loop)."""
        old, self.changed = self.changed, asyncio.Event()
        if old is not None:
            old.set()

    def drop(self) -> None:
        """Open streams reset their connection (the server went down; on its loop)."""
        self._down_epoch += 1
        self.pulse()

    def hang(self) -> None:
        """Open streams go silent; new ones work normally (wake them after)."""
        with self.store.lock:
            self._hang_epoch += 1

    def end(self) -> None:
        """Open streams end after what happened before (wake them after)."""
        with self.store.lock:
            self._end_epoch += 1

    def empty(self, n: int) -> None:
        """The next n watches get a 200 that ends at once with no line."""
        with self.store.lock:
            self._empty = n

    async def serve(self, request: web.Request, res: Resource,
                    namespace: str | None) -> web.StreamResponse:
        """Answer one watch request with its stream."""
        store = self.store
        q = request.query
        label = parse_label_selector(q.get("labelSelector"))
        field = parse_field_selector(q.get("fieldSelector"))
        bookmarks = is_true(q.get("allowWatchBookmarks"))
        timeout = float(q.get("timeoutSeconds") or self.default_timeout)
        rv_text = q.get("resourceVersion") or ""
        try:
            start_rv = int(rv_text) if rv_text not in ("", "0") else None
        except ValueError:
            return status_response(400, f"resourceVersion {rv_text!r} is not a number")
        if start_rv is not None and start_rv > self._current_rv():
            # The watch cache waits up to 3 s to catch up, then gives up.
            deadline = time.monotonic() + 3.0
            while start_rv > self._current_rv() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if start_rv > self._current_rv():
                return status_response(504, f"Too large resource version: {start_rv}, "
                                       f"current: {self._current_rv()}", "Timeout",
                                       details={"retryAfterSeconds": 1})

        def selected(obj: dict[str, Any] | None) -> bool:
            if obj is None:
                return False
            if namespace is not None and obj["metadata"].get("namespace") != namespace:
                return False
            return (label is None or label(obj)) and (field is None or field(obj))

        with store.lock:
            empty = self._empty > 0
            self._empty -= empty
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
        self.open += 1
        try:
            lines: list[bytes] = []
            with store.lock:
                if start_rv is None:
                    # rv unset or "0": synthetic ADDED events for the current state
                    cursor = store.rv
                    enc = store.enc[res.kind]
                    for key, obj in sorted(store.objects[res.kind].items()):
                        if selected(obj):
                            lines.append(_line("ADDED", res, enc[key]))
                elif start_rv < store.floor:
                    lines.append(self._expired_line(start_rv))
                    cursor = -1
                else:
                    cursor = start_rv
            if lines:
                await resp.write(b"".join(lines))
            if cursor < 0:
                return resp  # the 410 ERROR line ends the stream
            while True:
                changed = self.changed
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
                    await _wait(changed, loop_deadline - now)
                    continue
                if request.transport is None or request.transport.is_closing():
                    return resp  # the client went away
                lines = []
                expired = False
                with store.lock:
                    if cursor < store.floor:
                        # this watcher fell behind the history: like a slow
                        # watcher terminated by the cacher, it must relist
                        lines.append(self._expired_line(cursor))
                        expired = True
                        events: list[Event] = []
                    else:
                        events = store.events_since(cursor)
                        cursor = store.rv
                lines += _event_lines(events, res, selected)
                if expired:
                    await resp.write(b"".join(lines))
                    return resp
                if bookmarks and time.monotonic() >= next_bookmark:
                    lines.append(encode({"type": "BOOKMARK", "object": {
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
                await _wait(changed, wait)
            await resp.write_eof()
        except ConnectionResetError:
            return resp
        finally:
            self.open -= 1
        return resp

    def _current_rv(self) -> int:
        with self.store.lock:
            return self.store.rv

    def _expired_line(self, rv: int) -> bytes:
        """The 410 ERROR line of apiserver watch_cache.go (lock held)."""
        err = status_object(410, f"too old resource version: {rv} ({self.store.floor + 1})",
                            "Expired")
        return encode({"type": "ERROR", "object": err}) + b"\n"


def _event_lines(events: list[Event], res: Resource,
                 selected: Callable[[dict[str, Any] | None], bool]) -> list[bytes]:
    """Watch lines for one watcher, with the cacher's selector transitions."""
    lines = []
    for ev in events:
        if ev.kind != res.kind:
            continue
        was = selected(ev.prev)
        if ev.type == "DELETED":
            if was:
                lines.append(_line("DELETED", res, ev.raw))
        elif selected(ev.obj):
            lines.append(_line("MODIFIED" if was else "ADDED", res, ev.raw))
        elif was:
            # left the selection (a pod became Succeeded): the cacher sends
            # DELETED with the previous object at the event's resourceVersion
            gone = copy.deepcopy(ev.prev)
            assert gone is not None
            gone["metadata"]["resourceVersion"] = str(ev.rv)
            lines.append(_line("DELETED", res, encode(gone)))
    return lines


async def _wait(event: asyncio.Event, seconds: float) -> None:
    if seconds <= 0:
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


def _line(etype: str, res: Resource, raw: bytes) -> bytes:
    """One watch line; the object gets kind/apiVersion first, as the apiserver
    writes them (raw is the object's JSON, never empty: it has metadata)."""
    return b"".join((b'{"type":"', etype.encode(), b'","object":{"kind":"',
                     res.kind.encode(), b'","apiVersion":"', res.api_version.encode(),
                     b'",', raw[1:], b"}\n"))
