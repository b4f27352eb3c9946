"""The kubeadm default Corefile, end to end under `fastdns serve --state ...`.

Only what cannot work in a test is rewritten: the ports (53, 8080, 8181,
9153 -> free ones, health/ready/prometheus on 127.0.0.1) and
`/etc/resolv.conf` -> a test-owned resolv.conf naming a loopback upstream
(`fastdns.testing.upstream.TestUpstream` on 127.0.53.77:53, since a
resolv.conf cannot name a port). Every plugin line stays as kubeadm writes it.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import dns.flags
import dns.rcode
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastdns.codec import NO_EXTENSIONS
from fastdns.ipc import readout, shm
from fastdns.testing.upstream import TestUpstream
from tests.helpers import DEMO, KUBERNETES, Server, a_records, ask, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM_HOST = "127.0.53.77"  # any loopback address: 127/8 is all on lo


class ThreadUpstream:
    """TestUpstream in its own event loop thread."""

    def __init__(self, records, host: str, port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.up = TestUpstream(records, host=host, port=port)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> TestUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.up.start(), self.loop).result(5)
        return self.up

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.up.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def kubeadm_corefile(port: int, hp: int, rp: int, mp: int, resolv: Path) -> str:
    text = (ROOT / "corefiles" / "kubeadm.Corefile").read_text()
    for old, new in ((".:53 {", f".:{port} {{"),
                     ("health {", f"health 127.0.0.1:{hp} {{"),
                     ("    ready\n", f"    ready 127.0.0.1:{rp}\n"),
                     ("prometheus :9153", f"prometheus 127.0.0.1:{mp}"),
                     ("/etc/resolv.conf", str(resolv))):
        assert old in text, old
        text = text.replace(old, new)
    return text


def http(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def kubeadm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kubeadm")
    try:
        upstream = ThreadUpstream({"www.example.test.": [("A", "192.0.2.1")]},
                                  UPSTREAM_HOST, 53)
        up = upstream.__enter__()
    except OSError as e:
        pytest.skip(f"cannot bind the upstream on {UPSTREAM_HOST}:53: {e}")
    resolv = tmp / "resolv.conf"
    resolv.write_text(f"nameserver {UPSTREAM_HOST}\noptions ndots:5\n")
    port, hp, rp, mp = (free_port() for _ in range(4))
    (tmp / "Corefile").write_text(kubeadm_corefile(port, hp, rp, mp, resolv))
    shutil.copy(DEMO, tmp / "cluster.yaml")
    srv = Server(tmp, ["--corefile", str(tmp / "Corefile"), "--state",
                       str(tmp / "cluster.yaml"), "--workers", "2"], port)
    srv.up, srv.ports = up, {"health": hp, "ready": rp, "metrics": mp}
    try:
        srv.wait_answering()
        yield srv
    finally:
        if srv.proc.poll() is None:  # `health { lameduck 5s }`: a second SIGTERM cuts it
            srv.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
        srv.stop_and_sweep()
        upstream.__exit__(None, None, None)


def test_kubeadm_corefile_serves_cluster_names(kubeadm):
    r = ask(KUBERNETES, port=kubeadm.port)
    assert a_records(r) == {"10.96.0.1"} and r.answer[0].ttl == 30 and r.flags & dns.flags.AA
    # pods insecure: any well-formed pod name in an existing namespace
    p = ask("10-1-2-3.default.pod.cluster.local.", port=kubeadm.port)
    assert a_records(p) == {"10.1.2.3"}
    assert ask("nope.default.svc.cluster.local.", port=kubeadm.port).rcode() == \
        dns.rcode.NXDOMAIN


def test_kubeadm_corefile_forwards_and_caches(kubeadm):
    up = kubeadm.up
    r = ask("www.example.test.", port=kubeadm.port, timeout=3)
    assert a_records(r) == {"192.0.2.1"}, kubeadm.log()[-3000:]
    before = up.count("www.example.test.")
    for _ in range(5):
        assert a_records(ask("www.example.test.", port=kubeadm.port)) == {"192.0.2.1"}
    # `cache 30`: answered from the cache, the upstream asked at most once per worker
    assert up.count("www.example.test.") - before <= 1


@pytest.mark.skipif(NO_EXTENSIONS, reason="the C forwarder is the Cython build's")
def test_kubeadm_corefile_misses_are_forwarded_and_stored_by_c(kubeadm):
    """kubeadm's Corefile has `errors`, `loop` and `cache 30` (no `log`): once
    the loop probe is done its UDP misses go upstream from the C path and are
    stored in the shared cache, the same for every later ask."""
    def forwarded() -> int:
        with shm.ControlSegment.attach(kubeadm.instance) as ctl:
            return sum(readout.read_counters(ctl.counters(i))["cache"]["c_forwarded"]
                       for i in range(ctl.nworkers))

    before, deadline, i = forwarded(), time.monotonic() + 10, 0
    while forwarded() == before and time.monotonic() < deadline:  # the probe may be armed
        i += 1
        assert ask(f"c{i}.example.test.", port=kubeadm.port, timeout=3).rcode() == \
            dns.rcode.NXDOMAIN
        time.sleep(0.1)
    assert forwarded() > before, kubeadm.log()[-2000:]
    name = f"c{i}.example.test."
    asked = kubeadm.up.count(name)
    for _ in range(4):  # a denial of the cache now, in every worker
        assert ask(name, port=kubeadm.port).rcode() == dns.rcode.NXDOMAIN
    assert kubeadm.up.count(name) == asked


def test_kubeadm_corefile_reverse_fallthrough_goes_upstream(kubeadm):
    """fallthrough in-addr.arpa: a reverse name kubernetes does not know is forwarded."""
    up = kubeadm.up
    name = "9.9.9.172.in-addr.arpa."
    before = up.count(name)
    ask(name, "PTR", port=kubeadm.port, timeout=3)
    assert up.count(name) == before + 1
    known = ask("1.0.96.10.in-addr.arpa.", "PTR", port=kubeadm.port)
    assert [str(rr.target) for rr in known.answer[0]] == [KUBERNETES]


def test_kubeadm_corefile_loadbalance(kubeadm):
    firsts = {ask("web.shop.svc.cluster.local.", port=kubeadm.port).answer[0][0].address
              for _ in range(20)}
    assert firsts == {"10.244.2.20", "10.244.2.21"}


def test_kubeadm_corefile_health_ready_metrics(kubeadm):
    assert http(kubeadm.ports["health"], "/health")[0] == 200
    assert http(kubeadm.ports["ready"], "/ready")[0] == 200
    status, body = http(kubeadm.ports["metrics"], "/metrics")
    assert status == 200
    names = {f.name for f in text_string_to_metric_families(body)}
    for want in ("coredns_dns_requests", "coredns_dns_responses", "coredns_reload_failed",
                 "coredns_build_info"):
        assert want in names, sorted(names)


def test_kubeadm_corefile_loop_probe_sent_and_no_loop(kubeadm):
    """`loop`: the HINFO self-query went out through the forwarder, once; no loop."""
    hinfo = [q for q in kubeadm.up.queries if q[2] == 13]
    assert len(hinfo) == 1, list(kubeadm.up.queries)
    assert re.fullmatch(r"\d+\.\d+\.", hinfo[0][1]), hinfo
    assert kubeadm.proc.poll() is None
    assert "Loop (" not in kubeadm.log()
