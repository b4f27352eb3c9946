"""Kubernetes API objects stripped to the few fields DNS needs.

CoreDNS converts every watched object at once into a small struct
(`plugin/kubernetes/object/service.go`, `endpoint.go`, `pod.go`) because
keeping the full API objects cost it gigabytes at scale. fastdns does the same
right after JSON/YAML parsing: nothing downstream ever sees an API dict.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload


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
    """One endpoint of a slice, as callers build and read it (a view: see Endpoints)."""

    addresses: tuple[str, ...]
    ready: bool  # conditions.ready true or absent (CoreDNS: endpoint.go)
    hostname: str | None
    target_pod: str | None  # targetRef.name when targetRef.kind == Pod
    node_name: str | None


# Endpoint's fields as a plain tuple: (addresses, ready, hostname, target_pod, node_name)
EndpointRow = tuple[Sequence[str], bool, str | None, str | None, str | None]
_SEP = "\x00"
_Col = str | tuple[str | None, ...] | None


def _col(values: list[str | None]) -> _Col:
    """A column of optional strings, compactly: None (all None), one joined string
    (all strings, none holding the separator) or, failing both, the tuple itself.
    The form is a function of the values, so equal columns compare equal."""
    if all(v is None for v in values):
        return None
    strs = [v for v in values if isinstance(v, str) and _SEP not in v]
    if len(strs) == len(values):
        return _SEP.join(strs)
    return tuple(values)


def _v4_packed(addrs: list[str | None]) -> bytes | None:
    """The addresses as 4 octets each when every one is IPv4 written the canonical
    way (text -> octets -> the same text): a third of their size as text."""
    if not addrs:
        return None
    pton, ntop, af = socket.inet_pton, socket.inet_ntop, socket.AF_INET
    out = []
    try:
        for a in addrs:
            p = pton(af, a)  # type: ignore[arg-type]  # a TypeError if not a str
            if ntop(af, p) != a:
                return None
            out.append(p)
    except (OSError, TypeError, ValueError):
        return None
    return b"".join(out)


def _uncol(col: _Col, n: int) -> list[str | None]:
    if col is None:
        return [None] * n
    if isinstance(col, str):
        return list(col.split(_SEP))
    return list(col)


class Endpoints(Sequence[Endpoint]):
    """The endpoints of one EndpointSlice, stored by column.

    A slice's endpoints were an Endpoint object, an address tuple and two or
    three strings each: ~270 octets an endpoint, ~40 MB of the control
    process at 10k Services / 160k endpoints. Here a slice keeps its
    addresses (4 octets each when all are IPv4) and pod names as one bytes or
    string each, its node names as one tuple of interned strings and its
    ready flags as bytes (~30 octets an endpoint). It reads as a tuple of
    Endpoint (built on access); the record builder reads the columns
    (``ready_rows``). Equality and hash follow the endpoints'; a tuple of
    equal Endpoint objects compares equal but hashes apart (an EndpointSlice
    always holds an Endpoints, so its own hash is sound).
    """

    __slots__ = ("_n", "_addrs", "_counts", "_ready", "_hosts", "_targets", "_nodes")

    def __init__(self, rows: Iterable[EndpointRow | Endpoint] = ()) -> None:
        addrs: list[str | None] = []
        counts: list[int] = []
        ready = bytearray()
        hosts: list[str | None] = []
        targets: list[str | None] = []
        nodes: list[str | None] = []
        a: Sequence[str]
        for r in rows:
            if isinstance(r, Endpoint):
                a, rd, h, t, nd = r.addresses, r.ready, r.hostname, r.target_pod, r.node_name
            else:
                a, rd, h, t, nd = r
            addrs.extend(a)
            counts.append(len(a))
            ready.append(1 if rd else 0)
            hosts.append(h)
            targets.append(t)
            nodes.append(nd)
        self._n = len(counts)
        self._addrs: _Col | bytes = _v4_packed(addrs) or _col(addrs)
        self._counts = None if all(c == 1 for c in counts) else tuple(counts)
        self._ready = None if all(ready) else bytes(ready)
        self._targets = _col(targets)
        # a StatefulSet pod's hostname is its name: kept once
        self._hosts: _Col | bool = (True if self._targets is not None and hosts == targets
                                    else _col(hosts))
        self._nodes = None if all(nd is None for nd in nodes) else tuple(nodes)

    def _state(self) -> tuple[object, ...]:
        return (self._n, self._addrs, self._counts, self._ready, self._hosts, self._targets,
                self._nodes)

    def _columns(self, packed: bool = False
                 ) -> tuple[list[str | bytes], list[str | None], list[str | None]]:
        """(flat addresses, hostnames, target pods) as lists; with ``packed``, the
        addresses of an all-IPv4 slice as their 4 octets."""
        n = self._n
        counts = self._counts
        col = self._addrs
        addrs: list[str | bytes]
        if isinstance(col, bytes):
            addrs = [col[i:i + 4] for i in range(0, len(col), 4)]
            if not packed:
                ntop, af = socket.inet_ntop, socket.AF_INET
                addrs = [ntop(af, a) for a in addrs]  # type: ignore[arg-type]  # bytes
        else:
            addrs = _uncol(col, n if counts is None else sum(counts))  # type: ignore[assignment]
        targets = _uncol(self._targets, n)
        h = self._hosts
        hosts = targets if h is True else _uncol(h, n)  # type: ignore[arg-type]  # not bool
        return addrs, hosts, targets  # type: ignore[return-value]  # addresses are never None

    def ready_rows(self, packed: bool = False
                   ) -> list[tuple[list[str | bytes], str | None, str | None]]:
        """(addresses, hostname, target pod) of the ready endpoints, in slice order.

        With ``packed``, an address may come as its 4 octets instead (an
        IPv4 address whose text is the canonical one, ``naming.ip_text``).
        """
        if not self._n:
            return []
        addrs, hosts, targets = self._columns(packed)
        counts, ready = self._counts, self._ready
        if counts is None and ready is None:  # the common case: one address each, all ready
            return [([a], h, t) for a, h, t in zip(addrs, hosts, targets, strict=True)]
        out = []
        pos = 0
        for i in range(self._n):
            c = 1 if counts is None else counts[i]
            if ready is None or ready[i]:
                out.append((addrs[pos:pos + c], hosts[i], targets[i]))
            pos += c
        return out

    def rows(self) -> list[EndpointRow]:
        """Every endpoint as a plain EndpointRow tuple, in order (``Endpoints(rows)``
        takes them back): cheaper than Endpoint objects when copying a slice."""
        if not self._n:
            return []
        addrs, hosts, targets = self._columns()
        counts, ready = self._counts, self._ready
        nodes = self._nodes or (None,) * self._n
        out = []
        pos = 0
        for i in range(self._n):
            c = 1 if counts is None else counts[i]
            out.append((tuple(addrs[pos:pos + c]), ready is None or bool(ready[i]),
                        hosts[i], targets[i], nodes[i]))
            pos += c
        return out  # type: ignore[return-value]  # the addresses are str here

    def address_count(self) -> int:
        """How many addresses the endpoints hold, ready or not."""
        return self._n if self._counts is None else sum(self._counts)

    def _all(self) -> tuple[Endpoint, ...]:
        return tuple(Endpoint(*r) for r in self.rows())  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> Endpoint: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[Endpoint, ...]: ...

    def __getitem__(self, i: int | slice) -> Endpoint | tuple[Endpoint, ...]:
        return self._all()[i]

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self._all())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Endpoints):
            return self._state() == other._state()
        if isinstance(other, tuple | list):
            return self._all() == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._state())

    def __repr__(self) -> str:
        return f"Endpoints({list(self._all())!r})"

    def __reduce__(self) -> tuple[object, ...]:
        return (Endpoints, (self.rows(),))


@dataclass(frozen=True, slots=True)
class EndpointSlice(_Namespaced):
    namespace: str
    name: str
    service: str | None  # label kubernetes.io/service-name
    address_type: str  # IPv4, IPv6, FQDN
    # any sequence of Endpoint on the way in, Endpoints once built (__post_init__)
    endpoints: Sequence[Endpoint]
    ports: tuple[ServicePort, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.endpoints, Endpoints):
            object.__setattr__(self, "endpoints", Endpoints(self.endpoints))


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
    name = meta["name"]
    if kind == "Service":  # its slices name it too: one copy (see _strip_slice)
        name = sys.intern(name)
    return _intern(ns) or ns, name  # "" stays "" (a Namespace has none)


def _intern(s: Any) -> str | None:
    """One copy of a string that repeats across objects (namespace, node name, Service name).

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
    return _shared_ports(tuple(out))


_PORTS: dict[tuple[ServicePort, ...], tuple[ServicePort, ...]] = {}


def _shared_ports(ports: tuple[ServicePort, ...]) -> tuple[ServicePort, ...]:
    """One copy of a port list that repeats (every slice of a Service, most Services).

    Each slice had its own ServicePorts and name strings: ~4 MB at 10k
    Services. The table forgets everything past a few thousand distinct
    lists (it only shares; nothing depends on it).
    """
    got = _PORTS.get(ports)
    if got is None:
        if len(_PORTS) >= 4096:
            _PORTS.clear()
        got = _PORTS[ports] = ports
    return got


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
    eps: list[EndpointRow] = []
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
        eps.append((addrs, ready is None or bool(ready), hostname, target,
                    _intern(e.get("nodeName"))))
    service = labels.get(SERVICE_NAME_LABEL)
    if service is not None:
        _label(f"EndpointSlice {ident}: label {SERVICE_NAME_LABEL}", service)
        service = sys.intern(service)  # the Service's own name string, not a copy per slice
    return EndpointSlice(ns, name, service, atype, Endpoints(eps),
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
