"""KubeSource against the fake API server, over real HTTP with the real client.

Timeouts are shortened (read timeout 1 s, backoff cap 0.5 s) so that the
failure cases (410, API down, silent stream) each cost about a second.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import replace

import pytest
from kubernetes.config.config_exception import ConfigException

from fastdns.control.backoff import Backoff
from fastdns.control.kube import (
    KubeConfig,
    KubeSource,
    client_configuration,
    iter_lines,
)
from fastdns.testing.fakeapi.server import FakeApiServer
from fastdns.zone.objects import EndpointSlice, Namespace, Pod, Service

FAST = KubeConfig(read_timeout=1.0, watch_timeout=5.0, connect_timeout=1.0,
                  list_read_timeout=5.0, backoff_base=0.05, backoff_cap=0.5)


def svc(name: str, ip: str, ns: str = "default", **labels: str) -> dict:
    return {"metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                     "ports": [{"name": "http", "protocol": "TCP", "port": 80}]}}


def eps(name: str, service: str, *ips: str, ready: bool = True, ns: str = "default") -> dict:
    return {"metadata": {"name": name, "namespace": ns,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip in ips]
            or None,
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]}


class Recorder:
    """Collects callbacks (from the watch threads) and waits for conditions."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, object, float]] = []
        self.synced_at: float | None = None
        self.threads: set[str] = set()
        self._cond = threading.Condition()

    def on_event(self, kind: str, etype: str, obj: object) -> None:
        with self._cond:
            self.events.append((kind, etype, obj, time.monotonic()))
            self.threads.add(threading.current_thread().name)
            self._cond.notify_all()

    def on_synced(self) -> None:
        with self._cond:
            assert self.synced_at is None, "on_synced called twice"
            self.synced_at = time.monotonic()
            self._cond.notify_all()

    def wait(self, pred, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: pred(self.events), timeout)

    def since(self, n: int) -> list[tuple[str, str, object]]:
        with self._cond:
            return [(k, t, o) for k, t, o, _ in self.events[n:]]

    def __len__(self) -> int:
        with self._cond:
            return len(self.events)


@pytest.fixture
def api():
    with FakeApiServer(bookmark_interval=0.3, history_size=100) as server:
        server.create("Namespace", {"metadata": {"name": "default"}})
        server.create("Service", svc("web", "10.0.0.10"))
        server.create("EndpointSlice", eps("web-1", "web", "10.1.0.1", "10.1.0.2"))
        yield server


@pytest.fixture
def run_source(api):
    sources = []

    def start(cfg: KubeConfig | None = None, **kw) -> tuple[KubeSource, Recorder]:
        rec = Recorder()
        cfg = replace(cfg or FAST, endpoint=(cfg or FAST).endpoint or api.url, **kw)
        src = KubeSource(cfg, rec.on_event, rec.on_synced, rng=random.Random(7))
        src.start()
        sources.append(src)
        assert src.wait_synced(5), "no initial sync"
        # tests that break streams need them open first
        want = sum(len(s.config.kinds()) for s in sources)
        deadline = time.monotonic() + 2
        while api.open_watches < want and time.monotonic() < deadline:
            time.sleep(0.005)
        return src, rec

    yield start
    for src in sources:
        src.stop()


def test_initial_sync_delivers_everything_then_on_synced(run_source):
    src, rec = run_source()
    got = {(k, t, o.key) for k, t, o in rec.since(0)}
    assert got == {("Namespace", "ADDED", ("", "default")),
                   ("Service", "ADDED", ("default", "web")),
                   ("EndpointSlice", "ADDED", ("default", "web-1"))}
    assert rec.synced_at is not None and rec.synced_at >= max(e[3] for e in rec.events)
    web = next(o for k, _, o in rec.since(0) if k == "Service")
    assert isinstance(web, Service) and web.cluster_ips == ("10.0.0.10",)
    assert set(src.resource_versions()) == {"Namespace", "Service", "EndpointSlice"}
    assert all(rv.isdigit() for rv in src.resource_versions().values())
    assert all(t.startswith("kube-watch-") for t in rec.threads)  # callbacks' threads


def test_changes_arrive_within_a_fraction_of_a_second(api, run_source):
    src, rec = run_source()
    n = len(rec)
    cases = [
        (lambda: api.create("Service", svc("db", "10.0.0.20")), ("Service", "ADDED")),
        (lambda: api.update("Service", svc("db", "10.0.0.21")), ("Service", "MODIFIED")),
        (lambda: api.create("EndpointSlice", eps("db-1", "db", "10.1.0.9")),
         ("EndpointSlice", "ADDED")),
        (lambda: api.update("EndpointSlice", eps("db-1", "db", "10.1.0.9", ready=False)),
         ("EndpointSlice", "MODIFIED")),
        (lambda: api.delete("EndpointSlice", ("default", "db-1")), ("EndpointSlice", "DELETED")),
        (lambda: api.delete("Service", ("default", "db")), ("Service", "DELETED")),
    ]
    latencies = []
    for change, expect in cases:
        start = time.monotonic()
        change()
        assert rec.wait(lambda ev, m=n + 1: len(ev) >= m, 2.0), expect
        latencies.append(rec.events[n][3] - start)
        assert rec.since(n)[0][:2] == expect
        n += 1
    assert max(latencies) < 0.5, latencies  # typically ~2 ms
    kinds = [(k, t, o) for k, t, o in rec.since(len(rec) - 6)]
    assert kinds[1][2].cluster_ips == ("10.0.0.21",)
    assert isinstance(kinds[3][2], EndpointSlice) and kinds[3][2].endpoints[0].ready is False
    assert kinds[4][2].key == ("default", "db-1")  # DELETED carries the last object
    assert src.total("errors") == 0 and src.total("relists") == 0


def test_dns_invisible_modification_delivers_nothing(api, run_source):
    src, rec = run_source()
    n = len(rec)
    api.update("Service", svc("web", "10.0.0.10", touched="yes"))  # only a label
    api.create("Service", svc("marker", "10.0.0.99"))
    assert rec.wait(lambda ev: len(ev) > n)
    assert [(k, t, o.name) for k, t, o in rec.since(n)] == [("Service", "ADDED", "marker")]
    assert src.counters()["Service"]["unchanged"] == 1


def test_endpoints_null_is_an_empty_slice(api, run_source):
    src, rec = run_source()
    n = len(rec)
    api.create("EndpointSlice", eps("empty-1", "web"))  # endpoints: null
    assert rec.wait(lambda ev: len(ev) > n)
    kind, etype, obj = rec.since(n)[0]
    assert (kind, etype, obj.endpoints) == ("EndpointSlice", "ADDED", ())


def test_410_relists_and_delivers_only_real_differences(api, run_source):
    api.create("Service", svc("keep", "10.0.0.30"))
    api.create("Service", svc("gone", "10.0.0.31"))
    api.create("Service", svc("touched", "10.0.0.32"))
    src, rec = run_source()
    n = len(rec)
    api.hang_watches()  # the streams go silent: the changes below are missed
    api.update("Service", svc("keep", "10.0.0.33"))
    api.delete("Service", ("default", "gone"))
    api.create("Service", svc("new", "10.0.0.34"))
    api.update("Service", svc("touched", "10.0.0.32", label="only"))
    api.compact()  # ... and can no longer be replayed: the rv is too old
    assert rec.wait(lambda ev: len(ev) >= n + 3, 4.0)
    time.sleep(0.3)  # nothing else may follow
    got = sorted((k, t, o.name) for k, t, o in rec.since(n))
    assert got == [("Service", "ADDED", "new"), ("Service", "DELETED", "gone"),
                   ("Service", "MODIFIED", "keep")]
    counters = src.counters()
    assert counters["Service"]["relists"] == 1
    # the other kinds relisted too and found nothing to deliver
    assert counters["Namespace"]["relists"] == 1 and counters["EndpointSlice"]["relists"] == 1
    assert src.total("read_timeouts") == 3
    # and the watch goes on from the relist's resourceVersion
    m = len(rec)
    api.create("Service", svc("after", "10.0.0.35"))
    assert rec.wait(lambda ev: len(ev) > m, 1.0)


def test_http_410_on_watch_relists(api, run_source):
    src, rec = run_source()
    n = len(rec)
    api.fail_next(1, status=410, path="/api/v1/services", watch=True)
    api.hang_watches()  # force a reconnect, which meets the 410
    api.create("Service", svc("db", "10.0.0.20"))
    assert rec.wait(lambda ev: len(ev) > n, 4.0)
    assert [(k, t, o.name) for k, t, o in rec.since(n)] == [("Service", "ADDED", "db")]
    assert src.counters()["Service"]["relists"] == 1
    assert src.total("errors") == 0


def test_silent_stream_noticed_through_read_timeout(api, run_source):
    # bookmarks every 0.3 s keep a quiet stream alive under a 1 s read timeout
    src, rec = run_source()
    time.sleep(1.5)
    assert src.total("read_timeouts") == 0
    assert src.total("bookmarks") >= 3
    n = len(rec)
    api.hang_watches()
    start = time.monotonic()
    api.create("Service", svc("late", "10.0.0.40"))
    assert rec.wait(lambda ev: len(ev) > n, 3.0)
    waited = time.monotonic() - start
    # one read timeout (counted from the last bookmark, <= 0.3 s before the
    # hang), then the missed event
    assert 0.6 < waited < 2.5, waited
    assert src.counters()["Service"]["read_timeouts"] == 1
    assert src.total("relists") == 0  # same resourceVersion, no relist


def test_api_down_backs_off_and_recovers(api, run_source):
    src, rec = run_source()
    n = len(rec)
    api.set_down(True)
    api.create("Service", svc("while-down", "10.0.0.50"))
    time.sleep(1.5)
    errors_down = src.total("errors")
    assert errors_down >= 3  # each kind failed, and retried, while down
    # backoff from 0.05 s doubling to a 0.5 s cap allows at most ~10 tries per
    # kind in 1.5 s (a retry loop without backoff would make hundreds)
    assert errors_down <= 3 * 10
    assert len(rec) == n
    api.set_down(False)
    assert rec.wait(lambda ev: len(ev) > n, 3.0)
    assert [(k, t, o.name) for k, t, o in rec.since(n)] == [("Service", "ADDED", "while-down")]
    m = len(rec)
    api.create("Service", svc("after", "10.0.0.51"))
    assert rec.wait(lambda ev: len(ev) > m, 1.0)


def test_api_slower_than_the_read_timeout(api):
    api.slow(1.2)  # every response, headers included, later than the 1 s read timeout
    rec = Recorder()
    src = KubeSource(replace(FAST, endpoint=api.url, list_read_timeout=1.0), rec.on_event,
                     rec.on_synced)
    src.start()
    try:
        time.sleep(1.3)
        assert not src.synced and src.total("errors") >= 3  # every kind's list timed out
        api.slow(0)
        assert src.wait_synced(3)
        assert len(rec) == 3
    finally:
        src.stop()


def test_watch_that_ends_at_once_backs_off(api, run_source):
    src, rec = run_source()
    api.empty_watches(4)
    before = api.requests("/api/v1/services", watch=True)
    api.hang_watches()  # every kind reconnects into the empty watches
    time.sleep(1.6)
    # 4 empty answers were spread over the kinds and backed off, not hot-looped
    assert src.total("errors") == 4
    assert api.requests("/api/v1/services", watch=True) - before <= 4
    n = len(rec)
    api.create("Service", svc("later", "10.0.0.53"))
    assert rec.wait(lambda ev: len(ev) > n, 2.0)


def test_429_honours_retry_after(api, run_source):
    api.fail_next(1, status=429, retry_after=1, path="/api/v1/services", watch=False)
    start = time.monotonic()
    src, rec = run_source()  # waits for the first sync
    assert time.monotonic() - start >= 0.95
    assert src.counters()["Service"]["errors"] == 1
    assert api.requests("/api/v1/services", watch=False) == 2


def test_500_then_recovery(api, run_source):
    api.fail_next(3, status=500, path="/apis/discovery.k8s.io/v1/endpointslices")
    src, rec = run_source()
    assert src.counters()["EndpointSlice"]["errors"] == 3
    assert src.counters()["EndpointSlice"]["lists"] == 1


def test_paged_list(api, run_source):
    for i in range(9):
        api.create("Service", svc(f"s{i}", f"10.0.2.{i}"))
    before = api.requests("/api/v1/services", watch=False)
    src, rec = run_source(page_size=4)
    assert api.requests("/api/v1/services", watch=False) - before == 3  # 10 items / 4
    assert {o.name for k, _, o in rec.since(0) if k == "Service"} == {
        "web", *(f"s{i}" for i in range(9))}
    assert any("continue" in q for m, p, q in api.request_log if p == "/api/v1/services")
    assert all(q.get("limit") == "4" for m, p, q in api.request_log
               if p == "/api/v1/services" and "watch" not in q)


def test_expired_continue_token_falls_back_to_one_unpaged_list(api, run_source):
    for i in range(5):
        api.create("Service", svc(f"s{i}", f"10.0.2.{i}"))
    api.fail_next(1, status=410, path="/api/v1/services",
                  when=lambda path, query: "continue" in query)
    src, rec = run_source(page_size=2)
    assert {o.name for k, _, o in rec.since(0) if k == "Service"} == {
        "web", *(f"s{i}" for i in range(5))}
    lists = [q for _, p, q in api.request_log if p == "/api/v1/services" and "watch" not in q]
    assert len(lists) == 3  # page 1, page 2 (410), then everything without limit
    assert "continue" in lists[1] and "limit" not in lists[2]
    assert src.counters()["Service"]["errors"] == 0


def test_watch_request_parameters(api, run_source):
    run_source()
    watches = [q for _, p, q in api.request_log if p == "/api/v1/services" and "watch" in q]
    assert watches, "no watch request"
    q = watches[0]
    assert q["watch"] in ("1", "true", "True") and q["allowWatchBookmarks"] == "true"
    assert 4 <= int(q["timeoutSeconds"]) <= 6  # 5 s +/- 10 %
    assert q["resourceVersion"].isdigit()


def test_bad_object_is_skipped(api, run_source):
    src, rec = run_source()
    n = len(rec)
    bad = svc("bad", "10.0.0.60")
    bad["spec"]["clusterIPs"] = "10.0.0.60"  # a string: strip() raises StateError
    api.create("Service", bad)
    api.create("Service", svc("good", "10.0.0.61"))
    assert rec.wait(lambda ev: len(ev) > n)
    time.sleep(0.1)
    assert [o.name for _, _, o in rec.since(n)] == ["good"]
    assert src.counters()["Service"]["skipped"] == 1


def test_pods_only_with_pods_verified(api, run_source):
    api.create("Pod", {"metadata": {"name": "p1", "namespace": "default"},
                       "status": {"phase": "Running", "podIP": "10.2.0.1"}})
    api.create("Pod", {"metadata": {"name": "p0", "namespace": "default"},
                       "status": {"phase": "Succeeded", "podIP": "10.2.0.9"}})
    src, rec = run_source()
    assert "Pod" not in src.resource_versions()
    src2, rec2 = run_source(pods_verified=True)
    pods = [o for k, _, o in rec2.since(0) if k == "Pod"]
    assert pods == [Pod("default", "p1", ("10.2.0.1",), "Running")]
    q = next(q for _, p, q in api.request_log if p == "/api/v1/pods")
    assert q["fieldSelector"] == "status.phase!=Succeeded,status.phase!=Failed"
    n = len(rec2)
    api.update("Pod", {"metadata": {"name": "p1", "namespace": "default"},
                       "status": {"phase": "Succeeded", "podIP": "10.2.0.1"}})
    assert rec2.wait(lambda ev: len(ev) > n)
    assert [(k, t, o.name) for k, t, o in rec2.since(n)] == [("Pod", "DELETED", "p1")]


def test_kubeconfig_file_with_token(tmp_path):
    with FakeApiServer(token="t0k") as server:
        server.create("Namespace", {"metadata": {"name": "kube-system"}})
        path = server.write_kubeconfig(str(tmp_path / "kubeconfig"))
        rec = Recorder()
        src = KubeSource(replace(FAST, kubeconfig=path, endpoint="http://127.0.0.1:1"),
                         rec.on_event, rec.on_synced)
        src.start()
        try:
            assert src.wait_synced(5)  # kubeconfig wins over endpoint (CoreDNS order)
            assert [o for k, _, o in rec.since(0)] == [Namespace("kube-system")]
        finally:
            src.stop()


def test_client_configuration_options(tmp_path, monkeypatch):
    conf = client_configuration(KubeConfig(endpoint="https://10.0.0.1:6443/",
                                           tls_cert="/c.crt", tls_key="/c.key",
                                           tls_ca="/ca.crt"))
    assert conf.host == "https://10.0.0.1:6443"
    assert (conf.cert_file, conf.key_file, conf.ssl_ca_cert) == ("/c.crt", "/c.key", "/ca.crt")
    assert conf.retries.read == 0 and not conf.retries.respect_retry_after_header
    # neither kubeconfig nor endpoint: the in-cluster service account
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigException):
        client_configuration(KubeConfig())


def test_stop_is_prompt_with_open_watches(api):
    rec = Recorder()
    src = KubeSource(replace(FAST, endpoint=api.url, read_timeout=30.0), rec.on_event)
    src.start()
    assert src.wait_synced(5)
    deadline = time.monotonic() + 2
    while api.open_watches < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    src.stop()
    assert time.monotonic() - start < 1.0
    assert not any(t.name.startswith("kube-watch-") for t in threading.enumerate())


def test_backoff_grows_with_jitter_and_honours_retry_after():
    b = Backoff(base=0.1, cap=1.0, rng=random.Random(1))
    delays = [b.next() for _ in range(8)]
    ceilings = [min(1.0, 0.1 * 2 ** i) for i in range(8)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == 8  # jittered
    assert b.next(retry_after=5) == 5.0
    b.reset()
    assert b.next() <= 0.1
    with pytest.raises(ValueError):
        Backoff(base=2, cap=1)


class _Chunks:
    """What urllib3's read1() returns, one socket read at a time."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)

    def read1(self, amt: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


def test_iter_lines_reassembles_chunks():
    chunks = [b'{"a":', b"1}\n{", b'"b":2}\n\n{"c":3}\n{"d"', b":4}"]
    assert list(iter_lines(_Chunks(chunks))) == [b'{"a":1}', b'{"b":2}', b'{"c":3}', b'{"d":4}']


LEAN_SCRIPT = r"""
import sys
from fastdns.control.kube import KubeSource
from fastdns.control.kubeclient import KubeConfig
from fastdns.testing.fakeapi.server import FakeApiServer

with FakeApiServer(token="t0k") as server:
    server.create("Namespace", {"metadata": {"name": "default"}})
    server.create("Service", {"metadata": {"name": "web", "namespace": "default"},
                              "spec": {"clusterIP": "10.0.0.10", "clusterIPs": ["10.0.0.10"],
                                       "ports": [{"port": 80, "protocol": "TCP"}]}})
    path = server.write_kubeconfig(sys.argv[1])
    seen = []
    src = KubeSource(KubeConfig(kubeconfig=path, pods_verified=True),
                     lambda kind, et, obj: seen.append(kind))
    src.start()
    assert src.wait_synced(20), "no sync"
    src.stop()
print(sorted(set(seen)))
print(sorted(m for m in sys.modules if m.startswith("kubernetes.client.api.")))
"""


def test_lists_and_watches_without_the_generated_api_classes(tmp_path):
    """KubeSource lists and watches through the client's ApiClient itself
    (kubeclient.list_call): the generated CoreV1Api/DiscoveryV1Api methods
    wrap each call in pydantic's validate_call, whose schemas and the API
    classes they import were 41 MB of the control process for 1,000
    Services (issue 14). A clean interpreter that synced has imported none
    of the API classes (pydantic itself the client imports anyway)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", LEAN_SCRIPT, str(tmp_path / "kc")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    kinds, modules = out.stdout.splitlines()[-2:]
    assert kinds == "['Namespace', 'Service']"
    assert modules == "[]", modules
