"""The process-level stats words of the control segment (``layout.S_*``).

A few counters and flags that must outlive a control-process restart live
in the control segment at ``layout.STATS_OFFSET``: worker and control
restarts, failed reloads, the supervisor's and control process's pids, the
lameduck flag and the Corefile version. Each word has exactly one writing
process (``layout`` names it), so a plain load/add/store is safe.
"""

from __future__ import annotations

import mmap
import os

from fastdns.ipc import layout, shm


class SharedStats:
    """The stats words of the control segment, mapped by name.

    The control segment is created by the supervisor; any process of the
    same instance opens its stats area with ``SharedStats.attach(instance)``.
    """

    def __init__(self, mm: mmap.mmap) -> None:
        self._mm = mm
        start = layout.STATS_OFFSET
        self._w = memoryview(mm)[start:start + 8 * layout.STATS_WORDS].cast("Q")

    @classmethod
    def attach(cls, instance: str) -> SharedStats:
        path = os.path.join(shm.SHM_DIR, shm.control_name(instance))
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            mm = mmap.mmap(fd, layout.COUNTERS_OFFSET, mmap.MAP_SHARED,
                           mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        return cls(mm)

    @classmethod
    def in_memory(cls) -> SharedStats:
        """Stats not shared with anyone (tests, a control process without a supervisor)."""
        return cls(mmap.mmap(-1, layout.COUNTERS_OFFSET))

    def get(self, word: int) -> int:
        return self._w[word]

    def add(self, word: int, n: int = 1) -> None:
        self._w[word] += n

    def set(self, word: int, value: int) -> None:
        self._w[word] = value

    # the calls the other processes make
    def worker_restarted(self) -> None:
        self.add(layout.S_WORKER_RESTARTS)

    def control_restarted(self) -> None:
        self.add(layout.S_CONTROL_RESTARTS)

    def reload_failed(self) -> None:
        self.add(layout.S_RELOAD_FAILED)

    def start_lameduck(self) -> None:
        """Supervisor, on SIGTERM: /ready answers 503 from now on (read live by
        the control process, so no signal is needed and a restarted control
        process sees it too); it keeps serving for the lameduck duration."""
        self.set(layout.S_LAMEDUCK, 1)

    @property
    def lameduck(self) -> bool:
        return self.get(layout.S_LAMEDUCK) != 0

    def close(self) -> None:
        self._w.release()
        self._mm.close()
