"""The CoreDNS walkthrough end to end: a pod's glibc resolving through fastdns on kube-dns's IP.

The seed's walkthrough (``kubectl run nginx``, ``kubectl run nginx1``, expose
both, then ``getent hosts nginx1`` inside a pod) with nothing simulated on
the client side: glibc's stub resolver, ``dig`` and dnspython read a pod's
``/etc/resolv.conf`` (the one kubelet writes for ``dnsPolicy: ClusterFirst``:
``search <ns>.svc.cluster.local svc.cluster.local cluster.local``,
``nameserver <kube-dns ClusterIP>``, ``options ndots:5``) and walk its search
list themselves.

Three network namespaces, all made here (``fastdns.testing.netns``)::

    pod 10.244.0.5/24 (the nginx pod)  --veth--  node: 10.96.0.10/32 (kube-dns)
                                                 fastdns serve, kubeadm Corefile
                                       node 10.250.0.1/30 --veth-- upstream 10.250.0.2/30
                                                                   TestUpstream on :53

fastdns runs kubeadm's Corefile byte for byte (``tests/corefiles/kubeadm.Corefile``):
``.:53`` and ``health :8080``, ``ready :8181``, ``prometheus :9153`` bind
inside the node namespace, and ``forward . /etc/resolv.conf`` reads the node's
own resolv.conf (``/etc/netns/NODE/resolv.conf``: the upstream namespace's
stub), so nothing reaches the host's resolver. The state is
``tests/data/kind_cluster.yaml``, a kind cluster as ``kubectl get -o yaml``
prints it; every expected address is read from that file.

In a cluster kube-proxy DNATs the ClusterIP to a CoreDNS pod and conntrack
rewrites the reply's source back. Here the node holds the ClusterIP itself,
and the route to the pod subnet names it as preferred source (``src``).
A query to another node address must still get its reply from that address,
not from the route's source, which glibc drops as coming from a server it did
not ask (glibc ``resolv/res_send.c``, ``res_ourserver_p``): fastdns answers
from each query's destination, as CoreDNS does (miekg/dns ``udp.go``
``correctSource``; ``fastdns/server/udpsource.py``), which
``test_reply_from_asked_address`` holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fastdns.ipc import shm
from fastdns.testing import netns
from fastdns.testing.upstream import TestUpstream

ROOT = Path(__file__).resolve().parents[2]
COREFILE = ROOT / "tests" / "corefiles" / "kubeadm.Corefile"
STATE = ROOT / "tests" / "data" / "kind_cluster.yaml"
ZONE = "cluster.local"

POD_CIDR = "10.244.0.0/24"  # kind's node range
SERVICE_CIDR = "10.96.0.0/12"  # kind's (and kubeadm's) default
NODE_UP, UPSTREAM_IP = "10.250.0.1", "10.250.0.2"  # the node's uplink, a /30 of this test's
OTHER_NODE_IP = "10.97.0.53"  # a second node address (not the route's src) in SERVICE_CIDR
EXTERNAL = ("example.com.", "192.0.2.7")  # the upstream's one name (RFC 5737 address)

# What kubelet writes into a ClusterFirst pod's resolv.conf in namespace
# default (pkg/kubelet/network/dns/dns.go: search list, ndots:5).
POD_RESOLV_CONF = ("search default.svc.cluster.local svc.cluster.local cluster.local\n"
                   "nameserver {dns}\n"
                   "options ndots:5\n")
SEARCH = ("default.svc.cluster.local", "svc.cluster.local", "cluster.local")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0  # kubeadm's `health { lameduck 5s }` delays the exit by 5 s

_why_not = netns.missing() or (None if shutil.which("getent") else "`getent` (glibc) is missing")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_why_not is not None, reason=_why_not or "")]


# -- the cluster, from the state file -----------------------------------------

def _state_items() -> list[dict]:
    return yaml.safe_load(STATE.read_text())["items"]


def cluster_ip(name: str, namespace: str) -> str:
    for item in _state_items():
        meta = item["metadata"]
        if item["kind"] == "Service" and (meta["name"], meta["namespace"]) == (name, namespace):
            return item["spec"]["clusterIP"]
    raise KeyError(f"{namespace}/{name}")


def pod_ip(name: str, namespace: str) -> str:
    for item in _state_items():
        meta = item["metadata"]
        if item["kind"] == "Pod" and (meta["name"], meta["namespace"]) == (name, namespace):
            return item["status"]["podIP"]
    raise KeyError(f"{namespace}/{name}")


KUBE_DNS = cluster_ip("kube-dns", "kube-system")
POD_IP = pod_ip("nginx", "default")  # the walkthrough runs in the nginx pod


# -- the fixture ---------------------------------------------------------------

@dataclass
class Walkthrough:
    pod: netns.Netns
    node: netns.Netns
    upstream: TestUpstream
    serve: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def getent(self, *args: str) -> subprocess.CompletedProcess:
        return self.pod.run(["getent", *args], timeout=30)

    def upstream_saw(self) -> list[tuple[str, str]]:
        """(qname, qtype) of every query the upstream got, in order."""
        return [(n.lower(), dns.rdatatype.to_text(t)) for _p, n, t, _i, _s
                in list(self.upstream.queries)]

    def metrics(self) -> dict[tuple[str, str], float]:
        """fastdns's request counters by type and responses by rcode, scraped
        from ``prometheus :9153`` inside the node namespace."""
        with self.node.entered():
            conn = http.client.HTTPConnection(KUBE_DNS, 9153, timeout=5)
            try:
                conn.request("GET", "/metrics")
                text = conn.getresponse().read().decode()
            finally:
                conn.close()
        out: dict[tuple[str, str], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "coredns_dns_requests_total":
                    key = ("type", s.labels["type"])
                elif s.name == "coredns_dns_responses_total":
                    key = ("rcode", s.labels["rcode"])
                else:
                    continue
                out[key] = out.get(key, 0.0) + s.value
        return out

    def metrics_delta(self, before: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
        """What the counters moved since ``before``, once every query counted has
        its response counted too (a worker counts the response as it sends it,
        so the client may have its answer a moment earlier)."""
        deadline = time.monotonic() + 2.0
        while True:
            after = self.metrics()
            delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
            asked = sum(v for (kind, _), v in delta.items() if kind == "type")
            answered = sum(v for (kind, _), v in delta.items() if kind == "rcode")
            if asked == answered or time.monotonic() > deadline:
                return {k: v for k, v in delta.items() if v}
            time.sleep(0.02)


def _http_status(ns: netns.Netns, host: str, port: int, path: str) -> int:
    """The status of GET http://HOST:PORT/PATH from inside ``ns``; 0 if no connection."""
    with ns.entered():
        conn = http.client.HTTPConnection(host, port, timeout=1)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        except OSError:
            return 0
        finally:
            conn.close()


def _answers(ns: netns.Netns, name: str, where: str) -> bool:
    """Whether ``where`` answers ``name`` A with records, asked from inside ``ns``."""
    query = dns.message.make_query(name, "A")
    with ns.entered(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        try:
            s.sendto(query.to_wire(), (where, 53))
            data, _src = s.recvfrom(65535)
        except OSError:
            return False
    resp = dns.message.from_wire(data)
    return resp.id == query.id and resp.rcode() == dns.rcode.NOERROR and bool(resp.answer)


def _wait_serving(w: Walkthrough) -> None:
    """Until /ready says 200 (as kubelet's readinessProbe asks it, from the node)
    and the pod gets an answer on kube-dns's IP."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if w.serve.poll() is not None:
            raise AssertionError(f"fastdns exited {w.serve.returncode}:\n{w.log()}")
        if (_http_status(w.node, KUBE_DNS, 8181, "/ready") == 200
                and _answers(w.pod, f"kubernetes.default.svc.{ZONE}.", KUBE_DNS)):
            return
        time.sleep(0.05)
    raise AssertionError(f"fastdns not serving after {START_TIMEOUT}s:\n{w.log()}")


class _UpstreamLoop:
    """A TestUpstream whose event loop thread (so its sockets) lives in ``ns``."""

    def __init__(self, ns: netns.Netns, records: dict) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = ns.thread(self.loop.run_forever, name="walkthrough-upstream")
        self.up = TestUpstream(records, zone="example.com.", host=UPSTREAM_IP, port=53)
        asyncio.run_coroutine_threadsafe(self.up.start(), self.loop).result(10)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.up.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _stop_serve(proc: subprocess.Popen) -> int:
    """SIGTERM fastdns's process group (lameduck, then exit), SIGKILL if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("walkthrough")
    tag = netns.unique_name("")
    made: list[netns.Netns] = []
    upstream = proc = log = None
    problems: list[str] = []
    try:
        pod = netns.Netns.create(f"fdns-t-{tag}-pod",
                                 resolv_conf=POD_RESOLV_CONF.format(dns=KUBE_DNS))
        made.append(pod)
        node = netns.Netns.create(f"fdns-t-{tag}-node", resolv_conf=f"nameserver {UPSTREAM_IP}\n")
        made.append(node)
        up_ns = netns.Netns.create(f"fdns-t-{tag}-up")
        made.append(up_ns)

        node_dev, pod_dev = netns.veth(node, pod, f"{KUBE_DNS}/32", f"{POD_IP}/24")
        node.add_route(POD_CIDR, dev=node_dev, src=KUBE_DNS)
        node.add_addr("lo", f"{OTHER_NODE_IP}/32")
        pod.add_route(SERVICE_CIDR, dev=pod_dev)
        netns.veth(node, up_ns, f"{NODE_UP}/30", f"{UPSTREAM_IP}/30")

        upstream = _UpstreamLoop(up_ns, {EXTERNAL[0]: [("A", EXTERNAL[1])]})
        log_path = tmp / "serve.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed in the finally below
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        proc = node.exec([sys.executable, "-m", "fastdns", "serve", "--corefile", str(COREFILE),
                          "--state", str(STATE), "--workers", "2"],
                         cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
        w = Walkthrough(pod, node, upstream.up, proc, log_path)
        _wait_serving(w)
        yield w
    finally:
        instance = None
        if proc is not None:
            rc = _stop_serve(proc)
            text = (tmp / "serve.log").read_text(errors="replace")
            m = re.search(r"shm instance (\w+)", text)
            instance = m.group(1) if m else None
            if rc != 0:
                problems.append(f"fastdns exited {rc} after SIGTERM:\n{text}")
        if log is not None:
            log.close()
        if instance is not None:
            left = shm.list_segments(instance)
            if left:
                shm.sweep(instance)
                problems.append(f"fastdns left shared memory behind: {left}")
        if upstream is not None:
            upstream.close()
        for ns in reversed(made):
            try:
                ns.delete()
            except netns.NetnsError as e:
                problems.append(str(e))
            if ns.etc_dir.exists() or ns.path.exists():
                problems.append(f"{ns.name} not removed")
        assert not problems, "\n".join(problems)


# -- names, through glibc -------------------------------------------------------

def _hosts_line(out: str) -> list[str]:
    """`getent hosts` prints one line: address, canonical name, aliases."""
    lines = out.splitlines()
    assert len(lines) == 1, out
    return lines[0].split()


@pytest.mark.parametrize(("query", "service", "namespace"), [
    ("nginx1", "nginx1", "default"),                    # default.svc.cluster.local, 1st suffix
    ("nginx1.default", "nginx1", "default"),            # svc.cluster.local, 2nd suffix
    ("nginx", "nginx", "default"),
    ("kubernetes", "kubernetes", "default"),
    ("kube-dns.kube-system", "kube-dns", "kube-system"),
    ("nginx1.default.svc.cluster.local", "nginx1", "default"),  # 4 dots < ndots: searched too
])
def test_getent_hosts(walk, query, service, namespace):
    r = walk.getent("hosts", query)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert _hosts_line(r.stdout) == [cluster_ip(service, namespace),
                                     f"{service}.{namespace}.svc.{ZONE}"]


@pytest.mark.parametrize(("query", "misses"), [
    ("nginx1", 0),                              # nginx1.default.svc.cluster.local first
    ("nginx1.default", 1),                      # after nginx1.default.default.svc.cluster.local
    ("nginx1.default.svc", 2),                  # ... and nginx1.default.svc.svc.cluster.local
    ("nginx1.default.svc.cluster.local", 3),    # 4 dots < ndots:5: every suffix, then as given
])
def test_search_walk_order(walk, query, misses):
    """glibc's walk, counted by fastdns: ``getent ahostsv4`` asks A only, so the
    NXDOMAINs fastdns sent for this lookup are exactly the suffixes tried before
    the name that answered (glibc resolv/res_query.c __res_context_search: fewer
    dots than ndots, so the search list first, in order)."""
    before = walk.metrics()
    r = walk.getent("ahostsv4", query)
    assert r.returncode == 0, r
    assert r.stdout.split()[:3] == [cluster_ip("nginx1", "default"), "STREAM",
                                    f"nginx1.default.svc.{ZONE}"], r.stdout
    delta = walk.metrics_delta(before)
    assert delta.get(("rcode", "NXDOMAIN"), 0) == misses, delta
    assert delta[("type", "A")] == misses + 1 and delta[("rcode", "NOERROR")] == 1, delta


def test_cluster_names_never_forwarded(walk):
    """The A walk for ``nginx1`` stops at its first suffix: the upstream never
    sees ``nginx1.`` A, and nothing under cluster.local reaches it at all
    (the kubernetes plugin answers the zone, NXDOMAIN included)."""
    r = walk.getent("hosts", "nginx1")
    assert r.returncode == 0, r
    saw = walk.upstream_saw()
    assert ("nginx1.", "A") not in saw, saw
    assert not [n for n, _t in saw if n.endswith(f"{ZONE}.")], saw


def _has_ipv6_address(ns: netns.Netns) -> bool:
    """An IPv6 address on an interface other than lo (a veth's link-local counts)."""
    out = ns.ip("-6", "-o", "addr", "show").stdout
    return any(line.split()[1] != "lo" for line in out.splitlines())


def test_getent_ahosts_a_and_aaaa(walk):
    """getaddrinfo(AF_UNSPEC) asks A and AAAA for the first suffix; the A answers,
    the AAAA is NODATA (NOERROR, no records), so only the IPv4 address comes back.

    getent passes AI_ADDRCONFIG, so glibc asks AAAA only when the pod has an
    IPv6 address besides loopback (glibc sysdeps/unix/sysv/linux/check_pf.c):
    the veth's link-local one, unless the kernel runs without IPv6."""
    aaaa = 1 if _has_ipv6_address(walk.pod) else 0
    before = walk.metrics()
    r = walk.getent("ahosts", "nginx")
    assert r.returncode == 0, r
    ip = cluster_ip("nginx", "default")
    assert [line.split() for line in r.stdout.splitlines()] == [
        [ip, "STREAM", f"nginx.default.svc.{ZONE}"], [ip, "DGRAM"], [ip, "RAW"]]
    delta = walk.metrics_delta(before)
    assert delta[("type", "A")] == 1 and delta.get(("type", "AAAA"), 0) == aaaa, delta
    assert delta[("rcode", "NOERROR")] == 1 + aaaa, delta
    assert delta.get(("rcode", "NXDOMAIN"), 0) == 0, delta


def test_missing_name_exit_2(walk):
    """Every suffix NXDOMAIN, then the bare name at the upstream, NXDOMAIN too:
    getent's "key not found" exit status 2."""
    r = walk.getent("hosts", "nosuchservice")
    assert (r.returncode, r.stdout) == (2, ""), r
    assert ("nosuchservice.", "A") in walk.upstream_saw()


def test_external_name_through_forward(walk):
    """``example.com`` has fewer than 5 dots, so glibc asks the three cluster
    suffixes first (NXDOMAIN from the kubernetes plugin), then the name as
    given, which fastdns forwards to the node's resolv.conf upstream."""
    host, addr = EXTERNAL
    seen_before = len(walk.upstream_saw())
    before = walk.metrics()
    r = walk.getent("hosts", host.rstrip("."))
    assert r.returncode == 0, (r, walk.log())
    assert _hosts_line(r.stdout) == [addr, host.rstrip(".")]
    forwarded = walk.upstream_saw()[seen_before:]
    assert (host, "A") in forwarded, forwarded
    assert {n for n, _t in forwarded} == {host}, forwarded
    delta = walk.metrics_delta(before)
    assert delta.get(("rcode", "NXDOMAIN"), 0) == len(SEARCH) * len(forwarded), (delta, forwarded)


def test_loop_probe_answered(walk):
    """kubeadm's ``loop`` sent its probe (HINFO for ``<random>.<random>.``)
    through forward; the upstream answered NXDOMAIN, so no loop was detected
    and fastdns still serves."""
    probes = [n for n, t in walk.upstream_saw() if t == "HINFO"]
    assert probes and all(re.fullmatch(r"\d+\.\d+\.", n) for n in probes), probes
    assert walk.serve.poll() is None, walk.log()


# -- reverse names ----------------------------------------------------------------

@pytest.mark.parametrize(("service", "namespace"), [("nginx1", "default"),
                                                    ("kube-dns", "kube-system")])
def test_reverse_cluster_ip(walk, service, namespace):
    ip = cluster_ip(service, namespace)
    r = walk.getent("hosts", ip)
    assert r.returncode == 0, r
    assert _hosts_line(r.stdout) == [ip, f"{service}.{namespace}.svc.{ZONE}"]


def test_reverse_endpoint_ip(walk):
    """A ready endpoint's address has a PTR to ``<endpoint>.<svc>.<ns>.svc.ZONE``,
    the endpoint named by its address with dashes (CoreDNS
    plugin/kubernetes/reverse.go serviceRecordForIP, endpointHostname)."""
    ip = pod_ip("nginx1", "default")
    r = walk.getent("hosts", ip)
    assert r.returncode == 0, r
    assert _hosts_line(r.stdout) == [ip, f"{ip.replace('.', '-')}.nginx1.default.svc.{ZONE}"]


def test_reverse_miss_falls_through_to_forward(walk):
    """An address no Service or endpoint has: ``fallthrough in-addr.arpa``
    hands the PTR to forward, whose upstream says NXDOMAIN."""
    r = walk.getent("hosts", "10.244.0.99")
    assert (r.returncode, r.stdout) == (2, ""), r
    assert ("99.0.244.10.in-addr.arpa.", "PTR") in walk.upstream_saw()


# -- other clients, same resolv.conf --------------------------------------------

def _dig(walk, *args: str) -> str:
    r = walk.pod.run(["dig", *args], timeout=30)
    assert r.returncode == 0, r
    return r.stdout


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig (bind9-dnsutils) is not installed")
def test_dig_search_nodata(walk):
    """dig +search takes nameserver, search list and ndots from resolv.conf; the
    AAAA of a v4-only Service is NODATA: authoritative, no answer, the zone's SOA."""
    out = _dig(walk, "+search", "nginx", "AAAA")
    assert re.search(r"status: NOERROR\b", out), out
    assert re.search(r"flags: qr aa\b", out), out
    assert "ANSWER: 0, AUTHORITY: 1," in out, out
    assert re.search(rf"^;nginx\.default\.svc\.{re.escape(ZONE)}\.\s+IN\s+AAAA$", out, re.M), out
    assert re.search(rf"^{re.escape(ZONE)}\.\s+30\s+IN\s+SOA\s+ns\.dns\.{re.escape(ZONE)}\. ",
                     out, re.M), out
    assert f"SERVER: {KUBE_DNS}#53({KUBE_DNS}) (UDP)" in out, out
    ip = cluster_ip("nginx1", "default")
    assert _dig(walk, "+search", "+short", "nginx1").split() == [ip]
    assert _dig(walk, "+search", "+short", "+tcp", "nginx1").split() == [ip]


DNSPYTHON_SCRIPT = """
import json, sys
import dns.resolver
r = dns.resolver.Resolver()  # reads /etc/resolv.conf: the pod's, bind-mounted by ip netns exec
out = {"nameservers": [str(n) for n in r.nameservers], "ndots": r.ndots,
       "search": [s.to_text(omit_final_dot=True) for s in r.search], "answers": {}}
for name in sys.argv[1:]:
    a = r.resolve(name, "A", search=True)
    out["answers"][name] = [a.qname.to_text(), sorted(rr.address for rr in a)]
print(json.dumps(out))
"""


def test_dnspython_search_walk(walk):
    """dnspython's Resolver reads the same resolv.conf; with search on, a name of
    fewer than ndots dots is tried with each suffix in order, before as given:
    ``nginx1`` is answered as nginx1.default.svc.cluster.local (the first
    suffix), ``kube-dns.kube-system`` after that one gave NXDOMAIN."""
    names = ["nginx1", "kube-dns.kube-system"]
    r = walk.pod.run([sys.executable, "-c", DNSPYTHON_SCRIPT, *names], timeout=30)
    assert r.returncode == 0, r
    got = json.loads(r.stdout)
    assert got["nameservers"] == [KUBE_DNS] and got["ndots"] == 5, got
    assert got["search"] == list(SEARCH), got
    assert got["answers"] == {
        "nginx1": [f"nginx1.default.svc.{ZONE}.", [cluster_ip("nginx1", "default")]],
        "kube-dns.kube-system": [f"kube-dns.kube-system.svc.{ZONE}.", [KUBE_DNS]],
    }


# -- the reply's source address ----------------------------------------------------

def test_reply_from_asked_address(walk):
    """A query to a node address that is not the route's ``src`` (as on a node
    or hostNetwork pod with several addresses, ``.:53`` without ``bind``)."""
    query = dns.message.make_query(f"kubernetes.default.svc.{ZONE}.", "A")
    with walk.pod.entered(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(query.to_wire(), (OTHER_NODE_IP, 53))
        data, src = s.recvfrom(65535)
    assert dns.message.from_wire(data).id == query.id
    assert src == (OTHER_NODE_IP, 53)


# -- the netns helpers themselves ---------------------------------------------------

def test_netns_helper_cleans_up():
    """``with Netns.create(...)``: resolv.conf is what ``ip netns exec`` shows as
    /etc/resolv.conf, and on exit the namespace, its /etc/netns dir and the
    processes ``exec`` started are gone."""
    text = "nameserver 10.96.0.10\noptions ndots:5\n"
    with netns.Netns.create(resolv_conf=text) as ns:
        sleeper = ns.exec(["sleep", "60"], start_new_session=True)
        assert ns.run(["cat", "/etc/resolv.conf"]).stdout == text
        links = ns.run(["ip", "-o", "link", "show"]).stdout
        assert [line.split()[1] for line in links.splitlines()] == ["lo:"]
        assert ns.path.exists() and ns.etc_dir.is_dir()
    assert sleeper.returncode == -signal.SIGTERM
    assert not ns.path.exists() and not ns.etc_dir.exists()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert ns.name not in listed.split()
