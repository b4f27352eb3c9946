"""apiserver_qps, apiserver_burst, apiserver_max_inflight: how hard fastdns presses the API.

CoreDNS hands the first two to client-go's rest.Config (a token bucket:
``QPS`` tokens a second, at most ``Burst`` saved up, one taken per request)
and wraps the transport in a semaphore for the third, released when the
response's headers are in, so a long watch does not keep its slot
(plugin/kubernetes/kubernetes.go ``newMaxInflightRoundTripper``). fastdns
does the same around each list page and each watch request
(kubeclient.list_call): the watch threads wait here, never the workers.

One difference an operator should know: fastdns lists in pages of
``page_size`` objects (500), each a request, where CoreDNS's informers
list from the watch cache in one request; at 150k endpoints a relist is
about 300 requests, so a low ``apiserver_qps`` slows relists accordingly
(README, "Deploy"). Unset (0), nothing is limited, as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class ApiLimiter:
    """A token bucket and an in-flight cap, shared by every watch thread."""

    def __init__(self, qps: float = 0.0, burst: int = 0, max_inflight: int = 0,
                 clock=time.monotonic, sleep=time.sleep) -> None:
        self.qps = qps
        # client-go's rest.Config default Burst is 10 when only QPS is given
        self.burst = max(1, burst or 10) if qps > 0 else 0
        self._tokens = float(self.burst)
        self._clock, self._sleep = clock, sleep
        self._at = clock()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_inflight) if max_inflight > 0 else None

    @property
    def limits(self) -> bool:
        return self.qps > 0 or self._slots is not None

    def _take(self) -> None:
        """Wait for one token (none to wait for without a QPS limit)."""
        if self.qps <= 0:
            return
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._at) * self.qps)
                self._at = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                wait = (1 - self._tokens) / self.qps
            self._sleep(wait)

    @contextmanager
    def request(self) -> Iterator[None]:
        """Around one request, until its response headers are in."""
        self._take()
        if self._slots is None:
            yield
            return
        with self._slots:
            yield
