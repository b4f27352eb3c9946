"""One response cache for all workers (issue 13): `fastdns serve` with 2 and 8 workers.

A loopback test upstream counts the queries it gets. A name asked many
times over UDP, each from a fresh socket (a new source port, so
SO_REUSEPORT spreads the queries over the workers), is forwarded exactly
once per TTL, and the remaining TTLs never go up (per-worker caches answer
29, 30, 28 ...: each worker's own clock of its own entry). A TCP query in
the middle is a hit too. The segment is gone once the server stops.
"""

from __future__ import annotations

import os
import signal
import time

import dns.rcode
import pytest

from fastdns.codec import NO_EXTENSIONS
from fastdns.ipc import cachetable, readout, shm
from tests.helpers import DEMO, Server, a_records, ask, free_port
from tests.upstreams import UpstreamThread

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(NO_EXTENSIONS, reason="pure mode keeps a cache per worker")]

NAME = "www.example.test."
ASKS = 60


def _cache_segments(instance: str) -> list[str]:
    return [n for n in shm.list_segments(instance) if cachetable.TAG in n]


def _counters(srv) -> list[dict]:
    with shm.ControlSegment.attach(srv.instance) as ctl:
        return [readout.read_counters(ctl.counters(i)) for i in range(ctl.nworkers)]


@pytest.mark.parametrize("workers", [2, 8])
def test_one_cache_for_every_worker(tmp_path, workers):
    th = UpstreamThread()
    up = th.start({NAME: [("A", "192.0.2.1")]}, zone="example.test.")
    port = free_port()
    (tmp_path / "Corefile").write_text(
        f"cluster.local:{port} {{\n    bind 127.0.0.1\n    kubernetes cluster.local\n}}\n"
        f"example.test:{port} {{\n    bind 127.0.0.1\n    forward . {up.addr}\n"
        "    cache 30\n}\n")
    srv = Server(tmp_path, ["--corefile", str(tmp_path / "Corefile"), "--state", str(DEMO),
                            "--workers", str(workers)], port)
    try:
        srv.wait_answering(timeout=60)
        # every worker takes up its cache (and maps the segment) on its own
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not _cache_segments(srv.instance):
            ask(NAME.replace("www", "warm"), port=port, timeout=2)
            time.sleep(0.2)
        before = srv.worker_queries()
        hits_before = [w["cache"]["c_hits"]["success"] for w in _counters(srv)]
        seen: list[tuple[float, int]] = []
        for i in range(ASKS):
            r = ask(NAME, port=port, timeout=3, tcp=(i == ASKS // 2))
            assert r.rcode() == dns.rcode.NOERROR and a_records(r) == {"192.0.2.1"}
            seen.append((time.monotonic(), r.answer[0].ttl))
        assert up.count(NAME) == 1, "one upstream query per TTL, whatever the workers"
        after = srv.worker_queries()
        answered = [b - a for a, b in zip(before, after, strict=True)]
        assert sum(1 for n in answered if n > 0) >= 2, answered
        ttls = [t for _, t in seen]
        # one entry, one clock: the remaining TTL only ever goes down, a second at a time
        assert all(b <= a for a, b in zip(ttls, ttls[1:], strict=False)), ttls
        assert ttls[0] == 30 and ttls[-1] >= 30 - int(seen[-1][0] - seen[0][0]) - 1
        hits = [w["cache"]["c_hits"]["success"] - h
                for w, h in zip(_counters(srv), hits_before, strict=True)]
        assert sum(1 for n in hits if n > 0) >= 2, hits  # the C path of several workers
        assert len(_cache_segments(srv.instance)) == 1
        inst = srv.instance
        assert srv.stop(signal.SIGTERM) == 0
        assert _cache_segments(inst) == [], "the segment is unlinked when fastdns stops"
        assert not any(n.startswith(f"{shm.PREFIX}{inst}-") for n in os.listdir(shm.SHM_DIR))
    finally:
        srv.stop_and_sweep(signal.SIGTERM)
        th.close()
