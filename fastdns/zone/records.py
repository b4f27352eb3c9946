"""Cluster state -> DNS records, exactly as CoreDNS's `kubernetes` plugin answers.

Sources (coredns/coredns `plugin/kubernetes/`): `parse.go` (name grammar),
`kubernetes.go` (`findServices`, `findPods`, `endpointHostname`),
`reverse.go` (`serviceRecordForIP`), `ns.go` (`nsAddrs`), `handler.go`
(NXDOMAIN vs NODATA, SERVFAIL before sync) and `plugin/backend_lookup.go`
(A/AAAA/SRV assembly: duplicate removal, SRV weight, CNAME chasing). The
Kubernetes DNS specification (kubernetes/dns `docs/specification.md`,
schema 1.1.0) is the contract both follow.

Records are produced per *owner name* of one Service (plus a few per-zone
and per-namespace names), so the compiler can cache them per Service. Names
are uncompressed wire; an RR's owner `None` means "the question name", which
the compiler writes as a pointer to offset 12 (the answer echoes the query's
case). Whatever is not listed is a negative answer that the compiler derives
from the zone: a listed name with `nodata=True` answers other types NODATA,
everything else under the zone is NXDOMAIN.

Deliberate choices where CoreDNS is quirky: TXT at names that exist
without records (apex, `svc.ZONE`, namespaces) is NODATA like every other
type there (CoreDNS's TXT branch reads as NXDOMAIN; docs/status.md), SOA is
answered at the apex only, and SRV at endpoint names only with `endpoint_srv` (it would
cost a third of a large image). Names that CoreDNS answers NXDOMAIN for
every other type keep that: `dns-version.ZONE` (TXT only) and reverse PTR
names (PTR only), which is why they carry `nodata=False`. Names below
`_port._proto` labels without underscores, and `_._tcp`-style empty port
labels, which CoreDNS's parser also accepts, are not served.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from fastdns.constants import Qtype
from fastdns.names import ip_from_podname, ip_packed, is_subdomain, pod_name_address, wire_labels
from fastdns.zone.naming import (
    dashed,
    label,
    name_wire,
    split_zones,
)
from fastdns.zone.objects import Service
from fastdns.zone.options import KubernetesOptions
from fastdns.zone.ready import Ep, ready_endpoints
from fastdns.zone.state import ClusterState

# plain ints: they key dicts and get packed on hot paths
A, NS, CNAME, SOA, PTR, TXT, AAAA, SRV = (
    int(Qtype.A), int(Qtype.NS), int(Qtype.CNAME), int(Qtype.SOA), int(Qtype.PTR), int(Qtype.TXT),
    int(Qtype.AAAA), int(Qtype.SRV))

DNS_SCHEMA_VERSION = "1.1.0"  # kubernetes/dns docs/specification.md
DNS_VERSION_TTL = 28800  # CoreDNS kubernetes.go Services(), TypeTXT
SOA_REFRESH, SOA_RETRY, SOA_EXPIRE = 7200, 1800, 86400  # plugin/backend_lookup.go SOA()
MAX_CNAME_CHAIN = 8  # backend_lookup.go: "len(previousRecords) > 7"

# (owner wire or None = the question name, type, ttl, rdata before the name, rdata name or None)
RR = tuple[bytes | None, int, int, bytes, bytes | None]
# (answer RRs, additional RRs)
Answer = tuple[tuple[RR, ...], tuple[RR, ...]]


def addr_rr(packed: bytes, ttl: int, owner: bytes | None = None) -> RR:
    return (owner, A if len(packed) == 4 else AAAA, ttl, packed, None)


def srv_prefix(priority: int, weight: int, port: int) -> bytes:
    return struct.pack(">HHH", priority, weight, port)


def srv_weight(n: int) -> int:
    """backend_lookup.go SRV(): 100/N per record of priority 0, floored, at least 1."""
    return max(1, 100 // n) if n else 100


# -- per-name record sets ----------------------------------------------------

@dataclass(slots=True)
class NameSet:
    """Owner name (lowercased wire key) -> (wire as written, {qtype: Answer}, nodata)."""

    names: dict[bytes, tuple[bytes, dict[int, Answer], bool]] = field(default_factory=dict)
    # names holding exactly one A or AAAA record (and NODATA otherwise): endpoint
    # names, by far the most numerous, kept flat so the compiler writes them in a tight loop
    addr_names: list[tuple[bytes, bytes]] = field(default_factory=list)

    def put(self, wire: bytes, qtype: int, answer: Answer, nodata: bool = True) -> None:
        key = wire.lower()
        got = self.names.get(key)
        if got is None:
            self.names[key] = (wire, {qtype: answer}, nodata)
        else:
            got[1][qtype] = answer

    def exists(self, wire: bytes, nodata: bool = True) -> None:
        key = wire.lower()
        if key not in self.names:
            self.names[key] = (wire, {}, nodata)


@dataclass(slots=True)
class PtrClaims:
    """One Service's PTR contributions (``ptrs.PtrTable.set_service`` keeps them packed).

    Every target is a host label + ``base`` (``name.ns.svc.ZONE``); a
    ClusterIP's target is ``base`` itself. ``items``: (address packed, host
    label wire, or b"" for a ClusterIP), endpoints first in slice order.
    """

    base: bytes
    items: list[tuple[bytes, bytes]]

    def records(self) -> list[tuple[bytes, bytes, bool]]:
        """(address packed, target wire, from a ClusterIP) of every claim, in order."""
        return [(p, hl + self.base, not hl) for p, hl in self.items]


@dataclass(slots=True)
class ServiceRecords:
    """Everything one Service (or an orphan slice group) contributes."""

    names: NameSet
    ptrs: PtrClaims
    # in-zone Services whose records this one's answers embed (ExternalName chasing)
    depends_on: set[tuple[str, str]]
    # does a ready endpoint hold one of our local IPs (apex NS glue, ns.go nsAddrs)
    serves_local: bool


def _srv_answer(entries: list[tuple[bytes, bytes, int]], ttl: int) -> Answer:
    """SRV answer + additional from (target wire, address packed, port) candidates.

    backend_lookup.go SRV(): weight from the count before duplicates go;
    port -1 entries are skipped; (target, port) and (target, address) deduplicated.
    """
    w = srv_weight(len(entries))
    ans: list[RR] = []
    add: list[RR] = []
    seen_srv: set[tuple[bytes, int]] = set()
    seen_addr: set[tuple[bytes, bytes]] = set()
    for target, packed, port in entries:
        if port == -1 or len(target) > 255:
            continue
        lk = target.lower()
        if (lk, port) not in seen_srv:
            seen_srv.add((lk, port))
            ans.append((None, SRV, ttl, srv_prefix(0, w, port), target))
        if (lk, packed) not in seen_addr:
            seen_addr.add((lk, packed))
            add.append(addr_rr(packed, ttl, target))
    return tuple(ans), tuple(add)


def _addr_answers(packed_list: list[bytes], ttl: int) -> tuple[Answer | None, Answer | None]:
    """(A answer, AAAA answer), duplicates removed (backend_lookup.go A(): dup map)."""
    v4: list[RR] = []
    v6: list[RR] = []
    seen: set[bytes] = set()
    for p in packed_list:
        if p in seen:
            continue
        seen.add(p)
        (v4 if len(p) == 4 else v6).append((None, A if len(p) == 4 else AAAA, ttl, p, None))
    return ((tuple(v4), ()) if v4 else None), ((tuple(v6), ()) if v6 else None)


def _put_addrs(ns: NameSet, wire: bytes, packed_list: list[bytes], ttl: int) -> None:
    a4, a6 = _addr_answers(packed_list, ttl)
    if a4:
        ns.put(wire, A, a4)
    if a6:
        ns.put(wire, AAAA, a6)
    if not a4 and not a6:
        ns.exists(wire)


class RecordBuilder:
    """Builds the records of a Service, a namespace or a zone apex, per forward zone."""

    def __init__(self, opts: KubernetesOptions) -> None:
        self.opts = opts
        self.forward, self.reverse = split_zones(opts.zones)
        self.primary = self.forward[0] if self.forward else b"\x07cluster\x05local\x00"
        self.local_packed = {p for p in (ip_packed(i) for i in opts.local_ips) if p}

    # -- services --------------------------------------------------------
    def service(self, state: ClusterState, ns: str, name: str) -> ServiceRecords:
        opts = self.opts
        ttl = opts.ttl
        # reverse.go: endpoint PTRs exist whatever the Service (even none); ClusterIP ones win
        ep_base = label(name) + label(ns) + b"\x03svc" + self.primary
        out = ServiceRecords(NameSet(), PtrClaims(ep_base, []), set(), False)
        svc = state.services.get((ns, name))
        eps = ready_endpoints(state, opts, ns, name)
        if self.local_packed and any(e[0] in self.local_packed for e in eps):
            out.serves_local = True  # ns.go nsAddrs looks at every namespace
        if opts.namespaces and ns not in opts.namespaces:
            return out  # reverse.go skips unexposed namespaces as well
        claims = out.ptrs.items
        for packed, _host, _ports, hl in eps:
            claims.append((packed, hl))
        if svc is None:
            return out
        cluster_packed = [p for p in (ip_packed(i) for i in svc.cluster_ips) if p]
        if svc.type != "ExternalName" and not svc.headless:
            for p in cluster_packed:
                claims.append((p, b""))
        if not opts.exposed(state, ns):
            return out
        if (opts.ignore_empty_service and svc.type != "ExternalName" and not svc.headless
                and not eps):
            return out  # kubernetes.go findServices: NXDOMAIN when no endpoint can answer
        for zone in self.forward:
            base = label(name) + label(ns) + b"\x03svc" + zone
            if svc.type == "ExternalName":
                self._external(state, svc, base, zone, out)
            elif svc.headless:
                self._headless(eps, base, out.names, ttl)
            else:
                self._cluster_ip(svc, cluster_packed, base, out.names, ttl)
            if svc.type != "ExternalName":
                self._endpoint_names(eps, base, out.names, ttl)
        return out

    def _cluster_ip(self, svc: Service, packed: list[bytes], base: bytes, names: NameSet,
                    ttl: int) -> None:
        if not svc.ports:
            return  # findServices appends one record per port: no port, no record (NXDOMAIN)
        _put_addrs(names, base, packed, ttl)
        entries = [(base, p, port.port) for port in svc.ports for p in packed]
        if entries:
            names.put(base, SRV, _srv_answer(entries, ttl))
        groups: dict[bytes, list[tuple[bytes, bytes, int]]] = {}
        order: list[tuple[bytes, bytes]] = []
        for port in svc.ports:
            if not port.name:
                continue
            owner = label("_" + port.name) + label("_" + port.protocol.lower()) + base
            k = owner.lower()
            if k not in groups:
                groups[k] = []
                order.append((k, owner))
            groups[k].extend((base, p, port.port) for p in packed)
        for k, owner in order:
            if groups[k]:
                names.put(owner, SRV, _srv_answer(groups[k], ttl))

    def _headless(self, eps: list[Ep], base: bytes, names: NameSet, ttl: int) -> None:
        if not eps:
            return  # no ready endpoint: NXDOMAIN
        _put_addrs(names, base, [e[0] for e in eps], ttl)
        entries = []
        by_port: dict[bytes, tuple[bytes, list[tuple[bytes, bytes, int]]]] = {}
        for packed, _host, ports, hl in eps:
            target = hl + base
            for pname, proto, port in ports:
                entries.append((target, packed, port))
                if pname and port != -1:
                    owner = label("_" + pname) + label("_" + proto.lower()) + base
                    k = owner.lower()
                    if k not in by_port:
                        by_port[k] = (owner, [])
                    by_port[k][1].append((target, packed, port))
        ans = _srv_answer(entries, ttl)
        if ans[0]:
            names.put(base, SRV, ans)
        for owner, group in by_port.values():
            names.put(owner, SRV, _srv_answer(group, ttl))

    def _endpoint_names(self, eps: list[Ep], base: bytes, names: NameSet, ttl: int) -> None:
        """`endpoint.svc.ns.svc.zone` for ClusterIP and headless Services alike
        (findServices: `svc.Headless() || r.endpoint != ""`).

        CoreDNS also answers SRV at these names (one record per port, target
        the name itself); that costs ~120 octets per endpoint, a third of a
        large image, for a query nobody makes, so it is behind the
        `endpoint_srv` option (off: SRV there is NODATA).
        """
        by_host: dict[str, list[Ep]] = {}
        for e in eps:
            h = e[1].lower()
            got = by_host.get(h)
            if got is None:
                by_host[h] = [e]
            else:
                got.append(e)
        flat = names.addr_names
        with_srv = self.opts.endpoint_srv
        for group in by_host.values():
            owner = group[0][3] + base
            if len(group) == 1 and not with_srv:  # the common case, kept cheap
                flat.append((owner.lower(), group[0][0]))
                continue
            _put_addrs(names, owner, [e[0] for e in group], ttl)
            if with_srv:
                entries = [(owner, e[0], port) for e in group for (_n, _p, port) in e[2]]
                ans = _srv_answer(entries, ttl)
                if ans[0]:
                    names.put(owner, SRV, ans)

    def _external(self, state: ClusterState, svc: Service, base: bytes, zone: bytes,
                  out: ServiceRecords) -> None:
        ext = svc.external_name or ""
        if not ext or ip_packed(ext.rstrip(".")) is not None:
            return  # msg.Service.HostType() is not CNAME: no record (NXDOMAIN)
        try:
            target = name_wire(ext)
        except (ValueError, UnicodeEncodeError):
            return
        names = out.names
        ttl = self.opts.ttl
        cname: RR = (None, CNAME, ttl, b"", target)
        names.put(base, CNAME, ((cname,), ()))
        if target.lower() == base.lower():
            return  # "x CNAME x is a direct loop, don't add those"
        for qtype in (A, AAAA):
            if is_subdomain(target.lower(), zone):
                chased = self.chase(state, target, qtype, zone, 1, {base.lower()},
                                    out.depends_on)
                if chased:
                    names.put(base, qtype, ((cname, *chased), ()))
            else:
                # Out of zone: the forwarder would append the target's records
                # (backend_lookup.go Lookup); until it does, the CNAME alone.
                names.put(base, qtype, ((cname,), ()))
        names.exists(base)

    # -- in-zone resolution for CNAME chasing -------------------------------
    def chase(self, state: ClusterState, target: bytes, qtype: int, zone: bytes, depth: int,
              seen: set[bytes], deps: set[tuple[str, str]]) -> tuple[RR, ...]:
        """Records for `target` (in `zone`) of `qtype`, owners set to `target`; () if none.

        backend_lookup.go A(): an in-zone CNAME target is looked up again; a
        CNAME whose chase yields nothing is dropped; at most 8 links.
        """
        key = target.lower()
        if key in seen or depth >= MAX_CNAME_CHAIN:
            return ()
        seen = seen | {key}
        labels = wire_labels(key[: len(key) - len(zone)] + b"\x00")
        if not labels:
            return ()
        got: Answer | None = None
        if labels[-1] == b"svc" and len(labels) in (3, 4):
            ns, name = labels[-2].decode("ascii", "replace"), labels[-3].decode("ascii", "replace")
            deps.add((ns, name))
            nameset = self.service(state, ns, name).names
            entry = nameset.names.get(key)
            if entry is None:
                for k, packed in nameset.addr_names:
                    if k == key:
                        return (addr_rr(packed, self.opts.ttl, target),) if (
                            (qtype == A) == (len(packed) == 4)) else ()
            if entry is not None:
                got = entry[1].get(qtype)
                if got is None and CNAME in entry[1]:
                    cname = entry[1][CNAME][0][0]
                    nxt = cname[4]
                    assert nxt is not None
                    rest: tuple[RR, ...] = ()
                    if is_subdomain(nxt.lower(), zone):
                        rest = self.chase(state, nxt, qtype, zone, depth + 1, seen, deps)
                        if not rest:
                            return ()
                    return ((target, CNAME, cname[2], b"", nxt), *rest)
        elif labels[-1] == b"pod" and len(labels) == 3:
            ns = labels[-2].decode("ascii", "replace")
            pod_ip = self.pod_address(state, ns, labels[0].decode("ascii", "replace"))
            if pod_ip is not None and (qtype == A) == (len(pod_ip) == 4):
                return (addr_rr(pod_ip, self.opts.ttl, target),)
            return ()
        if not got:
            return ()
        return tuple((target if rr[0] is None else rr[0], *rr[1:]) for rr in got[0])

    def pod_address(self, state: ClusterState, ns: str, podname: str) -> bytes | None:
        """kubernetes.go findPods: the address a pod name stands for, None = NXDOMAIN."""
        mode = self.opts.pods
        if mode == "disabled" or not self.opts.exposed(state, ns):
            return None
        packed = pod_name_address(podname)
        if packed is None:
            return None
        if mode == "insecure":
            return packed
        for pod in state.pods_in(ns):
            if pod.ips and pod.ips[0].lower() == ip_from_podname(podname):
                return packed
        return None

    # -- namespaces, pods, apex ------------------------------------------
    def namespace(self, state: ClusterState, ns: str) -> NameSet:
        """`ns.svc.ZONE` (and `ns.pod.ZONE` unless pods are disabled): NODATA when exposed."""
        out = NameSet()
        if not self.opts.exposed(state, ns):
            return out
        for zone in self.forward:
            out.exists(label(ns) + b"\x03svc" + zone)
            if self.opts.pods != "disabled":
                out.exists(label(ns) + b"\x03pod" + zone)
        return out

    def verified_pods(self, state: ClusterState, ns: str) -> NameSet:
        """`pods verified`: one name per pod IP (object/pod.go keeps status.podIP only)."""
        out = NameSet()
        if self.opts.pods != "verified" or not self.opts.exposed(state, ns):
            return out
        for pod in state.pods_in(ns):
            if not pod.ips:
                continue
            packed = ip_packed(pod.ips[0])
            host = dashed(pod.ips[0])
            if packed is None or not host:
                continue
            for zone in self.forward:
                _put_addrs(out, label(host) + label(ns) + b"\x03pod" + zone, [packed],
                           self.opts.ttl)
        return out

    def ns_addresses(self, state: ClusterState, zone: bytes,
                     serving: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
        """ns.go nsAddrs: (owner wire, address) glue for the apex NS.

        Services whose ready endpoints include a local IP: a ClusterIP one
        by its name and first cluster IP, a headless one by its endpoints;
        none found -> `ns.dns.ZONE` with the local IPs. Deduplicated by address.
        """
        pairs: list[tuple[bytes, bytes]] = []
        for ns, name in serving:
            svc = state.services.get((ns, name))
            if svc is None or svc.type == "ExternalName":
                continue
            base = label(name) + label(ns) + b"\x03svc" + zone
            if svc.headless:
                for packed, _host, _ports, hl in ready_endpoints(state, self.opts, ns, name):
                    pairs.append((hl + base, packed))
            elif svc.cluster_ips:
                p = ip_packed(svc.cluster_ips[0])
                if p:
                    pairs.append((base, p))
        if not pairs:
            pairs = [(b"\x02ns\x03dns" + zone, p)
                     for p in (ip_packed(i) for i in self.opts.local_ips) if p]
        seen: set[bytes] = set()
        out = []
        for owner, p in pairs:
            if p not in seen:
                seen.add(p)
                out.append((owner, p))
        return out

    def apex(self, state: ClusterState, zone: bytes, serving: list[tuple[str, str]],
             forward: bool) -> NameSet:
        """Names at and right under a zone apex; SOA itself is the compiler's (serial)."""
        ttl = self.opts.ttl
        out = NameSet()
        glue = self.ns_addresses(state, zone, serving)
        ns_rrs: list[RR] = []
        seen: set[bytes] = set()
        for owner, _p in glue:
            if owner.lower() not in seen:
                seen.add(owner.lower())
                ns_rrs.append((None, NS, ttl, b"", owner))
        out.put(zone, NS, (tuple(ns_rrs), tuple(addr_rr(p, ttl, o) for o, p in glue)))
        out.exists(zone)
        # kubernetes.go Services(): isDefaultNS answers A/AAAA with the nsAddrs addresses
        _put_addrs(out, b"\x02ns\x03dns" + zone, [p for _o, p in glue], ttl)
        if not forward:
            return out
        out.exists(b"\x03svc" + zone)  # parse.go: "return NODATA for apex queries"
        out.exists(b"\x03pod" + zone)
        txt = DNS_SCHEMA_VERSION.encode()
        out.put(b"\x0bdns-version" + zone, TXT,
                (((None, TXT, DNS_VERSION_TTL, bytes((len(txt),)) + txt, None),), ()),
                nodata=False)
        return out
