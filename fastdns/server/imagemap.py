"""The snapshot a worker answers from: which image is mapped, and when to move.

The control process publishes a new image generation in the control
segment; a worker maps it (checked once per UDP batch by ``_udp.FastPath``,
on each TCP query and on a slow timer for an idle worker), reports it with
``set_mapped`` so the control process can unlink the old segment, and
closes the old mapping only after the batch that used it finished: one
still viewed by a deferred answer lingers, and the oldest lingering
generation is published too, so it is not unlinked under the view. Like
Knot's zone swap (``zonedb-load.c``): one pointer exchange, the old one
freed after its readers moved. The control process rings each worker's
doorbell after a publish (``ipc/doorbell.py``, ``listen``), so an idle worker
moves within a millisecond instead of at its next timer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from fastdns.ipc import counters as ctr
from fastdns.ipc import image as img
from fastdns.ipc import layout, shm
from fastdns.ipc.doorbell import Doorbell

log = logging.getLogger("fastdns.server.worker")

REMAP_RETRY = 0.1  # s between attempts when a published image cannot be mapped


class ImageMap:
    """Worker ``index``'s mapping of the published image.

    ``on_map(buf, generation)`` is told of each new image (the fast path's
    ``set_image``, which releases its view of the old one).
    """

    def __init__(self, ctl: shm.ControlSegment, index: int, counters: ctr.Counters) -> None:
        self.ctl = ctl
        self.index = index
        self.counters = counters
        self.image: shm.ImageSegment | None = None
        self.generation = 0
        self.on_map: Callable[[memoryview, int], None] | None = None
        self._retry_at = 0.0
        self._lingering: list[shm.ImageSegment] = []  # let go of, a view still alive
        self._bell: Doorbell | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def listen(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Move to each new generation when the control process rings (doorbell.py):
        what the worker's timer does, without waiting for it. False without a bell."""
        self._bell = Doorbell.bind(self.ctl.instance, self.index)
        if self._bell is None:
            log.debug("worker %d: no doorbell, the timer alone moves an idle worker", self.index)
            return False
        self._loop = loop
        loop.add_reader(self._bell.fileno(), self._rung)
        return True

    def _rung(self) -> None:
        if self._bell is not None:
            self._bell.drain()
        self.move()

    def move(self) -> None:
        """Map a newer generation if there is one; unmap what no view holds any more."""
        self.check()
        if self._lingering:
            self.release_lingering()

    def buf(self) -> memoryview | None:
        return self.image.buf if self.image is not None else None

    def check(self) -> None:
        """Map a newer published generation, if there is one."""
        if self.ctl.generation != self.generation:
            self.remap()

    def remap(self) -> None:
        """Map the published image if it is newer; keep the old one on failure."""
        now = time.monotonic()
        if now < self._retry_at:
            return
        i = self.index
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
        if self.on_map is not None:
            self.on_map(seg.buf, seg.generation)  # releases the old buffer
        self.counters.w[layout.W_GENERATION] = seg.generation
        self.counters.incr(layout.W_REMAPS)
        self.ctl.set_mapped(i, seg.generation)
        self.ctl.set_attaching(i, 0)
        if old is not None and not old.close():
            self._lingering.append(old)  # a task still holds a view of it
        self.release_lingering()
        log.debug("worker %d: serving generation %d", i, seg.generation)

    @property
    def lingering(self) -> bool:
        """Whether an old image is still held by a view."""
        return bool(self._lingering)

    def release_lingering(self) -> None:
        """Unmap old images whose last view went; hold the oldest that remains."""
        if self._lingering:
            self._lingering = [s for s in self._lingering if not s.close()]
        self.ctl.set_lingering(self.index,
                               min((s.generation for s in self._lingering), default=0))

    def close(self) -> None:
        """Unmap everything (the worker's stop, after the fast path let go)."""
        if self._bell is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._bell.fileno())
            self._bell.close()
            self._bell = None
        if self.image is not None:
            self.image.close()
            self.image = None
        for seg in self._lingering:
            seg.close()
        self._lingering = []
