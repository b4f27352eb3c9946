"""The supervisor's signals: stop, reload, and the lameduck wait between them.

The supervisor alone decides when the tree stops (``fastdns/procsignals.py``).
A SIGTERM or SIGINT to the whole process group (systemd's
``KillMode=control-group``, Ctrl-C) leaves the children serving; the
supervisor keeps health's ``lameduck`` to its end (a second SIGTERM or
SIGINT cuts it short), then tells each child to stop with
``procsignals.STOP`` and exits 0.

The handlers only record what arrived; the main loop acts on it. A wakeup
fd (``signal.set_wakeup_fd``) makes a signal end the loop's wait at once,
without a poll interval.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from types import FrameType

from fastdns.server.childproc import wait as wait_objects

log = logging.getLogger("supervisor")


class Signals:
    """What arrived, and the pipe a signal wakes the main loop through.

    ``on_stop(name)`` is called from the handler of each SIGTERM or SIGINT.
    """

    def __init__(self, on_stop: Callable[[str], None]) -> None:
        self.on_stop = on_stop
        self.wake_r, self._wake_w = os.pipe()
        self.count = 0  # SIGTERMs and SIGINTs so far
        self.last = "SIGTERM"  # the name of the latest one
        self._reload_requested = False

    def install(self) -> None:
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self.wake_r, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        # CoreDNS reloads on SIGUSR1 (core/dnsserver + caddy's signal handling);
        # SIGHUP must not kill us either.
        signal.signal(signal.SIGUSR1, self._on_reload)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def uninstall(self) -> None:
        """Stop writing to the wake pipe (the handlers stay: a late signal is harmless)."""
        signal.set_wakeup_fd(-1)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        self.last = signal.Signals(signum).name
        self.on_stop(self.last)

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self._reload_requested = True

    def take_reload(self) -> bool:
        """Whether SIGUSR1 came since the last call."""
        requested, self._reload_requested = self._reload_requested, False
        return requested

    def drain(self) -> None:
        """Empty the wake pipe (its bytes only say that a signal came)."""
        with contextlib.suppress(BlockingIOError):
            os.read(self.wake_r, 512)

    def lameduck(self, seconds: float) -> None:
        """CoreDNS health ``lameduck``: /ready says 503 but DNS is answered for a while,
        so that endpoints controllers take this server out before it stops
        (``plugin/health/health.go`` OnFinalShutdown). The children ignore
        the group's SIGTERM (``procsignals``), so they serve to its end.
        A second SIGTERM or SIGINT cuts it short, as a second Ctrl-C ends
        CoreDNS at once (caddy ``sigtrap.go``); the exit status stays 0."""
        if seconds <= 0:
            return
        log.info("going into lameduck mode for %gs", seconds)
        first = self.count
        deadline = time.monotonic() + seconds
        while self.count == first and (left := deadline - time.monotonic()) > 0:
            wait_objects([self.wake_r], timeout=left)
            self.drain()
        if self.count != first:
            log.info("%s: lameduck cut short", self.last)
