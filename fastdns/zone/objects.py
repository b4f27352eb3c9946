"""Kubernetes API objects stripped to the few fields DNS needs.

CoreDNS converts every watched object at once into a small struct
(`plugin/kubernetes/object/service.go`, `endpoint.go`, `pod.go`) because
keeping the full API objects cost it gigabytes at scale. fastdns does the same
right after JSON/YAML parsing: nothing downstream ever sees an API dict.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class StateError(ValueError):
    """A cluster object or state file that cannot be understood."""


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    protocol: str  # "TCP", "UDP", "SCTP"
    port: int


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str

    @property
    def key(self) -> tuple[str, str]:
        return ("", self.name)


class _Namespaced:
    """A namespaced API object: the state indexes it by (namespace, name)."""

    __slots__ = ()
    namespace: str
    name: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Service(_Namespaced):
    namespace: str
    name: str
    type: str  # ClusterIP, NodePort, LoadBalancer, ExternalName
    cluster_ips: tuple[str, ...]  # spec.clusterIPs (or [clusterIP]); () when headless
    headless: bool  # clusterIP: None
    external_name: str | None
    ports: tuple[ServicePort, ...]


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool  # conditions.ready true or absent (CoreDNS: endpoint.go)
    hostname: str | None
    target_pod: str | None  # targetRef.name when targetRef.kind == Pod
    node_name: str | None


@dataclass(frozen=True, slots=True)
class EndpointSlice(_Namespaced):
    namespace: str
    name: str
    service: str | None  # label kubernetes.io/service-name
    address_type: str  # IPv4, IPv6, FQDN
    endpoints: tuple[Endpoint, ...]
    ports: tuple[ServicePort, ...]


@dataclass(frozen=True, slots=True)
class Pod(_Namespaced):
    namespace: str
    name: str
    ips: tuple[str, ...]
    phase: str


Obj = Namespace | Service | EndpointSlice | Pod

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def _label(what: str, value: Any) -> str:
    """``value`` if it can be one DNS label (1-63 octets, no dot), as the API
    server's DNS-1123/1035 label validation guarantees for these fields."""
    if not isinstance(value, str):
        raise StateError(f"{what} is not a string")
    if not 0 < len(value.encode("utf-8")) <= 63 or "." in value:
        raise StateError(f"{what} {value[:70]!r} is not a DNS label (1-63 octets, no dot)")
    return value


def _meta(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise StateError(f"{kind} without metadata.name")
    ns = meta.get("namespace", "")
    if kind != "Namespace" and not ns:
        ns = "default"
    if not isinstance(ns, str):
        raise StateError(f"{kind} {meta['name']}: metadata.namespace is not a string")
    if kind in ("Namespace", "Service"):  # their names become labels of the answers
        _label(f"{kind} metadata.name", meta["name"])
    if kind != "Namespace":
        _label(f"{kind} {meta['name']}: metadata.namespace", ns)
    return _intern(ns) or ns, meta["name"]  # "" stays "" (a Namespace has none)


def _intern(s: Any) -> str | None:
    """One copy of a string that repeats across objects (namespace, node name).

    A JSON decoder makes a new string per occurrence; at 100k endpoints the
    copies of a few hundred node names alone were ~6 MB of the control
    process, and the watch keeps them for the life of the object.
    """
    return sys.intern(s) if isinstance(s, str) and s else None


def _ports(kind: str, ident: str, raw: Any) -> tuple[ServicePort, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise StateError(f"{kind} {ident}: ports is not a list")
    out = []
    for p in raw:
        if not isinstance(p, dict):
            raise StateError(f"{kind} {ident}: port entry is not a mapping")
        port = p.get("port")
        if port is None:  # EndpointSlice ports may omit the number ("all ports")
            continue
        try:
            number = int(port)
        except (TypeError, ValueError):
            raise StateError(f"{kind} {ident}: port {port!r} is not a number") from None
        if not 0 <= number <= 0xFFFF:
            raise StateError(f"{kind} {ident}: port {number} is not within 0-65535")
        name = str(p.get("name") or "")
        if name:  # the SRV owner's _name label
            _label(f"{kind} {ident}: port name", "_" + name)
        out.append(ServicePort(name, _label(f"{kind} {ident}: protocol",
                                            "_" + str(p.get("protocol") or "TCP"))[1:], number))
    return tuple(out)


def _strip_service(obj: dict[str, Any]) -> Service:
    ns, name = _meta("Service", obj)
    ident = f"{ns}/{name}"
    spec = obj.get("spec") or {}
    if not isinstance(spec, dict):
        raise StateError(f"Service {ident}: spec is not a mapping")
    stype = str(spec.get("type") or "ClusterIP")
    ips = spec.get("clusterIPs")
    if not ips:
        ip = spec.get("clusterIP")
        ips = [ip] if ip else []
    if not isinstance(ips, list) or not all(isinstance(i, str) for i in ips):
        raise StateError(f"Service {ident}: clusterIPs is not a list of strings")
    headless = any(i == "None" for i in ips) or (not ips and stype != "ExternalName")
    ext = spec.get("externalName") if stype == "ExternalName" else None
    if stype == "ExternalName" and not isinstance(ext, str):
        raise StateError(f"Service {ident}: type ExternalName without spec.externalName")
    cluster_ips = tuple(i for i in ips if i and i != "None") if stype != "ExternalName" else ()
    return Service(ns, name, stype, cluster_ips, headless, ext,
                   _ports("Service", ident, spec.get("ports")))


def _strip_slice(obj: dict[str, Any]) -> EndpointSlice:
    ns, name = _meta("EndpointSlice", obj)
    ident = f"{ns}/{name}"
    labels = (obj.get("metadata") or {}).get("labels") or {}
    atype = str(obj.get("addressType") or "IPv4")
    eps = []
    raw_eps = obj.get("endpoints") or ()  # `endpoints: null` is legal: empty
    if not isinstance(raw_eps, list | tuple):
        raise StateError(f"EndpointSlice {ident}: endpoints is not a list")
    for e in raw_eps:
        if not isinstance(e, dict):
            raise StateError(f"EndpointSlice {ident}: endpoint is not a mapping")
        addrs = e.get("addresses") or []
        if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
            raise StateError(f"EndpointSlice {ident}: addresses is not a list of strings")
        cond = e.get("conditions") or {}
        ready = cond.get("ready")
        ref = e.get("targetRef") or {}
        target = ref.get("name") if ref.get("kind", "Pod") == "Pod" else None
        if target is not None and not isinstance(target, str):
            raise StateError(f"EndpointSlice {ident}: targetRef.name is not a string")
        hostname = e.get("hostname") or None
        if hostname is not None:
            _label(f"EndpointSlice {ident}: hostname", hostname)
        eps.append(Endpoint(tuple(addrs), ready is None or bool(ready), hostname,
                            target, _intern(e.get("nodeName"))))
    service = labels.get(SERVICE_NAME_LABEL)
    if service is not None:
        _label(f"EndpointSlice {ident}: label {SERVICE_NAME_LABEL}", service)
    return EndpointSlice(ns, name, service, atype, tuple(eps),
                         _ports("EndpointSlice", ident, obj.get("ports")))


def _strip_pod(obj: dict[str, Any]) -> Pod:
    ns, name = _meta("Pod", obj)
    status = obj.get("status") or {}
    ips = [p.get("ip") for p in status.get("podIPs") or () if isinstance(p, dict)]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    return Pod(ns, name, tuple(i for i in ips if isinstance(i, str) and i),
               str(status.get("phase") or ""))


def _strip_namespace(obj: dict[str, Any]) -> Namespace:
    return Namespace(_meta("Namespace", obj)[1])


_STRIPPERS: dict[str, Callable[[dict[str, Any]], Obj]] = {
    "Namespace": _strip_namespace,
    "Service": _strip_service,
    "EndpointSlice": _strip_slice,
    "Pod": _strip_pod,
}

KINDS = tuple(_STRIPPERS)


def strip(kind: str, obj: dict[str, Any]) -> Obj:
    """Turn one API/kubectl object dict into its stripped form (StateError if unusable)."""
    try:
        fn = _STRIPPERS[kind]
    except KeyError:
        raise StateError(f"unsupported kind {kind!r}") from None
    if not isinstance(obj, dict):
        raise StateError(f"{kind}: object is not a mapping")
    try:
        return fn(obj)
    except StateError:
        raise
    except (AttributeError, TypeError, ValueError) as exc:
        raise StateError(f"{kind} {_describe(obj)}: {exc}") from None


def _describe(obj: dict[str, Any]) -> str:
    m = obj.get("metadata")
    meta = m if isinstance(m, dict) else {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '?')}".lstrip("/")
