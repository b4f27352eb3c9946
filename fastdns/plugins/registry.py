"""The one table of plugins, in CoreDNS's ``plugin.cfg`` order (coredns/coredns
v1.14.7 ``plugin.cfg``).

Every Corefile directive CoreDNS knows has a row: the ones fastdns runs
declare their config, parser, stages and the rest (``spec.Plugin``); the
others are names only, so that a Corefile using them is "not implemented by
fastdns" rather than a typo. The order is CoreDNS's chain order (a plugin
feels the effects of those below it); the common external plugins that
CoreDNS builds can add come last, marked ``external``.

Everything that once kept its own list reads this table: the Corefile
parser (corefile/config.py: which directives parse, which repeat),
``check-corefile`` and ``serve`` (corefile/verdict.py: which run, which
answer), the worker's slow path (server/worker_plugins.py: the ``answer``
hooks), ``coredns -plugins`` (coredns_cli.py) and the metric labels
(control/metrics_labels.py: ``handler``, ``label_rank``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from fastdns.corefile import model as m
from fastdns.corefile import parsers as p
from fastdns.plugins import (
    acl,
    anyq,
    autopath,
    bufsize,
    cache,
    chaos,
    dns64,
    forward,
    header,
    hosts,
    ignored,
    kubernetes,
    minimal,
    nsid,
    rewrite,
    template,
    timeouts,
    whoami,
)
from fastdns.plugins.spec import Plugin

PLUGINS: tuple[Plugin, ...] = (
    Plugin("root"),
    ignored.METADATA,
    Plugin("geoip"),
    Plugin("cancel"),
    Plugin("proxyproto"),
    Plugin("quic"),
    Plugin("grpc_server"),
    Plugin("https"),
    Plugin("https3"),
    timeouts.PLUGIN,
    Plugin("multisocket"),
    Plugin("reload", "full", config=m.ReloadConfig, parse=p.parse_reload, stages=("setup",),
           handler=False, metrics=("coredns_reload_failed_total", "coredns_reload_version_info")),
    nsid.PLUGIN,
    bufsize.PLUGIN,
    Plugin("bind", "full", config=m.BindConfig, parse=p.parse_bind, stages=("setup",),
           merge=p.merge_bind, handler=False),
    Plugin("debug", "full", config=m.DebugConfig, parse=p.parse_debug, stages=("setup",),
           handler=False),
    ignored.TRACE,
    Plugin("ready", "full", config=m.ReadyConfig, parse=p.parse_ready,
           stages=("observability",), handler=False),
    Plugin("health", "full", config=m.HealthConfig, parse=p.parse_health,
           stages=("observability",), handler=False,
           metrics=("coredns_health_request_duration_seconds",
                    "coredns_health_request_failures_total")),
    ignored.PPROF,
    Plugin("shed"),
    Plugin("prometheus", "full", config=m.PrometheusConfig, parse=p.parse_prometheus,
           stages=("observability",),
           metrics=("coredns_dns_*", "coredns_build_info", "coredns_panics_total",
                    "coredns_plugin_enabled")),
    Plugin("errors", "full", config=m.ErrorsConfig, parse=p.parse_errors,
           stages=("slow_path", "observability")),
    Plugin("log", "full", config=m.LogConfig, parse=p.parse_log,
           stages=("fast_path", "slow_path", "observability"), merge=p.merge_log),
    ignored.DNSTAP,
    Plugin("local"),
    dns64.PLUGIN,
    anyq.PLUGIN,
    chaos.PLUGIN,
    Plugin("loadbalance", "full", config=m.LoadbalanceConfig, parse=p.parse_loadbalance,
           stages=("compile",)),
    Plugin("tsig"),
    rewrite.PLUGIN,
    autopath.PLUGIN,
    acl.PLUGIN,
    cache.PLUGIN,
    header.PLUGIN,
    Plugin("dnssec"),
    Plugin("tls"),
    minimal.PLUGIN,
    template.PLUGIN,
    Plugin("transfer"),
    hosts.PLUGIN,
    Plugin("route53"),
    Plugin("azure"),
    Plugin("clouddns"),
    Plugin("k8s_external"),
    kubernetes.PLUGIN,
    Plugin("file"),
    Plugin("auto"),
    Plugin("secondary"),
    Plugin("etcd"),
    Plugin("loop", "full", config=m.LoopConfig, parse=p.parse_loop,
           stages=("setup", "slow_path")),
    forward.PLUGIN,
    Plugin("grpc"),
    Plugin("erratic"),
    whoami.PLUGIN,
    Plugin("on"),
    Plugin("sign"),
    Plugin("view"),
    Plugin("nomad"),
    # external plugins, known by name
    Plugin("federation", external=True),
    Plugin("fanout", external=True),
    Plugin("alternate", external=True),
    Plugin("redisc", external=True),
)

BY_NAME: Mapping[str, Plugin] = MappingProxyType({x.name: x for x in PLUGINS})


def get(name: str) -> Plugin | None:
    """The row of directive ``name``; None for a name CoreDNS does not know (a typo)."""
    return BY_NAME.get(name)


def runs(name: str) -> bool:
    """Whether fastdns does what CoreDNS does for ``name``."""
    row = BY_NAME.get(name)
    return row is not None and row.runs


def accepted(name: str) -> bool:
    """Whether ``serve`` runs a Corefile with ``name`` (``ignored`` ones warn)."""
    row = BY_NAME.get(name)
    return row is not None and row.accepted


def reason(name: str) -> str:
    """Why ``name`` does not run (the text check-corefile and serve print)."""
    row = BY_NAME.get(name)
    return row.reason if row is not None else Plugin(name).reason


def by_rank() -> list[Plugin]:
    """The plugins with a ``label_rank``, in fastdns's answering-chain order."""
    return sorted((x for x in PLUGINS if x.label_rank is not None),
                  key=lambda x: x.label_rank or 0)


def owner(metric: str) -> Plugin | None:
    """The plugin that declares metric family ``metric`` (exactly or by ``prefix*``)."""
    for row in PLUGINS:
        for name in row.metrics:
            if metric == name or (name.endswith("*") and metric.startswith(name[:-1])):
                return row
    return None
