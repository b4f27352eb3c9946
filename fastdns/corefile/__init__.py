"""CoreDNS Corefile support: lexer, parser, typed configuration, checks.

``load_corefile(path)`` / ``parse_corefile(text, filename)`` give a
``Config`` of ``ServerBlock`` objects whose ``plugins`` map plugin names to
frozen dataclasses; every problem is a ``CorefileError`` naming file, line
and plugin. ``SUPPORTED`` tells which plugins fastdns runs today.
"""

from fastdns.corefile.config import (
    DEFAULT_DEMO_COREFILE,
    analyse,
    load_corefile,
    parse_corefile,
)
from fastdns.corefile.errors import CorefileError, Unsupported
from fastdns.corefile.model import (
    BindConfig,
    CacheConfig,
    Config,
    Consolidate,
    DebugConfig,
    ErrorsConfig,
    ForwardConfig,
    HealthConfig,
    HostsConfig,
    KubernetesConfig,
    LoadbalanceConfig,
    LogConfig,
    LogRule,
    LoopConfig,
    PluginConfig,
    PrometheusConfig,
    ReadyConfig,
    ReloadConfig,
    ServerBlock,
    Upstream,
    WhoamiConfig,
    group_by_listen,
    select_block,
)
from fastdns.corefile.support import SUPPORTED, is_runnable, not_running

__all__ = [
    "DEFAULT_DEMO_COREFILE", "SUPPORTED", "BindConfig", "CacheConfig", "Config", "Consolidate",
    "CorefileError", "DebugConfig", "ErrorsConfig", "ForwardConfig", "HealthConfig",
    "HostsConfig", "KubernetesConfig", "LoadbalanceConfig", "LogConfig", "LogRule",
    "LoopConfig", "PluginConfig", "PrometheusConfig", "ReadyConfig", "ReloadConfig",
    "ServerBlock", "Unsupported", "Upstream", "WhoamiConfig", "analyse", "group_by_listen",
    "is_runnable", "load_corefile", "not_running", "parse_corefile", "select_block",
]
