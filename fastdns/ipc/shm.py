"""Snapshot images and the control block in POSIX shared memory.

Segments are plain files in ``/dev/shm`` opened with ``os.open`` and mapped
with ``mmap``: ``multiprocessing.shared_memory`` registers every segment with
a per-process resource tracker that unlinks (and warns about) segments other
processes still use, which is exactly wrong for a control process that
publishes and workers that only read.

Names (docs/internals.md §4): the control segment ``fastdns-<instance>-ctl``
and one image segment per published generation, ``fastdns-<instance>-img-<gen>``.
``<instance>`` is a random token the supervisor picks per run, so concurrent
servers (tests, a node-local cache next to a cluster DNS) never collide and
``sweep(instance)`` removes exactly one run's segments. ``FASTDNS_SHM_DIR``
puts them in another directory than ``/dev/shm`` (a tmpfs of its own).

The byte layout of the control segment (generation, image name, nworkers,
the workers' ``mapped`` words, the stats words, the counters blocks) is
declared in ``fastdns/ipc/layout.py``; docs/internals.md §4 has its table.
Instance ownership (the lock, reclaiming dead instances) is
``fastdns/ipc/reclaim.py``.

Publish protocol (Knot's zone-database swap, across processes): the image
segment is written completely, then its name, then the generation with one
aligned 8-byte store. A reader reads the generation, then the name, attaches,
and re-reads the generation: if it moved, a publish raced the read and the
reader retries (``ControlSegment.current``). The aligned 8-byte store is
single-copy atomic on x86-64 and arm64, and x86's TSO keeps the name stores
ordered before it; for weaker orderings the re-read still catches a torn pair
because the name is written before the generation that announces it.

An old image segment is retired by the control process once no live worker
*holds* it (``holds(i)``; the supervisor zeroes a dead worker's words). A
worker holds the generation it has mapped (``mapped(i)``), the one it is
attaching right now (``attaching``, stored before it reads the name), and the
oldest image it let go of while some view of it still lives (``lingering``).
Retiring is either an unlink (the pages live until the last ``munmap``; a
*new* attach of an unlinked name fails, and ``current`` retries that) or, on
x86-64, *recycling*: the file is renamed to a spare name and the next image
is written over it, which saves the control process a page allocation and a
page release of the whole image per publish (half its CPU at 10k Services
and 50 changes/s, bench/bench_kube.py). Recycling is only safe because no
worker can still read a retired generation:

- a worker stores ``attaching = g``, then (after ``fence()``) reads the name
  and re-reads the generation; the control process announces ``g+1``, then
  (after ``fence()``) reads the holds. Either the control process sees the
  hold, or the worker's re-read sees ``g+1`` and it drops what it attached
  without reading it (Dekker's pattern; ``fence`` is a full barrier);
- a worker moves ``mapped`` to the new generation only after its fast path
  switched, and clears ``attaching`` after that;
- a view of an old image that outlives the switch (a task that captured the
  buffer) keeps its generation in ``lingering`` until it is released.
"""

from __future__ import annotations

import errno
import mmap
import os
import platform
import re
import struct
import threading

from fastdns.ipc.layout import (
    COUNTERS_OFFSET,
    COUNTERS_SIZE,
    CTL_COUNTERS_SIZE,
    CTL_GENERATION,
    CTL_MAPPED,
    CTL_NAME,
    CTL_NAME_LEN,
    CTL_NWORKERS,
    HOLD_ATTACHING_WORD,
    HOLD_LINGERING_WORD,
    MAX_WORKERS,
    NAME_MAX,
)

SHM_DIR = os.environ.get("FASTDNS_SHM_DIR") or "/dev/shm"
PREFIX = "fastdns-"

# Recycle retired image segments (see the module docstring): x86-64 only,
# where a locked instruction is a full barrier; FASTDNS_SHM_RECYCLE=0 turns it off.
RECYCLE = (platform.machine() in ("x86_64", "AMD64")
           and os.environ.get("FASTDNS_SHM_RECYCLE", "1") not in ("0", ""))

_FENCE = threading.Lock()


def fence() -> None:
    """A full memory barrier between this thread's earlier shared-memory stores
    and its later loads: CPython's lock acquire is an atomic read-modify-write
    (x86-64: a LOCK-prefixed instruction, which orders stores before loads)."""
    with _FENCE:
        pass


_U64 = struct.Struct("=Q")
_U32 = struct.Struct("=I")

INSTANCE_RE = re.compile(r"^[A-Za-z0-9_]{1,24}$")


class ShmError(Exception):
    """A shared-memory segment is missing, malformed, or could not be created."""


def check_instance(instance: str) -> str:
    if not INSTANCE_RE.match(instance):
        raise ValueError(f"bad shm instance token {instance!r} (want [A-Za-z0-9_]{{1,24}})")
    return instance


def control_name(instance: str) -> str:
    return f"{PREFIX}{check_instance(instance)}-ctl"


def image_name(instance: str, generation: int) -> str:
    return f"{PREFIX}{check_instance(instance)}-img-{generation}"


def image_generation(name: str) -> int:
    """The generation encoded in an image segment name (-1 if it is not one)."""
    head, sep, gen = name.rpartition("-img-")
    if not sep or not head.startswith(PREFIX) or not gen.isdigit():
        return -1
    return int(gen)


def segment_path(name: str) -> str:
    if "/" in name or not name.startswith(PREFIX):
        raise ValueError(f"not a fastdns shm segment name: {name!r}")
    return os.path.join(SHM_DIR, name)


def _create(name: str, size: int) -> mmap.mmap:
    """A new zero-filled segment of ``size`` octets; fails if the name exists."""
    fd = os.open(segment_path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.unlink(segment_path(name))
        raise
    finally:
        os.close(fd)


def _attach(name: str) -> mmap.mmap:
    """Map an existing segment read-write (shared); FileNotFoundError if gone."""
    fd = os.open(segment_path(name), os.O_RDWR | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise ShmError(f"shm segment {name} is empty")
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def unlink_segment(name: str) -> bool:
    try:
        os.unlink(segment_path(name))
        return True
    except FileNotFoundError:
        return False


def _close_map(mm: mmap.mmap | None, views: list[memoryview]) -> None:
    for v in reversed(views):
        try:
            v.release()
        except BufferError:
            pass  # a caller still holds a view derived from it
    views.clear()
    if mm is not None and not mm.closed:
        try:
            mm.close()
        except BufferError:
            # Someone still holds a view (e.g. a slice of .buf passed to the
            # wire core); the mapping goes when the last view is collected.
            pass


class ImageSegment:
    """One published snapshot image, immutable once created.

    ``buf`` is a memoryview over the whole segment (the image is exactly the
    segment: its size is the image's size). It is writable at the mmap level
    so that Cython typed memoryviews without ``const`` accept it, but nothing
    may write to it after ``create`` returns.
    """

    __slots__ = ("name", "generation", "buf", "_mm", "_views", "_linger")

    def __init__(self, name: str, mm: mmap.mmap) -> None:
        self.name = name
        self.generation = image_generation(name)
        self._mm: mmap.mmap | None = mm
        self._linger: mmap.mmap | None = None
        self.buf = memoryview(mm)
        self._views = [self.buf]

    @classmethod
    def create(cls, instance: str, generation: int, data: bytes | bytearray | memoryview
               ) -> ImageSegment:
        """Write ``data`` into a new segment ``fastdns-<instance>-img-<generation>``.

        A stale segment of the same name (left by a control process that
        crashed between create and publish) is replaced: nobody can have it
        mapped through the control segment because it was never published.
        """
        if generation <= 0:
            raise ValueError("generation must be > 0")
        size = len(data)
        if size == 0:
            raise ValueError("an image is never empty")
        name = image_name(instance, generation)
        try:
            mm = _create(name, size)
        except FileExistsError:
            unlink_segment(name)
            mm = _create(name, size)
        mm[:size] = data
        return cls(name, mm)

    @classmethod
    def attach(cls, name: str) -> ImageSegment:
        """Map a published image; raises FileNotFoundError if it was unlinked."""
        return cls(name, _attach(name))

    @property
    def size(self) -> int:
        return len(self.buf)

    def close(self) -> bool:
        """Unmap; False while a view of it outlives this (the mapping then goes
        with the last view, and a worker must keep holding the generation).
        Calling it again retries."""
        mm = self._mm if self._mm is not None else self._linger
        _close_map(mm, self._views)
        self._mm = None
        done = mm is None or mm.closed
        self._linger = None if done else mm
        return done

    @staticmethod
    def unlink(name: str) -> bool:
        """Remove the name; processes that mapped it keep their pages."""
        return unlink_segment(name)

    def __enter__(self) -> ImageSegment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ImageSegment {self.name} {len(self.buf) if self._mm else 'closed'}>"


class ControlSegment:
    """The small control block: current generation and image, worker slots, counters."""

    __slots__ = ("instance", "name", "_mm", "_u64", "_all64", "_views", "nworkers",
                 "counters_size")

    def __init__(self, instance: str, name: str, mm: mmap.mmap) -> None:
        self.instance = instance
        self.name = name
        self._mm: mmap.mmap | None = mm
        raw = memoryview(mm)
        # one cast view for the u64 words; index k covers octets 8k..8k+7
        self._u64 = raw[:COUNTERS_OFFSET].cast("Q")
        self._all64 = raw[:len(raw) & ~7].cast("Q")  # the hold words in counters blocks
        self._views = [self._u64, self._all64, raw]
        self.nworkers = _U32.unpack_from(mm, CTL_NWORKERS)[0]
        self.counters_size = _U32.unpack_from(mm, CTL_COUNTERS_SIZE)[0]

    @classmethod
    def create(cls, instance: str, nworkers: int) -> ControlSegment:
        if not 1 <= nworkers <= MAX_WORKERS:
            raise ValueError(f"nworkers must be within 1..{MAX_WORKERS}")
        name = control_name(instance)
        mm = _create(name, COUNTERS_OFFSET + nworkers * COUNTERS_SIZE)
        _U32.pack_into(mm, CTL_NWORKERS, nworkers)
        _U32.pack_into(mm, CTL_COUNTERS_SIZE, COUNTERS_SIZE)
        return cls(instance, name, mm)

    @classmethod
    def attach(cls, instance: str) -> ControlSegment:
        name = control_name(instance)
        seg = cls(instance, name, _attach(name))
        if seg.counters_size != COUNTERS_SIZE or not 1 <= seg.nworkers <= MAX_WORKERS:
            seg.close()
            raise ShmError(f"shm segment {name} has an unknown layout")
        return seg

    # -- generation and current image -------------------------------------

    @property
    def generation(self) -> int:
        return self._u64[CTL_GENERATION // 8]

    def image_name(self) -> str:
        mm = self._mm
        assert mm is not None
        n = _U32.unpack_from(mm, CTL_NAME_LEN)[0]
        if n > NAME_MAX:
            raise ShmError(f"{self.name}: bad image name length {n}")
        return bytes(mm[CTL_NAME:CTL_NAME + n]).decode("ascii")

    def publish(self, image_name: str, generation: int) -> None:
        """Announce an image: name first, then the generation (one 8-byte store)."""
        mm = self._mm
        assert mm is not None
        raw = image_name.encode("ascii")
        if not 0 < len(raw) <= NAME_MAX:
            raise ValueError(f"image name {image_name!r} too long")
        if generation <= self.generation:
            raise ValueError(f"generation {generation} is not newer than {self.generation}")
        mm[CTL_NAME:CTL_NAME + len(raw)] = raw
        _U32.pack_into(mm, CTL_NAME_LEN, len(raw))
        self._u64[CTL_GENERATION // 8] = generation

    def current(self, retries: int = 100, worker: int | None = None) -> ImageSegment | None:
        """Attach the published image following the reader protocol; None if none yet.

        Retries when a publish races the read or the named segment was
        already unlinked (a newer one is then published). A worker passes its
        index: each try stores ``attaching`` first (see the module docstring);
        the caller clears it once ``mapped`` holds the generation.
        """
        for _ in range(retries):
            gen = self.generation
            if gen == 0:
                return None
            if worker is not None:
                self.set_attaching(worker, gen)
                fence()
                if self.generation != gen:
                    continue
            name = self.image_name()
            try:
                seg = ImageSegment.attach(name)
            except FileNotFoundError:
                continue
            if self.generation == gen:
                seg.generation = gen
                return seg
            seg.close()
        raise ShmError(f"{self.name}: could not read a stable image after {retries} tries")

    # -- workers -----------------------------------------------------------

    def _check_worker(self, i: int) -> None:
        if not 0 <= i < self.nworkers:
            raise IndexError(f"worker index {i} out of range 0..{self.nworkers - 1}")

    def set_mapped(self, i: int, generation: int) -> None:
        self._check_worker(i)
        self._u64[CTL_MAPPED // 8 + i] = generation

    def mapped(self, i: int) -> int:
        self._check_worker(i)
        return self._u64[CTL_MAPPED // 8 + i]

    def _hold_word(self, i: int, word: int) -> int:
        self._check_worker(i)
        return (COUNTERS_OFFSET + i * COUNTERS_SIZE) // 8 + word

    def set_attaching(self, i: int, generation: int) -> None:
        self._all64[self._hold_word(i, HOLD_ATTACHING_WORD)] = generation

    def set_lingering(self, i: int, generation: int) -> None:
        self._all64[self._hold_word(i, HOLD_LINGERING_WORD)] = generation

    def holds(self, i: int) -> tuple[int, int, int]:
        """(mapped, attaching, lingering) generations of worker ``i`` (0 = none)."""
        return (self.mapped(i), self._all64[self._hold_word(i, HOLD_ATTACHING_WORD)],
                self._all64[self._hold_word(i, HOLD_LINGERING_WORD)])

    def held(self) -> set[int]:
        """Every generation some worker holds (see the module docstring)."""
        out: set[int] = set()
        for i in range(self.nworkers):
            out.update(self.holds(i))
        out.discard(0)
        return out

    def release_worker(self, i: int) -> None:
        """A worker that is gone (or not started yet) holds nothing."""
        self.set_mapped(i, 0)
        self.set_attaching(i, 0)
        self.set_lingering(i, 0)

    def counters(self, i: int) -> memoryview:
        """Worker ``i``'s writable counters block (COUNTERS_SIZE octets)."""
        self._check_worker(i)
        start = COUNTERS_OFFSET + i * COUNTERS_SIZE
        view = self._views[2][start:start + COUNTERS_SIZE]  # raw octets
        self._views.append(view)
        return view

    # -- lifetime ----------------------------------------------------------

    def close(self) -> None:
        _close_map(self._mm, self._views)
        self._mm = None

    def unlink(self) -> bool:
        return unlink_segment(self.name)

    def __enter__(self) -> ControlSegment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def list_segments(instance: str) -> list[str]:
    """Names of every segment of this instance currently in /dev/shm."""
    prefix = f"{PREFIX}{check_instance(instance)}-"
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def list_images(instance: str) -> list[tuple[int, str]]:
    """(generation, name) of this instance's image segments, oldest first."""
    out = []
    for name in list_segments(instance):
        gen = image_generation(name)
        if gen > 0:
            out.append((gen, name))
    return sorted(out)


def sweep(instance: str, keep: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Unlink every ``fastdns-<instance>-*`` segment except ``keep``; returns the names."""
    removed = []
    for name in list_segments(instance):
        if name in keep:
            continue
        try:
            os.unlink(os.path.join(SHM_DIR, name))
            removed.append(name)
        except OSError as e:  # pragma: no cover - racing another sweeper
            if e.errno != errno.ENOENT:
                raise
    return removed
