"""The plugin registry: one table that the parser, the verdict, the worker and the metrics read.

The values the old parallel tables held are pinned here once, as what the
registry's fields must still give (a plugin added later changes them
through its row, and this test with it).
"""

from __future__ import annotations

import dns.message

from fastdns.control import metrics as m
from fastdns.control import metrics_labels as ml
from fastdns.corefile.config import parse_corefile
from fastdns.corefile.errors import Unsupported
from fastdns.corefile.verdict import problems, warnings
from fastdns.plugins import registry


def test_one_row_per_name_in_plugin_cfg_order():
    names = [p.name for p in registry.PLUGINS]
    assert len(names) == len(set(names))
    external = [p.external for p in registry.PLUGINS]
    assert external == sorted(external)  # plugin.cfg first, then the external ones
    assert names.index("cache") < names.index("hosts") < names.index("kubernetes") \
        < names.index("forward") < names.index("whoami")
    # coredns/coredns v1.14.7 plugin.cfg, in its order (rewrite, autopath and acl
    # sit before cache there; tls after dnssec), then the external names
    assert names == """
        root metadata geoip cancel proxyproto quic grpc_server https https3 timeouts
        multisocket reload nsid bufsize bind debug trace ready health pprof shed prometheus
        errors log dnstap local dns64 any chaos loadbalance tsig rewrite autopath acl cache
        header dnssec tls minimal template transfer hosts route53 azure clouddns k8s_external
        kubernetes file auto secondary etcd loop forward grpc erratic whoami on sign view
        nomad federation fanout alternate redisc""".split()


def test_fields_give_what_the_old_tables_held():
    runs = {p.name for p in registry.PLUGINS if p.runs}
    assert runs == {"errors", "health", "ready", "kubernetes", "prometheus", "reload",
                    "loadbalance", "bind", "loop", "debug", "forward", "cache", "log",
                    "hosts", "whoami", "timeouts", "bufsize", "chaos", "template", "autopath",
                    "acl", "rewrite", "any", "header", "minimal", "nsid", "dns64"}
    assert {p.name for p in registry.PLUGINS if p.merge is not None} == {"log", "bind",
                                                                         "template", "acl",
                                                                         "rewrite"}
    assert [p.name for p in registry.by_rank()] == [
        "kubernetes", "hosts", "whoami", "cache", "forward", "chaos",
        "template"]  # the metric label chain
    assert [p.name for p in registry.by_rank() if p.answers] == [
        "kubernetes", "hosts", "whoami", "forward", "chaos", "template"]  # a block needs one
    assert {p.name for p in registry.PLUGINS if p.runs and not p.handler} == {
        "bind", "health", "ready", "reload", "debug", "timeouts"}
    assert all(p.stages for p in registry.PLUGINS if p.runs)  # serve wires every one
    assert [p.name for p in registry.PLUGINS if p.contributor is not None] == ["hosts"]
    assert [p.name for p in registry.PLUGINS if p.answer is not None] == ["chaos", "whoami"]
    assert [p.name for p in registry.PLUGINS if p.before is not None] == [
        "nsid", "bufsize", "dns64", "any", "rewrite", "autopath", "acl", "header",
        "minimal", "template"]


def test_verdict_and_labels_read_the_rows():
    cfg = parse_corefile(".:53 {\n  cache\n  errors\n}\n", "C")
    [p] = problems(cfg)
    assert isinstance(p, Unsupported) and str(p) == (
        "C:1: server block .: no kubernetes, hosts, whoami, forward, chaos or template plugin: "
        "nothing would "
        "answer its queries")
    assert warnings(cfg) == []
    both = parse_corefile(".:53 {\n  bind 127.0.0.1\n  cache\n  forward . 192.0.2.1\n"
                          "  health\n}\n", "C")
    [labels] = ml.blocks_from_config(both)
    assert labels.answering_plugin == "cache" and labels.enabled == ["cache", "forward"]


def test_every_coredns_metric_has_one_owner():
    config = parse_corefile(".:53 {\n  kubernetes cluster.local\n  forward . 192.0.2.1\n"
                            "  cache\n  prometheus\n  reload\n  health\n}\n", "C")
    collector = m.DnsCollector([], ml.blocks_from_config(config), process_metrics=False)
    collector.values.set_corefile("x")
    names = {fam.name for fam in collector.collect()}
    coredns = {n for n in names if n.startswith("coredns_")}
    assert len(coredns) > 20
    for name in coredns:
        # prometheus_client strips _total from counter family names
        owner = registry.owner(name) or registry.owner(name + "_total")
        assert owner is not None, name


def test_worker_takes_hooks_from_the_rows(monkeypatch):
    """A row's ``answer`` and ``prelookup`` reach the worker with no other change."""
    from fastdns.plugins.spec import Plugin
    from fastdns.server.worker_plugins import WorkerPlugins

    capsule = object()
    row = Plugin("whoami", "full", stages=("fast_path", "slow_path"),
                 answer=lambda data, q, addr, tcp, block: b"answered",
                 prelookup=lambda config: capsule)
    monkeypatch.setattr(registry, "PLUGINS", tuple(
        row if p.name == "whoami" else p for p in registry.PLUGINS))

    class Fast:
        hook: object = "unset"

        def set_logger(self, mask, batch):
            pass

        def set_prelookup(self, hook):
            self.hook = hook

    plugins = WorkerPlugins(parse_corefile("a.test:53 {\n  whoami\n}\n", "C"))
    fast = Fast()
    plugins.fast_path(fast)
    assert fast.hook == [capsule]
    data = dns.message.make_query("x.a.test.", "A").to_wire()
    assert plugins.intercept(data, ("127.0.0.1", 5), False, 53) == b"answered"
    WorkerPlugins(parse_corefile("a.test:53 {\n  hosts\n}\n", "C")).fast_path(fast)
    assert fast.hook is None  # a reload without the plugin takes the hook away
