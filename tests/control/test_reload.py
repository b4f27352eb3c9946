"""Corefile reload under steady query load: applied, rejected, periodic; no query lost."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import threading
import time
import urllib.request

import dns.message
import dns.rcode
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import DEMO, KUBERNETES, Server, ask, free_port, wait_for

pytestmark = pytest.mark.slow


def corefile(port: int, mport: int, ttl: int, extra_port: int | None = None,
             extra: str = "") -> str:
    keys = f"cluster.local:{port}" + (f" cluster.local:{extra_port}" if extra_port else "")
    return f"""\
{keys} {{
    bind 127.0.0.1
    kubernetes cluster.local {{
        ttl {ttl}
    }}
    prometheus 127.0.0.1:{mport}
    reload 2s 1s
{extra}}}
"""


class Load:
    """Threads asking one name over UDP, each waiting for its answer: sent vs answered."""

    def __init__(self, port: int, threads: int = 3, timeout: float = 2.0) -> None:
        self.port = port
        self.timeout = timeout
        self.sent = 0
        self.answered = 0
        self.ttls: list[int] = []
        self.lost_ids: list[int] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _run(self, n: int) -> None:
        q = dns.message.make_query(KUBERNETES, "A")
        wire = bytearray(q.to_wire())
        qid = n << 12
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(self.timeout)
            deadline = time.monotonic() + 60  # bounded, whatever happens
            while not self._stop.is_set() and time.monotonic() < deadline:
                qid = (qid + 1) & 0xFFFF
                struct.pack_into(">H", wire, 0, qid)
                s.sendto(wire, ("127.0.0.1", self.port))
                with self._lock:
                    self.sent += 1
                try:
                    while True:
                        data = s.recv(4096)
                        if struct.unpack_from(">H", data)[0] == qid:
                            break
                except TimeoutError:
                    with self._lock:
                        self.lost_ids.append(qid)
                    continue
                r = dns.message.from_wire(data)
                with self._lock:
                    self.answered += 1
                    if r.answer:
                        self.ttls.append(r.answer[0].ttl)
                time.sleep(0.002)


def metrics(mport: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=2).read()
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            key = s.name + ("" if not s.labels else str(sorted(s.labels.items())))
            out[key] = s.value
    return out


@pytest.fixture
def server(tmp_path):
    shutil.copy(DEMO, tmp_path / "cluster.yaml")
    port, mport = free_port(), free_port()
    cf = tmp_path / "Corefile"
    cf.write_text(corefile(port, mport, 30))
    srv = Server(tmp_path, ["--corefile", str(cf), "--state", str(tmp_path / "cluster.yaml"),
                            "--workers", "2"], port)
    srv.corefile, srv.mport = cf, mport
    try:
        srv.wait_answering()
        wait_for(lambda: _try_metrics(mport))
        yield srv
    finally:
        srv.stop_and_sweep()


def _try_metrics(mport: int):
    try:
        return metrics(mport)
    except OSError:
        return None


def _ttl(port: int, tcp: bool = False) -> int:
    return ask(KUBERNETES, port=port, tcp=tcp).answer[0].ttl


def test_reload_applied_on_sigusr1_without_losing_queries(server):
    before = metrics(server.mport)
    old_hash = [k for k in before if k.startswith("coredns_reload_version_info")]
    extra = free_port()
    with Load(server.port) as load:
        time.sleep(0.5)
        server.corefile.write_text(corefile(server.port, server.mport, 45, extra_port=extra))
        os.kill(server.proc.pid, signal.SIGUSR1)
        assert wait_for(lambda: _ttl(server.port) == 45), server.log()[-3000:]
        # the new listen address of the reloaded Corefile is served too, UDP and TCP
        assert wait_for(lambda: _try(lambda: _ttl(extra) == 45 and _ttl(extra, True) == 45))
        time.sleep(0.5)
    log = server.log()
    assert "[INFO] plugin/reload: Reloading" in log and "Reloading complete" in log, log
    assert load.sent > 100 and load.lost_ids == [], (load.sent, load.lost_ids)
    assert load.answered == load.sent
    assert 30 in load.ttls and 45 in load.ttls
    after = wait_for(lambda: _try_metrics(server.mport))
    new_hash = [k for k in after if k.startswith("coredns_reload_version_info")]
    assert new_hash and new_hash != old_hash
    assert after["coredns_reload_failed_total"] == 0


def _try(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001 - not there yet
        return False


def test_reload_rejected_keeps_running_config(server):
    text = corefile(server.port, server.mport, 45, extra="    frobnicate\n")
    with Load(server.port) as load:
        time.sleep(0.3)
        server.corefile.write_text(text)
        os.kill(server.proc.pid, signal.SIGUSR1)
        line = text.splitlines().index("    frobnicate") + 1
        want = f"Corefile changed but reload failed: {server.corefile}:{line}: plugin frobnicate"
        assert wait_for(lambda: want in server.log()), server.log()[-3000:]
        # the same broken file is counted once, however often it is checked
        os.kill(server.proc.pid, signal.SIGUSR1)
        time.sleep(0.5)
    assert load.sent > 50 and load.lost_ids == [] and load.answered == load.sent
    assert set(load.ttls) == {30}
    assert _ttl(server.port) == 30
    m = metrics(server.mport)
    assert m["coredns_reload_failed_total"] == 1
    assert "Reloading complete" not in server.log()


def test_reload_periodic_check(server):
    """`reload 2s 1s`: a change is applied within interval + jitter, without a signal."""
    server.corefile.write_text(corefile(server.port, server.mport, 50))
    t0 = time.monotonic()
    assert wait_for(lambda: _ttl(server.port) == 50, timeout=10), server.log()[-3000:]
    assert time.monotonic() - t0 < 6
