"""A cgroup v1 memory group for a benchmark's server, limited as a pod is.

The kubelet puts a container in a memory cgroup whose ``limits.memory`` is
the group's ``memory.limit_in_bytes``; the whole process tree is charged,
and so are the tmpfs pages (``/dev/shm``: fastdns's images, cache and
control segments) a process in the group writes first. Going over the
limit makes the kernel's OOM killer kill a process in the group, which is
what an operator sees as OOMKilled or as restarts.

``MemoryGroup(limit_mib)`` makes ``/sys/fs/cgroup/memory/fastdns-bench-<pid>``;
``argv(cmd)`` wraps a command so that it joins the group before it execs
(so every child is charged from its first page); ``sample()`` records the
working set (usage less inactive page cache, the kubelet's measure) on a
thread every ``interval`` s; ``report()`` gives peak, steady and the
OOM kills; ``close()`` removes the group once its processes are gone.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup/memory")
MIB = 1 << 20


def available() -> str | None:
    """None when a memory group can be made here, else why not."""
    if not (ROOT / "cgroup.procs").exists():
        return f"no cgroup v1 memory controller at {ROOT}"
    if not os.access(ROOT, os.W_OK):
        return f"{ROOT} is not writable (needs root)"
    return None


class MemoryGroup:
    def __init__(self, limit_mib: float | None, name: str | None = None) -> None:
        self.path = ROOT / (name or f"fastdns-bench-{os.getpid()}")
        self.path.mkdir(exist_ok=True)
        if limit_mib:
            (self.path / "memory.limit_in_bytes").write_text(str(int(limit_mib * MIB)))
        self.limit_mib = limit_mib
        self.samples: list[tuple[float, float]] = []  # (monotonic s, usage MiB)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def argv(self, cmd: list[str]) -> list[str]:
        """``cmd`` run from a shell that first moves itself into the group."""
        procs = self.path / "cgroup.procs"
        return ["/bin/sh", "-c", f'echo $$ > {procs} && exec "$@"', "memcg", *cmd]

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    def usage_mib(self) -> float:
        return int(self._read("memory.usage_in_bytes")) / MIB

    def working_set_mib(self) -> float:
        """usage less inactive file pages: the kubelet's working set (what
        ``kubectl top`` shows and evictions use; page cache the group read is
        charged to it but reclaimed before an OOM kill)."""
        stat = dict(line.split() for line in self._read("memory.stat").splitlines())
        return (int(self._read("memory.usage_in_bytes"))
                - int(stat.get("total_inactive_file", 0))) / MIB

    def sample(self, interval: float = 0.05) -> None:
        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.samples.append((time.monotonic(), self.working_set_mib()))
                except OSError:
                    return
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def steady_mib(self, since: float) -> float:
        """Median working set of the samples taken after ``since`` (monotonic s)."""
        xs = sorted(u for t, u in self.samples if t >= since)
        return xs[len(xs) // 2] if xs else self.working_set_mib()

    def oom_kills(self) -> int:
        """Processes the OOM killer killed in the group (``oom_kill`` of memory.oom_control,
        kernels >= 4.13), else -1 when the kernel does not say."""
        for line in self._read("memory.oom_control").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return -1

    def report(self) -> dict[str, float]:
        ws_peak = max((u for _t, u in self.samples), default=self.working_set_mib())
        return {"peak_mib": int(self._read("memory.max_usage_in_bytes")) / MIB,
                "now_mib": self.usage_mib(), "ws_peak_mib": ws_peak,
                "failcnt": int(self._read("memory.failcnt")),
                "oom_kills": self.oom_kills(), "limit_mib": self.limit_mib or 0.0}

    def close(self, timeout: float = 10.0) -> None:
        """Stop sampling and remove the group (after its processes have exited)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.path.rmdir()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
