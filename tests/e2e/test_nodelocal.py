"""NodeLocal DNSCache mode: its Corefile, unchanged but for addresses, under `fastdns serve`.

Two real instances: a cluster instance (kubernetes plugin, demo cluster) on
127.0.0.1, and the node-local instance running
``tests/corefiles/nodelocaldns.Corefile`` with its listen addresses
(169.254.20.10, 10.96.0.10) moved to 127.0.0.10 / 127.0.0.11, a free port
for 53, ``forward . 10.96.0.11 { force_tcp }`` pointed at the cluster
instance, and ``forward . /etc/resolv.conf`` at a test resolv.conf whose
nameserver is a loopback test upstream (never the host's resolver).
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import dns.rcode
import dns.rdatatype
import pytest

from fastdns.codec import NO_EXTENSIONS
from fastdns.ipc import readout, shm
from tests.helpers import DEMO, KUBERNETES, Server, a_records, ask, corefile_for, free_port
from tests.upstreams import UpstreamThread

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NODELOCAL = ROOT / "tests" / "corefiles" / "nodelocaldns.Corefile"
LOCAL, KUBE_DNS, RESOLVER = "127.0.0.10", "127.0.0.11", "127.0.0.12"


def _free_tcp(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def nodelocal_corefile(port: int, cluster_port: int, resolv: Path) -> str:
    text = NODELOCAL.read_text()
    text = text.replace("169.254.20.10", LOCAL).replace("10.96.0.10", KUBE_DNS)
    text = text.replace("10.96.0.11", f"127.0.0.1:{cluster_port}")
    text = text.replace("/etc/resolv.conf", str(resolv))
    text = text.replace(":53 {", f":{port} {{")
    text = text.replace("prometheus :9253", f"prometheus {LOCAL}:{_free_tcp(LOCAL)}")
    return text.replace(f"{LOCAL}:8080", f"{LOCAL}:{_free_tcp(LOCAL)}")


@pytest.fixture(scope="module")
def nodelocal(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nodelocal")
    th = UpstreamThread()
    try:
        # resolv.conf names no port: the outside upstream must sit on 53
        outside = th.start({"www.example.test.": [("A", "192.0.2.1")]}, host=RESOLVER, port=53)
    except OSError as e:
        th.close()
        pytest.skip(f"cannot bind {RESOLVER}:53 for the resolv.conf upstream: {e}")
    (tmp / "resolv.conf").write_text(f"nameserver {RESOLVER}\n")
    cport = free_port(v6=False)
    (tmp / "cluster").mkdir()
    (tmp / "cluster" / "Corefile").write_text(corefile_for(cport, v6=False))
    cluster = Server(tmp / "cluster", ["--corefile", str(tmp / "cluster" / "Corefile"),
                                       "--state", str(DEMO), "--workers", "1"], cport)
    port = free_port(v6=False)
    (tmp / "node").mkdir()
    (tmp / "node" / "Corefile").write_text(nodelocal_corefile(port, cport, tmp / "resolv.conf"))
    node = None
    try:
        cluster.wait_answering()
        node = Server(tmp / "node", ["--corefile", str(tmp / "node" / "Corefile"),
                                     "--workers", "1"], port)
        node.wait_answering(where=LOCAL)
        yield node, cluster, outside
    finally:
        for srv in (node, cluster):
            if srv is None:
                continue
            srv.stop_and_sweep(signal.SIGTERM)
        th.close()


@pytest.mark.parametrize("where", [LOCAL, KUBE_DNS])
def test_cluster_names_through_node_cache(nodelocal, where):
    node, _, _ = nodelocal
    r = ask(KUBERNETES, port=node.port, where=where)
    assert r.rcode() == dns.rcode.NOERROR
    assert a_records(r) == {"10.96.0.1"}
    nx = ask("nope.default.svc.cluster.local.", port=node.port, where=where)
    assert nx.rcode() == dns.rcode.NXDOMAIN
    assert nx.authority[0].rdtype == dns.rdatatype.SOA
    ptr = ask("1.0.96.10.in-addr.arpa.", "PTR", port=node.port, where=where)
    assert [str(rr.target) for rr in ptr.answer[0]] == [KUBERNETES]


def test_outside_names_through_resolv_conf(nodelocal):
    node, _, outside = nodelocal
    r = ask("www.example.test.", port=node.port, where=LOCAL)
    assert a_records(r) == {"192.0.2.1"}
    assert outside.count("www.example.test.") >= 1


def test_cluster_forward_uses_tcp_and_cache_hits_fast_path(nodelocal):
    node, cluster, _ = nodelocal
    name = "nginx.default.svc.cluster.local."
    first = ask(name, port=node.port, where=LOCAL)
    assert first.rcode() == dns.rcode.NOERROR and a_records(first)
    with shm.ControlSegment.attach(cluster.instance) as ctl:
        c = readout.read_counters(ctl.counters(0))
    tcp_queries = sum(v for (proto, _f, _t), v in c["queries"].items() if proto == "tcp")
    assert tcp_queries >= 1  # force_tcp
    # the C table's hits (the Python cache's on the pure-Python build, exported every 0.5 s)
    which = "hits" if NO_EXTENSIONS else "c_hits"
    with shm.ControlSegment.attach(node.instance) as ctl:
        time.sleep(0.6 if NO_EXTENSIONS else 0)
        before = readout.read_counters(ctl.counters(0))["cache"][which]["success"]
        again = ask(name, port=node.port, where=KUBE_DNS)
        assert a_records(again) == a_records(first)
        time.sleep(0.6 if NO_EXTENSIONS else 0)
        after = readout.read_counters(ctl.counters(0))["cache"][which]["success"]
    assert after == before + 1
