"""KubeSource additions for issue 5: service kinds for the programming-latency
metric, relists that keep unchanged objects, backoff after a healthy watch."""

from __future__ import annotations

import time

from fastdns.control.kube import KubeSource
from tests.control.test_kube_source import api, eps, run_source, svc  # noqa: F401 - fixtures

__all__ = ["api", "run_source"]


def headless(name: str, *, selector: bool) -> dict:
    body = svc(name, "None")
    body["spec"]["clusterIPs"] = ["None"]
    if selector:
        body["spec"]["selector"] = {"app": name}
    return body


def test_service_kind_follows_the_selector(api, run_source):
    api.create("Service", headless("sel", selector=True))
    api.create("Service", headless("nosel", selector=False))
    src, rec = run_source()
    services = {o.name: o for k, _, o in rec.since(0) if k == "Service"}
    assert src.service_kind(services["web"]) == "cluster_ip"
    assert src.service_kind(services["sel"]) == "headless_with_selector"
    assert src.service_kind(services["nosel"]) == "headless_without_selector"
    # a selector added later moves it (a MODIFIED DNS does not see)
    n = len(rec)
    api.update("Service", headless("nosel", selector=True))
    time.sleep(0.3)
    assert len(rec) == n  # DNS-invisible: not delivered
    assert src.service_kind(services["nosel"]) == "headless_with_selector"


def test_relist_keeps_the_objects_it_already_delivered(api, run_source):
    for i in range(5):
        api.create("EndpointSlice", eps(f"s-{i}", "web", f"10.2.0.{i}"))
    src, rec = run_source()
    first = {o.key: o for k, _, o in rec.since(0) if k == "EndpointSlice"}
    n = len(rec)
    api.hang_watches()
    api.update("EndpointSlice", eps("s-0", "web", "10.2.1.0"))
    api.compact()
    assert rec.wait(lambda ev: len(ev) > n, 4.0)
    time.sleep(0.2)
    assert [(t, o.name) for _, t, o in rec.since(n)] == [("MODIFIED", "s-0")]
    known = next(w for w in src._watches if w.kind == "EndpointSlice").known
    # unchanged slices are the very objects delivered before: one copy of the state
    assert all(known[k] is first[k] for k in first if k[1] != "s-0")
    assert known[("default", "s-0")] is not first[("default", "s-0")]


def test_a_watch_that_worked_retries_quickly_when_it_breaks(api, run_source):
    """Backoff grows over consecutive failures only: after a healthy stream, the
    first retry waits the base delay again."""
    src, rec = run_source(backoff_base=0.05, backoff_cap=2.0)
    # six failures in a row: the delay grows to ~1.6 s; without the reset the
    # next retry would wait 1-2 s
    api.fail_next(6, 500, path="/api/v1/services")
    api.set_down(True)
    api.set_down(False)
    n = len(rec)
    api.create("Service", svc("later", "10.0.0.44"))
    assert rec.wait(lambda ev: len(ev) > n, 10.0)
    time.sleep(1.2)  # the new stream lasts: a healthy watch
    n = len(rec)
    t0 = time.monotonic()
    api.set_down(True)
    api.set_down(False)
    api.create("Service", svc("quick", "10.0.0.45"))
    assert rec.wait(lambda ev: any(o.name == "quick" for _, _, o, _ in ev[n:]), 5.0)
    assert time.monotonic() - t0 < 0.6, "the first retry after a healthy watch was slow"
    assert isinstance(src, KubeSource)


def test_corefile_options_reach_the_source_config(tmp_path):
    """endpoint, tls, kubeconfig, pods verified, labels and startup_timeout of the
    Corefile's kubernetes block (CoreDNS precedence: --kubeconfig, then the
    block's kubeconfig, then endpoint + tls, then in-cluster)."""
    from fastdns.control.process import kube_config, startup_timeout
    from fastdns.corefile import config as corefile

    text = ("cluster.local:53 {\n"
            "    kubernetes cluster.local {\n"
            "        endpoint https://10.0.0.1:6443\n"
            "        tls /c.pem /k.pem /ca.pem\n"
            "        pods verified\n"
            "        labels app=web\n"
            "        startup_timeout 2s\n"
            "    }\n"
            "}\n")
    cfg = corefile.parse_corefile(text, "Corefile")
    kc = kube_config(cfg, None)
    assert kc.endpoint == "https://10.0.0.1:6443" and kc.kubeconfig is None
    assert (kc.tls_cert, kc.tls_key, kc.tls_ca) == ("/c.pem", "/k.pem", "/ca.pem")
    assert kc.pods_verified and kc.kinds()[-1] == "Pod"
    assert kc.label_selector == "app=web"
    assert startup_timeout(cfg) == 2.0
    assert kube_config(cfg, "/flag.yaml").kubeconfig == "/flag.yaml"
    with_file = text.replace("        pods verified\n", "        kubeconfig /kc.yaml ctx\n")
    kc = kube_config(corefile.parse_corefile(with_file, "Corefile"), None)
    assert (kc.kubeconfig, kc.context, kc.pods_verified) == ("/kc.yaml", "ctx", False)
    assert kc.kinds() == ("Namespace", "Service", "EndpointSlice")
    default = corefile.parse_corefile("cluster.local:53 {\n    kubernetes\n}\n", "Corefile")
    assert startup_timeout(default) == 5.0
