"""What happens to a request before it is served: counted, delayed, or failed.

Injected failures (the next n matching requests get an error Status) are
matched before authentication, as a load balancer or an
overloaded apiserver fails a request before looking at it; a 429 carries
``Retry-After`` and ``details.retryAfterSeconds`` like the apiserver's
priority-and-fairness rejections.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from fastdns.testing.fakeapi.resources import is_watch, status_response

_DEFAULT_MESSAGES = {429: "Too many requests, please try again later.",
                     410: "The resourceVersion for the provided list is too old."}


@dataclass
class Failure:
    remaining: int
    status: int
    retry_after: float | None
    path: str | None
    watch: bool | None
    message: str | None
    when: Callable[[str, Mapping[str, str]], bool] | None

    def response(self) -> web.Response:
        """The error this failure answers with."""
        headers = {}
        details: dict[str, Any] | None = None
        if self.retry_after is not None:
            headers["Retry-After"] = str(int(self.retry_after)) if float(
                self.retry_after).is_integer() else str(self.retry_after)
            details = {"retryAfterSeconds": max(1, int(self.retry_after))}
        msg = self.message or _DEFAULT_MESSAGES.get(self.status,
                                                    f"fake failure {self.status}")
        return status_response(self.status, msg, details=details, headers=headers)


def take_failure(failures: list[Failure], path: str, query: Mapping[str, str],
                 watch: bool) -> Failure | None:
    """The first failure that matches this request, counted down (caller holds the lock)."""
    for f in failures:
        if f.path is not None and not path.startswith(f.path):
            continue
        if f.watch is not None and f.watch != watch:
            continue
        if f.when is not None and not f.when(path, query):
            continue
        f.remaining -= 1
        if f.remaining <= 0:
            failures.remove(f)
        return f
    return None


class Gate:
    """Counts and logs every request, then delays or fails it as the tests asked."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self.failures: list[Failure] = []
        self.delay = 0.0
        self.counts: collections.Counter[tuple[str, bool]] = collections.Counter()
        self.log: collections.deque[tuple[str, str, dict[str, str]]] = (
            collections.deque(maxlen=1000))

    def requests(self, path: str | None = None, *, watch: bool | None = None) -> int:
        """How many requests arrived, optionally for one path / watch or not."""
        with self._lock:
            return sum(c for (p, w), c in self.counts.items()
                       if (path is None or p == path) and (watch is None or w == watch))

    def count_list(self) -> list[dict[str, Any]]:
        """The request counts as GET /_fake/requests lists them."""
        with self._lock:
            return [{"path": p, "watch": w, "count": c}
                    for (p, w), c in sorted(self.counts.items())]

    async def admit(self, request: web.Request) -> web.Response | None:
        """Count the request, wait out ``delay``; the failure that answers it, if any."""
        watch = is_watch(request.query)
        with self._lock:
            self.counts[(request.path, watch)] += 1
            self.log.append((request.method, request.path, dict(request.query)))
            delay = self.delay
            failure = take_failure(self.failures, request.path, request.query, watch)
        if delay:
            await asyncio.sleep(delay)
            if request.transport is None or request.transport.is_closing():
                # the client gave up meanwhile; aiohttp drops this quietly
                return web.Response(status=499)
        return failure.response() if failure is not None else None
