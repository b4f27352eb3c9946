"""Idle workers move to each published generation at once (ipc/doorbell.py).

Without the bell a worker that gets no queries looks for a new generation
on its 0.5 s timer, and so pins a recent image under churn: the segment the
next publish would go into is held, and a third image-sized segment has to
be made (51 MB more at 10k Services and 150k endpoints). Here two workers
get no queries at all while the state file changes; after each publish both
must map the new generation within 50 ms of it being published, five times
in a row (rung, they take microseconds; by their timer alone, 0.15-0.5 s).
"""

from __future__ import annotations

import shutil
import signal
import time

from fastdns.ipc import shm
from tests.e2e.test_serve import NEW_SERVICE
from tests.helpers import DEMO, Server, corefile_for, free_port, wait_for


def test_idle_workers_move_to_each_generation_when_rung(tmp_path):
    port = free_port()
    state = tmp_path / "cluster.yaml"
    shutil.copy(DEMO, state)
    (tmp_path / "Corefile").write_text(corefile_for(port))
    srv = Server(tmp_path, ["--corefile", str(tmp_path / "Corefile"), "--state", str(state),
                            "--workers", "2"], port)
    try:
        srv.wait_answering()
        with shm.ControlSegment.attach(srv.instance) as ctl:
            assert wait_for(lambda: all(ctl.mapped(i) == ctl.generation for i in (0, 1)), 5.0)
            lags = []
            for n in range(5):
                gen = ctl.generation
                state.write_text(state.read_text() + NEW_SERVICE.format(n=20 + n))
                assert wait_for(lambda g=gen: ctl.generation > g, 10.0, step=0.001), \
                    srv.log()[-2000:]
                t0 = time.monotonic()
                want = ctl.generation
                assert wait_for(lambda w=want: all(ctl.mapped(i) >= w for i in (0, 1)),
                                2.0, step=0.001), srv.log()[-2000:]
                lags.append(time.monotonic() - t0)
            assert max(lags) < 0.05, lags
    finally:
        srv.stop_and_sweep(signal.SIGTERM)
