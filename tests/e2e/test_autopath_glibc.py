"""autopath under glibc: one query instead of four (issue 15, plugins/autopath.py).

A pod in a network namespace the test makes, with a pod's resolv.conf
(`search default.svc.cluster.local svc.cluster.local cluster.local`,
`ndots:5`), resolves an outside name with glibc (`getent ahostsv4`)
through `fastdns serve` on the host end of its veth. The server's `log`
plugin shows every query it gets. With `autopath @kubernetes` and `pods
verified` (the pod's IP is a Pod of `default` in the state file) the first
search-path expansion gets the whole answer, CNAME first, as CoreDNS gives
it, and glibc asks nothing more; without autopath, the same run asks four
times (three NXDOMAIN expansions, then the name itself). The answer's shape
is checked with dig from the pod as well.
"""

from __future__ import annotations

import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import yaml

from fastdns.codec import NO_EXTENSIONS
from fastdns.ipc import readout, shm
from fastdns.testing import netns
from tests.e2e.test_kubeadm_corefile import ThreadUpstream
from tests.helpers import DEMO, KUBERNETES, Server, a_records, ask, free_port, scrape_metrics

pytestmark = pytest.mark.slow

_why_not = netns.missing() or (None if shutil.which("getent") and shutil.which("dig")
                               else "getent or dig is missing")
SERVER_IP, POD_IP = "10.77.0.1", "10.77.0.2"
UPSTREAM_HOST = "127.0.53.82"
NAME = "www.example.test"
POD_RESOLV = (f"nameserver {SERVER_IP}\nsearch default.svc.cluster.local svc.cluster.local "
              "cluster.local\noptions ndots:5\n")


def corefile(autopath: bool, mport: int) -> str:
    return (f".:53 {{\n    bind {SERVER_IP}\n    log\n    prometheus 127.0.0.1:{mport}\n"
            + ("    autopath @kubernetes\n" if autopath else "")
            + "    kubernetes cluster.local in-addr.arpa ip6.arpa {\n        pods verified\n"
            "        fallthrough in-addr.arpa ip6.arpa\n    }\n"
            f"    forward . {UPSTREAM_HOST}\n}}\n")


def state(tmp: Path) -> Path:
    doc = yaml.safe_load(DEMO.read_text())
    doc["items"].append({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "c"}]},
        "status": {"phase": "Running", "podIP": POD_IP, "podIPs": [{"ip": POD_IP}]}})
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def pod():
    if _why_not:
        pytest.skip(_why_not)
    try:
        th = ThreadUpstream({f"{NAME}.": [("A", "192.0.2.1")]}, UPSTREAM_HOST, 53)
        up = th.__enter__()
    except OSError as e:
        pytest.skip(f"cannot bind the upstream on {UPSTREAM_HOST}:53: {e}")
    ns = netns.Netns.create(netns.unique_name("fdns-ap-"), resolv_conf=POD_RESOLV)
    try:
        netns.veth(ns, None, f"{POD_IP}/24", f"{SERVER_IP}/24")
        ns.up = up
        yield ns
    finally:
        ns.delete()
        th.__exit__(None, None, None)


def queries_for(log: str) -> list[str]:
    """The names of the A queries for NAME (and its expansions) the server logged."""
    return re.findall(rf'"A IN ({re.escape(NAME)}\.[^ ]*) udp', log)


def slow_count(srv: Server) -> int:
    with shm.ControlSegment.attach(srv.instance) as ctl:
        return readout.read_counters(ctl.counters(0))["slow"]["total"]


def successes(mport: int) -> float:
    """coredns_autopath_success_total{server="dns://SERVER_IP:53"} (0: no series yet)."""
    want = ("coredns_autopath_success_total",
            frozenset({("server", f"dns://{SERVER_IP}:53")}))
    return scrape_metrics(mport).get(want, 0.0)


def run(tmp: Path, pod, autopath: bool) -> tuple[list[str], str, str, list[float]]:
    mport = free_port(v6=False)
    (tmp / "Corefile").write_text(corefile(autopath, mport))
    srv = Server(tmp, ["--corefile", str(tmp / "Corefile"), "--state", str(state(tmp)),
                       "--workers", "1"], 53)
    try:
        srv.wait_answering(where=SERVER_IP)
        slow0 = slow_count(srv)
        for _ in range(5):  # names autopath leaves alone stay on the C fast path
            assert a_records(ask(KUBERNETES, port=53, where=SERVER_IP)) == {"10.96.0.1"}
        if not NO_EXTENSIONS:
            assert slow_count(srv) == slow0
        time.sleep(0.7)  # and their counts exported (the worker's 0.5 s timer)
        counted = [successes(mport)]
        mark = len(srv.log())
        got = pod.run(["getent", "ahostsv4", NAME], timeout=15)
        time.sleep(0.3)  # the log line of the last answer
        asked = queries_for(srv.log()[mark:])
        dig = pod.run(["dig", f"@{SERVER_IP}", "+noall", "+answer", "+tries=1", "+time=3",
                       f"{NAME}.default.svc.cluster.local", "A"], timeout=15)
        time.sleep(0.7)
        counted.append(successes(mport))
        return asked, got.stdout, dig.stdout, counted
    finally:
        if srv.proc.poll() is None:
            srv.proc.send_signal(signal.SIGTERM)
        srv.stop_and_sweep()


def test_glibc_sends_one_query_with_autopath_and_four_without(pod, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    asked, resolved, dig, counted = run(tmp_path / "a", pod, autopath=True)
    assert "192.0.2.1" in resolved, resolved
    assert asked == [f"{NAME}.default.svc.cluster.local."], asked
    # coredns_autopath_success_total: glibc's one query and dig's, each answered
    # from a search-path try (the cluster names asked first were not autopath's)
    assert counted[1] - counted[0] == len(asked) + 1, counted
    # CoreDNS's shape: the asked name CNAMEs to the found one, then its records
    lines = [x.split() for x in dig.splitlines() if x.strip()]
    assert [(x[0], x[3], x[4]) for x in lines] == [
        (f"{NAME}.default.svc.cluster.local.", "CNAME", f"{NAME}."),
        (f"{NAME}.", "A", "192.0.2.1")], dig
    asked, resolved, _dig, counted = run(tmp_path / "b", pod, autopath=False)
    assert counted == [0.0, 0.0]  # no autopath, no series
    assert "192.0.2.1" in resolved, resolved
    assert asked == [f"{NAME}.default.svc.cluster.local.", f"{NAME}.svc.cluster.local.",
                     f"{NAME}.cluster.local.", f"{NAME}."], asked
