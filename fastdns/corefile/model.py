"""Typed configuration: one small frozen dataclass per plugin, then blocks.

Defaults are CoreDNS's (cited per field). Durations are float seconds.
``source`` (file, line of the directive) is kept for messages but left out
of equality, so a test can compare a parsed config with a hand-written one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

Source = tuple[str, int]


@dataclass(frozen=True)
class PluginConfig:
    name: ClassVar[str] = ""
    source: Source = field(default=("", 0), compare=False, repr=False, kw_only=True)


@dataclass(frozen=True)
class Consolidate:
    period: float
    pattern: str
    level: str = "error"


@dataclass(frozen=True)
class ErrorsConfig(PluginConfig):
    name: ClassVar[str] = "errors"
    consolidate: tuple[Consolidate, ...] = ()
    stacktrace: bool = False  # panicRecoveryStacktrace


@dataclass(frozen=True)
class HealthConfig(PluginConfig):
    name: ClassVar[str] = "health"
    addr: str = ":8080"  # plugin/health/health.go: empty -> ":8080"
    lameduck: float = 0.0


@dataclass(frozen=True)
class ReadyConfig(PluginConfig):
    name: ClassVar[str] = "ready"
    addr: str = ":8181"


@dataclass(frozen=True)
class PrometheusConfig(PluginConfig):
    name: ClassVar[str] = "prometheus"
    addr: str = "localhost:9153"  # plugin/metrics/metrics.go defaultAddr


@dataclass(frozen=True)
class KubernetesConfig(PluginConfig):
    name: ClassVar[str] = "kubernetes"
    zones: tuple[str, ...]
    endpoint: tuple[str, ...] = ()
    tls: tuple[str, str, str] | None = None  # cert, key, cacert
    kubeconfig: tuple[str, str] | None = None  # path, context ("" = current)
    namespaces: tuple[str, ...] = ()
    labels: str | None = None
    namespace_labels: str | None = None
    pods: str = "disabled"
    endpoint_pod_names: bool = False
    ttl: int = 5
    noendpoints: bool = False
    fallthrough: tuple[str, ...] = ()  # () = off, (".",) = every zone
    ignore_empty_service: bool = False
    startup_timeout: float = 5.0
    upstream: tuple[str, ...] = ()  # deprecated in CoreDNS, accepted and ignored
    apiserver_qps: float = 0.0  # 0: unlimited (control/apilimit.py)
    apiserver_burst: int = 0
    apiserver_max_inflight: int = 0


@dataclass(frozen=True)
class Upstream:
    transport: str  # "dns" or "tls"
    host: str  # an IP address
    port: int
    tls_servername: str | None = None

    @property
    def addr(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ForwardConfig(PluginConfig):
    name: ClassVar[str] = "forward"
    from_zone: str
    to: tuple[Upstream, ...]
    resolv_conf: tuple[str, ...] = ()  # the resolv.conf paths the TOs came from
    except_zones: tuple[str, ...] = ()
    force_tcp: bool = False
    prefer_udp: bool = False
    expire: float = 10.0
    max_fails: int = 2
    max_connect_attempts: int = 0
    max_idle_conns: int = 0
    tls: tuple[str, ...] | None = None
    tls_servername: str | None = None
    policy: str = "random"
    health_check: float = 0.5
    health_check_no_rec: bool = False
    health_check_domain: str = "."
    max_concurrent: int = 0
    next_rcodes: tuple[int, ...] = ()
    failover_rcodes: tuple[int, ...] = ()
    failfast_all_unhealthy_upstreams: bool = False
    read_timeout: float | None = None  # None: the forwarder's 2 s
    max_age: float = 0.0  # 0: a connection lives as long as it is used
    source_address: str | None = None


@dataclass(frozen=True)
class CacheConfig(PluginConfig):
    """plugin/cache/cache.go New(): capacity 10000, success TTL <= 3600 s,
    denial TTL <= 1800 s, minimum TTLs 5 s, prefetch window 1m at 10%,
    SERVFAIL cached 5 s."""

    name: ClassVar[str] = "cache"
    zones: tuple[str, ...]
    success_capacity: int = 10000
    success_ttl: int = 3600
    success_minttl: int = 5
    denial_capacity: int = 10000
    denial_ttl: int = 1800
    denial_minttl: int = 5
    prefetch: int = 0
    prefetch_duration: float = 60.0
    prefetch_percentage: int = 10
    serve_stale: float = 0.0  # 0 = off; `serve_stale` alone = 1h
    serve_stale_verify: bool = False
    serve_stale_verify_timeout: float = 0.0  # 0: wait for the upstream's own timeout
    serve_stale_ttl: int = 0  # the TTL of a stale answer (RESPONSE_TTL)
    serve_stale_recheck: float = 0.0  # FAILURE_RECHECK: 0 retries at every stale hit
    servfail_ttl: float = 5.0
    disable_success: tuple[str, ...] = ()
    disable_denial: tuple[str, ...] = ()
    keepttl: bool = False


@dataclass(frozen=True)
class LoopConfig(PluginConfig):
    name: ClassVar[str] = "loop"
    zone: str = "."


@dataclass(frozen=True)
class ReloadConfig(PluginConfig):
    name: ClassVar[str] = "reload"
    interval: float = 30.0
    jitter: float = 15.0  # capped at interval/2, as reload/setup.go does


@dataclass(frozen=True)
class LoadbalanceConfig(PluginConfig):
    name: ClassVar[str] = "loadbalance"
    policy: str = "round_robin"


# plugin/log/log.go; replacer.EmptyValue is "-".
COMMON_LOG_FORMAT = ('{remote}:{port} - {>id} "{type} {class} {name} {proto} {size} {>do} '
                     '{>bufsize}" {rcode} {>rflags} {rsize} {duration}')
COMBINED_LOG_FORMAT = COMMON_LOG_FORMAT + ' "{>opcode}"'
DEFAULT_LOG_FORMAT = COMMON_LOG_FORMAT


@dataclass(frozen=True)
class LogRule:
    name: str = "."
    format: str = DEFAULT_LOG_FORMAT
    classes: tuple[str, ...] = ("all",)


@dataclass(frozen=True)
class LogConfig(PluginConfig):
    name: ClassVar[str] = "log"
    rules: tuple[LogRule, ...] = (LogRule(),)


@dataclass(frozen=True)
class BindConfig(PluginConfig):
    name: ClassVar[str] = "bind"
    addresses: tuple[str, ...]  # IPs to listen on, interfaces resolved, `except` removed


@dataclass(frozen=True)
class HostsConfig(PluginConfig):
    name: ClassVar[str] = "hosts"
    zones: tuple[str, ...]
    path: str = "/etc/hosts"
    entries: tuple[tuple[str, tuple[str, ...]], ...] = ()  # inline: (ip, names)
    ttl: int = 3600
    no_reverse: bool = False
    reload: float = 5.0
    fallthrough: tuple[str, ...] = ()


@dataclass(frozen=True)
class DebugConfig(PluginConfig):
    name: ClassVar[str] = "debug"


@dataclass(frozen=True)
class ServerBlock:
    """One (transport, port) of a Corefile server block.

    A block whose keys name several ports becomes one ServerBlock per port;
    they share the same plugin objects, as CoreDNS shares one plugin chain.
    """

    zones: tuple[str, ...]
    port: int
    plugins: dict[str, PluginConfig] = field(hash=False)
    source: Source = ("", 0)
    transport: str = "dns"

    @property
    def bind(self) -> tuple[str, ...]:
        """The `bind` plugin's addresses; () when the block binds every address."""
        b = self.plugins.get("bind")
        return b.addresses if isinstance(b, BindConfig) else ()

    @property
    def listen_hosts(self) -> tuple[str, ...]:
        """Addresses to bind: the `bind` plugin's, else ("",) = every address."""
        b = self.plugins.get("bind")
        if isinstance(b, BindConfig) and b.addresses:
            return b.addresses
        return ("",)


@dataclass(frozen=True)
class Config:
    servers: list[ServerBlock] = field(hash=False)

    @property
    def blocks(self) -> list[ServerBlock]:
        """Alias of ``servers`` (the metrics exporter reads ``blocks``)."""
        return self.servers

    def group_by_listen(self) -> dict[tuple[str, str, int], list[ServerBlock]]:
        return group_by_listen(self.servers)

    def select(self, port: int, qname: str, host: str = "") -> tuple[ServerBlock, str] | None:
        """Most specific block on ``port`` (and listen ``host``) for ``qname``."""
        blocks = [s for s in self.servers if s.port == port
                  and (host == "" or host in s.listen_hosts or "" in s.listen_hosts)]
        return select_block(blocks, qname)


def group_by_listen(servers: list[ServerBlock]) -> dict[tuple[str, str, int], list[ServerBlock]]:
    """Blocks per listener ``(transport, host, port)``; host "" is the wildcard.

    core/dnsserver/register.go groupConfigsByListenAddr: one listener per
    bind address and port, serving every block bound there.
    """
    groups: dict[tuple[str, str, int], list[ServerBlock]] = {}
    for s in servers:
        for h in s.listen_hosts:
            groups.setdefault((s.transport, h, s.port), []).append(s)
    return groups


def select_block(blocks: list[ServerBlock], qname: str) -> tuple[ServerBlock, str] | None:
    """The block whose zone is the longest suffix of ``qname`` (and that zone).

    core/dnsserver/server.go ServeDNS walks the name label by label from the
    left and takes the first zone it finds, i.e. the most specific one.
    """
    zones: dict[str, ServerBlock] = {}
    for b in blocks:
        for z in b.zones:
            zones.setdefault(z, b)
    q = qname.lower()
    if not q.endswith("."):
        q += "."
    while True:
        if q in zones:
            return zones[q], q
        if q == ".":
            return None
        dot = q.find(".")
        q = q[dot + 1:] or "."
