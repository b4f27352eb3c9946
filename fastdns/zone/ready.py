"""A Service's ready endpoint addresses, flattened as the record builder reads them.

CoreDNS's object.EndpointAddress per ready address (plugin/kubernetes/object/
endpoint.go), with the name CoreDNS gives it (kubernetes.go endpointHostname):
its hostname, else with ``endpoint_pod_names`` its pod's name (under 64
octets), else the address with dashes.
"""

from __future__ import annotations

from fastdns.names import ip_packed
from fastdns.zone.naming import dashed, ip_text, label
from fastdns.zone.objects import Endpoints
from fastdns.zone.options import KubernetesOptions
from fastdns.zone.state import ClusterState

# A ready endpoint address, flattened (CoreDNS object.EndpointAddress):
# (address packed, endpoint hostname, ((port name, protocol, port) ...), hostname as a wire
# label); port -1 = none declared
Ep = tuple[bytes, str, tuple[tuple[str, str, int], ...], bytes]
_NO_PORTS = (("", "", -1),)


def ready_endpoints(state: ClusterState, opts: KubernetesOptions, ns: str, svc: str) -> list[Ep]:
    """Ready addresses of a Service's slices in slice order (object/endpoint.go:
    not-ready endpoints are dropped, an empty port list becomes the -1 sentinel)."""
    if opts.noendpoints:
        return []  # CoreDNS does not even watch endpoints then
    out = []
    pod_names = opts.endpoint_pod_names
    for sl in state.slices_of(ns, svc):
        if sl.address_type not in ("IPv4", "IPv6"):
            continue  # FQDN slices carry no addresses DNS can serve
        ports = tuple((p.name, p.protocol, p.port) for p in sl.ports) or _NO_PORTS
        eps = sl.endpoints
        rows: list[tuple[list[str | bytes], str | None, str | None]]
        rows = eps.ready_rows(packed=True) if isinstance(eps, Endpoints) else [
            (list(e.addresses), e.hostname, e.target_pod) for e in eps if e.ready]
        for addresses, hostname, target_pod in rows:
            for a in addresses:
                if isinstance(a, bytes):  # IPv4, its text the canonical one
                    packed = a
                else:
                    got = ip_packed(a)
                    if got is None:
                        continue
                    packed = got
                # kubernetes.go endpointHostname; object/endpoint.go drops pod names of 64+
                if hostname:
                    host = hostname
                elif pod_names and target_pod and len(target_pod) < 64:
                    host = target_pod
                else:
                    host = dashed(a if isinstance(a, str) else ip_text(a))
                if host:
                    out.append((packed, host, ports, label(host)))
    return out
