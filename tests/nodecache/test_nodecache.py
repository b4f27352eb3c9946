"""node-cache's command line and Corefile rendering (fastdns/nodecache/;
kubernetes/dns cmd/node-cache main.go and app/configmap.go).

The base Corefile is the one in deploy/nodelocaldns.yaml, with the
placeholders its header says to fill filled in, as an operator applies
it; node-cache's own placeholders are left for the render. The served test
runs `fastdns serve` with node-cache's flags: no init container renders
anything.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest
import yaml

from fastdns.coredns_cli import FlagError
from fastdns.corefile.config import parse_corefile
from fastdns.corefile.verdict import problems
from fastdns.nodecache import flags, render, sync
from tests.helpers import ROOT, Server, free_port, wait_for
from tests.upstreams import UpstreamThread

UPSTREAM_ARGS = ["-localip", "169.254.20.10,10.96.0.10", "-conf", "/etc/Corefile",
                 "-upstreamsvc", "kube-dns-upstream"]  # nodelocaldns.yaml's args


def manifest_base() -> str:
    """deploy/nodelocaldns.yaml's Corefile after the operator's sed (its header)."""
    docs = yaml.safe_load_all((ROOT / "deploy" / "nodelocaldns.yaml").read_text())
    cm = next(d for d in docs if d and d["kind"] == "ConfigMap"
              and d["metadata"]["name"] == "node-local-dns")
    text = cm["data"]["Corefile"]
    for a, b in (("__PILLAR__LOCAL__DNS__", "169.254.20.10"),
                 ("__PILLAR__DNS__DOMAIN__", "cluster.local"),
                 ("__PILLAR__DNS__SERVER__", "10.96.0.10")):
        text = text.replace(a, b)
    return text


def test_the_upstream_daemonsets_arguments():
    p, rest = flags.split(["--corefile", "/etc/coredns/Corefile", *UPSTREAM_ARGS])
    assert p is not None and rest == ["--corefile", "/etc/coredns/Corefile",
                                      "-conf", "/etc/Corefile"]
    assert p.local_ips == ["169.254.20.10", "10.96.0.10"] and p.upstream_svc == "kube-dns-upstream"
    assert (p.setup_interface, p.setup_iptables, p.skip_teardown) == (True, True, False)
    assert (p.base_corefile, p.health_port, p.sync_interval) == (
        "/etc/coredns/Corefile.base", "8080", 60.0)


@pytest.mark.parametrize("argv, attr, value", [
    (["-localip", "10.0.0.1", "-setupinterface=false"], "setup_interface", False),
    (["-localip=10.0.0.1", "--skipteardown"], "skip_teardown", True),
    (["-localip", "10.0.0.1", "-syncinterval", "1m"], "sync_interval", 60.0),
    (["-localip", "10.0.0.1", "-syncinterval=500ms"], "sync_interval", 0.5),
    (["-localip", "fd00::a,fd00::b", "-interfacename", "nld"], "interface_name", "nld"),
    (["-localip", "10.0.0.1", "-corefile", "/tmp/C", "-dns.port", "1053"], "dns_port", "1053"),
])
def test_go_flag_forms(argv, attr, value):
    p, _rest = flags.split(argv)
    assert getattr(p, attr) == value


def test_not_node_cache():
    argv = ["--corefile", "/etc/coredns/Corefile", "-conf", "/x", "-dns.port", "53"]
    assert flags.split(argv) == (None, argv)


@pytest.mark.parametrize("argv, message", [
    (["-localip", "10.0.0.300"], 'invalid localip specified - "10.0.0.300"'),
    (["-upstreamsvc", "x"], 'invalid localip specified - ""'),
    (["-localip", "10.0.0.1,fd00::1"], 'unexpected IP Family for localIP - "fd00::1"'),
    (["-localip", "10.0.0.1", "-health-port", "http"], "invalid healthcheck port"),
    (["-localip", "10.0.0.1", "-setupiptables=maybe"], 'invalid boolean value "maybe"'),
    (["-localip"], "flag needs an argument: -localip"),
])
def test_flag_errors(argv, message):
    with pytest.raises(FlagError, match=message):
        flags.split(argv)


def params(**kw) -> flags.NodeCacheParams:
    p, _ = flags.split(["-localip", "169.254.20.10,10.96.0.10", "-upstreamsvc",
                        "kube-dns-upstream"])
    assert p is not None
    for k, v in kw.items():
        setattr(p, k, v)
    return p


ENV = {"KUBE_DNS_UPSTREAM_SERVICE_HOST": "10.96.0.20"}


def test_render_the_manifest_as_node_cache_does():
    text = render.render(manifest_base(), params(), ENV)
    assert "__PILLAR__" not in text
    cfg = parse_corefile(text, "Corefile")
    assert problems(cfg) == []
    by_zone = {b.zones[0]: b for b in cfg.servers}
    cluster = by_zone["cluster.local."]
    assert cluster.plugins["bind"].addresses == ("169.254.20.10", "10.96.0.10")
    assert [u.addr for u in cluster.plugins["forward"].to] == ["10.96.0.20:53"]
    assert cluster.plugins["forward"].force_tcp
    assert by_zone["."].plugins["forward"].resolv_conf == ("/etc/resolv.conf",)


def test_kube_dns_configmap_upstreams_and_stub_domains(tmp_path):
    d = tmp_path / "kube-dns"
    d.mkdir()
    (d / "upstreamNameservers").write_text(json.dumps(["1.1.1.1", "8.8.8.8"]))
    (d / "stubDomains").write_text(json.dumps({"corp.test": ["10.1.0.1"],
                                               "acme.test": ["10.2.0.1", "10.2.0.2:5353"]}))
    (d / ".hidden").write_text("not json")
    text = render.render(manifest_base(), params(), ENV, render.read_kubedns(str(d)))
    cfg = parse_corefile(text, "Corefile")
    assert problems(cfg) == []
    by_zone = {b.zones[0]: b for b in cfg.servers}
    assert [u.addr for u in by_zone["."].plugins["forward"].to] == ["1.1.1.1:53", "8.8.8.8:53"]
    stub = by_zone["acme.test."]
    assert [u.addr for u in stub.plugins["forward"].to] == ["10.2.0.1:53", "10.2.0.2:5353"]
    assert stub.plugins["bind"].addresses == ("169.254.20.10", "10.96.0.10")
    assert stub.plugins["cache"].success_ttl == 30
    # configmap.go's stub block, in sorted order (Go ranges over a map at random)
    assert text.index("acme.test:53 {") < text.index("corp.test:53 {")
    assert text.endswith("\ncorp.test:53 {\n    errors\n    cache 30\n"
                         "    bind 169.254.20.10 10.96.0.10\n    forward . 10.1.0.1\n}\n")


def test_custom_upstreams_turn_the_tcp_block_into_udp():
    base = (".:53 {\n    bind __PILLAR__LOCAL__DNS__\n" + render.UPSTREAM_TCP_BLOCK + "}\n")
    text = render.render(base, params(), ENV, render.KubeDNSConfig({}, ("1.1.1.1",)))
    assert "force_tcp" not in text and "forward . 1.1.1.1\n" in text
    plain = render.render(base, params(), ENV)
    assert "forward . /etc/resolv.conf {\n            force_tcp" in plain


@pytest.mark.parametrize("files, env, message", [
    ({}, {}, "no ClusterIP for the upstream Service kube-dns-upstream: "
             "$KUBE_DNS_UPSTREAM_SERVICE_HOST is ''"),
    ({"stubDomains": "{not json"}, ENV, "kube-dns configmap"),
    ({"stubDomains": '{"a.test": "10.0.0.1"}'}, ENV, "not a map of lists of strings"),
    ({"upstreamNameservers": '["not-an-address"]'}, ENV, "invalid upstream nameservers"),
    ({"stubDomains": '{"a.test": ["quic://10.0.0.1"]}'}, ENV,
     "invalid nameservers for the stub domain a.test"),
])
def test_render_errors_are_one_line(tmp_path, files, env, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(render.RenderError) as e:
        render.render(manifest_base(), params(), env, render.read_kubedns(str(tmp_path)))
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_sync_rewrites_on_change_keeps_the_last_good_and_signals(tmp_path):
    base, out, d = tmp_path / "Corefile.base", tmp_path / "Corefile", tmp_path / "kube-dns"
    d.mkdir()
    base.write_text(".:53 {\n    bind __PILLAR__LOCAL__DNS__\n"
                    "    forward . __PILLAR__UPSTREAM__SERVERS__\n}\n")
    reloads: list[int] = []
    s = sync.CorefileSync(params(base_corefile=str(base), kubedns_cm=str(d),
                                 reload_with_signal=True), str(out), ENV, period=0.05,
                          reload=lambda: reloads.append(1))
    assert s.once() and "forward . /etc/resolv.conf" in out.read_text()
    assert not s.once()  # the same text: not written again
    s.start()
    try:
        (d / "upstreamNameservers").write_text('["9.9.9.9"]')
        assert wait_for(lambda: "forward . 9.9.9.9" in out.read_text(), timeout=5)
        assert wait_for(lambda: reloads, timeout=2)
        (d / "upstreamNameservers").write_text('["bogus"]')  # refused: the file stays
        time.sleep(0.3)
        assert "forward . 9.9.9.9" in out.read_text()
    finally:
        s.stop()


def test_served_with_node_caches_flags(tmp_path, monkeypatch):
    """`fastdns serve` with node-cache's command line: the Corefile rendered
    from the base (the cluster block forwards to $KUBE_DNS_UPSTREAM_SERVICE_HOST),
    then re-rendered when the kube-dns ConfigMap gains a stub domain, and
    reloaded on its own signal (-reloadwithsignal)."""
    th = UpstreamThread()
    try:
        try:
            cluster = th.start({"kubernetes.default.svc.cluster.local.": [("A", "10.96.0.1")]},
                               zone="cluster.local.", host="127.0.53.10", port=53)
            stub = th.start({"www.stub.test.": [("A", "192.0.2.50")]}, zone="stub.test.",
                            host="127.0.53.12", port=53)
        except OSError as e:
            pytest.skip(f"cannot bind the test upstreams on port 53: {e}")
        port = free_port(v6=False)
        base, out, d = tmp_path / "Corefile.base", tmp_path / "Corefile", tmp_path / "kube-dns"
        d.mkdir()
        base.write_text(f"cluster.local:{port} {{\n    bind __PILLAR__LOCAL__DNS__\n"
                        f"    forward . __PILLAR__CLUSTER__DNS__\n}}\n"
                        f".:{port} {{\n    bind __PILLAR__LOCAL__DNS__\n"
                        f"    forward . __PILLAR__UPSTREAM__SERVERS__\n}}\n")
        monkeypatch.setenv("KUBE_DNS_UPSTREAM_SERVICE_HOST", "127.0.53.10")
        srv = Server(tmp_path, ["-localip", "127.0.0.1", "-basecorefile", str(base),
                                "-corefile", str(out), "-kubednscm", str(d),
                                "-upstreamsvc", "kube-dns-upstream", "-setupinterface=false",
                                "-setupiptables=false", "-reloadwithsignal", "-dns.port",
                                str(port), "--workers", "1"], port)
        try:
            srv.wait_answering()
            assert "forward . 127.0.53.10" in out.read_text()
            assert cluster.count("kubernetes.default.svc.cluster.local.") >= 1
            (d / "stubDomains").write_text('{"stub.test": ["127.0.53.12"]}')

            def stub_answers():
                try:
                    r = dns.query.udp(dns.message.make_query("www.stub.test.", "A"),
                                      "127.0.0.1", port=port, timeout=0.5)
                except Exception:  # noqa: BLE001 - not yet
                    return False
                return r.rcode() == dns.rcode.NOERROR and bool(r.answer)

            assert wait_for(stub_answers, timeout=25), srv.log()[-3000:]
            assert f"stub.test:{port} {{" in out.read_text()
            assert stub.count("www.stub.test.") >= 1
        finally:
            srv.stop_and_sweep()
    finally:
        th.close()


def test_a_bad_first_render_is_one_line_and_exit_1(tmp_path, monkeypatch):
    from tests.helpers import run_serve

    monkeypatch.delenv("KUBE_DNS_SERVICE_HOST", raising=False)
    base = tmp_path / "Corefile.base"
    base.write_text(".:53 {\n    forward . __PILLAR__CLUSTER__DNS__\n}\n")
    r = run_serve(["-localip", "127.0.0.1", "-basecorefile", str(base),
                   "-corefile", str(tmp_path / "C")])
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        "node-cache: no ClusterIP for the upstream Service kube-dns: "
        "$KUBE_DNS_SERVICE_HOST is ''"), r.stderr
    assert not Path(tmp_path / "C").exists()
