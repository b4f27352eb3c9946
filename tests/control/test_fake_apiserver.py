"""The fake API server against the real `kubernetes` client.

The fake is only worth something if the official client, configured as it
would be for a real cluster, reads it without complaint: these tests use the
client's typed models where they exercise compatibility (list kinds, null
endpoints) and raw JSON (`_preload_content=False`) where they check the
exact wire shape the control plane depends on.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from fastdns.testing.fakeapi.selectors import parse_field_selector, parse_label_selector
from fastdns.testing.fakeapi.server import FakeApiServer
from fastdns.testing.pki import make_pki


def svc(name: str, ip: str, ns: str = "default", **labels: str) -> dict:
    return {"metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                     "ports": [{"name": "http", "protocol": "TCP", "port": 80}]}}


def pod(name: str, ip: str, phase: str = "Running", ns: str = "default") -> dict:
    return {"metadata": {"name": name, "namespace": ns},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]}}


@pytest.fixture
def api():
    with FakeApiServer(bookmark_interval=0.2, history_size=50) as server:
        server.create("Namespace", {"metadata": {"name": "default"}})
        yield server


@pytest.fixture
def kube(api, tmp_path):
    """The client configured from a kubeconfig file, as a user would."""
    path = api.write_kubeconfig(str(tmp_path / "kubeconfig"))
    api_client = config.new_client_from_config(config_file=path)
    yield api_client
    api_client.close()


def raw_lines(resp) -> list[dict]:
    return [json.loads(line) for line in resp.data.splitlines() if line.strip()]


def test_list_shape_and_typed_models(api, kube):
    for i in range(3):
        api.create("Service", svc(f"s{i}", f"10.0.0.{i}"))
    core = client.CoreV1Api(kube)
    body = json.loads(core.list_service_for_all_namespaces(_preload_content=False).data)
    assert body["kind"] == "ServiceList" and body["apiVersion"] == "v1"
    assert body["metadata"]["resourceVersion"] == str(api.resource_version)
    assert "continue" not in body["metadata"]
    assert [i["metadata"]["name"] for i in body["items"]] == ["s0", "s1", "s2"]
    assert all("kind" not in i and "apiVersion" not in i for i in body["items"])
    assert len({i["metadata"]["resourceVersion"] for i in body["items"]}) == 3
    typed = core.list_namespaced_service("default")
    assert [s.spec.cluster_ip for s in typed.items] == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    assert core.list_namespaced_service("other").items == []
    assert [n.metadata.name for n in core.list_namespace().items] == ["default"]


def test_one_resource_version_across_kinds(api, kube):
    rv0 = api.resource_version
    api.create("Service", svc("a", "10.0.0.1"))
    api.create("EndpointSlice", {"metadata": {"name": "a-1", "namespace": "default"},
                                 "addressType": "IPv4", "endpoints": None})
    disc = client.DiscoveryV1Api(kube)
    body = json.loads(disc.list_endpoint_slice_for_all_namespaces(_preload_content=False).data)
    assert body["kind"] == "EndpointSliceList"
    assert body["apiVersion"] == "discovery.k8s.io/v1"
    assert body["metadata"]["resourceVersion"] == str(rv0 + 2)
    assert body["items"][0]["metadata"]["resourceVersion"] == str(rv0 + 2)


def test_paging_with_continue_is_a_consistent_snapshot(api, kube):
    for i in range(7):
        api.create("Service", svc(f"s{i}", f"10.0.0.{i}"))
    core = client.CoreV1Api(kube)
    first = json.loads(core.list_service_for_all_namespaces(
        limit=3, _preload_content=False).data)
    assert len(first["items"]) == 3
    assert first["metadata"]["remainingItemCount"] == 4
    # changes after the first page must not show up in later pages
    api.delete("Service", ("default", "s5"))
    api.create("Service", svc("s9", "10.0.0.9"))
    names = [i["metadata"]["name"] for i in first["items"]]
    cont = first["metadata"]["continue"]
    pages = 1
    while cont:
        page = json.loads(core.list_service_for_all_namespaces(
            limit=3, _continue=cont, _preload_content=False).data)
        assert page["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
        names += [i["metadata"]["name"] for i in page["items"]]
        cont = page["metadata"].get("continue")
        pages += 1
    assert pages == 3
    assert names == [f"s{i}" for i in range(7)]


def test_expired_continue_token_is_http_410(api, kube):
    for i in range(4):
        api.create("Service", svc(f"s{i}", f"10.0.0.{i}"))
    core = client.CoreV1Api(kube)
    first = json.loads(core.list_service_for_all_namespaces(limit=2, _preload_content=False).data)
    api.compact()
    with pytest.raises(ApiException) as info:
        core.list_service_for_all_namespaces(limit=2, _continue=first["metadata"]["continue"],
                                             _preload_content=False)
    assert info.value.status == 410
    assert json.loads(info.value.body)["reason"] == "Expired"


def test_watch_stream_events_carry_kind(api, kube):
    core = client.CoreV1Api(kube)
    rv = api.resource_version
    api.create("Service", svc("a", "10.0.0.1"))
    changed = svc("a", "10.0.0.1", team="dns")
    api.update("Service", changed)
    api.delete("Service", ("default", "a"))
    resp = core.list_service_for_all_namespaces(  # the client sends watch=true
        watch=True, resource_version=str(rv), timeout_seconds=1, _preload_content=False)
    events = raw_lines(resp)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert all(e["object"]["kind"] == "Service" and e["object"]["apiVersion"] == "v1"
               for e in events)
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == [rv + 1, rv + 2, rv + 3]
    assert events[1]["object"]["metadata"]["labels"] == {"team": "dns"}
    for flag in ("1", "True"):
        raw = _http_get(api, f"/api/v1/services?watch={flag}&resourceVersion={rv}"
                        "&timeoutSeconds=1")
        assert [json.loads(x)["type"] for x in raw.splitlines()] == [
            "ADDED", "MODIFIED", "DELETED"]


def test_watch_through_the_client_watch_helper(api, kube):
    """kubernetes.watch.Watch deserialises events into models."""
    core = client.CoreV1Api(kube)
    api.create("Service", svc("a", "10.0.0.1"))
    seen = []
    w = watch.Watch()
    for ev in w.stream(core.list_namespaced_service, "default", timeout_seconds=1):
        seen.append((ev["type"], ev["object"].metadata.name, ev["object"].spec.cluster_ip))
        if len(seen) == 1:
            api.create("Service", svc("b", "10.0.0.2"))
        if len(seen) == 2:
            w.stop()
    # no resourceVersion: synthetic ADDED for existing objects, then live events
    assert seen == [("ADDED", "a", "10.0.0.1"), ("ADDED", "b", "10.0.0.2")]


def test_bookmarks_carry_only_the_resource_version(api, kube):
    core = client.CoreV1Api(kube)
    api.create("Service", svc("a", "10.0.0.1"))
    rv = api.resource_version
    start = time.monotonic()
    resp = core.list_service_for_all_namespaces(
        watch=True, resource_version=str(rv), allow_watch_bookmarks=True, timeout_seconds=1,
        _preload_content=False)
    events = raw_lines(resp)
    elapsed = time.monotonic() - start
    assert 0.9 < elapsed < 2.5  # ended by timeoutSeconds, not earlier
    assert len(events) >= 3 and {e["type"] for e in events} == {"BOOKMARK"}
    assert events[0]["object"] == {"kind": "Service", "apiVersion": "v1",
                                   "metadata": {"resourceVersion": str(rv)}}
    # without allowWatchBookmarks: nothing at all, and the stream still just ends
    resp = core.list_service_for_all_namespaces(
        watch=True, resource_version=str(rv), timeout_seconds=1, _preload_content=False)
    assert resp.status == 200 and resp.data == b""


def test_timeout_seconds_ends_stream_cleanly_after_events(api, kube):
    core = client.CoreV1Api(kube)
    rv = api.resource_version
    api.create("Service", svc("a", "10.0.0.1"))
    resp = core.list_service_for_all_namespaces(
        watch=True, resource_version=str(rv), timeout_seconds=1, _preload_content=False)
    assert resp.headers.get("Transfer-Encoding") == "chunked"
    events = raw_lines(resp)
    assert [e["type"] for e in events] == ["ADDED"]  # no final ERROR / marker event


def test_too_old_resource_version_is_410_inside_200_stream(api, kube):
    core = client.CoreV1Api(kube)
    rv = api.resource_version
    for i in range(60):  # history_size=50: rv is pushed out of the window
        api.apply("Service", svc("a", f"10.0.1.{i}"))
    resp = core.list_service_for_all_namespaces(
        watch=True, resource_version=str(rv), timeout_seconds=5, _preload_content=False)
    assert resp.status == 200
    events = raw_lines(resp)
    assert len(events) == 1
    floor = api.resource_version - 50
    assert events[0] == {"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f"too old resource version: {rv} ({floor + 1})", "reason": "Expired",
        "code": 410}}
    # compact() empties the history: only the newest resourceVersion is still good
    newest = api.resource_version
    api.compact()
    api.create("Service", svc("b", "10.0.0.2"))
    resp = core.list_service_for_all_namespaces(
        watch=True, resource_version=str(newest - 1), timeout_seconds=5,
        _preload_content=False)
    assert raw_lines(resp)[0]["object"]["code"] == 410
    resp = core.list_service_for_all_namespaces(
        watch=True, resource_version=str(newest), timeout_seconds=1, _preload_content=False)
    assert [e["type"] for e in raw_lines(resp)] == ["ADDED"]


def test_endpoints_null(api, kube):
    api.create("EndpointSlice", {
        "metadata": {"name": "a-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "a"}},
        "addressType": "IPv4", "endpoints": None,
        "ports": [{"name": "http", "protocol": "TCP", "port": 80}]})
    disc = client.DiscoveryV1Api(kube)
    body = json.loads(disc.list_endpoint_slice_for_all_namespaces(_preload_content=False).data)
    assert body["items"][0]["endpoints"] is None
    typed = disc.list_namespaced_endpoint_slice("default")
    assert typed.items[0].endpoints is None and typed.items[0].ports[0].port == 80


def test_429_with_retry_after(api, kube):
    conf = client.Configuration(host=api.url)
    conf.retries = 0  # urllib3 would otherwise honour Retry-After itself (below)
    with client.ApiClient(conf) as bare:
        core = client.CoreV1Api(bare)
        api.fail_next(1, status=429, retry_after=3, path="/api/v1/services")
        with pytest.raises(ApiException) as info:
            core.list_service_for_all_namespaces(_preload_content=False)
        assert info.value.status == 429
        assert info.value.headers["Retry-After"] == "3"
        status = json.loads(info.value.body)
        assert status["reason"] == "TooManyRequests" and status["code"] == 429
        assert status["details"] == {"retryAfterSeconds": 3}
        core.list_service_for_all_namespaces(_preload_content=False)  # only the next one
    # the default client (urllib3 Retry) waits Retry-After and tries again
    api.fail_next(1, status=429, retry_after=1, path="/api/v1/services")
    start = time.monotonic()
    client.CoreV1Api(kube).list_service_for_all_namespaces(_preload_content=False)
    assert time.monotonic() - start >= 0.95
    assert api.requests("/api/v1/services") == 4


def test_fail_next_500_counts_and_filters(api, kube):
    core = client.CoreV1Api(kube)
    api.fail_next(2, status=500, watch=True)
    core.list_namespace(_preload_content=False)  # not a watch: unaffected
    for _ in range(2):
        with pytest.raises(ApiException) as info:
            core.list_namespace(watch=True, timeout_seconds=1, _preload_content=False)
        assert info.value.status == 500
    assert api.requests("/api/v1/namespaces", watch=True) == 2
    assert api.requests("/api/v1/namespaces", watch=False) == 1


def test_pod_field_selector_and_leaving_the_selection(api, kube):
    core = client.CoreV1Api(kube)
    sel = "status.phase!=Succeeded,status.phase!=Failed"
    api.create("Pod", pod("run", "10.1.0.1"))
    api.create("Pod", pod("done", "10.1.0.2", phase="Succeeded"))
    api.create("Pod", pod("bad", "10.1.0.3", phase="Failed"))
    body = json.loads(core.list_pod_for_all_namespaces(field_selector=sel,
                                                       _preload_content=False).data)
    assert [p["metadata"]["name"] for p in body["items"]] == ["run"]
    rv = api.resource_version
    api.update("Pod", pod("run", "10.1.0.1", phase="Succeeded"))  # leaves the selection
    api.update("Pod", pod("done", "10.1.0.2", phase="Running"))  # enters it
    resp = core.list_pod_for_all_namespaces(field_selector=sel, watch=True,
                                            resource_version=str(rv), timeout_seconds=1,
                                            _preload_content=False)
    events = [(e["type"], e["object"]["metadata"]["name"]) for e in raw_lines(resp)]
    assert events == [("DELETED", "run"), ("ADDED", "done")]


def test_selectors():
    label = parse_label_selector("app=web,tier!=db,env in (prod, stage),!legacy,team")
    ok = {"metadata": {"labels": {"app": "web", "env": "prod", "team": "x"}}}
    assert label(ok)
    for change in ({"app": "api"}, {"tier": "db"}, {"env": "dev"}, {"legacy": "1"}):
        bad = {"metadata": {"labels": {**ok["metadata"]["labels"], **change}}}
        assert not label(bad), change
    assert not label({"metadata": {"labels": {"app": "web", "env": "prod"}}})  # no team
    field = parse_field_selector("metadata.namespace==kube-system,spec.nodeName!=n1")
    assert field({"metadata": {"namespace": "kube-system"}, "spec": {"nodeName": "n2"}})
    assert not field({"metadata": {"namespace": "kube-system"}, "spec": {"nodeName": "n1"}})
    assert parse_label_selector("") is None and parse_field_selector(None) is None


def test_namespaced_paths_and_http_writes(api, kube):
    core = client.CoreV1Api(kube)
    api.create("Namespace", {"metadata": {"name": "other"}})
    created = core.create_namespaced_service("other", svc("x", "10.0.0.7", ns="other"),
                                             _preload_content=False)
    assert created.status == 201
    api.create("Service", svc("y", "10.0.0.8"))
    assert [s.metadata.name for s in core.list_namespaced_service("other").items] == ["x"]
    with pytest.raises(ApiException) as info:
        core.create_namespaced_service("other", svc("x", "10.0.0.7", ns="other"))
    assert info.value.status == 409
    core.delete_namespaced_service("x", "other", _preload_content=False)
    assert api.get("Service", "other", "x") is None
    with pytest.raises(ApiException) as info:
        core.read_namespaced_service("x", "other")
    assert info.value.status == 404


def test_down_refuses_then_comes_back_on_the_same_port(api, kube):
    core = client.CoreV1Api(kube)
    port = api.port
    api.set_down(True)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    api.create("Service", svc("while-down", "10.0.0.5"))  # the store still changes
    api.set_down(False)
    assert api.port == port
    names = [s.metadata.name for s in core.list_service_for_all_namespaces().items]
    assert names == ["while-down"]


def test_down_resets_open_watch(api, kube):
    core = client.CoreV1Api(kube)
    resp = core.list_service_for_all_namespaces(
        watch=True, resource_version=str(api.resource_version), timeout_seconds=30,
        _preload_content=False, _request_timeout=(2, 10))
    start = time.monotonic()
    api.set_down(True)
    with pytest.raises(Exception):  # noqa: B017 - urllib3 ProtocolError, any reset will do
        resp.read()
    assert time.monotonic() - start < 3
    api.set_down(False)


def test_slow_delays_every_response(api, kube):
    core = client.CoreV1Api(kube)
    api.slow(1.0)
    start = time.monotonic()
    core.list_namespace(_preload_content=False)
    assert time.monotonic() - start >= 1.0
    with pytest.raises(urllib3.exceptions.MaxRetryError) as info:  # a read timeout
        core.list_namespace(_preload_content=False, _request_timeout=(1, 0.1))
    assert isinstance(info.value.reason, urllib3.exceptions.ReadTimeoutError)
    api.slow(0)
    start = time.monotonic()
    core.list_namespace(_preload_content=False)
    assert time.monotonic() - start < 0.8


def test_version_and_discovery_stubs(api, kube):
    info = client.VersionApi(kube).get_code()
    assert info.major == "1" and info.git_version.startswith("v1.")
    groups = client.ApisApi(kube).get_api_versions()
    assert [g.name for g in groups.groups] == ["discovery.k8s.io"]
    assert client.CoreApi(kube).get_api_versions().versions == ["v1"]


def test_bearer_token_required_when_configured(tmp_path):
    with FakeApiServer(token="s3cret") as server:
        good = config.new_client_from_config(
            config_file=server.write_kubeconfig(str(tmp_path / "good")))
        bad = config.new_client_from_config(
            config_file=server.write_kubeconfig(str(tmp_path / "bad"), token="wrong"))
        try:
            assert client.CoreV1Api(good).list_namespace().items == []
            with pytest.raises(ApiException) as info:
                client.CoreV1Api(bad).list_namespace()
            assert info.value.status == 401
        finally:
            good.close()
            bad.close()


def _http_get(api, path: str) -> str:
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    # de-chunk
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2:]
    return out.decode()


@pytest.mark.slow
def test_standalone_process_serves_a_state_file(tmp_path):
    state = tmp_path / "cluster.yaml"
    state.write_text(
        "apiVersion: v1\nkind: List\nitems:\n"
        "- apiVersion: v1\n  kind: Namespace\n  metadata: {name: default}\n"
        "- apiVersion: v1\n  kind: Service\n"
        "  metadata: {name: web, namespace: default}\n"
        "  spec: {clusterIP: 10.0.0.10, clusterIPs: [10.0.0.10]}\n"
        "---\n"
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
        "metadata: {name: web-1, namespace: default,"
        " labels: {kubernetes.io/service-name: web}}\n"
        "addressType: IPv4\nendpoints: null\n")
    proc = subprocess.Popen([sys.executable, "-m", "fastdns.testing.fakeapi",
                             "--port", "0", "--state", str(state)],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        url = line.split()[2]
        conf = client.Configuration(host=url)
        with client.ApiClient(conf) as api_client:
            core = client.CoreV1Api(api_client)
            assert [s.metadata.name for s in core.list_service_for_all_namespaces().items] == [
                "web"]
            disc = client.DiscoveryV1Api(api_client)
            assert disc.list_endpoint_slice_for_all_namespaces().items[0].endpoints is None
            # the controls over HTTP: compact, then an old rv gets the 410 line
            urllib.request.urlopen(urllib.request.Request(f"{url}/_fake/compact", method="POST"))
            resp = core.list_service_for_all_namespaces(
                watch=True, resource_version="1", timeout_seconds=1, _preload_content=False)
            assert raw_lines(resp)[0]["object"]["reason"] == "Expired"
            urllib.request.urlopen(urllib.request.Request(
                f"{url}/_fake/down?seconds=0.5", method="POST"))
            time.sleep(0.1)
            port = int(url.rsplit(":", 1)[1])
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            time.sleep(0.6)
            counts = json.loads(urllib.request.urlopen(f"{url}/_fake/requests").read())
            assert {"path": "/api/v1/services", "watch": True, "count": 1} in counts["requests"]
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


# -- HTTPS, rotating tokens, RBAC refusals ----------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"), ips=("127.0.0.1",),
                    dns_names=("kubernetes.default.svc",))


def _client(url: str, token: str | None = None, ca: str | None = None,
            prefix: str = "Bearer") -> client.ApiClient:
    conf = client.Configuration(host=url)
    if token:
        conf.api_key["BearerToken"] = f"{prefix} {token}"
    if ca:
        conf.ssl_ca_cert = ca
    conf.retries = False
    return client.ApiClient(conf)


def _status_of(call) -> dict:
    with pytest.raises(ApiException) as info:
        call()
    body = json.loads(info.value.body)
    assert body["code"] == info.value.status
    return body


def test_https_with_the_cluster_ca(pki, tmp_path):
    with FakeApiServer(tls=(pki.server_cert, pki.server_key), token="t0") as api:
        assert api.url == f"https://127.0.0.1:{api.port}"
        api.create("Namespace", {"metadata": {"name": "kube-system"}})
        # what a user's kubeconfig says: the server's CA and a token
        kc = api.write_kubeconfig(str(tmp_path / "kc"), ca_file=pki.ca_cert)
        with config.new_client_from_config(config_file=kc) as c:
            names = [n.metadata.name for n in client.CoreV1Api(c).list_namespace().items]
            assert names == ["kube-system"]
        # a client that does not trust the CA refuses the server's certificate
        with _client(api.url, "t0") as c, pytest.raises(ApiException) as e:
            client.CoreV1Api(c).list_namespace(_request_timeout=5)
        assert e.value.status == 0 and "CERTIFICATE_VERIFY_FAILED" in e.value.reason
        # plain HTTP to the TLS port gets no API answer
        with _client(api.url.replace("https:", "http:"), "t0") as c, \
                pytest.raises((ApiException, urllib3.exceptions.HTTPError)):
            client.CoreV1Api(c).list_namespace(_request_timeout=5)


def test_tls_certificate_names_its_addresses(pki):
    """The server certificate carries the SANs asked for, signed by the CA."""
    ctx = ssl.create_default_context(cafile=pki.ca_cert)
    with FakeApiServer(tls=(pki.server_cert, pki.server_key)) as api, \
            socket.create_connection(("127.0.0.1", api.port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="kubernetes.default.svc") as tls:
        sans = tls.getpeercert()["subjectAltName"]
    assert ("IP Address", "127.0.0.1") in sans
    assert ("DNS", "kubernetes.default.svc") in sans
    bad = ssl.create_default_context(cafile=pki.ca_cert)
    with FakeApiServer(tls=(pki.server_cert, pki.server_key)) as api, \
            socket.create_connection(("127.0.0.1", api.port), timeout=5) as raw, \
            pytest.raises(ssl.SSLCertVerificationError):
        bad.wrap_socket(raw, server_hostname="other.example").close()


def test_rotate_token_refuses_the_old_one(api):
    api.set_tokens("old")
    with _client(api.url, "old") as old, _client(api.url, "new") as new, \
            _client(api.url, "old", prefix="bearer") as lower:
        # the in-cluster loader of the Python client writes "bearer " in lower case
        assert client.CoreV1Api(lower).list_namespace().items
        assert _status_of(lambda: client.CoreV1Api(new).list_namespace()) == {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "Unauthorized", "reason": "Unauthorized", "code": 401}
        assert api.rotate_token("new") == "new" and api.token == "new"
        assert client.CoreV1Api(new).list_namespace().items
        assert _status_of(lambda: client.CoreV1Api(old).list_namespace())["code"] == 401
        # with a grace period the previous token works until it runs out
        fresh = api.rotate_token(grace=0.5)
        assert fresh not in ("old", "new") and api.token == fresh
        assert client.CoreV1Api(new).list_namespace().items
        time.sleep(0.6)
        assert _status_of(lambda: client.CoreV1Api(new).list_namespace())["code"] == 401
        with _client(api.url, fresh) as c:
            assert client.CoreV1Api(c).list_namespace().items
        api.set_tokens()  # authentication off: anyone, any token
        assert client.CoreV1Api(old).list_namespace().items


def test_end_watches_ends_streams_cleanly(api, kube):
    core = client.CoreV1Api(kube)
    rv = core.list_service_for_all_namespaces(_preload_content=False)
    rv = json.loads(rv.data)["metadata"]["resourceVersion"]
    resp = core.list_service_for_all_namespaces(
        watch=True, resource_version=rv, timeout_seconds=60, _preload_content=False)
    deadline = time.monotonic() + 5
    while api.open_watches < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    api.create("Service", svc("a", "10.0.0.1"))
    t0 = time.monotonic()
    api.end_watches()
    lines = raw_lines(resp)  # returns once the chunked stream has ended
    assert time.monotonic() - t0 < 5
    assert [(ev["type"], ev["object"]["metadata"]["name"]) for ev in lines] == [("ADDED", "a")]
    # a new watch is a normal one
    resp = core.list_service_for_all_namespaces(
        watch=True, resource_version=rv, timeout_seconds=1, _preload_content=False)
    assert [ev["type"] for ev in raw_lines(resp)] == ["ADDED"]


def test_forbid_answers_rbacs_403(api, kube):
    api.set_tokens("t")
    with _client(api.url, "t") as c, _client(api.url, "wrong") as wrong:
        core, disc = client.CoreV1Api(c), client.DiscoveryV1Api(c)
        api.forbid("services")
        assert _status_of(lambda: core.list_service_for_all_namespaces()) == {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": 'services is forbidden: User "system:serviceaccount:kube-system:coredns"'
                       ' cannot list resource "services" in API group "" at the cluster scope',
            "reason": "Forbidden", "details": {"kind": "services"}, "code": 403}
        st = _status_of(lambda: core.list_service_for_all_namespaces(
            watch=True, _preload_content=False))
        assert 'cannot watch resource "services"' in st["message"]
        st = _status_of(lambda: core.list_namespaced_service("default"))
        assert st["message"].endswith('cannot list resource "services" in API group "" '
                                      'in the namespace "default"')
        # authentication comes first: a bad token is a 401 even where RBAC refuses
        assert _status_of(lambda: client.CoreV1Api(wrong).list_service_for_all_namespaces(
            ))["code"] == 401
        # the other resources are still served
        assert core.list_namespace().items
        api.forbid("endpointslices", "watch")
        assert disc.list_endpoint_slice_for_all_namespaces().items == []
        st = _status_of(lambda: disc.list_endpoint_slice_for_all_namespaces(
            watch=True, _preload_content=False))
        assert st["message"].startswith(
            "endpointslices.discovery.k8s.io is forbidden: User "
            '"system:serviceaccount:kube-system:coredns" cannot watch resource '
            '"endpointslices" in API group "discovery.k8s.io" at the cluster scope')
        assert st["details"] == {"group": "discovery.k8s.io", "kind": "endpointslices"}
        api.allow("services")  # the ClusterRole is back
        assert core.list_service_for_all_namespaces().items == []
        api.allow()
        assert disc.list_endpoint_slice_for_all_namespaces(
            watch=True, timeout_seconds=1, _preload_content=False).status == 200


@pytest.mark.slow
def test_standalone_https_with_token_and_controls(pki):
    proc = subprocess.Popen([sys.executable, "-m", "fastdns.testing.fakeapi",
                             "--port", "0", "--token", "one", "--tls-cert", pki.server_cert,
                             "--tls-key", pki.server_key, "--forbid", "services"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on https://127.0.0.1:"), line
        url = line.split()[2]
        ctx = ssl.create_default_context(cafile=pki.ca_cert)

        def control(path: str) -> dict:
            req = urllib.request.Request(url + path, method="POST")
            return json.loads(urllib.request.urlopen(req, context=ctx, timeout=5).read())

        with _client(url, "one", pki.ca_cert) as c:
            core = client.CoreV1Api(c)
            assert _status_of(lambda: core.list_service_for_all_namespaces())["code"] == 403
            control("/_fake/allow?resource=services")
            assert core.list_service_for_all_namespaces().items == []
            assert control("/_fake/rotate-token?token=two")["token"] == "two"
            assert _status_of(lambda: core.list_namespace())["code"] == 401
        with _client(url, "two", pki.ca_cert) as c:
            assert client.CoreV1Api(c).list_namespace().items == []
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


def test_standalone_refuses_a_missing_certificate_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fastdns.testing.fakeapi",
                           "--tls-cert", str(tmp_path / "nope.crt"),
                           "--tls-key", str(tmp_path / "nope.key")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout == ""
