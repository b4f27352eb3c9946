"""Publish compiled snapshot images to the workers through shared memory.

The control process is the only writer of images. Publishing follows the
protocol in ``fastdns/ipc/shm.py``: a new segment per generation, written
completely, then announced in the control segment. Old segments are
unlinked as soon as no live worker reports having one mapped (the
supervisor zeroes a dead worker's slot), as Knot frees the old zone
database only after its readers moved (``src/knot/zone/zonedb-load.c``).

With ``background=True`` (the control process) the slow file work leaves the
path from an event to its published image: a thread keeps ``SPARES`` *spare*
segments preallocated (``posix_fallocate``: the tmpfs pages exist before
the image does) and unlinks retired images, both system calls that run without
the GIL. A publish then only ``pwrite``s the image into the spare and renames
it to its generation's name: at 10k Services (a 38 MB image) that is ~7 ms
instead of ~30 ms to create, fault in and fill a fresh segment, plus ~8 ms
per unlink (bench/bench_kube.py). Workers never see a spare's name, so the
publish protocol is unchanged.

In the control process the image is not even written: the compiler
assembles it in the next segment itself (``buffer``, given to
``Compiler.out_buffer``: the spare, mapped), so the control process holds
no copy of the image on its heap; ``publish`` of that view stamps the
generation and renames the segment. How many spares are kept depends on the
image's size (``spares_for``): a spare costs as much of the pod's memory as
the image, so large images keep one (a publish needs the old image and the
new one at once anyway) and very large ones none.

Where ``shm.RECYCLE`` holds, a retired image is not unlinked but renamed
to a spare and written over by a later publish: the pages of the whole
image are neither released nor allocated and zeroed again, which was half
of the control process's CPU at 10k Services and 50 changes/s (py-spy:
fallocate 24 %, unlink 13 %). ``shm.py`` explains why no worker can still
read a recycled image.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import struct
import threading
import time

from fastdns.control.spares import (
    SPARE_LINGER,
    SPARES,
    Background,
    Spare,
    drop_spare,
    spare_slack,
    spares_for,
)
from fastdns.ipc import shm
from fastdns.ipc.doorbell import Ringer

log = logging.getLogger("control")

# Image header: u64 generation at octet 16 (docs/internals.md §2).
_GEN_OFFSET = 16
_GEN = struct.Struct("<Q")
SPARE_WAIT = 0.02  # seconds a publish waits for a spare being preallocated
_CHUNK = 1 << 20  # octets compared at a time with the image in force
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14
MAP_SLACK = 8  # a mapping reaches size/MAP_SLACK beyond its image (Publisher.buffer)
SPARE_TAG = "-spare-"  # fastdns-<instance>-spare-<n>: swept like every segment


class Publisher:
    """Creates image segments and retires the ones no worker uses any more."""

    def __init__(self, ctl: shm.ControlSegment, *, background: bool = False) -> None:
        self.ctl = ctl
        self.instance = ctl.instance
        self.generation = ctl.generation
        # images created by this or an earlier control process, not yet unlinked
        self._live: dict[int, str] = {}
        self._bg: Background | None = Background() if background else None
        self._ringer = Ringer(ctl.instance, ctl.nworkers) if background else None
        self._spare_lock = threading.Condition()
        self._ready: list[Spare] = []
        self._spare_pending = 0  # spares being preallocated
        self._spares = 0
        self.recycled = 0  # retired images made spares (shm.RECYCLE)
        self.spare_hits = 0  # publishes that found a preallocated segment ready
        self.spare_misses = 0
        self.spare_wait = 0.0  # seconds the last publish waited for its spare
        self.spares_wanted = SPARES  # spares_for the last image published
        self._last_publish = 0.0
        # the segment `buffer` gave out and is not yet published, with its view
        self._staged: tuple[Spare, memoryview] | None = None
        # mappings of the live images published in place, by generation: a
        # retired one goes on to the spare it becomes
        self._maps: dict[int, mmap.mmap] = {}

    def close(self) -> None:
        """Stop the background thread and remove the spare segments."""
        if self._bg is not None:
            self._bg.close()
            self._bg = None
        self._unstage()
        self._maps.clear()
        if self._ringer is not None:
            self._ringer.close()
            self._ringer = None
        with self._spare_lock:
            ready, self._ready = self._ready, []
        for spare in ready:
            drop_spare(spare)

    @property
    def in_place(self) -> bool:
        """Whether images can be assembled in their segment (``buffer``)."""
        return self._bg is not None

    def buffer(self, size: int) -> memoryview:
        """A writable view of ``size`` octets: the segment the next image is
        assembled in (a spare when one is ready). ``publish`` of this view
        publishes it without a copy; another ``buffer`` call drops it."""
        if self._bg is None:
            raise RuntimeError("in-place images need a background publisher")
        self._unstage()
        if shm.RECYCLE:
            # the image the workers left since the last publish becomes this
            # spare (renamed in the background, taken below), instead of a fresh
            # file preallocated while that image is unlinked: ~25 % of the
            # control process's CPU at 10k Services and 50 changes/s (py-spy)
            self.collect()
        spare = self._take_spare(shm.image_name(self.instance, self.generation + 1), size)
        mm = spare.mm
        try:
            os.ftruncate(spare.fd, size)  # a spare's slack given back, or a fresh file sized
            if mm is None or len(mm) < size:
                # The mapping reaches MAP_SLACK beyond the file (address space
                # only, never touched there): images patched in place grow by
                # up to their garbage bound before a full assembly compacts them
                # (zone/patch.py), and every remap cost 20-30 ms at 51 MB.
                length = -(-(size + size // MAP_SLACK + spare_slack(size))
                           // mmap.PAGESIZE) * mmap.PAGESIZE
                os.ftruncate(spare.fd, length)  # Python maps no further than the file
                mm = mmap.mmap(spare.fd, length, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE)
                os.ftruncate(spare.fd, size)
                # the page table filled in one call (what MAP_POPULATE does, but
                # only up to the file's end), where faulting it in page by page
                # while assembling cost 20-35 ms more at 57 MB
                with contextlib.suppress(OSError, ValueError):
                    mm.madvise(_MADV_POPULATE_WRITE, 0, size)
        except BaseException:
            os.close(spare.fd)
            shm.ImageSegment.unlink(spare.name)
            raise
        spare = spare._replace(size=size, mm=mm)
        view = memoryview(mm)[:size]  # a reused mapping may be longer than the file now
        self._staged = (spare, view)
        return view

    def _unstage(self) -> None:
        """Give a segment `buffer` gave out and nobody published back as a spare."""
        staged, self._staged = self._staged, None
        if staged is None:
            return
        spare = staged[0]
        if SPARE_TAG not in spare.name:  # a fresh file under the next generation's name
            self._spares += 1
            name = f"{shm.PREFIX}{self.instance}{SPARE_TAG}{self._spares}"
            try:
                self._rename(spare.name, name)
            except OSError:
                drop_spare(spare)
                return
            spare = spare._replace(name=name)
        with self._spare_lock:
            self._ready.append(spare)

    def recover(self) -> list[str]:
        """Adopt what a crashed control process left: keep the published image.

        Unpublished images (created, never announced) and images no worker
        maps are unlinked; the rest are retired later by ``collect``.
        Generations continue from the published one, so workers always see
        the number grow.
        """
        current = self.ctl.image_name() if self.ctl.generation else None
        mapped = self.ctl.held()
        removed = []
        for name in shm.list_segments(self.instance):
            if SPARE_TAG in name:  # a crashed control process's spare
                shm.ImageSegment.unlink(name)
                removed.append(name)
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

    def publish(self, image: bytes | bytearray | memoryview, *,
                force: bool = False) -> int | None:
        """Publish ``image`` (bytes-like) as the next generation; None when it
        equals the current one.

        The generation in the image header is set to the published one (the
        compiler does not know it), in the segment, before it is announced.
        """
        gen = self.generation + 1
        staged = self._staged
        if staged is not None and image is staged[1]:
            self._staged = None
            if not force and self.generation > 0 and self._unchanged(image):
                self._staged = staged
                self._unstage()
                return None
            name = self._finish_staged(gen, staged)
            if staged[0].mm is not None:
                self._maps[gen] = staged[0].mm
        else:
            if isinstance(image, memoryview):
                image = image.tobytes()
            if not force and self.generation > 0 and self._unchanged(image):
                return None
            name = self._write(gen, image)
        self.ctl.publish(name, gen)
        if self._ringer is not None:
            self._ringer.ring()  # idle workers move now, not at their timer (doorbell.py)
        self.generation = gen
        self._last_publish = time.monotonic()
        self._live[gen] = name
        self.spares_wanted = spares_for(len(image))
        if self._bg is not None and shm.RECYCLE:
            # retired images become the next spares: recycle before asking for more
            self.collect()
            self._want_spare(len(image))
        else:
            # the next spare first: the background thread runs its jobs in order,
            # and a retired image's unlink (~5 ms of page freeing at 40 MB) queued
            # ahead of it made the next publish wait for its spare (bench_kube.py)
            self._want_spare(len(image))
            self.collect()
        return gen

    def _unchanged(self, image: bytes | bytearray | memoryview) -> bool:
        """Whether ``image`` equals the image in force, generation aside.

        Compared with the published segment itself, read in chunks that stop
        at the first difference: a changed image differs in its size or in
        its slot table, right after the header, so this costs well under a
        millisecond; an unchanged 38 MB image costs ~7 ms. A cryptographic
        digest cost ~30 ms per endpoint change, a CRC ~5 ms, and keeping the
        last image in memory to compare with as much RSS as the image
        (bench/bench_kube.py).
        """
        try:
            fd = os.open(os.path.join(shm.SHM_DIR, self.ctl.image_name()),
                         os.O_RDONLY | os.O_CLOEXEC)
        except (OSError, ValueError, shm.ShmError):
            return False
        mv = memoryview(image).cast("B")
        try:
            size = os.fstat(fd).st_size
            if size != len(mv) or size < _GEN_OFFSET + 8:
                return False
            off = 0
            while off < size:
                chunk = os.pread(fd, min(_CHUNK, size - off), off)
                if not chunk:
                    return False
                n = len(chunk)
                if off == 0:
                    ok = (mv[:_GEN_OFFSET] == chunk[:_GEN_OFFSET]
                          and mv[_GEN_OFFSET + 8:n] == chunk[_GEN_OFFSET + 8:])
                else:
                    ok = mv[off:off + n] == chunk
                if not ok:
                    return False
                off += n
            return True
        finally:
            mv.release()
            os.close(fd)

    def _finish_staged(self, gen: int, staged: tuple[Spare, memoryview]) -> str:
        """Stamp the generation into an image assembled in place; its segment's name."""
        (sname, fd, _size, _mm), view = staged
        name = shm.image_name(self.instance, gen)
        try:
            if len(view) >= _GEN_OFFSET + 8:
                _GEN.pack_into(view, _GEN_OFFSET, gen)
            self._rename(sname, name)
        except BaseException:
            shm.ImageSegment.unlink(sname)
            raise
        finally:
            os.close(fd)  # the mapping stays; workers map the file by name
        return name

    def _write(self, gen: int, image: bytes | bytearray) -> str:
        """The image, generation stamped, in segment ``image_name(gen)``; its name."""
        if self._bg is None:
            seg = shm.ImageSegment.create(self.instance, gen, image)
            try:
                if len(seg.buf) >= _GEN_OFFSET + 8:
                    _GEN.pack_into(seg.buf, _GEN_OFFSET, gen)
            finally:
                seg.close()  # the pages stay in /dev/shm; workers map them by name
            return seg.name
        name = shm.image_name(self.instance, gen)
        sname, fd, _size, _mm = self._take_spare(name, len(image))
        try:
            _pwrite_all(fd, image, 0)
            if len(image) >= _GEN_OFFSET + 8:
                _pwrite_all(fd, _GEN.pack(gen), _GEN_OFFSET)
            os.ftruncate(fd, len(image))  # give back the slack
        except BaseException:
            os.close(fd)
            shm.ImageSegment.unlink(sname)
            raise
        os.close(fd)
        self._rename(sname, name)
        return name

    @staticmethod
    def _rename(sname: str, name: str) -> None:
        if sname != name:
            # rename(2) replaces a stale, never-announced segment of that name
            os.rename(os.path.join(shm.SHM_DIR, sname), os.path.join(shm.SHM_DIR, name))

    def _take_spare(self, name: str, size: int) -> Spare:
        """(file name, open fd) of a segment to write the next image into:
        a ready spare, or a fresh file named ``name`` when none is ready."""
        assert self._bg is not None
        t = time.perf_counter()
        with self._spare_lock:
            # A spare on its way is worth waiting for: its thread needs the GIL
            # for a few microseconds to hand it over, which the compile before
            # this publish may have kept it from; a fresh file costs ~13 ms more.
            self._spare_lock.wait_for(lambda: self._ready or not self._spare_pending, SPARE_WAIT)
            spare = self._ready.pop(0) if self._ready else None
        self.spare_wait = time.perf_counter() - t
        if spare is not None and spare.size < size - spare_slack(size):
            self._bg.submit(drop_spare, spare)  # outgrown (a little growth is written anyway)
            spare = None
        if spare is None:  # none ready yet: a fresh file, written the same way
            self.spare_misses += 1
            path = os.path.join(shm.SHM_DIR, name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # never announced: a crashed control process's
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            spare = Spare(name, fd, 0)
        else:
            self.spare_hits += 1
        return spare

    def _want_spare(self, size: int) -> None:
        if self._bg is None:
            return
        with self._spare_lock:
            names = []
            excess = []
            # images the workers are leaving become spares when retired (collect)
            coming = len(self._live) - 1 if shm.RECYCLE else 0
            while self._ready and len(self._ready) + self._spare_pending > self.spares_wanted:
                excess.append(self._ready.pop())
            while len(self._ready) + self._spare_pending + coming < self.spares_wanted:
                self._spare_pending += 1
                self._spares += 1
                names.append(f"{shm.PREFIX}{self.instance}{SPARE_TAG}{self._spares}")
        for spare in excess:
            self._bg.submit(drop_spare, spare)
        for name in names:
            self._bg.submit(self._make_spare, name, size + spare_slack(size))

    def _make_spare(self, name: str, size: int) -> None:
        """Background thread: create and preallocate the next image's segment."""
        try:
            path = os.path.join(shm.SHM_DIR, name)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError:  # a filesystem without fallocate: a plain file then
                os.close(fd)
                os.unlink(path)
                return
            with self._spare_lock:
                if self._bg is None:  # closed meanwhile
                    drop_spare(Spare(name, fd, size))
                else:
                    self._ready.append(Spare(name, fd, size))
        except OSError as e:
            log.warning("preallocating an image segment failed: %s", e)
        finally:
            with self._spare_lock:
                self._spare_pending -= 1
                self._spare_lock.notify_all()

    def collect(self) -> list[str]:
        """Retire every image that is neither current nor held by a worker:
        recycle it as a spare while spares are wanted, else unlink it."""
        shm.fence()  # the announcement of the current image before the holds (shm.py)
        held = self.ctl.held()
        removed = []
        for gen in sorted(self._live):
            if gen == self.generation or gen in held:
                continue
            name = self._live.pop(gen)
            mm = self._maps.pop(gen, None)
            if self._bg is not None:
                if shm.RECYCLE and self._take_for_spare():
                    self._bg.submit(self._recycle, name, gen, mm)
                else:
                    self._bg.submit(shm.ImageSegment.unlink, name)
            else:
                shm.ImageSegment.unlink(name)
            removed.append(name)
        if removed:
            log.debug("retired %s", ", ".join(removed))
        self._drop_idle_spares()
        return removed

    def _drop_idle_spares(self) -> None:
        """Spares beyond ``spares_wanted`` (a recycled image of a large one) last
        only while publishes keep coming: under churn the next image goes into
        it at no cost, and the pod holds two images then anyway (the one in
        force and the next); at rest it holds one."""
        if self._bg is None or time.monotonic() - self._last_publish < SPARE_LINGER:
            return
        with self._spare_lock:
            extra = []
            while len(self._ready) > self.spares_wanted:
                extra.append(self._ready.pop())
        for spare in extra:
            self._bg.submit(drop_spare, spare)

    def _take_for_spare(self) -> bool:
        """Count one more spare on its way if fewer than wanted are ready or coming:
        a retired image is kept as one even when none is wanted, while publishes
        keep coming (``_drop_idle_spares``: SPARE_LINGER after the last one)."""
        with self._spare_lock:
            if len(self._ready) + self._spare_pending >= max(self.spares_wanted, 1):
                return False
            self._spare_pending += 1
            self._spares += 1
            return True

    def _recycle(self, name: str, gen: int, mm: mmap.mmap | None = None) -> None:
        """Background thread: a retired image becomes a spare, pages and all
        (and its mapping, ``mm``, where it was assembled in place)."""
        spare = None
        try:
            sname = f"{shm.PREFIX}{self.instance}{SPARE_TAG}r{gen}"
            path = os.path.join(shm.SHM_DIR, name)
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                os.rename(path, os.path.join(shm.SHM_DIR, sname))
                spare = Spare(sname, fd, os.fstat(fd).st_size, mm)
            except OSError:
                os.close(fd)
                raise
        except OSError as e:
            log.warning("recycling image segment %s failed: %s", name, e)
            shm.ImageSegment.unlink(name)
        finally:
            with self._spare_lock:
                if spare is not None:
                    if self._bg is None:  # closed meanwhile
                        drop_spare(spare)
                    else:
                        self._ready.append(spare)
                        self.recycled += 1
                self._spare_pending -= 1
                self._spare_lock.notify_all()

    @property
    def pending(self) -> int:
        """Images kept alive besides the current one (workers not yet moved)."""
        return max(0, len(self._live) - 1)


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    mv = memoryview(data)
    done = 0
    while done < len(mv):
        done += os.pwrite(fd, mv[done:], offset + done)
