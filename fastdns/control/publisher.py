"""Publish compiled snapshot images to the workers through shared memory.

The control process is the only writer of images. Publishing follows the
protocol in ``fastdns/server/shm.py``: a new segment per generation, written
completely, then announced in the control segment. Old segments are
unlinked as soon as no live worker reports having one mapped (the
supervisor zeroes a dead worker's slot), as Knot frees the old zone
database only after its readers moved (``src/knot/zone/zonedb-load.c``).
"""

from __future__ import annotations

import logging
import struct

from fastdns.server import shm

log = logging.getLogger("control")

# Image header: u64 generation at octet 16 (docs/internals.md §2).
_GEN_OFFSET = 16
_GEN = struct.Struct("<Q")


class Publisher:
    """Creates image segments and retires the ones no worker uses any more."""

    def __init__(self, ctl: shm.ControlSegment) -> None:
        self.ctl = ctl
        self.instance = ctl.instance
        self.generation = ctl.generation
        # the last image published, to tell an unchanged one (see _same_image)
        self._last: bytes | bytearray | None = None
        # images created by this or an earlier control process, not yet unlinked
        self._live: dict[int, str] = {}

    def recover(self) -> list[str]:
        """Adopt what a crashed control process left: keep the published image.

        Unpublished images (created, never announced) and images no worker
        maps are unlinked; the rest are retired later by ``collect``.
        Generations continue from the published one, so workers always see
        the number grow.
        """
        current = self.ctl.image_name() if self.ctl.generation else None
        mapped = self._mapped_generations()
        removed = []
        for gen, name in shm.list_images(self.instance):
            if gen > self.ctl.generation:
                shm.ImageSegment.unlink(name)
                removed.append(name)
            elif name == current or gen in mapped:
                self._live[gen] = name
            else:
                shm.ImageSegment.unlink(name)
                removed.append(name)
        self.generation = self.ctl.generation
        return removed

    def publish(self, image: bytes | bytearray | memoryview, *, force: bool = False
                ) -> int | None:
        """Publish ``image`` as the next generation; None when it equals the current one.

        The generation in the image header is set to the published one (the
        compiler does not know it), in the segment, before it is announced.
        """
        if isinstance(image, memoryview):
            image = image.tobytes()
        if not force and self.generation > 0 and _same_image(image, self._last):
            return None
        gen = self.generation + 1
        seg = shm.ImageSegment.create(self.instance, gen, image)
        try:
            if len(seg.buf) >= _GEN_OFFSET + 8:
                _GEN.pack_into(seg.buf, _GEN_OFFSET, gen)
        finally:
            seg.close()  # the pages stay in /dev/shm; workers map them by name
        self.ctl.publish(seg.name, gen)
        self.generation = gen
        # a caller's bytearray may change later: keep a copy of that
        self._last = bytes(image) if isinstance(image, bytearray) else image
        self._live[gen] = seg.name
        self.collect()
        return gen

    def _mapped_generations(self) -> set[int]:
        return {self.ctl.mapped(i) for i in range(self.ctl.nworkers)} - {0}

    def collect(self) -> list[str]:
        """Unlink every image that is neither current nor mapped by a worker."""
        mapped = self._mapped_generations()
        removed = []
        for gen in sorted(self._live):
            if gen == self.generation or gen in mapped:
                continue
            name = self._live.pop(gen)
            shm.ImageSegment.unlink(name)
            removed.append(name)
        if removed:
            log.debug("unlinked %s", ", ".join(removed))
        return removed

    @property
    def pending(self) -> int:
        """Images kept alive besides the current one (workers not yet moved)."""
        return max(0, len(self._live) - 1)


def _same_image(image: bytes | bytearray, last: bytes | bytearray | None) -> bool:
    """Whether ``image`` equals ``last`` except for the generation field (which
    publish rewrites). A direct comparison (memcmp through ``startswith`` on a
    memoryview, no copy) costs ~2 ms for a 38 MB image where a cryptographic
    digest cost ~30 ms on the path of every endpoint change (bench/bench_kube.py);
    the price is one image held in the control process's memory."""
    if last is None or len(image) != len(last):
        return False
    mv = memoryview(last)
    return (image.startswith(mv[:_GEN_OFFSET])
            and image.startswith(mv[_GEN_OFFSET + 8:], _GEN_OFFSET + 8))
