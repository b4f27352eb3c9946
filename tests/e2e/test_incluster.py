"""fastdns run as CoreDNS is in a pod: kubeadm's Corefile, the API found in-cluster.

Nothing here tells fastdns where the API is: no --kubeconfig, no --state, a
Corefile without ``kubeconfig`` or ``endpoint``. What it gets is what a pod
gets (``fastdns.testing.serviceaccount``): the ``KUBERNETES_SERVICE_*``
environment and, in a private mount namespace, the service-account
directory at ``/var/run/secrets/kubernetes.io/serviceaccount``, read by the
official client's ``load_incluster_config``. The API is the fake API server
over HTTPS (a throwaway CA, ``fastdns.testing.pki``) with a bearer token.

The network, all of it made by this module (``fastdns.testing.netns``):

    host netns                 pod netns (fastdns)          upstream netns
    fake API   10.213.R.1 ==== 10.213.R.2 :53 :8080 :8181
                               10.214.R.1 ================= 10.214.R.2 :53 stub

fastdns binds kubeadm's ``.:53`` inside the pod namespace, so the host's port
53 is never touched; ``ip netns exec`` mounts ``/etc/netns/POD/resolv.conf``
(``nameserver 10.214.R.2``) over ``/etc/resolv.conf``, so ``forward .
/etc/resolv.conf`` and the ``loop`` plugin's probe go to the stub (its own
namespace, since fastdns holds the pod's port 53), which answers the probe
NXDOMAIN.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.rcode
import pytest

from fastdns.testing import netns, serviceaccount
from fastdns.testing.fakeapi.server import FakeApiServer
from fastdns.testing.pki import PKI, make_pki
from fastdns.testing.upstream import TestUpstream
from tests.helpers import ROOT, a_records, ask, http_get

KUBEADM = ROOT / "tests" / "corefiles" / "kubeadm.Corefile"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.coredns-token-1"
KUBERNETES_IP = "10.97.0.1"  # not the demo state's 10.96.0.1: an answer with it came from the API
FORBIDDEN = ('services is forbidden: User "system:serviceaccount:kube-system:coredns" '
             'cannot list resource "services" in API group "" at the cluster scope')


def _skip_reason() -> str | None:
    return netns.missing() or serviceaccount.launch_unavailable()


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))]


# -- the network and the stub upstream (module scope) -------------------------


def _free_octet() -> int:
    """R such that neither 10.213.R.0/24 nor 10.214.R.0/24 is routed on the host."""
    routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True,
                            check=True).stdout
    taken = set()
    for word in routes.split():
        with contextlib.suppress(ValueError):
            taken.add(ipaddress.ip_network(word, strict=False))
    for r in random.sample(range(16, 250), 60):
        nets = [ipaddress.ip_network(f"10.{b}.{r}.0/24") for b in (213, 214)]
        if not any(n.overlaps(t) for n in nets for t in taken):
            return r
    raise RuntimeError("no free 10.213.R.0/24 and 10.214.R.0/24 on this host")


@dataclass
class Net:
    pod: netns.Netns
    up: netns.Netns
    api_host: str  # host side of the host<->pod veth
    dns_host: str  # the pod's address
    stub: TestUpstream
    pki: PKI


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    r = _free_octet()
    api_host, dns_host = f"10.213.{r}.1", f"10.213.{r}.2"
    stub_host = f"10.214.{r}.2"
    made: list[netns.Netns] = []
    loop = asyncio.new_event_loop()
    stub = TestUpstream({"www.example.test.": [("A", "192.0.2.80")]}, host=stub_host, port=53)
    started = False
    try:
        pod = netns.Netns.create(resolv_conf=f"nameserver {stub_host}\n")
        made.append(pod)
        up = netns.Netns.create()
        made.append(up)
        netns.veth(None, pod, f"{api_host}/24", f"{dns_host}/24")
        netns.veth(pod, up, f"10.214.{r}.1/24", f"{stub_host}/24")
        # the stub's loop runs in the upstream namespace: its sockets are made there
        up.thread(loop.run_forever, name="stub-upstream")
        asyncio.run_coroutine_threadsafe(stub.start(), loop).result(10)
        started = True
        pki = make_pki(tmp_path_factory.mktemp("pki"), ips=(api_host,),
                       dns_names=("kubernetes.default.svc", "kubernetes.default.svc.cluster.local"))
        yield Net(pod, up, api_host, dns_host, stub, pki)
    finally:
        if started:
            asyncio.run_coroutine_threadsafe(stub.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        for ns in reversed(made):
            ns.delete()
        deadline = time.monotonic() + 5
        while loop.is_running() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not loop.is_running():
            loop.close()


def _cluster_state(api: FakeApiServer) -> None:
    """A cluster's own objects: the two namespaces, `kubernetes` and `kube-dns`."""
    for ns in ("default", "kube-system"):
        api.create("Namespace", {"metadata": {"name": ns}})
    api.create("Service", _service("kubernetes", "default", KUBERNETES_IP,
                                   [{"name": "https", "port": 443, "protocol": "TCP"}]))
    api.create("Service", _service("kube-dns", "kube-system", "10.97.0.10",
                                   [{"name": "dns", "port": 53, "protocol": "UDP"}]))


def _service(name: str, namespace: str, ip: str, ports: list | None = None) -> dict:
    return {"metadata": {"name": name, "namespace": namespace},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                     "ports": ports or [{"name": "http", "port": 80, "protocol": "TCP"}]}}


@pytest.fixture
def api(net):
    """The fake API on the host side of the veth: HTTPS, bearer token TOKEN."""
    with FakeApiServer(host=net.api_host, tls=(net.pki.server_cert, net.pki.server_key),
                       token=TOKEN, bookmark_interval=5.0) as server:
        _cluster_state(server)
        yield server


# -- fastdns in the pod -------------------------------------------------------


class Pod:
    """`fastdns serve ARGS` started as in a pod (serviceaccount.launch_in_pod)."""

    def __init__(self, net: Net, api: FakeApiServer, sa: serviceaccount.ServiceAccountDir,
                 args: list[str], log_path: Path) -> None:
        self.net = net
        self.log_path = log_path
        env = serviceaccount.pod_environment(net.api_host, api.port)
        env["PYTHONPATH"] = str(ROOT)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = serviceaccount.launch_in_pod(
            [sys.executable, "-m", "fastdns", "serve", *args], sa, env,
            netns=net.pod.name, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ask(self, name: str, rdtype: str = "A", timeout: float = 0.5):
        return ask(name, rdtype, port=53, where=self.net.dns_host, timeout=timeout)

    def http(self, port: int, path: str) -> int:
        return http_get(f"http://{self.net.dns_host}:{port}{path}", timeout=1.0)[0]

    def wait_answering(self, name: str, timeout: float = 30.0) -> set[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"fastdns exited {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(dns.exception.Timeout, OSError):
                got = a_records(self.ask(name, timeout=0.3))
                if got:
                    return got
            time.sleep(0.05)
        raise AssertionError(f"{name} not answered after {timeout}s:\n{self.log()}")

    def wait_ready(self, want: int, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        got = 0
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            got = self.http(8181, "/ready")
            if got == want:
                return got
            time.sleep(0.05)
        return got

    def stop(self) -> int:
        """SIGTERM, and a second one to cut kubeadm's 5 s lameduck short."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                time.sleep(0.2)
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(10)
        finally:
            self._log.close()


@pytest.fixture
def pods(tmp_path):
    started: list[Pod] = []

    def start(net: Net, api: FakeApiServer, sa: serviceaccount.ServiceAccountDir,
              args: list[str]) -> Pod:
        pod = Pod(net, api, sa, args, tmp_path / f"fastdns-{len(started)}.log")
        started.append(pod)
        return pod

    yield start
    for pod in started:
        pod.stop()


def _sa(tmp_path: Path, net: Net, token: str = TOKEN) -> serviceaccount.ServiceAccountDir:
    return serviceaccount.write_service_account(tmp_path / "serviceaccount", token,
                                                net.pki.ca_cert)


def _time_to_answer(pod: Pod, api: FakeApiServer, name: str, ip: str,
                    timeout: float = 10.0) -> float:
    """Create Service NAME (ClusterIP ip) and return the seconds until fastdns answers it."""
    qname = f"{name}.default.svc.cluster.local."
    assert pod.ask(qname).rcode() == dns.rcode.NXDOMAIN
    api.create("Service", _service(name, "default", ip))
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with contextlib.suppress(dns.exception.Timeout):
            if a_records(pod.ask(qname, timeout=0.2)) == {ip}:
                return time.monotonic() - t0
        time.sleep(0.01)
    raise AssertionError(f"{qname} not answered {timeout}s after its creation:\n{pod.log()}")


def _no_traceback(pod: Pod) -> None:
    assert "Traceback" not in pod.log(), pod.log()


def _serves_like_a_pod(pod: Pod, api: FakeApiServer, name: str, ip: str) -> float:
    """The checks a and b share; returns the seconds a new Service took to answer."""
    assert pod.wait_answering("kubernetes.default.svc.cluster.local.") == {KUBERNETES_IP}
    assert pod.wait_ready(200) == 200, pod.log()
    assert pod.http(8080, "/health") == 200
    took = _time_to_answer(pod, api, name, ip)
    print(f"\n{name}: answered {took * 1000:.0f} ms after its creation")
    assert took < 2.0, pod.log()
    # through forward . /etc/resolv.conf: the pod namespace's resolv.conf, the stub
    assert a_records(pod.ask("www.example.test.")) == {"192.0.2.80"}
    # the sync came over HTTPS with the service account's token, from the pod's env
    assert api.requests("/api/v1/services", watch=False) >= 1
    _no_traceback(pod)
    return took


# -- a, b: kubeadm's Corefile as it is -----------------------------------------


def test_kubeadm_corefile_in_a_pod(net, api, pods, tmp_path):
    pod = pods(net, api, _sa(tmp_path, net), ["--corefile", str(KUBEADM), "--workers", "2"])
    _serves_like_a_pod(pod, api, "made-after-start", "10.97.1.1")
    assert pod.stop() == 0
    _no_traceback(pod)


def test_coredns_command_line_appended_to_the_entrypoint(net, api, pods, tmp_path):
    """The Dockerfile's ENTRYPOINT (`fastdns serve --corefile /etc/coredns/Corefile`)
    followed by kubeadm's Deployment args (`-conf FILE`): -conf names the file."""
    pod = pods(net, api, _sa(tmp_path, net),
               ["--corefile", "/etc/coredns/Corefile", "-conf", str(KUBEADM)])
    _serves_like_a_pod(pod, api, "made-after-start-conf", "10.97.1.2")


# -- c: the projected token rotates -------------------------------------------


def test_rotated_token_is_used_at_once(net, api, pods, tmp_path):
    sa = _sa(tmp_path, net)
    pod = pods(net, api, sa, ["--corefile", str(KUBEADM), "--workers", "1"])
    assert pod.wait_answering("kubernetes.default.svc.cluster.local.") == {KUBERNETES_IP}
    assert pod.wait_ready(200) == 200, pod.log()
    # The kubelet writes a new token; the old one is refused from now on. The
    # watches fastdns has open stay open (the apiserver authenticates a request
    # once), so end them, as their timeoutSeconds or an apiserver rollout
    # does: every reconnect must then carry the new token.
    new = api.rotate_token("eyJhbGciOiJSUzI1NiJ9.coredns-token-2")
    sa.update(token=new)
    api.end_watches()
    took = _time_to_answer(pod, api, "after-rotation", "10.97.2.1")
    print(f"\nafter-rotation: answered {took * 1000:.0f} ms after its creation")
    assert took < 3.0, pod.log()  # the client's own cache would have taken up to 60 s
    assert "service account token changed" in pod.log()
    assert pod.http(8181, "/ready") == 200
    _no_traceback(pod)


# -- d: 401 and 403 keep it running, unready, one line per retry ---------------


def _lines(pod: Pod, status: str) -> list[str]:
    return [line for line in pod.log().splitlines()
            if "WARNING" in line and " services" in line and status in line]


def test_refused_token_then_forbidden_services(net, api, pods, tmp_path):
    """A stale token (401), then a token whose account lacks the ClusterRole for
    Services (403): fastdns keeps retrying, /ready 503, one log line per retry;
    once the fault is fixed it syncs and /ready turns 200."""
    api.forbid("services")
    sa = _sa(tmp_path, net, token="a-token-the-apiserver-does-not-know")
    pod = pods(net, api, sa, ["--corefile", str(KUBEADM), "--workers", "1"])

    def refused_lists() -> int:
        return api.requests("/api/v1/services", watch=False)

    # 401: every try of services gets its own line, with the status
    assert pod.wait_ready(503) == 503, pod.log()
    deadline = time.monotonic() + 10
    while len(_lines(pod, "HTTP 401")) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = _lines(pod, "HTTP 401")
    assert len(lines) >= 3, pod.log()
    assert all("failed to list services: HTTP 401 Unauthorized" in x for x in lines), lines
    assert len(lines) <= refused_lists() <= len(lines) + 1, (refused_lists(), pod.log())
    assert pod.http(8181, "/ready") == 503
    assert pod.proc.poll() is None

    # the right token in the file: it is read on the next 401; now RBAC refuses
    sa.update(token=TOKEN)
    deadline = time.monotonic() + 10
    while len(_lines(pod, "HTTP 403")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = _lines(pod, "HTTP 403")
    assert len(lines) >= 2, pod.log()
    assert all(f"failed to list services: HTTP 403 Forbidden: {FORBIDDEN}" in x
               for x in lines), lines
    refused = len(lines) + len(_lines(pod, "HTTP 401"))
    assert refused <= refused_lists() <= refused + 2, (refused_lists(), pod.log())
    assert pod.http(8181, "/ready") == 503
    # a zone miss is SERVFAIL until the first sync, never a false NXDOMAIN
    assert pod.ask("nothing.default.svc.cluster.local.", timeout=1.0).rcode() == \
        dns.rcode.SERVFAIL

    # the ClusterRole is granted: the next retry syncs
    api.allow("services")
    assert pod.wait_ready(200, timeout=40) == 200, pod.log()
    assert pod.wait_answering("kubernetes.default.svc.cluster.local.") == {KUBERNETES_IP}
    assert pod.proc.poll() is None
    _no_traceback(pod)


# -- e: no API anywhere --------------------------------------------------------


def test_no_source_outside_a_pod_is_one_clear_line(net, tmp_path):
    """No kubeconfig/endpoint in the Corefile, no --kubeconfig, no pod environment,
    no service-account files: exit 1 with one line naming the three ways. Run in
    the pod namespace, so that a wrong start could not take the host's port 53."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env["PYTHONPATH"] = str(ROOT)
    if os.path.exists(serviceaccount.SA_MOUNT + "/token"):
        pytest.skip("this host is a pod: it has a service-account token")
    done = net.pod.run([sys.executable, "-m", "fastdns", "serve", "--corefile", str(KUBEADM)],
                       timeout=30, env=env, cwd=ROOT)
    out = (done.stdout + done.stderr).strip()
    assert done.returncode == 1, out
    assert "Traceback" not in out
    lines = out.splitlines()
    assert len(lines) == 1, out
    assert re.search(r"kubeconfig", lines[0]) and "endpoint" in lines[0], out
    assert "KUBERNETES_SERVICE_HOST" in lines[0] or "in-cluster" in lines[0], out


# -- the helpers themselves ------------------------------------------------------


def test_pod_launch_gives_what_load_incluster_config_reads(net, api, tmp_path):
    """The official client, unpatched, in the launched process: it finds host,
    port, token and CA where a pod has them, and lists over HTTPS."""
    sa = _sa(tmp_path, net)
    code = ("from kubernetes import client, config\n"
            "config.load_incluster_config()\n"
            "c = client.Configuration.get_default_copy()\n"
            "print(c.host, c.ssl_ca_cert)\n"
            "ns = client.CoreV1Api().list_namespace(_request_timeout=5)\n"
            "print(' '.join(n.metadata.name for n in ns.items))\n"
            "print(open('/var/run/secrets/kubernetes.io/serviceaccount/namespace').read())\n")
    env = serviceaccount.pod_environment(net.api_host, api.port)
    env["PYTHONPATH"] = str(ROOT)
    made = not os.path.exists(serviceaccount.SA_MOUNT)
    proc = serviceaccount.launch_in_pod([sys.executable, "-c", code], sa, env,
                                        netns=net.pod.name, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert out.splitlines() == [
        f"https://{net.api_host}:{api.port} {serviceaccount.SA_MOUNT}/ca.crt",
        "default kube-system", "kube-system"]
    # the host's file system is as it was: the mount point made for it is gone
    assert os.path.exists(serviceaccount.SA_MOUNT) is not made
