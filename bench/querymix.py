"""Zone files and a Kubernetes-like query mix for the peer benchmark.

The peers (knot, nsd, unbound) cannot read Kubernetes objects, so the same
cluster state fastdns serves is rendered here as RFC 1035 master files with
CoreDNS's names (``plugin/kubernetes``: ``svc.ns.svc.ZONE``,
``_port._proto.svc.ns.svc.ZONE``, endpoint names, PTR in the reverse zones).
It is written independently of ``fastdns.zone.records`` on purpose: the
sanity probes then compare two renderings of the same objects.

The query mix imitates what pods send (the proportions issue 4 fixes):
service A ~70 %, SRV ~10 %, AAAA of IPv4-only services (NODATA) ~10 %, and
~10 % NXDOMAIN names that ``ndots:5`` search-path expansion produces
(``svc.ns.svc.cluster.local.ns.svc.cluster.local``, ``api.example.com.ns.svc
.cluster.local`` ...), which is why clusters see so many negative answers.

``generate_state`` is a small stand-in for ``bench/gen_cluster.py`` used only
when that generator is missing.
"""

from __future__ import annotations

import ipaddress
import json
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastdns.zone.objects import EndpointSlice, Namespace, Service, strip

ZONE = "cluster.local"
REVERSE_ZONES = ("in-addr.arpa", "ip6.arpa")
TTL = 5  # the kubernetes plugin's default `ttl` (REFERENCE.md)
SERIAL = 1700000000


# --------------------------------------------------------------------------
# state file -> stripped objects


def load_objects(path: str | Path) -> list[Any]:
    """Stripped objects from a kubectl-style List (JSON or YAML, multi-document allowed)."""
    text = Path(path).read_text()
    try:
        docs: list[Any] = [json.loads(text)]
    except ValueError:
        import yaml

        docs = [d for d in yaml.safe_load_all(text) if d]
    items: list[dict[str, Any]] = []
    for doc in docs:
        if isinstance(doc, list):
            items.extend(doc)
        elif isinstance(doc, dict) and doc.get("kind", "").endswith("List"):
            default = doc["kind"][: -len("List")]
            for it in doc.get("items") or ():
                items.append(it if "kind" in it else {**it, "kind": default})
        elif isinstance(doc, dict):
            items.append(doc)
    out = []
    for it in items:
        kind = it.get("kind")
        if kind in ("Namespace", "Service", "EndpointSlice", "Pod"):
            out.append(strip(kind, it))
    return out


# --------------------------------------------------------------------------
# objects -> records (CoreDNS naming)


def endpoint_label(address: str, hostname: str | None) -> str:
    """CoreDNS `endpointHostname`: hostname, else the address with '.'/':' as '-'."""
    if hostname:
        return hostname
    label = address.replace(".", "-").replace(":", "-")
    if label.endswith("-"):  # "fd00::" -> "fd00--0" (CoreDNS appends 0)
        label += "0"
    return label


def _canonical(address: str) -> str:
    """RFC 5952 text: the generator may write "fd00::0:1", a zone file parser "fd00::1"."""
    return ipaddress.ip_address(address).compressed


def _rtype(address: str) -> str:
    return "AAAA" if ":" in address else "A"


@dataclass
class ServiceInfo:
    """What the query mix needs to know about one service."""

    namespace: str
    name: str
    fqdn: str
    has_a: bool
    has_aaaa: bool
    srv_names: list[str] = field(default_factory=list)  # _port._proto owners
    external: bool = False
    headless: bool = False


@dataclass
class Records:
    """RRsets keyed by absolute owner name (lowercase, trailing dot)."""

    rrsets: dict[tuple[str, str], list[str]]
    services: list[ServiceInfo]
    ptr: dict[str, list[str]]  # reverse owner -> targets


def build_records(objects: Iterable[Any], zone: str = ZONE) -> Records:
    """Render services, endpoints and reverse names the way CoreDNS answers them."""
    namespaces: set[str] = set()
    services: dict[tuple[str, str], Service] = {}
    slices: dict[tuple[str, str], list[EndpointSlice]] = defaultdict(list)
    for obj in objects:
        if isinstance(obj, Namespace):
            namespaces.add(obj.name)
        elif isinstance(obj, Service):
            services[obj.key] = obj
        elif isinstance(obj, EndpointSlice) and obj.service:
            slices[(obj.namespace, obj.service)].append(obj)

    rr: dict[tuple[str, str], list[str]] = defaultdict(list)
    ptr: dict[str, list[str]] = defaultdict(list)
    infos: list[ServiceInfo] = []
    for (ns, name), svc in sorted(services.items()):
        fqdn = f"{name}.{ns}.svc.{zone}."
        if svc.external_name:
            rr[(fqdn, "CNAME")].append(svc.external_name.rstrip(".") + ".")
            infos.append(ServiceInfo(ns, name, fqdn, False, False, external=True))
            continue
        # ready endpoint addresses with their names (duplicates across slices removed)
        eps: list[tuple[str, str]] = []
        ep_ports: list[tuple[str, str, int]] = []
        seen: set[str] = set()
        for sl in slices.get((ns, name), ()):
            if sl.address_type not in ("IPv4", "IPv6"):
                continue
            for port in sl.ports:
                if (port.name, port.protocol, port.port) not in ep_ports:
                    ep_ports.append((port.name, port.protocol, port.port))
            for ep in sl.endpoints:
                if not ep.ready:
                    continue
                for raw in ep.addresses:
                    addr = _canonical(raw)
                    if addr in seen:
                        continue
                    seen.add(addr)
                    # CoreDNS builds the label from the address string as stored
                    eps.append((addr, f"{endpoint_label(raw, ep.hostname)}.{fqdn}"))
        for addr, epname in eps:  # endpoint names exist for every service kind in CoreDNS
            rr[(epname, _rtype(addr))].append(addr)
            ptr[ipaddress.ip_address(addr).reverse_pointer + "."].append(epname)
        if svc.headless:
            for addr, _ in eps:
                rr[(fqdn, _rtype(addr))].append(addr)
            # SRV per ready address x port; weight counts candidates (REFERENCE.md)
            srv_all: list[str] = []
            srv_names: list[str] = []
            for pname, proto, pnum in ep_ports:
                recs = [f"0 {{w}} {pnum} {epname}" for _, epname in eps]
                srv_all.extend(recs)
                if pname and recs:
                    owner = f"_{pname}._{proto.lower()}.{fqdn}"
                    w = 100 // len(recs)
                    rr[(owner, "SRV")].extend(r.format(w=w) for r in recs)
                    srv_names.append(owner)
            if srv_all:
                w = 100 // len(srv_all)
                rr[(fqdn, "SRV")].extend(r.format(w=w) for r in srv_all)
            has_a = any(":" not in a for a, _ in eps)
            has_aaaa = any(":" in a for a, _ in eps)
        else:
            for ip in map(_canonical, svc.cluster_ips):
                rr[(fqdn, _rtype(ip))].append(ip)
                ptr[ipaddress.ip_address(ip).reverse_pointer + "."].append(fqdn)
            nips = max(1, len(svc.cluster_ips))
            srv_names = []
            for p in svc.ports:
                if p.name:
                    owner = f"_{p.name}._{p.protocol.lower()}.{fqdn}"
                    # one candidate per cluster IP, deduplicated to one record
                    rr[(owner, "SRV")].append(f"0 {100 // nips} {p.port} {fqdn}")
                    srv_names.append(owner)
            if svc.ports:
                w = 100 // (nips * len(svc.ports))
                for p in svc.ports:
                    rr[(fqdn, "SRV")].append(f"0 {w} {p.port} {fqdn}")
            has_a = any(":" not in ip for ip in svc.cluster_ips)
            has_aaaa = any(":" in ip for ip in svc.cluster_ips)
        infos.append(ServiceInfo(ns, name, fqdn, has_a, has_aaaa, srv_names,
                                 headless=svc.headless))
    return Records(dict(rr), infos, dict(ptr))


def _soa(zone: str) -> str:
    return (f"{zone}. {TTL} IN SOA ns.dns.{ZONE}. hostmaster.{zone}. "
            f"{SERIAL} 7200 1800 86400 {TTL}")


def write_zones(rec: Records, directory: Path, dns_ip: str = "127.0.0.1") -> dict[str, Path]:
    """Write cluster.local and the reverse zones as master files; return zone -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    z = directory / f"{ZONE}.zone"
    with z.open("w") as f:
        f.write(f"$ORIGIN {ZONE}.\n$TTL {TTL}\n{_soa(ZONE)}\n")
        f.write(f"{ZONE}. {TTL} IN NS ns.dns.{ZONE}.\n")
        f.write(f"ns.dns.{ZONE}. {TTL} IN A {dns_ip}\n")
        f.write(f'dns-version.{ZONE}. 28800 IN TXT "1.1.0"\n')
        for (owner, rtype), rdatas in rec.rrsets.items():
            for rdata in dict.fromkeys(rdatas):  # SRV (target, port) duplicates removed
                f.write(f"{owner} {TTL} IN {rtype} {rdata}\n")
    paths[ZONE] = z
    for rz in REVERSE_ZONES:
        p = directory / f"{rz}.zone"
        with p.open("w") as f:
            f.write(f"$ORIGIN {rz}.\n$TTL {TTL}\n{_soa(rz)}\n")
            f.write(f"{rz}. {TTL} IN NS ns.dns.{ZONE}.\n")
            for owner, targets in rec.ptr.items():
                if owner.endswith(f".{rz}."):
                    for t in dict.fromkeys(targets):
                        f.write(f"{owner} {TTL} IN PTR {t}\n")
        paths[rz] = p
    return paths


# --------------------------------------------------------------------------
# the query mix

MIX = (("A", 0.70), ("SRV", 0.10), ("AAAA-NODATA", 0.10), ("NXDOMAIN", 0.10))
_EXTERNAL = ("api.example.com", "www.google.com", "s3.amazonaws.com", "registry.k8s.io",
             "login.microsoftonline.com", "github.com")


@dataclass(frozen=True)
class Query:
    name: str  # absolute, trailing dot
    qtype: str
    kind: str  # A, SRV, AAAA-NODATA, NXDOMAIN


def build_mix(rec: Records, count: int, seed: int = 1) -> list[Query]:
    """`count` queries in the issue-4 proportions, shuffled, every one answerable."""
    rnd = random.Random(seed)
    a_svcs = [s for s in rec.services if s.has_a]
    srv_owners = [o for s in rec.services for o in s.srv_names]
    nodata = [s for s in rec.services if s.has_a and not s.has_aaaa]
    namespaces = sorted({s.namespace for s in rec.services})
    existing = _names_and_ancestors(owner for owner, _ in rec.rrsets)
    if not (a_svcs and srv_owners and nodata):
        raise ValueError("cluster too small for the query mix (needs A, SRV and v4-only services)")

    def nx_name() -> str:
        client_ns = rnd.choice(namespaces)
        s = rnd.choice(a_svcs)
        short = f"{s.name}.{s.namespace}"
        choice = rnd.randrange(5)
        if choice == 0:  # FQDN without the trailing dot, expanded by the first search domain
            return f"{s.fqdn.rstrip('.')}.{client_ns}.svc.{ZONE}."
        if choice == 1:  # "svc.ns" looked up from another namespace
            return f"{short}.{client_ns}.svc.{ZONE}." if client_ns != s.namespace else \
                f"{short}.svc.{ZONE}.{ZONE}."
        if choice == 2:  # external names walk the whole search list before going out
            ext = rnd.choice(_EXTERNAL)
            suffix = rnd.choice((f"{client_ns}.svc.{ZONE}", f"svc.{ZONE}", ZONE))
            return f"{ext}.{suffix}."
        if choice == 3:
            return f"{s.fqdn.rstrip('.')}.svc.{ZONE}."
        return f"{s.fqdn.rstrip('.')}.{ZONE}."

    out: list[Query] = []
    for kind, share in MIX:
        n = round(count * share)
        for _ in range(n):
            if kind == "A":
                out.append(Query(rnd.choice(a_svcs).fqdn, "A", kind))
            elif kind == "SRV":
                out.append(Query(rnd.choice(srv_owners), "SRV", kind))
            elif kind == "AAAA-NODATA":
                out.append(Query(rnd.choice(nodata).fqdn, "AAAA", kind))
            else:
                name = nx_name()
                while name in existing:  # an existing name or an empty non-terminal
                    name = nx_name()
                out.append(Query(name, "A", kind))
    rnd.shuffle(out)
    return out


def _names_and_ancestors(owners: Iterable[str]) -> set[str]:
    """Every owner and every name above it: the names a zone file does not answer NXDOMAIN."""
    out: set[str] = set()
    for owner in owners:
        while owner and owner not in out:
            out.add(owner)
            owner = owner.split(".", 1)[1] if "." in owner else ""
    return out


def write_dnsperf(queries: Iterable[Query], path: Path) -> None:
    """dnsperf's input format: one `name type` per line."""
    with path.open("w") as f:
        for q in queries:
            f.write(f"{q.name} {q.qtype}\n")


# --------------------------------------------------------------------------
# fallback cluster generator (only when bench/gen_cluster.py is absent)

_WORDS = ("api", "auth", "billing", "cache", "cart", "catalog", "checkout", "db", "events",
          "frontend", "gateway", "inventory", "kafka", "ledger", "mail", "metrics", "orders",
          "payments", "postgres", "queue", "redis", "search", "session", "shipping", "users")


def generate_state(services: int, endpoints_per_service: int, headless_share: float,
                   dualstack_share: float, seed: int = 7) -> dict[str, Any]:
    """A kubectl-style List of Namespaces, Services and EndpointSlices."""
    rnd = random.Random(seed)
    nns = max(1, services // 100)
    items: list[dict[str, Any]] = [
        {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": f"team-{i:03d}"}}
        for i in range(nns)]
    items.insert(0, {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "default"}})
    v4 = ipaddress.ip_network("10.96.0.0/12")
    v6 = ipaddress.ip_network("fd00:10:96::/108")
    pod4 = ipaddress.ip_network("10.244.0.0/14")
    pod6 = ipaddress.ip_network("fd00:10:244::/100")
    for i in range(services):
        ns = "default" if i == 0 else f"team-{i % nns:03d}"
        name = "kubernetes" if i == 0 else f"{rnd.choice(_WORDS)}-{i:05d}"
        headless = i > 0 and rnd.random() < headless_share
        dual = rnd.random() < dualstack_share
        ports = [{"name": "http", "protocol": "TCP", "port": 80}]
        if rnd.random() < 0.5:
            ports.append({"name": "grpc", "protocol": "TCP", "port": 9090})
        if rnd.random() < 0.2:
            ports.append({"name": "dns", "protocol": "UDP", "port": 53})
        spec: dict[str, Any] = {"type": "ClusterIP", "ports": ports}
        if headless:
            spec["clusterIP"] = "None"
            spec["clusterIPs"] = ["None"]
        else:
            ips = [str(v4[10 + i])] + ([str(v6[10 + i])] if dual else [])
            spec["clusterIP"] = ips[0]
            spec["clusterIPs"] = ips
        spec["ipFamilies"] = ["IPv4", "IPv6"] if dual else ["IPv4"]
        items.append({"kind": "Service", "apiVersion": "v1",
                      "metadata": {"name": name, "namespace": ns}, "spec": spec})
        fams = [("IPv4", pod4)] + ([("IPv6", pod6)] if dual else [])
        for fam, net in fams:
            eps = []
            for j in range(endpoints_per_service):
                k = i * endpoints_per_service + j
                eps.append({"addresses": [str(net[256 + k])],
                            "conditions": {"ready": rnd.random() > 0.05},
                            "targetRef": {"kind": "Pod", "name": f"{name}-{j}"}})
            items.append({
                "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                "metadata": {"name": f"{name}-{fam.lower()}", "namespace": ns,
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": fam, "endpoints": eps,
                "ports": [dict(p) for p in ports]})
    return {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items}
