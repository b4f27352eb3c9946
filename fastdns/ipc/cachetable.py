"""The shared response cache's segment: naming, sizing, creating, attaching, unlinking.

One ``fastdns serve`` keeps one response cache for all its workers
(issue 13): a segment ``fastdns-<instance>-cache-<tag>`` that every worker
maps, read and written by the C table in ``server/_udp_cache.pxi``. Its
header and slot layout is ``ipc/layout.py``'s "cache segment" and "cache
slot" regions.

Who creates it: the first worker that configures a cache (``open``). The
name's ``<tag>`` hashes the geometry and every ``cache`` stanza's settings
(``tag``), so every worker of one Corefile computes the same name and maps
the same segment, and a reload that changes a capacity or a policy moves
all of them to a new, empty one (CoreDNS also starts a reloaded cache
empty); a reload that changes no cache keeps the entries. The worker that
creates a new segment unlinks the instance's other cache segments
(``unlink_others``): workers still on the old one keep their pages until
they move.

Creating races attaching: the creator makes the file with O_EXCL, sizes it
(zero pages: an all-zero slot area is an empty table) and stores the magic
word last; an attacher retries until the size and the magic are there, and
replaces a segment whose creator died before the magic (older than
``CREATE_GRACE``).

Removal: the segment carries the instance prefix, so the supervisor's
``shm.sweep(instance)`` at stop, and ``reclaim`` after a crash, remove it
with the instance's other segments.

Sizing: ``CT_WAYS_N``-way buckets, twice as many slots as the summed
capacities (so a bucket rarely fills before its stores do), at most
``MAX_OCTETS`` of segment (pages are allocated by tmpfs as slots are first
written, so an idle cache costs little).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
import time

from fastdns.ipc import shm
from fastdns.ipc.layout import (
    CT_MAGIC,
    CT_MAGIC_VALUE,
    CT_NBUCKETS,
    CT_SLOT_OCTETS,
    CT_SLOT_SIZE,
    CT_SLOTS,
    CT_WAYS,
    CT_WAYS_N,
)

TAG = "-cache-"
MAX_OCTETS = 512 << 20  # a segment never grows past this, whatever the capacities
CREATE_GRACE = 2.0  # s: a segment without its magic this old lost its creator
ATTACH_WAIT = 3.0  # s: how long an attacher waits for a creator to finish
_U64 = struct.Struct("=Q")
_U32 = struct.Struct("=I")


def nbuckets_for(capacity: int) -> int:
    """Buckets for ``capacity`` entries in all: 2 slots per entry, bounded by MAX_OCTETS."""
    most = max(1, (MAX_OCTETS - CT_SLOTS) // (CT_WAYS_N * CT_SLOT_OCTETS))
    return max(1, min(most, -(-2 * capacity // CT_WAYS_N)))


def segment_size(nbuckets: int) -> int:
    return CT_SLOTS + nbuckets * CT_WAYS_N * CT_SLOT_OCTETS


def tag(nbuckets: int, settings: object) -> str:
    """The name tag: the geometry and the caches' settings (their repr), hashed."""
    h = hashlib.sha256(f"{nbuckets}|{CT_WAYS_N}|{CT_SLOT_OCTETS}|{settings!r}".encode())
    return h.hexdigest()[:16]


def segment_name(instance: str, tag_: str) -> str:
    return f"{shm.PREFIX}{shm.check_instance(instance)}{TAG}{tag_}"


def format_header(buf: mmap.mmap | memoryview, nbuckets: int) -> None:
    """Write the header of a zero-filled table; the magic goes last (attachers wait on it)."""
    _U32.pack_into(buf, CT_WAYS, CT_WAYS_N)
    _U32.pack_into(buf, CT_SLOT_SIZE, CT_SLOT_OCTETS)
    _U64.pack_into(buf, CT_NBUCKETS, nbuckets)
    _U64.pack_into(buf, CT_MAGIC, CT_MAGIC_VALUE)


def valid(buf: mmap.mmap) -> bool:
    """Is ``buf`` a formatted table of this layout, whole?"""
    if len(buf) < CT_SLOTS or _U64.unpack_from(buf, CT_MAGIC)[0] != CT_MAGIC_VALUE:
        return False
    if (_U32.unpack_from(buf, CT_WAYS)[0] != CT_WAYS_N
            or _U32.unpack_from(buf, CT_SLOT_SIZE)[0] != CT_SLOT_OCTETS):
        return False
    return len(buf) >= segment_size(_U64.unpack_from(buf, CT_NBUCKETS)[0])


def anonymous(capacity: int) -> mmap.mmap:
    """A table in anonymous shared memory (tests; shared with children forked later)."""
    nb = nbuckets_for(capacity)
    mm = mmap.mmap(-1, segment_size(nb), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    format_header(mm, nb)
    return mm


def _map(fd: int, size: int) -> mmap.mmap:
    return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


def _create(name: str, nbuckets: int) -> mmap.mmap:
    path = shm.segment_path(name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        size = segment_size(nbuckets)
        os.ftruncate(fd, size)
        mm = _map(fd, size)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    format_header(mm, nbuckets)
    return mm


def _try_attach(name: str) -> mmap.mmap | None:
    """The segment if it is formatted; None while its creator is still at it."""
    fd = os.open(shm.segment_path(name), os.O_RDWR | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size < CT_SLOTS:
            return None
        mm = _map(fd, size)
    finally:
        os.close(fd)
    if valid(mm):
        return mm
    mm.close()
    return None


def _age(name: str) -> float:
    try:
        return time.time() - os.stat(shm.segment_path(name)).st_mtime
    except FileNotFoundError:
        return 0.0


def open_segment(instance: str, nbuckets: int, tag_: str) -> tuple[str, mmap.mmap, bool]:
    """(name, mapping, created) of the instance's cache segment for ``tag_``."""
    name = segment_name(instance, tag_)
    deadline = time.monotonic() + ATTACH_WAIT
    while True:
        try:
            return name, _create(name, nbuckets), True
        except FileExistsError:
            pass
        try:
            mm = _try_attach(name)
        except FileNotFoundError:
            continue  # unlinked meanwhile: create it
        if mm is not None:
            return name, mm, False
        if _age(name) > CREATE_GRACE or time.monotonic() > deadline:
            shm.unlink_segment(name)  # its creator died before the magic
            continue
        time.sleep(0.005)


def unlink_others(instance: str, keep: str) -> list[str]:
    """Unlink the instance's cache segments other than ``keep`` (a reload moved on)."""
    prefix = f"{shm.PREFIX}{shm.check_instance(instance)}{TAG}"
    gone = []
    for name in shm.list_segments(instance):
        if name.startswith(prefix) and name != keep and shm.unlink_segment(name):
            gone.append(name)
    return gone
