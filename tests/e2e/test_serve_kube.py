"""`fastdns serve --kubeconfig`: the control process fed by list+watch of a fake API server."""

from __future__ import annotations

import os
import re
import signal
import time

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import yaml

from fastdns.ipc import shm
from fastdns.testing.fakeapi.server import FakeApiServer
from tests.helpers import (
    DEMO,
    KUBERNETES,
    Server,
    a_records,
    ask,
    corefile_for,
    free_port,
    http_get,
    service_answered_after,
    wait_for,
)

pytestmark = pytest.mark.slow


def serve_kube(tmp_path, api: FakeApiServer, corefile: str, port: int) -> Server:
    """`fastdns serve --kubeconfig` (one worker) fed by ``api``, ``corefile`` on ``port``."""
    kubeconfig = api.write_kubeconfig(str(tmp_path / "kubeconfig"))
    (tmp_path / "Corefile").write_text(corefile)
    return Server(tmp_path, ["--corefile", str(tmp_path / "Corefile"),
                             "--kubeconfig", kubeconfig, "--workers", "1"], port)


def test_serve_from_the_kubernetes_api(tmp_path):
    with FakeApiServer() as api:
        api.load(yaml.safe_load_all(DEMO.read_text()))
        port = free_port()
        srv = serve_kube(tmp_path, api, corefile_for(port), port)
        try:
            srv.wait_answering()
            assert "synced" in srv.log()
            # a watch event is served well within a second
            name = "made-later.default.svc.cluster.local."
            assert service_answered_after(api, port) < 1.0, srv.log()[-2000:]
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
        port = free_port()
        srv = serve_kube(tmp_path, api, kube_corefile(
            port, options="        startup_timeout 0.5s\n"), port)
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


# -- startup, DNS-visible changes, metrics, faults (issue 5 items 2-4) ----------


def kube_corefile(port: int, *, options: str = "", ready: int | None = None,
                  metrics: int | None = None) -> str:
    """A block like corefile_for's, with kubernetes options and HTTP plugins."""
    return (f"cluster.local:{port} in-addr.arpa:{port} ip6.arpa:{port} {{\n"
            f"    bind 127.0.0.1\n"
            f"    kubernetes cluster.local in-addr.arpa ip6.arpa {{\n"
            f"        ttl 30\n{options}"
            f"    }}\n"
            + (f"    ready 127.0.0.1:{ready}\n" if ready else "")
            + (f"    prometheus 127.0.0.1:{metrics}\n" if metrics else "")
            + "}\n")


def generation(srv: Server) -> int:
    with shm.ControlSegment.attach(srv.instance) as ctl:
        return ctl.generation


def answers(name: str, port: int) -> set[str]:
    try:
        return a_records(ask(name, port=port, timeout=0.5))
    except (dns.exception.Timeout, OSError):
        return set()


def hammer(port: int, seconds: float, expect: set[str], name: str = KUBERNETES
           ) -> tuple[int, int]:
    """Query ``name`` for ``seconds``; (answers equal to ``expect``, any other outcome)."""
    good = bad = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            if a_records(ask(name, port=port, timeout=0.5)) == expect:
                good += 1
            else:
                bad += 1
        except (dns.exception.Timeout, OSError):
            bad += 1
        time.sleep(0.005)
    return good, bad


def wait_relisted(api: FakeApiServer, before: dict[str, int], timeout: float = 15.0) -> bool:
    """Every watched kind listed again since ``before`` (from list_counts)."""
    return wait_for(lambda: all(v > before[k] for k, v in list_counts(api).items()), timeout)


LIST_PATHS = {"Namespace": "/api/v1/namespaces", "Service": "/api/v1/services",
              "EndpointSlice": "/apis/discovery.k8s.io/v1/endpointslices"}


def list_counts(api: FakeApiServer) -> dict[str, int]:
    return {k: api.requests(p, watch=False) for k, p in LIST_PATHS.items()}


def break_watches(api: FakeApiServer) -> None:
    """Drop the event history and every connection: every kind must relist (410).

    A finished Pod (outside the watched selection) first moves the shared
    resourceVersion past every watch's, so none can resume after the compaction.
    """
    api.apply("Pod", {"metadata": {"name": "done", "namespace": "default"},
                      "status": {"phase": "Succeeded"}})
    api.compact()
    api.set_down(True)
    api.set_down(False)


def test_startup_waits_then_serves_unsynced_servfail_and_not_ready(tmp_path):
    """CoreDNS startup: wait startup_timeout for the first sync, then serve anyway
    (warning), zone misses SERVFAIL with the SOA, /ready 503 until synced."""
    with FakeApiServer() as api:
        api.set_down(True)
        port, ready = free_port(), free_port()
        t0 = time.monotonic()
        srv = serve_kube(tmp_path, api, kube_corefile(
            port, options="        startup_timeout 1s\n", ready=ready), port)
        try:
            r = None
            while time.monotonic() - t0 < 30 and r is None:
                try:
                    r = ask("nothing.default.svc.cluster.local.", port=port, timeout=0.2)
                except (dns.exception.Timeout, OSError):
                    time.sleep(0.02)
            waited = time.monotonic() - t0
            assert r is not None, srv.log()
            assert r.rcode() == dns.rcode.SERVFAIL
            assert [rr.rdtype for rr in r.authority] == [dns.rdatatype.SOA]
            assert waited >= 1.0, "served before startup_timeout with the API down"
            assert "starting server with unsynced Kubernetes API" in srv.log()
            assert http_get(f"http://127.0.0.1:{ready}/ready")[0] == 503
            api.set_down(False)
            api.load(yaml.safe_load_all(DEMO.read_text()))
            srv.wait_answering()
            assert ask("nothing.default.svc.cluster.local.", port=port).rcode() \
                == dns.rcode.NXDOMAIN
            assert wait_for(lambda: http_get(f"http://127.0.0.1:{ready}/ready")[0] == 200, 5)
        finally:
            srv.stop(signal.SIGKILL)


def test_startup_with_the_api_up_serves_the_synced_image_first(tmp_path):
    """Within startup_timeout the first image workers map is the synced one:
    no SERVFAIL is ever seen for a name that exists."""
    with FakeApiServer() as api:
        api.load(yaml.safe_load_all(DEMO.read_text()))
        port = free_port()
        srv = serve_kube(tmp_path, api, kube_corefile(port), port)
        try:
            first = None
            deadline = time.monotonic() + 30
            while first is None and time.monotonic() < deadline:
                try:
                    first = ask(KUBERNETES, port=port, timeout=0.2)
                except (dns.exception.Timeout, OSError):
                    time.sleep(0.01)
            assert first is not None and a_records(first) == {"10.96.0.1"}, srv.log()
            assert "unsynced" not in srv.log()
            assert generation(srv) == 1  # nothing published before the sync
        finally:
            srv.stop(signal.SIGKILL)


def test_only_dns_visible_changes_publish_and_programming_latency(tmp_path):
    with FakeApiServer() as api:
        api.load(yaml.safe_load_all(DEMO.read_text()))
        # a headless Service without selector, its slice managed by hand
        api.create("Service", {"metadata": {"name": "manual", "namespace": "shop"},
                               "spec": {"clusterIP": "None", "clusterIPs": ["None"],
                                        "ports": [{"name": "http", "port": 80}]}})
        port, metrics = free_port(), free_port()
        srv = serve_kube(tmp_path, api, kube_corefile(
            port, options="        pods verified\n", metrics=metrics), port)
        try:
            srv.wait_answering()
            pod = "10-244-1-10.default.pod.cluster.local."
            assert answers(pod, port) == {"10.244.1.10"}
            assert api.requests("/api/v1/pods", watch=True) >= 1  # pods verified: watched
            gen = generation(srv)
            # a Pod status change that moves no IP: delivered, compiled, not published
            nginx = api.get("Pod", "default", "nginx")
            nginx["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
            nginx["status"]["phase"] = "Pending"
            api.update("Pod", nginx)
            time.sleep(0.5)
            assert generation(srv) == gen
            # an EndpointSlice change in fields DNS ignores: nothing either
            sl = api.get("EndpointSlice", "shop", "web-4tq9n")
            sl["endpoints"][0]["nodeName"] = "node-9"
            sl["endpoints"][0]["zone"] = "z1"
            api.update("EndpointSlice", sl)
            time.sleep(0.5)
            assert generation(srv) == gen
            # a relist that returns the same objects publishes nothing
            before = list_counts(api)
            break_watches(api)
            assert wait_relisted(api, before), srv.log()[-2000:]
            time.sleep(0.5)
            assert generation(srv) == gen, srv.log()[-2000:]
            assert answers(pod, port) == {"10.244.1.10"}
            # positive control: a visible change of each service kind publishes
            web = "web.shop.svc.cluster.local."
            sl["endpoints"][0]["addresses"] = ["10.244.2.99"]
            api.update("EndpointSlice", sl)
            api.update("Service", {"metadata": {"name": "nginx", "namespace": "default"},
                                   "spec": {"clusterIP": "10.96.100.12",
                                            "clusterIPs": ["10.96.100.12"],
                                            "selector": {"run": "nginx"},
                                            "ports": [{"name": "http", "port": 80}]}})
            api.create("EndpointSlice", {
                "metadata": {"name": "manual-1", "namespace": "shop",
                             "labels": {"kubernetes.io/service-name": "manual"}},
                "addressType": "IPv4", "endpoints": [{"addresses": ["10.1.2.3"]}]})
            assert wait_for(lambda: "10.244.2.99" in answers(web, port), 3), srv.log()[-2000:]
            assert wait_for(lambda: answers("nginx.default.svc.cluster.local.", port)
                            == {"10.96.100.12"}, 3)
            assert wait_for(lambda: answers("manual.shop.svc.cluster.local.", port)
                            == {"10.1.2.3"}, 3)
            assert generation(srv) > gen
            text = http_get(f"http://127.0.0.1:{metrics}/metrics")[1]
            counts = {m.group(1): float(m.group(2)) for m in re.finditer(
                r'^coredns_kubernetes_dns_programming_duration_seconds_count'
                r'\{service_kind="(\w+)"\} (\S+)$', text, re.M)}
            assert counts.get("headless_with_selector", 0) >= 1, text[-3000:]
            assert counts.get("cluster_ip", 0) >= 1
            assert counts.get("headless_without_selector", 0) >= 1
            # event -> publish on loopback: well below a second
            total = sum(float(m.group(1)) for m in re.finditer(
                r'^coredns_kubernetes_dns_programming_duration_seconds_sum\{[^}]*\} (\S+)$',
                text, re.M))
            assert 0 < total / sum(counts.values()) < 1.0
        finally:
            srv.stop(signal.SIGKILL)


def test_api_faults_keep_the_last_snapshot_served(tmp_path):
    """API down, slow, 5xx and 429: workers answer from the last snapshot all along,
    and the control process catches up when the API is back."""
    with FakeApiServer() as api:
        api.load(yaml.safe_load_all(DEMO.read_text()))
        port = free_port()
        srv = serve_kube(tmp_path, api, kube_corefile(port), port)
        try:
            srv.wait_answering()
            want = {"10.96.0.1"}
            # down: connections refused and reset
            api.set_down(True)
            good, bad = hammer(port, 1.0, want)
            assert good > 0 and bad == 0
            api.set_down(False)
            # 5xx and 429 on every reconnect for a while, and a slow server
            api.fail_next(2, 500)
            api.fail_next(2, 429, retry_after=0.2)
            api.slow(0.3)
            api.compact()
            api.set_down(True)
            api.set_down(False)
            good, bad = hammer(port, 1.5, want)
            assert good > 0 and bad == 0
            api.slow(0)
            api.create("Service", {"metadata": {"name": "after-faults", "namespace": "default"},
                                   "spec": {"clusterIP": "10.96.99.7",
                                            "clusterIPs": ["10.96.99.7"],
                                            "ports": [{"name": "http", "port": 80}]}})
            assert wait_for(lambda: answers("after-faults.default.svc.cluster.local.", port)
                            == {"10.96.99.7"}, 15), srv.log()[-3000:]
            assert "HTTP 500" in srv.log() and "HTTP 429" in srv.log()
        finally:
            srv.stop(signal.SIGKILL)


def test_control_killed_relists_while_workers_keep_answering(tmp_path):
    with FakeApiServer() as api:
        api.load(yaml.safe_load_all(DEMO.read_text()))
        port = free_port()
        srv = serve_kube(tmp_path, api, kube_corefile(port), port)
        try:
            srv.wait_answering()
            before = list_counts(api)
            gen = generation(srv)
            old = srv.pids("control")[-1]
            os.kill(old, signal.SIGKILL)
            # the change lands while no control process watches
            api.create("Service", {"metadata": {"name": "while-down", "namespace": "default"},
                                   "spec": {"clusterIP": "10.96.99.8",
                                            "clusterIPs": ["10.96.99.8"],
                                            "ports": [{"name": "http", "port": 80}]}})
            good, bad = hammer(port, 1.0, {"10.96.0.1"})
            assert good > 0 and bad == 0
            assert wait_for(lambda: len(srv.pids("control")) >= 2, 10), srv.log()[-2000:]
            assert wait_relisted(api, before), srv.log()[-2000:]
            assert wait_for(lambda: answers("while-down.default.svc.cluster.local.", port)
                            == {"10.96.99.8"}, 10), srv.log()[-2000:]
            assert generation(srv) > gen
            good, bad = hammer(port, 0.3, {"10.96.0.1"})
            assert good > 0 and bad == 0
        finally:
            srv.stop(signal.SIGKILL)
