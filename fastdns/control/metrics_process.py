"""``process_*`` summed over fastdns's processes, read from /proc at scrape time.

CoreDNS is one process and its dashboards chart the client library's
process metrics; fastdns is a supervisor, a control process and workers,
so the same series are the sum over all of them (the start time: the
earliest).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable, Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGESIZE = mmap.PAGESIZE


def _boot_time() -> float:
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


_BTIME = _boot_time()


def proc_stat(pid: int) -> tuple[float, int, int, float, int] | None:
    """(cpu seconds, rss bytes, vsize bytes, start time, open fds) of a live process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        fields = raw[raw.rindex(b")") + 2:].split()
        # proc(5): fields from "state" (3rd) on; utime 14, stime 15, starttime 22,
        # vsize 23, rss 24 (pages).
        cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
        start = _BTIME + int(fields[19]) / _CLK_TCK
        vsize, rss = int(fields[20]), int(fields[21]) * _PAGESIZE
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError, IndexError):
        return None
    return cpu, rss, vsize, start, fds


def process_metrics(pids: Iterable[int]) -> Iterator[Metric]:
    """The client libraries' ``process_*`` metrics, summed over fastdns's processes."""
    stats = [s for s in map(proc_stat, pids) if s is not None]
    if not stats:
        return
    yield CounterMetricFamily("process_cpu_seconds_total",
                              "Total user and system CPU time spent in seconds.",
                              value=sum(s[0] for s in stats))
    yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size in bytes.",
                            value=sum(s[1] for s in stats))
    yield GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                            value=sum(s[2] for s in stats))
    yield GaugeMetricFamily("process_start_time_seconds",
                            "Start time of the process since unix epoch in seconds.",
                            value=min(s[3] for s in stats))
    yield GaugeMetricFamily("process_open_fds", "Number of open file descriptors.",
                            value=sum(s[4] for s in stats))
