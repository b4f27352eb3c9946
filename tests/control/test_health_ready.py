"""/health and /ready over real HTTP: CoreDNS's status codes and bodies,
readiness per plugin, lameduck, shared and separate listen addresses."""

from __future__ import annotations

import http.client
import socket

import pytest

from fastdns.control import httpd, observability
from tests.helpers import free_port


def get(url_or_eps, path: str | None = None, method: str = "GET") -> tuple[int, str]:
    url = url_or_eps if path is None else url_or_eps.url(path)
    hostport = url.split("/")[2]
    host, _, port = hostport.rpartition(":")
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=5)
    try:
        conn.request(method, "/" + url.split("/", 3)[3])
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


@pytest.fixture
def endpoints():
    eps = httpd.HttpEndpoints(httpd.HttpConfig(health_addrs=("127.0.0.1:0",),
                                               ready_addrs=("127.0.0.1:0",), lameduck=5.0))
    eps.start()
    yield eps
    eps.stop()


def test_health_ok(endpoints):
    assert get(endpoints, "/health") == (200, "OK")
    assert get(endpoints, "/health", method="HEAD") == (200, "")


def test_ready_with_no_reporting_plugin_is_ready(endpoints):
    assert get(endpoints, "/ready") == (200, "OK")


def test_ready_waits_for_every_reporting_plugin(endpoints):
    endpoints.set_ready("kubernetes", False)
    endpoints.set_ready("hosts", False)
    endpoints.set_ready("erratic", True)
    # plugin/ready/list.go: sorted names of the plugins not ready, comma-joined.
    assert get(endpoints, "/ready") == (503, "hosts,kubernetes")
    endpoints.set_ready("hosts", True)
    assert get(endpoints, "/ready") == (503, "kubernetes")
    endpoints.set_ready("kubernetes", True)
    assert get(endpoints, "/ready") == (200, "OK")
    # Health does not depend on readiness.
    endpoints.set_ready("kubernetes", False)
    assert get(endpoints, "/health") == (200, "OK")


def test_lameduck_keeps_health_and_drops_ready(endpoints):
    endpoints.set_ready("kubernetes", True)
    assert get(endpoints, "/ready") == (200, "OK")
    assert endpoints.start_lameduck() == 5.0
    assert get(endpoints, "/health") == (200, "OK")
    assert get(endpoints, "/ready") == (503, "Shutting down")
    endpoints.set_ready("kubernetes", True)  # a late sync does not undo lameduck
    assert get(endpoints, "/ready") == (503, "Shutting down")


def test_each_path_only_on_its_own_address(endpoints):
    assert endpoints.address("/health") != endpoints.address("/ready")
    health_port = endpoints.address("/health")[1]
    status, _ = get(f"http://127.0.0.1:{health_port}/ready")
    assert status == 404
    status, _ = get(f"http://127.0.0.1:{health_port}/metrics")
    assert status == 404


def test_plugins_naming_one_address_share_a_listener():
    port = free_port(v6=False)
    eps = httpd.HttpEndpoints(httpd.HttpConfig(health_addrs=(f"127.0.0.1:{port}",),
                                               ready_addrs=(f"127.0.0.1:{port}",)))
    eps.start()
    try:
        assert get(f"http://127.0.0.1:{port}/health") == (200, "OK")
        assert get(f"http://127.0.0.1:{port}/ready") == (200, "OK")
    finally:
        eps.stop()
    # stop() releases the port: a restarted control process can bind it again.
    again = httpd.HttpEndpoints(httpd.HttpConfig(health_addrs=(f"127.0.0.1:{port}",)))
    again.start()
    try:
        assert get(f"http://127.0.0.1:{port}/health") == (200, "OK")
    finally:
        again.stop()


def test_address_in_use_fails_startup():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        eps = httpd.HttpEndpoints(httpd.HttpConfig(health_addrs=("127.0.0.1:0",),
                                                   ready_addrs=(f"127.0.0.1:{port}",)))
        with pytest.raises(OSError):
            eps.start()
        # The listener that did bind was closed again.
        assert eps._servers == []


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1 here")
    eps = httpd.HttpEndpoints(httpd.HttpConfig(health_addrs=("[::1]:0",)))
    eps.start()
    try:
        assert eps.url("/health").startswith("http://[::1]:")
        assert get(eps, "/health") == (200, "OK")
    finally:
        eps.stop()


@pytest.mark.parametrize(("addr", "want"), [
    (":8080", ("", 8080)),
    ("localhost:9153", ("localhost", 9153)),
    ("127.0.0.1:8181", ("127.0.0.1", 8181)),
    ("[::1]:8080", ("::1", 8080)),
    ("[::]:0", ("::", 0)),
])
def test_parse_addr(addr, want):
    assert httpd.parse_addr(addr) == want


@pytest.mark.parametrize("addr", ["8080", "localhost", "::1:8080", "[::1]", ":http", ":70000", ""])
def test_parse_addr_rejects(addr):
    with pytest.raises(ValueError):
        httpd.parse_addr(addr)


KUBEADM = """\
.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30 {
       disable success cluster.local
       disable denial cluster.local
    }
    loop
    reload
    loadbalance
}
"""


def test_http_config_of_the_kubeadm_corefile():
    from fastdns.corefile import config as corefile

    cfg = httpd.http_config(corefile.parse_corefile(KUBEADM))
    assert cfg == httpd.HttpConfig(metrics_addrs=(":9153",), health_addrs=(":8080",),
                                   ready_addrs=(":8181",), lameduck=5.0)


def test_http_config_defaults_and_several_blocks():
    from fastdns.corefile import config as corefile

    text = ("cluster.local:1053 {\n  kubernetes\n  prometheus\n  health\n  ready\n}\n"
            "example.org:1053 {\n  whoami\n  health 127.0.0.1:8091\n  prometheus\n}\n")
    cfg = httpd.http_config(corefile.parse_corefile(text))
    assert cfg.metrics_addrs == ("localhost:9153",)
    assert cfg.health_addrs == (":8080", "127.0.0.1:8091")
    assert cfg.ready_addrs == (":8181",)
    assert cfg.lameduck == 0.0


def test_observability_hook_from_a_corefile():
    """The control process's hook: Corefile -> listeners, readiness, metrics."""
    import secrets
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from fastdns.corefile import config as corefile
    from fastdns.ipc import shm
    from fastdns.ipc.stats import SharedStats

    text = KUBEADM.replace("prometheus :9153", "prometheus 127.0.0.1:0").replace(
        "health {", "health 127.0.0.1:0 {").replace("    ready\n", "    ready 127.0.0.1:0\n")
    config = corefile.parse_corefile(text)
    instance = "th" + secrets.token_hex(6)
    ctl = shm.ControlSegment.create(instance, 2)
    try:
        obs = observability.Observability.start(config, ctl, text)
        try:
            eps = obs.endpoints
            assert get(eps, "/ready") == (503, "kubernetes,workers")
            assert get(eps, "/health") == (200, "OK")
            obs.published(2, 4096, 0.01, 0.001, synced=False)
            assert get(eps, "/ready") == (503, "kubernetes,workers")
            obs.published(3, 4096, 0.01, 0.001)
            # synced, but not ready until every worker has mapped a snapshot
            # (a worker maps only after binding its sockets)
            assert get(eps, "/ready") == (503, "workers")
            ctl.set_mapped(0, 3)
            assert get(eps, "/ready") == (503, "workers")
            ctl.set_mapped(1, 3)
            assert get(eps, "/ready") == (200, "OK")
            with urllib.request.urlopen(eps.url("/metrics"), timeout=5) as r:
                fams = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
            assert fams["fastdns_snapshot_generation"].samples[0].value == 3
            enabled = {s.labels["name"] for s in fams["coredns_plugin_enabled"].samples}
            assert enabled == {"errors", "kubernetes", "prometheus", "forward", "cache", "loop",
                               "loadbalance"}
            assert {s.labels["server"] for s in fams["coredns_plugin_enabled"].samples} == {
                "dns://:53"}
            # The supervisor (another process) announces lameduck in shared memory.
            supervisor_side = SharedStats.attach(instance)
            try:
                supervisor_side.start_lameduck()
            finally:
                supervisor_side.close()
            assert get(eps, "/ready") == (503, "Shutting down")
            assert get(eps, "/health") == (200, "OK")
            assert obs.start_lameduck() == 5.0
            assert get(eps, "/ready") == (503, "Shutting down")
        finally:
            obs.stop()
    finally:
        ctl.close()
        shm.sweep(instance)
