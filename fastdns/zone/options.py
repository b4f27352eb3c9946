"""The ``kubernetes`` plugin's options, as the zone compiler needs them."""

from __future__ import annotations

from dataclasses import dataclass

from fastdns.zone.naming import name_wire
from fastdns.zone.state import ClusterState

POD_MODES = ("disabled", "verified", "insecure")


@dataclass(frozen=True, slots=True)
class KubernetesOptions:
    """The `kubernetes` plugin block (CoreDNS README, Syntax), as the compiler needs it.

    `zones` lists forward and reverse zones as written (`cluster.local`,
    `in-addr.arpa`, `0.10.in-addr.arpa` ...); `fallthrough` is () for off, a
    zone list, or (".",) for every zone; `local_ips` are this server's
    addresses, which decide the apex NS glue (CoreDNS `nsAddrs`); `block` is
    the Corefile server block index stored in the image's zone table;
    `endpoint_srv` turns on CoreDNS's SRV answers at endpoint names (see
    `RecordBuilder._endpoint_names`); `loadbalance` (the block has the
    `loadbalance` plugin) makes answers with several A/AAAA records rotate:
    the compiler emits rotated variants and the worker picks one per query.
    """

    zones: tuple[str, ...] = ("cluster.local",)
    ttl: int = 5
    namespaces: tuple[str, ...] = ()
    pods: str = "disabled"
    endpoint_pod_names: bool = False
    noendpoints: bool = False
    ignore_empty_service: bool = False
    fallthrough: tuple[str, ...] = ()
    local_ips: tuple[str, ...] = ("127.0.0.1",)
    block: int = 0
    endpoint_srv: bool = False
    loadbalance: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.ttl <= 3600:
            raise ValueError(f"ttl must be in 0..3600, not {self.ttl}")
        if self.pods not in POD_MODES:
            raise ValueError(f"pods must be one of {', '.join(POD_MODES)}, not {self.pods!r}")
        if not self.zones:
            raise ValueError("the kubernetes plugin needs at least one zone")
        for z in self.zones:
            name_wire(z)  # raises on a malformed zone

    @property
    def soa_ttl(self) -> int:
        return min(self.ttl, 300)  # backend_lookup.go SOA(): min(MinTTL, 300)

    def exposed(self, state: ClusterState, namespace: str) -> bool:
        """CoreDNS namespaceExposed: configured (or no list) and existing."""
        if self.namespaces and namespace not in self.namespaces:
            return False
        return state.namespace_exists(namespace)
