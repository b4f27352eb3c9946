"""Cluster state input: kubectl List / multi-document YAML / JSON / directories, and events."""

import json
import os

import pytest

from fastdns.zone.objects import Endpoint, EndpointSlice, Namespace, Pod, Service, ServicePort
from fastdns.zone.state import Affected, ClusterState, StateError, demo_path, load_state

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SVC = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "prod"},
       "spec": {"clusterIP": "10.0.0.1", "ports": [{"name": "http", "port": 80}]}}
SLICE = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "web-x", "namespace": "prod",
                      "labels": {"kubernetes.io/service-name": "web"}},
         "addressType": "IPv4", "endpoints": [{"addresses": ["10.1.0.1"]}],
         "ports": [{"name": "http", "port": 8080}]}


def test_demo_state_tells_the_walkthrough():
    s = load_state(demo_path())
    assert {("default", "nginx"), ("default", "nginx1"), ("default", "kubernetes"),
            ("kube-system", "kube-dns")} <= set(s.services)
    assert s.services[("default", "kubernetes")].cluster_ips == ("10.96.0.1",)
    assert [p.name for p in s.services[("default", "kubernetes")].ports] == ["https"]
    kdns = s.services[("kube-system", "kube-dns")]
    assert kdns.cluster_ips == ("10.96.0.10",)
    assert {p.name for p in kdns.ports} == {"dns", "dns-tcp", "metrics"}
    assert len(s.slices_of("kube-system", "kube-dns")[0].endpoints) == 2
    assert {p.name for p in s.pods.values()} >= {"nginx", "nginx1"}
    kinds = {(v.type, v.headless, len(v.cluster_ips)) for v in s.services.values()}
    assert ("ClusterIP", True, 0) in kinds and ("ClusterIP", False, 2) in kinds
    assert ("ExternalName", False, 0) in kinds
    assert len({ns for ns, _ in s.services}) >= 3
    hosts = {e.hostname for sl in s.slices_of("shop", "web") for e in sl.endpoints}
    assert {"web-0", "web-1"} <= hosts


def test_list_multidoc_json_and_directory_agree(tmp_path):
    lst = {"apiVersion": "v1", "kind": "List", "items": [SVC, SLICE]}
    (tmp_path / "a.json").write_text(json.dumps(lst))
    import yaml

    (tmp_path / "b.yaml").write_text(yaml.safe_dump_all([SVC, SLICE]))
    typed = {"apiVersion": "v1", "kind": "ServiceList",
             "items": [{k: v for k, v in SVC.items() if k not in ("kind", "apiVersion")}]}
    (tmp_path / "c.yml").write_text(yaml.safe_dump(typed))
    a = load_state(tmp_path / "a.json")
    b = load_state(tmp_path / "b.yaml")
    c = load_state(tmp_path / "c.yml")
    assert a.services == b.services == c.services
    assert a.slices == b.slices
    d = load_state(tmp_path)  # the directory: all three files
    assert d.services == a.services and d.slices == a.slices


def test_fixture_with_typed_lists_and_unknown_kinds():
    s = load_state(os.path.join(HERE, "zonetests", "cluster.yaml"))
    assert ("testns", "hdls1") in s.services
    assert "testns" in s.namespaces
    assert all(isinstance(o, Pod) for o in s.pods.values())  # the Deployment was skipped


@pytest.mark.parametrize(("doc", "words"), [
    ({"kind": "Service", "metadata": {"name": "bad", "namespace": "ns"},
      "spec": {"ports": [{"port": "eighty"}]}}, ["Service ns/bad", "eighty"]),
    ({"kind": "EndpointSlice", "metadata": {"name": "s1", "namespace": "ns"},
      "endpoints": "nope"}, ["EndpointSlice ns/s1", "endpoints"]),
    ({"kind": "Service", "metadata": {"namespace": "ns"}}, ["Service", "metadata.name"]),
    ({"kind": "List", "items": [SVC, 42]}, ["item 1"]),
])
def test_bad_object_names_file_and_object(tmp_path, doc, words):
    p = tmp_path / "state.yaml"
    import yaml

    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(StateError) as exc:
        load_state(p)
    msg = str(exc.value)
    assert str(p) in msg
    for w in words:
        assert w in msg


def test_bad_syntax_names_the_file(tmp_path):
    (tmp_path / "x.yaml").write_text("kind: List\nitems: [\n")
    (tmp_path / "y.json").write_text("{nope")
    for f in ("x.yaml", "y.json"):
        with pytest.raises(StateError, match=f):
            load_state(tmp_path / f)
    with pytest.raises(StateError, match="cannot read"):
        load_state(tmp_path / "missing.yaml")


def _svc(name="web", ips=("10.0.0.1",)):
    return Service("prod", name, "ClusterIP", ips, False, None, (ServicePort("http", "TCP", 80),))


def _slice(name="web-x", svc="web", addrs=("10.1.0.1",)):
    return EndpointSlice("prod", name, svc, "IPv4",
                         tuple(Endpoint((a,), True, None, None, None) for a in addrs), ())


def test_apply_reports_affected_services():
    s = ClusterState()
    a = s.apply("ADDED", _svc())
    assert a.services == {("prod", "web")} and a.namespaces == {"prod"}
    assert s.apply("ADDED", Namespace("prod")) == Affected()  # existed through the Service
    assert s.apply("MODIFIED", _svc()) == Affected()  # no change: nothing to do
    assert not s.apply("MODIFIED", _svc())
    a = s.apply("ADDED", _slice())
    assert a.services == {("prod", "web")}
    # a slice relabelled to another service touches both
    a = s.apply("MODIFIED", _slice(svc="api"))
    assert a.services == {("prod", "web"), ("prod", "api")}
    assert [sl.name for sl in s.slices_of("prod", "api")] == ["web-x"]
    assert s.slices_of("prod", "web") == []
    a = s.apply("DELETED", ("EndpointSlice", ("prod", "web-x")))
    assert a.services == {("prod", "api")} and not s.slices
    a = s.apply("ADDED", Pod("prod", "p", ("10.1.0.9",), "Running"))
    assert a.pod_namespaces == {"prod"} and not a.services
    a = s.apply("DELETED", _svc())
    assert a.services == {("prod", "web")}
    assert not a.namespaces  # the Namespace object keeps it alive
    a = s.apply("DELETED", ("Namespace", "prod"))
    assert a.namespaces == {"prod"}
    merged = Affected()
    merged |= a
    merged |= s.apply("ADDED", _svc("other"))
    assert merged.services == {("prod", "other")} and merged.namespaces == {"prod"}


def test_apply_rejects_nonsense():
    s = ClusterState()
    with pytest.raises(ValueError):
        s.apply("BOOKMARK", _svc())
    with pytest.raises(ValueError):
        s.apply("ADDED", ("Service", ("a", "b")))
    with pytest.raises(TypeError):
        s.apply("ADDED", {"kind": "Service"})
    with pytest.raises(StateError):
        s.apply("DELETED", ("Deployment", ("a", "b")))


def test_gen_cluster_writes_loadable_state(tmp_path):
    """bench/gen_cluster.py (also used by other benchmarks) writes the --state format."""
    import subprocess
    import sys

    gen = os.path.join(HERE, os.pardir, "bench", "gen_cluster.py")
    for name in ("c.json", "c.yaml"):
        out = tmp_path / name
        subprocess.run([sys.executable, gen, "--services", "40", "--endpoints-per-service", "3",
                        "--headless-share", "0.5", "--dualstack-share", "0.5", "-o", str(out)],
                       check=True)
        s = load_state(out)
        assert len(s.services) == 40 and len(s.pods) >= 120
        assert any(v.headless for v in s.services.values())
        assert any(len(v.cluster_ips) == 2 for v in s.services.values())
        assert sum(len(sl.endpoints) for sl in s.slices.values()) >= 120
