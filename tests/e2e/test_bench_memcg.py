"""bench/memcg.py, the memory group the scale benchmark runs the server in as a pod is
limited: a child over the limit is OOM-killed and counted, and the group goes away."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import memcg  # noqa: E402

pytestmark = pytest.mark.skipif(memcg.available() is not None,
                                reason=str(memcg.available()))


def test_a_child_over_the_limit_is_killed_and_counted():
    group = memcg.MemoryGroup(48, name=f"fastdns-test-{id(object())}")
    try:
        group.sample(0.02)
        # 200 MiB touched page by page: far over 48 MiB
        proc = subprocess.run(group.argv([sys.executable, "-c",
                                          "b = bytearray(200 << 20); print('survived')"]),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode < 0 or "survived" not in proc.stdout
        report = group.report()
        assert report["oom_kills"] in (-1, 1) and report["failcnt"] > 0
        assert 40 <= report["peak_mib"] <= 49
        small = subprocess.run(group.argv([sys.executable, "-c", "print('ok')"]),
                               capture_output=True, text=True, timeout=60)
        assert small.stdout.strip() == "ok"  # under the limit: it just runs
    finally:
        group.close()
    assert not group.path.exists()


def test_respawns_are_read_from_the_supervisor_log():
    import bench_kube

    log = ("[INFO] supervisor: control started (pid 1)\n"
           "[INFO] supervisor: worker 0 started (pid 2)\n"
           "[INFO] supervisor: worker 1 started (pid 3)\n"
           "[WARNING] supervisor: control (pid 1) died: signal SIGKILL; restarting in 0.1s\n"
           "[INFO] supervisor: control started (pid 4)\n")
    assert bench_kube.restarts(log, 2) == 1
