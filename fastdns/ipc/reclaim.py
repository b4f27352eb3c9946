"""Instance ownership: the instance lock, and reclaiming dead instances' segments.

Ownership, and reclaiming a dead instance's segments: the supervisor of a
live instance holds an exclusive ``flock(2)`` on ``fastdns-<instance>-lock``
for its whole life (``InstanceLock``). The lock file is created with
O_EXCL, locked, and only then gets the supervisor's pid written into it;
the fd is close-on-exec and passed to no child, so the lock lives exactly
as long as the supervisor process: the kernel drops it however that ends,
SIGKILL and the OOM killer included. A starting supervisor (``reclaim``):
for every other instance in the directory that has a lock file, it tries a
non-blocking ``flock``; if it gets it, the owner is dead and it sweeps that
instance (the lock file last). It never touches

- an instance whose lock is held (alive, whatever its Corefile: two fastdns
  on one node each keep theirs; flock works across PID namespaces, so a
  sidecar sharing the emptyDir is safe too);
- an instance whose lock file is still empty and younger than
  ``EMPTY_LOCK_GRACE`` (created but not yet locked: starting right now);
- an instance without a lock file (an older fastdns, or segments a test
  made itself): there is no safe proof that its owner is dead (pids are per
  PID namespace), so it is left alone and the supervisor logs it once.

This reclaims dead instances of every Corefile, not only the starting
one's: the lock proves the owner dead, and an instance whose Corefile was
changed between an OOM kill and the restart would otherwise leak forever.

``FASTDNS_SHM_DIR`` (``shm.SHM_DIR``, read at call time) is the directory
looked at, as for the segments themselves.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from dataclasses import dataclass, field

from fastdns.ipc import shm

LOCK_TAG = "-lock"
EMPTY_LOCK_GRACE = 10.0  # s: an empty lock file this young belongs to a starting owner


def lock_name(instance: str) -> str:
    return f"{shm.PREFIX}{shm.check_instance(instance)}{LOCK_TAG}"


class InstanceLock:
    """``fastdns-<instance>-lock``, flock(2)ed by the live instance's supervisor.

    See the module docstring for the rule. ``release`` at a clean exit; a
    killed owner's lock is released by the kernel and its segments are
    reclaimed by the next supervisor that starts.
    """

    __slots__ = ("instance", "name", "_fd")

    def __init__(self, instance: str, name: str, fd: int) -> None:
        self.instance = instance
        self.name = name
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, instance: str) -> InstanceLock:
        name = lock_name(instance)
        path = shm.segment_path(name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            # Blocks only while a reclaimer looks at the still-empty file: it
            # leaves an empty young lock alone (EMPTY_LOCK_GRACE).
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, f"{os.getpid()}\n".encode())
        except BaseException:
            os.close(fd)
            shm.unlink_segment(name)
            raise
        return cls(instance, name, fd)

    def release(self) -> None:
        """Remove the lock file, then drop the lock (the instance is swept by now)."""
        if self._fd is None:
            return
        shm.unlink_segment(self.name)
        os.close(self._fd)
        self._fd = None


@dataclass
class Reclaimed:
    """What ``reclaim`` did: dead instances swept, and instances it had to leave alone."""

    instances: list[str] = field(default_factory=list)
    segments: int = 0
    octets: int = 0  # memory the removed segments held (allocated tmpfs pages)
    unowned: list[str] = field(default_factory=list)  # no lock file: left alone
    unowned_segments: int = 0
    unowned_octets: int = 0


def instances() -> dict[str, list[str]]:
    """Every instance with a segment in the directory: instance -> its segment names."""
    out: dict[str, list[str]] = {}
    try:
        names = os.listdir(shm.SHM_DIR)
    except FileNotFoundError:
        return out
    for name in names:
        if not name.startswith(shm.PREFIX):
            continue
        inst, sep, _rest = name[len(shm.PREFIX):].partition("-")
        if sep and shm.INSTANCE_RE.match(inst):
            out.setdefault(inst, []).append(name)
    return out


def _octets(name: str) -> int:
    try:
        st = os.stat(os.path.join(shm.SHM_DIR, name))
    except OSError:
        return 0
    blocks = getattr(st, "st_blocks", None)
    return st.st_size if blocks is None else blocks * 512


def reclaim(own: str | None = None) -> Reclaimed:
    """Sweep the segments of every dead instance (the module docstring's rule).

    ``own`` (the caller's instance) is skipped; its lock would refuse anyway.
    """
    done = Reclaimed()
    for inst, names in sorted(instances().items()):
        if inst == own:
            continue
        lock = lock_name(inst)
        if lock not in names:
            done.unowned.append(inst)
            done.unowned_segments += len(names)
            done.unowned_octets += sum(_octets(n) for n in names)
            continue
        try:
            fd = os.open(os.path.join(shm.SHM_DIR, lock), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # gone meanwhile (its owner stopped), or another user's
        try:
            _reclaim_one(inst, lock, fd, done)
        except OSError:
            # another user's segments in a shared /dev/shm (sticky: not ours
            # to unlink), or a racing reclaimer: not a reason to stop here
            pass
        finally:
            os.close(fd)
    return done


def _reclaim_one(inst: str, lock: str, fd: int, done: Reclaimed) -> None:
    """Sweep ``inst`` if its lock file ``fd`` can be locked (its owner is dead)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return  # alive
        raise
    st = os.fstat(fd)
    if st.st_nlink == 0:
        return  # swept meanwhile, by its owner or another reclaimer
    if st.st_size == 0 and time.time() - st.st_mtime < EMPTY_LOCK_GRACE:
        return  # its owner is starting: created, not locked yet
    octets = {n: _octets(n) for n in shm.list_segments(inst)}
    removed = shm.sweep(inst, keep={lock})
    if shm.unlink_segment(lock):
        removed.append(lock)
    done.instances.append(inst)
    done.segments += len(removed)
    done.octets += sum(octets.get(n, 0) for n in removed)
