"""The publisher's spare segments: how many are worth their memory, and the
thread that makes and drops them.

A spare is a shared-memory segment ready for the next image (its pages
preallocated, or a retired image's, recycled with its mapping): a publish
into it allocates and faults in nothing. It is memory-backed like the image
itself and charged to the pod, so their number depends on the image's size
(``spares_for``). ``Publisher`` (publisher.py) owns them.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import queue
import threading
from collections.abc import Callable
from typing import NamedTuple

from fastdns.ipc import shm

log = logging.getLogger("control")

# Spares kept ready: one. Two were kept while every publish preallocated a
# segment and unlinked a retired one (a single spare was late for one publish
# in ten); now the image the workers just left is recycled into the next one
# (Publisher.buffer), and the doorbell moves idle workers off it at once
# (ipc/doorbell.py), so one spare is never late, and a second was 27 MB of a
# pod at 5k Services (bench/bench_sizing.py).
SPARES = 1
# ... but spares are memory-backed pages charged to the pod like the image
# itself: none is kept ready beyond SPARE_BYTES (spares_for). 10k Services
# with 150k endpoints is a 51 MB image; three copies of the 57 MB one of
# image format 1 were 170 MB, all of kubeadm's 170Mi limit (issue 14).
SPARE_BYTES = 64 << 20
# Above SPARE_BYTES a retired image is still recycled into the next one, and
# kept this long after the last publish: under churn a publish then writes
# into pages that exist (a fresh 284 MB segment at 50k Services made a change
# 886 ms, recycled 271); at rest the pod holds one image, not two
# (Publisher._drop_idle_spares). Below it one spare stays ready: with none,
# 10k Services and 150k endpoints (51 MB) had p99 70 ms instead of 49 and a
# higher peak (a fresh segment made while a worker still held the old one).
SPARE_LINGER = 2.0


def spare_slack(size: int) -> int:
    """Room a spare leaves for the next image to grow (1/64, at least 64 KiB)."""
    return max(1 << 16, size >> 6)


class Spare(NamedTuple):
    """A segment ready for the next image: its file name, open fd, allocated
    octets, and its mapping where it has one still (a recycled image: reusing
    it spares the next assembly mapping and faulting 57 MB in again)."""

    name: str
    fd: int
    size: int
    mm: mmap.mmap | None = None


def spares_for(size: int) -> int:
    """Spares worth their memory for images of ``size`` octets: SPARES while
    they fit in SPARE_BYTES together, then fewer, down to none."""
    return max(0, min(SPARES, SPARE_BYTES // max(1, size + spare_slack(size))))


def drop_spare(spare: Spare) -> None:
    name, fd, _size, _mm = spare  # the mapping goes with its last view
    with contextlib.suppress(OSError):
        os.close(fd)
    shm.ImageSegment.unlink(name)


class Background:
    """One daemon thread running file work in order (preallocate, unlink)."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="publisher-files", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        self._q.put((fn, args))

    def _run(self) -> None:
        while (job := self._q.get()) is not None:
            fn, args = job
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - file work must not kill the thread
                log.exception("background %s failed", getattr(fn, "__name__", fn))

    def close(self, timeout: float = 5.0) -> None:
        self._q.put(None)
        self._thread.join(timeout)
