"""EKS's and RKE2's default Corefiles, end to end under `fastdns serve --state ...`.

Both are kubeadm's shape with small differences (tests/corefiles/eks.Corefile:
no `ttl`, no `max_concurrent`; rke2.Corefile: the chart's spacing, the
cluster zone given twice, metrics on 0.0.0.0:9153). Only what cannot work
in a test is rewritten: the port, the health/ready/metrics listeners and
/etc/resolv.conf (a test-owned one naming a loopback upstream on port 53).
"""

from __future__ import annotations

import re
import shutil
import signal
import time
import urllib.request
from pathlib import Path

import dns.flags
import dns.rcode
import pytest

from tests.e2e.test_kubeadm_corefile import ThreadUpstream
from tests.helpers import DEMO, KUBERNETES, Server, a_records, ask, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM_HOST = "127.0.53.80"
TTL = {"eks": 5, "rke2": 30}  # no `ttl`: CoreDNS's default 5


def rewritten(name: str, port: int, hp: int, rp: int, mp: int, resolv: Path) -> str:
    text = (ROOT / "corefiles" / f"{name}.Corefile").read_text()
    text = text.replace(".:53 {", f".:{port} {{")
    text = re.sub(r"health +\{", f"health 127.0.0.1:{hp} {{", text)
    text = re.sub(r"    ready *\n", f"    ready 127.0.0.1:{rp}\n", text)
    text = re.sub(r"prometheus +(0\.0\.0\.0)?:9153", f"prometheus 127.0.0.1:{mp}", text)
    text = text.replace("/etc/resolv.conf", str(resolv))
    for want in (f":{port} ", f":{hp} ", f":{rp}\n", f":{mp}", str(resolv)):
        assert want in text, (want, text)
    return text


@pytest.fixture(scope="module")
def upstream():
    try:
        th = ThreadUpstream({"www.example.test.": [("A", "192.0.2.1")]}, UPSTREAM_HOST, 53)
        up = th.__enter__()
    except OSError as e:
        pytest.skip(f"cannot bind the upstream on {UPSTREAM_HOST}:53: {e}")
    yield up
    th.__exit__(None, None, None)


@pytest.mark.parametrize("name", ["eks", "rke2"])
def test_distribution_corefile_serves(tmp_path, upstream, name):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {UPSTREAM_HOST}\n")
    port, hp, rp, mp = (free_port() for _ in range(4))
    (tmp_path / "Corefile").write_text(rewritten(name, port, hp, rp, mp, resolv))
    shutil.copy(DEMO, tmp_path / "cluster.yaml")
    srv = Server(tmp_path, ["--corefile", str(tmp_path / "Corefile"), "--state",
                            str(tmp_path / "cluster.yaml"), "--workers", "2"], port)
    try:
        srv.wait_answering()
        r = ask(KUBERNETES, port=port)
        assert a_records(r) == {"10.96.0.1"} and r.flags & dns.flags.AA
        assert r.answer[0].ttl == TTL[name]
        assert ask("nope.default.svc.cluster.local.", port=port).rcode() == dns.rcode.NXDOMAIN
        assert a_records(ask("www.example.test.", port=port, timeout=3)) == {"192.0.2.1"}
        with urllib.request.urlopen(f"http://127.0.0.1:{mp}/metrics", timeout=3) as m:
            assert b"coredns_dns_requests_total" in m.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{rp}/ready", timeout=3) as m:
            assert m.status == 200
    finally:
        if srv.proc.poll() is None:  # `lameduck 5s`: the second SIGTERM cuts it short
            srv.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
        srv.stop_and_sweep()
