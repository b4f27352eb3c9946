"""`fastdns serve --kubeconfig`: the control process fed by list+watch of a fake API server."""

from __future__ import annotations

import signal
import time

import dns.message
import dns.query
import dns.rcode
import pytest
import yaml

from fastdns.server import shm
from fastdns.testing.fake_apiserver import FakeApiServer
from tests.test_serve import DEMO, KUBERNETES, Server, a_records, ask, corefile_for, free_port

pytestmark = pytest.mark.slow


def test_serve_from_the_kubernetes_api(tmp_path):
    with FakeApiServer() as api:
        api.load(yaml.safe_load_all(DEMO.read_text()))
        kubeconfig = api.write_kubeconfig(str(tmp_path / "kubeconfig"))
        port = free_port()
        (tmp_path / "Corefile").write_text(corefile_for(port))
        srv = Server(tmp_path, ["--corefile", str(tmp_path / "Corefile"),
                                "--kubeconfig", kubeconfig, "--workers", "1"], port)
        try:
            srv.wait_answering()
            assert "synced" in srv.log()
            # a watch event is served well within a second
            name = "made-later.default.svc.cluster.local."
            assert ask(name, port=port).rcode() == dns.rcode.NXDOMAIN
            api.create("Service", {
                "metadata": {"name": "made-later", "namespace": "default"},
                "spec": {"clusterIP": "10.96.99.9", "clusterIPs": ["10.96.99.9"],
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
            t0 = time.monotonic()
            while time.monotonic() - t0 < 3 and not a_records(ask(name, port=port)):
                time.sleep(0.01)
            assert time.monotonic() - t0 < 1.0, srv.log()[-2000:]
            assert a_records(ask(name, port=port, tcp=True)) == {"10.96.99.9"}
            api.delete("Service", ("default", "made-later"))
            t0 = time.monotonic()
            while time.monotonic() - t0 < 3 and ask(name, port=port).rcode() != 3:
                time.sleep(0.01)
            assert ask(name, port=port).rcode() == dns.rcode.NXDOMAIN
            assert a_records(ask(KUBERNETES, port=port)) == {"10.96.0.1"}
            inst = srv.instance
            assert srv.stop(signal.SIGTERM) == 0
            assert shm.list_segments(inst) == []
        finally:
            srv.stop(signal.SIGKILL)


def test_before_the_first_sync_misses_are_servfail(tmp_path):
    """CoreDNS answers SERVFAIL, not NXDOMAIN, until its first list completes."""
    with FakeApiServer() as api:
        api.set_down(True)
        kubeconfig = api.write_kubeconfig(str(tmp_path / "kubeconfig"))
        port = free_port()
        (tmp_path / "Corefile").write_text(corefile_for(port))
        srv = Server(tmp_path, ["--corefile", str(tmp_path / "Corefile"),
                                "--kubeconfig", kubeconfig, "--workers", "1"], port)
        try:
            deadline = time.monotonic() + 30
            r = None
            while time.monotonic() < deadline:
                try:
                    r = ask(KUBERNETES, port=port, timeout=0.3)
                    break
                except (dns.exception.Timeout, OSError):
                    time.sleep(0.05)
            assert r is not None and r.rcode() == dns.rcode.SERVFAIL, srv.log()
            api.set_down(False)
            api.load(yaml.safe_load_all(DEMO.read_text()))
            srv.wait_answering()
        finally:
            srv.stop(signal.SIGKILL)
