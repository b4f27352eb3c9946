"""Write the committed seed corpus: ``python3 -m fuzz.make_seeds`` (deterministic).

A few dozen small inputs per target, each a shape the parser must handle:
real queries and answers (dnspython's, and the demo image's), the Corefiles
distributions ship, kubectl-shaped state files. The fuzzers mutate from
these; tests/wire/test_fuzz_regressions.py replays them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _write(target: str, items: list[bytes]) -> int:
    out = HERE / "corpus" / target
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for data in dict.fromkeys(items):  # libFuzzer's naming: the SHA-1 of the content
        (out / hashlib.sha1(data).hexdigest()).write_bytes(data)
    return len(list(out.iterdir()))


# -- query ---------------------------------------------------------------------

def _opt(payload: int = 1232, version: int = 0, do: bool = False, options: bytes = b"") -> bytes:
    return b"\0" + struct.pack(">HHBBHH", 41, payload, 0, version, 0x8000 if do else 0,
                               len(options)) + options


def _raw_query(qname: bytes, qtype: int = 1, *, qid: int = 0x1234, flags: int = 0x0100,
               qd: int = 1, extra: bytes = b"", ar: int = 0, qclass: int = 1) -> bytes:
    return (struct.pack(">HHHHHH", qid, flags, qd, 0, 0, ar) + qname
            + struct.pack(">HH", qtype, qclass) + extra)


def _wire(name: str) -> bytes:
    import dns.name

    return dns.name.from_text(name).to_wire()


def queries() -> list[bytes]:
    import dns.edns
    import dns.flags
    import dns.message
    import dns.opcode

    out = []
    for name, rdtype in (("kubernetes.default.svc.cluster.local", "A"),
                         ("NgInX.Default.SVC.cluster.local", "A"),
                         ("api.shop.svc.cluster.local", "AAAA"),
                         ("_http._tcp.web.shop.svc.cluster.local", "SRV"),
                         ("web.shop.svc.cluster.local", "SRV"),
                         ("web-0.web.shop.svc.cluster.local", "A"),
                         ("10.0.96.10.in-addr.arpa", "PTR"),
                         ("cluster.local", "SOA"), ("cluster.local", "NS"),
                         ("dns-version.cluster.local", "TXT"),
                         ("nope.default.svc.cluster.local", "A"),
                         ("10-244-0-5.default.pod.cluster.local", "A"),
                         ("svc.cluster.local", "ANY"), ("example.org", "A"),
                         ("cluster.local", "AXFR"),
                         ("kubernetes.default.svc.cluster.local", 65280)):
        out.append(dns.message.make_query(name, rdtype, want_dnssec=False).to_wire())
    q = dns.message.make_query("kubernetes.default.svc.cluster.local", "A", use_edns=0,
                               payload=4096, want_dnssec=True)
    out.append(q.to_wire())
    q = dns.message.make_query("kubernetes.default.svc.cluster.local", "A", use_edns=0,
                               options=[dns.edns.ECSOption("10.0.0.0", 24),
                                        dns.edns.GenericOption(10, b"\x01" * 8)])
    out.append(q.to_wire())
    q = dns.message.make_query("kubernetes.default.svc.cluster.local", "A")
    q.set_opcode(dns.opcode.NOTIFY)
    out.append(q.to_wire())
    name = _wire("kubernetes.default.svc.cluster.local")
    out += [
        _raw_query(name, extra=_opt(1232, version=1), ar=1),          # BADVERS
        _raw_query(name, extra=_opt() + _opt(4096), ar=2),            # two OPTs: FORMERR
        _raw_query(name, extra=_opt(options=b"\0\x0a\0\x09abc"), ar=1),  # option overruns
        _raw_query(name, extra=b"\xc0\x0c" + _opt()[1:], ar=1),        # OPT owner not root
        _raw_query(name, extra=b"junk"),                              # trailing data
        _raw_query(name, qd=2), _raw_query(name, qd=0),               # question counts
        _raw_query(name, flags=0x8100),                               # QR=1: dropped
        _raw_query(name, flags=0x7900),                               # opcode 15, Z, AA
        _raw_query(b"\x03abc\xc0\x0c"),                               # pointer in question
        _raw_query(b"\x03abc\x40abc\0"),                              # label type 0x40
        _raw_query(_wire(".".join(["a" * 63] * 3) + "." + "b" * 61)),  # 255 octets
        _raw_query(name, qtype=16, qclass=3),                         # CH TXT
        _raw_query(b"\0", qtype=2),                                   # the root
        _raw_query(name)[:20], b"", b"\x12\x34\x01\x00\x00\x01",
    ]
    return out


# -- response --------------------------------------------------------------------

def responses() -> list[bytes]:
    import dns.flags
    import dns.message
    import dns.rcode
    import dns.rrset

    from fuzz import query as qtarget

    out = []

    def resp(name: str, rdtype: str, answer=(), authority=(), additional=(), rcode=0,
             edns: int = -1, ednsflags: int = 0, flags: int = 0, options=()) -> bytes:
        q = dns.message.make_query(name, rdtype, use_edns=edns if edns >= 0 else False,
                                   ednsflags=ednsflags, options=list(options))
        r = dns.message.make_response(q)
        r.set_rcode(rcode)
        r.flags |= flags
        for section, rrs in ((r.answer, answer), (r.authority, authority),
                             (r.additional, additional)):
            for owner, ttl, rtype, *rdatas in rrs:
                section.append(dns.rrset.from_text(owner, ttl, "IN", rtype, *rdatas))
        return r.to_wire()

    soa = ("example.org.", 300, "SOA", "ns1.example.org. hostmaster.example.org. "
           "2024010101 7200 1800 86400 60")
    out += [
        resp("www.example.org.", "A", [("www.example.org.", 60, "A", "192.0.2.1", "192.0.2.2")]),
        resp("WwW.Example.ORG.", "A", [("www.example.org.", 60, "A", "192.0.2.1")], edns=0),
        resp("www.example.org.", "AAAA", [("www.example.org.", 60, "AAAA", "2001:db8::1")],
             edns=0, ednsflags=dns.flags.DO),
        resp("alias.example.org.", "A", [("alias.example.org.", 30, "CNAME", "www.example.org."),
                                         ("www.example.org.", 60, "A", "192.0.2.1")]),
        resp("nope.example.org.", "A", authority=[soa], rcode=dns.rcode.NXDOMAIN),
        resp("nope.example.org.", "A", authority=[soa], rcode=dns.rcode.NXDOMAIN, edns=0),
        resp("www.example.org.", "MX", authority=[soa]),                      # NODATA
        resp("www.example.org.", "MX"),                                      # NODATA, no SOA
        resp("sub.example.org.", "A", authority=[("sub.example.org.", 3600, "NS",
                                                  "ns.sub.example.org.")],
             additional=[("ns.sub.example.org.", 3600, "A", "192.0.2.53")]),  # referral
        resp("www.example.org.", "A", rcode=dns.rcode.SERVFAIL),
        resp("www.example.org.", "A", rcode=dns.rcode.REFUSED, edns=0),
        resp("www.example.org.", "A", flags=dns.flags.TC),
        resp("_sip._udp.example.org.", "SRV",
             [("_sip._udp.example.org.", 60, "SRV", "0 50 5060 a.example.org.",
               "0 50 5060 b.example.org.")],
             additional=[("a.example.org.", 60, "A", "192.0.2.10")]),
        resp("txt.example.org.", "TXT", [("txt.example.org.", 60, "TXT", '"' + "x" * 200 + '"',
                                          '"a" "b" "c"')]),
        resp("example.org.", "SOA", [soa], edns=0, options=[]),
        resp("4.3.2.1.in-addr.arpa.", "PTR", [("4.3.2.1.in-addr.arpa.", 60, "PTR",
                                                "host.example.org.")]),
        resp(".", "NS", [(".", 518400, "NS", "a.root-servers.net.")]),
        resp("www.example.org.", "A", [("www.example.org.", 0, "A", "192.0.2.1")]),
        resp("www.example.org.", "A", [("www.example.org.", 0x7FFFFFFF, "A", "192.0.2.1")]),
    ]
    # BADVERS: extended rcode bits in the OPT TTL (RFC 6891 §6.1.3)
    r = bytearray(resp("www.example.org.", "A", edns=0))
    r[-6] = 1
    out.append(bytes(r))
    # our own answers: the demo image's templates (compressed against the question)
    qtarget.setup()
    for q in queries():
        status, data, _ = qtarget.py.answer(qtarget.IMAGE, q, 0, 65535)
        if status == qtarget.py.ST_ANSWER and data[4:6] != b"\0\0":
            out.append(data)
    return out


# -- corefile --------------------------------------------------------------------

COREFILES = {
    "k3s": """\
.:53 {
    errors
    health
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
      pods insecure
      fallthrough in-addr.arpa ip6.arpa
    }
    hosts /etc/coredns/NodeHosts {
      ttl 60
      reload 15s
      fallthrough
    }
    prometheus :9153
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
    loadbalance
    import /etc/coredns/custom/*.override
}
import /etc/coredns/custom/*.server
""",
    "rke2": """\
.:53 {
    errors
    health {
        lameduck 5s
    }
    ready
    kubernetes cluster.local cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    prometheus 0.0.0.0:9153
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
    loadbalance
}
""",
    "aks": """\
.:53 {
    errors
    ready
    health {
        lameduck 5s
    }
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
    loadbalance
    template ANY ANY internal.cloudapp.net {
        match "^(?:[^.]+\\.){4,}internal\\.cloudapp\\.net\\.$"
        rcode NXDOMAIN
        fallthrough
    }
    import custom/*.override
}
import custom/*.server
""",
    "openshift": """\
.:5353 {
    bufsize 1232
    errors
    log . {
        class error
    }
    health {
        lameduck 20s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    prometheus 127.0.0.1:9153
    forward . /etc/resolv.conf {
        policy sequential
    }
    cache 900 {
        denial 9984 30
    }
    reload
}
hostname.bind:5353 {
    chaos
}
""",
    "options": """\
(common) {
    errors
    log . "{remote}:{port} {type} {name}" {
        class denial error
    }
}
cluster.local:1053 10.in-addr.arpa:1053 {
    import common
    bind 127.0.0.1 ::1
    kubernetes cluster.local 10.in-addr.arpa {
        endpoint_pod_names
        pods verified
        namespaces default kube-system
        labels app=web,tier!=db
        namespace_labels team in (a, b)
        noendpoints
        ignore empty_service
        startup_timeout 2s
        ttl 0
        fallthrough
    }
    cache 3600 cluster.local {
        success 10000 300 5
        denial 5000 60 1
        prefetch 10 1m 10%
        serve_stale 1h verify
        servfail 2s
        keepttl
        disable success example.org
    }
    loadbalance round_robin
    ready 127.0.0.1:8181
    health 127.0.0.1:8080 {
        lameduck 1s
    }
    prometheus 127.0.0.1:9153
    reload 10s 2s
    loop
}
.:1053 {
    bind lo
    forward . 127.0.0.1:5300 [::1]:5300 dns://192.0.2.1 {
        except example.net internal.
        force_tcp
        prefer_udp
        expire 10s
        max_fails 3
        max_idle_conns 10
        health_check 0.5s no_rec domain example.org
        policy round_robin
        max_concurrent 100
        next NXDOMAIN SERVFAIL
        failover SERVFAIL REFUSED
        failfast_all_unhealthy_upstreams
    }
    hosts {
        192.0.2.7 seven.example.org
        2001:db8::7 seven.example.org
        ttl 60
        no_reverse
        fallthrough
    }
    whoami
    debug
    errors {
        consolidate 5m ".* timeout$" warning
        stacktrace
    }
}
""",
    "env": """\
{$ZONE}:{%PORT%} {
    kubernetes {$ZONE} {
        kubeconfig /nonexistent/kubeconfig ctx
        endpoint http://127.0.0.1:6443
    }
}
""",
    "errors": """\
.:53 {
    cache -1
    kubernetes cluster.local {
        pods sometimes
        ttl 99999
    }
    forward
    nosuchplugin
    forward . 1.2.3.4:99999
}
tls://.:853 grpc://.:443 https://.:443 {
    whoami
}
.:53 {
    whoami
}
""",
    "syntax": 'a b, c\n d {\n "quoted { brace" `raw\nline`\n # comment\n } }\n{\n',
    "one-block": "whoami\nerrors\n",
    "snippet-loop": "(a) {\n import b\n}\n(b) {\n import a\n}\n.:53 {\n import a\n}\n",
    "ports": "example.org:0 .:65535 dns://.:53 [::1]:53 10.0.0.0/8:53 fd00::/120 {\n whoami\n}\n",
}


def corefiles() -> list[bytes]:
    out = [(ROOT / "tests" / "corefiles" / n).read_bytes()
           for n in ("kubeadm.Corefile", "nodelocaldns.Corefile")]
    from fastdns.corefile.config import DEFAULT_DEMO_COREFILE

    out.append(DEFAULT_DEMO_COREFILE.encode())
    out += [t.encode() for t in COREFILES.values()]
    return out


# -- statefile -------------------------------------------------------------------

def _svc(name: str, ns: str = "default", **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def _slice(name: str, svc: str, ns: str = "default", atype: str = "IPv4", endpoints=(),
           ports=()) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": ns,
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": atype, "endpoints": None if endpoints is None else list(endpoints),
            "ports": None if ports is None else list(ports)}


def statefiles() -> list[bytes]:
    ns = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}
          for n in ("default", "shop")]
    http = [{"name": "http", "port": 80, "protocol": "TCP"}]
    objs = ns + [
        _svc("web", clusterIP="10.96.1.1", clusterIPs=["10.96.1.1"], ports=http),
        _svc("dual", clusterIP="10.96.1.2", clusterIPs=["10.96.1.2", "fd00::2"],
             ipFamilies=["IPv4", "IPv6"], ports=http),
        _svc("db", "shop", clusterIP="None", ports=[{"name": "pg", "port": 5432}]),
        _svc("ext", "shop", type="ExternalName", externalName="www.example.org"),
        _slice("db-abc", "db", "shop", endpoints=[
            {"addresses": ["10.244.0.5"], "conditions": {"ready": True}, "hostname": "db-0",
             "nodeName": "n1", "targetRef": {"kind": "Pod", "name": "db-0"}},
            {"addresses": ["10.244.0.6"], "conditions": {"ready": False}}],
            ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]),
        _slice("db-v6", "db", "shop", "IPv6", [{"addresses": ["fd00::6"]}],
               [{"name": "pg", "port": 5432}]),
        _slice("web-x", "web", endpoints=None, ports=None),
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db-0", "namespace": "shop"},
         "status": {"phase": "Running", "podIP": "10.244.0.5",
                    "podIPs": [{"ip": "10.244.0.5"}, {"ip": "fd00::5"}]}},
    ]

    def jlist(items, kind="List") -> bytes:
        return json.dumps({"apiVersion": "v1", "items": items, "kind": kind,
                           "metadata": {"resourceVersion": ""}}).encode()

    import yaml

    out = [
        jlist(objs),
        jlist([{k: v for k, v in o.items() if k not in ("kind", "apiVersion")}
               for o in objs if o["kind"] == "Service"], "ServiceList"),
        jlist([]),
        json.dumps(objs[2]).encode(),
        json.dumps(objs[:3]).encode(),
        jlist([{"kind": "List", "items": objs[:2]}]),  # a List inside a List
        yaml.safe_dump({"apiVersion": "v1", "items": objs, "kind": "List",
                        "metadata": {"resourceVersion": ""}}).encode(),
        yaml.safe_dump_all(objs).encode(),
        b"apiVersion: v1\nkind: List\nitems: []\n",
        b"kind: List\nitems:\n- kind: Service\n  metadata: {name: a}\n"
        b"  spec: {clusterIP: 10.0.0.1}\n",
        b"", b"---\n", b"{}", b"[]", b"null",
        (ROOT / "fastdns" / "demo" / "cluster.yaml").read_bytes(),
    ]
    return out


def main() -> None:
    for target, fn in (("query", queries), ("response", responses),
                       ("corefile", corefiles), ("statefile", statefiles)):
        print(f"{target}: {_write(target, fn())} seeds")


if __name__ == "__main__":
    main()
