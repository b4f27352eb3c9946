"""Zone conformance tables: parser and runner shared by the zone tests.

A table file (`*.zt`) is CoreDNS's `handler_test.go` in zone-file syntax:

    @state cluster.yaml                 # state file, relative to this folder
    @options pods=insecure ttl=5 zones=cluster.local,in-addr.arpa
    @synced false                       # optional: before the first sync
    @define SOA cluster.local. 5 IN SOA ns.dns.cluster.local. ...   # $SOA below

    svc1.testns.svc.cluster.local. A NOERROR
      AN svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1
    svc0.testns.svc.cluster.local. A NXDOMAIN
      NS $SOA
    example.com. A SLOW                 # the fast path passes it on

A query line is `qname qtype RCODE` (or `SLOW`); the indented lines under it
are the expected records, `AN` answer, `NS` authority, `AR` additional.
Sections compare as sorted lists (CoreDNS's SortAndCheck); a CNAME must
precede the records it leads to. Answers below a ZK_POD zone go through
`podsynth.synthesize`, as the worker's slow path does.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from fastdns.ipc import image as img
from fastdns.zone.compiler import Compiler
from fastdns.zone.options import KubernetesOptions
from fastdns.zone.state import load_state

HERE = os.path.dirname(__file__)
SERIAL = 1499347823  # the serial CoreDNS's own tables use


@dataclass
class Case:
    file: str
    line: int
    qname: str
    qtype: str
    rcode: str  # NOERROR, NXDOMAIN, ..., or SLOW
    sections: dict[str, list[str]] = field(default_factory=lambda: {"AN": [], "NS": [], "AR": []})

    @property
    def id(self) -> str:
        return f"{os.path.basename(self.file)}:{self.line}:{self.qname}/{self.qtype}"


@dataclass
class Table:
    file: str
    state: str
    options: KubernetesOptions
    synced: bool
    cases: list[Case]


def _options(text: str) -> KubernetesOptions:
    kw: dict = {}
    tuples = {"zones", "namespaces", "fallthrough", "local_ips"}
    bools = {"endpoint_pod_names", "noendpoints", "ignore_empty_service", "endpoint_srv",
             "loadbalance"}
    for item in text.split():
        k, _, v = item.partition("=")
        if k in tuples:
            kw[k] = tuple(x for x in v.split(",") if x)
        elif k in bools:
            kw[k] = v.lower() in ("", "1", "true", "yes")
        elif k == "ttl":
            kw[k] = int(v)
        else:
            kw[k] = v
    return KubernetesOptions(**kw)


def parse_table(path: str) -> Table:
    state = os.path.join(HERE, "cluster.yaml")
    options = KubernetesOptions()
    synced = True
    defines: dict[str, str] = {}
    cases: list[Case] = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for n, raw in enumerate(lines, 1):
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        for k in sorted(defines, key=len, reverse=True):
            line = line.replace("$" + k, defines[k])
        if line.startswith("@state "):
            state = os.path.join(os.path.dirname(path), line.split(None, 1)[1])
        elif line.startswith("@options"):
            options = _options(line[len("@options"):])
        elif line.startswith("@synced "):
            synced = line.split()[1].lower() == "true"
        elif line.startswith("@define "):
            _, k, v = line.split(None, 2)
            defines[k] = v
        elif line[0].isspace():
            sec, rr = line.split(None, 1)
            if not cases or sec not in ("AN", "NS", "AR"):
                raise ValueError(f"{path}:{n}: record line outside a case or bad section")
            cases[-1].sections[sec].append(rr)
        else:
            qname, qtype, rcode = line.split()
            cases.append(Case(path, n, qname, qtype, rcode))
    return Table(path, state, options, synced, cases)


def tables() -> list[Table]:
    return [parse_table(os.path.join(HERE, f)) for f in sorted(os.listdir(HERE))
            if f.endswith(".zt")]


def compile_table(t: Table) -> bytes:
    c = Compiler(t.options)
    c.synced = t.synced
    return c.full(load_state(t.state), now=SERIAL)


def rr_key(text: str) -> tuple:
    """A record line -> comparable (owner, ttl, type, canonical rdata)."""
    name, ttl, cls, rtype, rdata = text.split(None, 4)
    rd = dns.rdata.from_text(dns.rdataclass.from_text(cls), dns.rdatatype.from_text(rtype),
                             rdata)
    return (dns.name.from_text(name).canonicalize().to_text(), int(ttl), rtype.upper(),
            rd.to_digestable().hex())


def section_keys(rrsets) -> list[tuple]:
    out = []
    for rrset in rrsets:
        for rd in rrset:
            out.append((rrset.name.canonicalize().to_text(), rrset.ttl,
                        dns.rdatatype.to_text(rrset.rdtype), rd.to_digestable().hex()))
    return out


def mixed_case(qname: str, seed: int) -> str:
    rnd = random.Random(seed)
    return "".join(c.upper() if c.isalpha() and rnd.random() < 0.5 else c for c in qname)


def ask(wire, image: bytes, qname: str, qtype: str, payload: int = 4096):
    """(status, dnspython message or None, query bytes): the fast path, then pod synthesis."""
    from fastdns.server import podsynth

    q = dns.message.make_query(qname, qtype, use_edns=0, payload=payload)
    q.flags |= dns.flags.RD
    data = q.to_wire()
    status, resp, zone = wire.answer(image, data)
    if status == 2 and zone >= 0 and img.zone_entry(image, zone)[5] == img.ZK_POD:
        resp = podsynth.synthesize(image, data, wire.parse_query(data))
        status = 0 if resp is not None else 2
    if status != 0:
        return status, None, data
    return status, dns.message.from_wire(resp), data


def check(case: Case, wire, image: bytes, qname: str | None = None) -> None:
    qname = qname or case.qname
    status, msg, _ = ask(wire, image, qname, case.qtype)
    if case.rcode == "SLOW":
        assert status == 2, f"{case.id}: expected the slow path, got status {status}"
        return
    assert status == 0, f"{case.id}: expected an answer, got status {status}"
    assert dns.rcode.to_text(msg.rcode()) == case.rcode, (
        f"{case.id}: rcode {dns.rcode.to_text(msg.rcode())}\n{msg}")
    assert msg.flags & dns.flags.AA, f"{case.id}: not authoritative"
    assert msg.question[0].name.to_text() == dns.name.from_text(qname).to_text()
    for sec, got in (("AN", msg.answer), ("NS", msg.authority), ("AR", msg.additional)):
        want = sorted(rr_key(r) for r in case.sections[sec])
        have = sorted(section_keys(got))
        assert have == want, f"{case.id}: section {sec}\nwant {want}\nhave {have}\n{msg}"
    # CoreDNS test.CNAMEOrder: a CNAME comes before the records of its target
    owners = [r.name.canonicalize() for r in msg.answer]
    for rrset in msg.answer:
        if rrset.rdtype == dns.rdatatype.CNAME:
            t = rrset[0].target.canonicalize()
            if t in owners:
                assert owners.index(t) > owners.index(rrset.name.canonicalize()), case.id
    # owners equal to the question echo its case; a negative SOA owner is the
    # zone suffix of the question, in the question's case
    qn = dns.name.from_text(qname)
    for rrset in msg.answer:
        if rrset.name == qn:
            assert rrset.name.labels == qn.labels, f"{case.id}: owner case {rrset.name}"
    for rrset in msg.authority:
        if rrset.rdtype == dns.rdatatype.SOA and qn.is_subdomain(rrset.name):
            suffix = qn.labels[len(qn.labels) - len(rrset.name.labels):]
            assert rrset.name.labels == suffix, f"{case.id}: SOA owner case {rrset.name}"
