"""AKS's Corefile, end to end under `fastdns serve --state ...` (issue 15).

AKS ships kubeadm's plugins plus two templates that answer NXDOMAIN for
names no Azure resolver can answer (the search-path expansions of
`*.internal.cloudapp.net` and `reddog.microsoft.com`), and imports the
`coredns-custom` ConfigMap's `*.override` and `*.server` files (none here,
then one of each). The templates must answer without reaching the upstream
(it counts what it gets), on the C fast path without handing the query to
Python, and on the pure-Python path alike. Only the port, the health/ready/
metrics listeners and /etc/resolv.conf (a test-owned file naming a loopback
upstream on port 53) are rewritten.
"""

from __future__ import annotations

import re
import shutil
import signal
import time
from pathlib import Path

import dns.rcode
import pytest

from fastdns.codec import NO_EXTENSIONS
from fastdns.ipc import readout, shm
from tests.e2e.test_kubeadm_corefile import ThreadUpstream
from tests.helpers import DEMO, KUBERNETES, Server, a_records, ask, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM_HOST = "127.0.53.81"
RECORDS = {"vm1.internal.cloudapp.net.": [("A", "10.240.0.4")],
           "www.example.test.": [("A", "192.0.2.1")]}


def aks_corefile(port: int, hp: int, rp: int, mp: int, resolv: Path) -> str:
    text = (ROOT / "corefiles" / "aks.Corefile").read_text()
    text = text.replace(".:53 {", f".:{port} {{")
    text = text.replace("    health {", f"    health 127.0.0.1:{hp} {{")
    text = text.replace("    ready\n", f"    ready 127.0.0.1:{rp}\n")
    text = text.replace("prometheus :9153", f"prometheus 127.0.0.1:{mp}")
    text = text.replace("/etc/resolv.conf", str(resolv))
    return text


@pytest.fixture(scope="module")
def upstream():
    try:
        th = ThreadUpstream(RECORDS, UPSTREAM_HOST, 53)
        up = th.__enter__()
    except OSError as e:
        pytest.skip(f"cannot bind the upstream on {UPSTREAM_HOST}:53: {e}")
    yield up
    th.__exit__(None, None, None)


def start(tmp: Path, path: str, monkeypatch, custom: dict[str, str] | None = None):
    (tmp / "custom").mkdir()
    port, hp, rp, mp = (free_port() for _ in range(4))
    for name, text in (custom or {}).items():
        (tmp / "custom" / name).write_text(text.replace("PORT", str(port)))
    resolv = tmp / "resolv.conf"
    resolv.write_text(f"nameserver {UPSTREAM_HOST}\n")
    (tmp / "Corefile").write_text(aks_corefile(port, hp, rp, mp, resolv))
    shutil.copy(DEMO, tmp / "cluster.yaml")
    monkeypatch.setenv("FASTDNS_NO_EXTENSIONS", "1" if path == "py" else "0")
    srv = Server(tmp, ["--corefile", str(tmp / "Corefile"), "--state",
                       str(tmp / "cluster.yaml"), "--workers", "1"], port)
    monkeypatch.delenv("FASTDNS_NO_EXTENSIONS")
    srv.wait_answering()
    return srv


def stop(srv: Server) -> None:
    if srv.proc.poll() is None:  # `lameduck 5s`: the second SIGTERM cuts it short
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
    srv.stop_and_sweep()


def slow_count(srv: Server) -> int:
    with shm.ControlSegment.attach(srv.instance) as ctl:
        return readout.read_counters(ctl.counters(0))["slow"]["total"]


@pytest.mark.parametrize("path", ["c", "py"])
def test_aks_templates_answer_nxdomain_without_the_upstream(tmp_path, upstream, monkeypatch,
                                                            path):
    if path == "c" and NO_EXTENSIONS:
        pytest.skip("the Cython UDP path is not built")
    srv = start(tmp_path, path, monkeypatch)
    try:
        assert a_records(ask(KUBERNETES, port=srv.port)) == {"10.96.0.1"}
        before = len(upstream.queries)
        slow0 = slow_count(srv)
        for name in ("a.b.c.d.internal.cloudapp.net.",  # ndots:5 expansions: 4+ labels
                     "web.default.svc.cluster.local.internal.cloudapp.net.",
                     "x.reddog.microsoft.com.", "reddog.microsoft.com."):
            for rdtype in ("A", "AAAA"):
                r = ask(name, rdtype, port=srv.port)
                assert r.rcode() == dns.rcode.NXDOMAIN and not r.answer, (name, r)
        reached = [n.lower() for _p, n, _t, _id, _src in list(upstream.queries)[before:]]
        assert not [n for n in reached if "cloudapp" in n or "reddog" in n], reached
        if path == "c":
            assert slow_count(srv) == slow0  # and in C
        # fewer than 4 labels before the zone: the template falls through to forward
        assert a_records(ask("vm1.internal.cloudapp.net.", port=srv.port, timeout=3)) == \
            {"10.240.0.4"}
        assert upstream.count("vm1.internal.cloudapp.net.") >= 1
    finally:
        stop(srv)


def test_aks_custom_override_and_server(tmp_path, upstream, monkeypatch):
    srv = start(tmp_path, "c" if not NO_EXTENSIONS else "py", monkeypatch, custom={
        "log.override": "log\n",
        "lab.server": "lab.test:PORT {\n    hosts {\n        192.0.2.77 gw.lab.test\n"
                      "    }\n}\n"})
    try:
        assert a_records(ask("gw.lab.test.", port=srv.port)) == {"192.0.2.77"}
        ask("a.b.c.d.internal.cloudapp.net.", port=srv.port)
        deadline = time.monotonic() + 5
        line = re.compile(r'"A IN a\.b\.c\.d\.internal\.cloudapp\.net\. udp .* NXDOMAIN')
        while not line.search(srv.log()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert line.search(srv.log()), srv.log()[-2000:]  # the override's log sees it
    finally:
        stop(srv)
