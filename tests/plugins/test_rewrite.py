"""rewrite (fastdns/plugins/rewrite/, plugin/rewrite/*_test.go): the lines
CoreDNS accepts and refuses, name_test.go's tables of question -> rewritten
question -> answer owner, and what dig-like clients see through `fastdns
serve`: a rewritten name answered from the image or forwarded, the answer
reverted (question, owners, values), TTL and rcode rules, on the C fast path
(a query no rule touches stays in C) and the pure-Python path, UDP and TCP."""

from __future__ import annotations

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from fastdns.codec import NO_EXTENSIONS, wire
from fastdns.corefile.config import parse_corefile
from fastdns.corefile.errors import CorefileError, Unsupported
from fastdns.ipc import readout, shm
from fastdns.plugins.rewrite import reverter, rules
from fastdns.plugins.rewrite.config import RuleError, new_rule
from tests.helpers import DEMO, KUBERNETES, Server, free_port
from tests.upstreams import UpstreamThread


def rule(*args: str):
    return new_rule(list(args))


# name_test.go TestRewriteNamePrefixSuffix / NoRewrite / ExactAnswer / the README's examples:
# (args, question, rewritten question or None: untouched)
NAME_RULES = [
    (("name", "prefix", "foo", "bar"), "foo.example.com.", "bar.example.com."),
    (("name", "prefix", "foo.", "bar."), "foo.example.com.", "bar.example.com."),
    (("name", "suffix", "com", "org"), "foo.example.com.", "foo.example.org."),
    (("name", "suffix", ".com", ".org"), "foo.example.com.", "foo.example.org."),
    (("name", "suffix", ".ingress.coredns.rocks", "nginx.coredns.rocks"),
     "coredns.ingress.coredns.rocks.", "corednsnginx.coredns.rocks."),
    (("name", "prefix", "foo", "bar"), "coredns.foo.", None),
    (("name", "suffix", "com", "org"), "com.coredns.", None),
    (("name", "substring", "service", "svc"), "com.coredns.", None),
    (("name", "substring", "service.us-west-1.example.org", "service.us-west-1.consul"),
     "ftp.service.us-west-1.example.org.", "ftp.service.us-west-1.consul."),
    (("name", "regex", r"(.*)-(us-west-1)\.example\.org", "{1}.service.{2}.consul"),
     "ftp-us-west-1.example.org.", "ftp.service.us-west-1.consul."),
    (("name", "coredns.rocks", "service.consul"), "coredns.rocks.", "service.consul."),
    (("name", "exact", "coredns.org.", "service.consul."), "coredns.rocks.", None),
    (("stop", "name", "exact", "A.B", "C.D"), "a.b.", "c.d."),
]


@pytest.mark.parametrize("args, question, want", NAME_RULES)
def test_name_rules(args, question, want):
    out = rules.apply((rule(*args),), question, 1, 1)
    if want is None:
        assert out is None
    else:
        assert out is not None and out.name == want and out.restore


# TestRewriteNamePrefixSuffixAutoAnswer / ExactAnswer: what the answer's owner becomes
@pytest.mark.parametrize("args, question, rewritten, owner", [
    (("name", "prefix", "foo", "bar", "answer", "auto"), "foo.example.com.",
     "bar.example.com.", "foo.example.com."),
    (("name", "suffix", "com", "org", "answer", "auto"), "foo.example.com.",
     "foo.example.org.", "foo.example.com."),
    (("name", "suffix", ".ingress.coredns.rocks", "nginx.coredns.rocks", "answer", "auto"),
     "coredns.ingress.coredns.rocks.", "corednsnginx.coredns.rocks.",
     "coredns.ingress.coredns.rocks."),
    (("name", "exact", "coredns.rocks", "service.consul"), "coredns.rocks.",
     "service.consul.", "coredns.rocks."),
    (("name", "prefix", "foo", "bar"), "foo.example.com.", "bar.example.com.",
     "bar.example.com."),  # no auto: the owner stays
    (("name", "regex", r"(.*)-(us-west-1)\.coredns\.rocks", "{1}.service.{2}.consul",
      "answer", "name", r"(.*)\.service\.(us-west-1)\.consul", "{1}-{2}.coredns.rocks"),
     "ftp-us-west-1.coredns.rocks.", "ftp.service.us-west-1.consul.",
     "ftp-us-west-1.coredns.rocks."),
])
def test_answer_rules(args, question, rewritten, owner):
    r = rule(*args)
    out = rules.apply((r,), question, 1, 1)
    assert out is not None and out.name == rewritten
    query = dns.message.make_query(question, "A")
    data = query.to_wire()
    resp = dns.message.make_response(dns.message.make_query(rewritten, "A"))
    resp.answer.append(dns.rrset.from_text(rewritten, 30, "IN", "A", "10.0.0.1"))
    got = reverter.revert(data, wire.parse_query(data), resp.to_wire(), out.responses, True,
                          False)
    m = dns.message.from_wire(got)
    assert str(m.question[0].name) == question  # the question is always put back
    assert str(m.answer[0].name) == owner and m.answer[0][0].address == "10.0.0.1"


def test_value_rules_and_continue():
    """``answer value``: the name a record points to; ``continue`` runs the
    next rule on the rewritten name, the response rules last first."""
    rs = (rule("continue", "name", "suffix", ".corp.", ".svc.local.", "answer", "auto"),
          rule("name", "regex", r"^(.*)\.svc\.local\.$", "{1}.default.svc.cluster.local",
               "answer", "value", r"^(.*)\.default\.svc\.cluster\.local\.$", "{1}.corp"))
    out = rules.apply(rs, "www.corp.", 5, 1)
    assert out is not None and out.name == "www.default.svc.cluster.local."
    q = dns.message.make_query("www.corp.", "CNAME")
    data = q.to_wire()
    resp = dns.message.make_response(dns.message.make_query(out.name, "CNAME"))
    resp.answer.append(dns.rrset.from_text(out.name, 5, "IN", "CNAME",
                                           "db.default.svc.cluster.local."))
    m = dns.message.from_wire(reverter.revert(data, wire.parse_query(data), resp.to_wire(),
                                              out.responses, True, False))
    assert m.answer[0][0].target.to_text() == "db.corp."


@pytest.mark.parametrize("args", [
    ("type", "ANY", "HINFO"), ("class", "CH", "IN"), ("ttl", "example.com", "30-300"),
    ("ttl", "regex", r"(.*)\.coredns\.rocks", "15"), ("ttl", "example.com.", "-30"),
    ("ttl", "example.com.", "30-"), ("rcode", "regex", r"(.*)\.coredns\.rocks", "SERVFAIL",
                                     "NOERROR"), ("rcode", "example.com", "2", "0"),
    ("continue", "name", "regex", r"(.*)\.a", "{1}.b", "answer", "auto"),
])
def test_accepted(args):
    assert rule(*args)


@pytest.mark.parametrize("args, why", [
    ((), "no rule type specified"), (("stop",), "stop rule must begin with a rule type"),
    (("answer", "name", "a", "b"), "response rewrites must begin with a name rule"),
    (("type", "A"), "exactly two arguments"), (("type", "A", "BOGUS"), "invalid type"),
    (("class", "IN", "XX"), "invalid class"), (("ttl", "a.b", "30-10"), "invalid TTL"),
    (("ttl", "a.b", "-"), "invalid TTL"), (("rcode", "a.b", "NOERROR", "BOGUS"),
                                           "invalid replacement RCODE"),
    (("name", "regex", "(", "x"), "invalid regex matching pattern"),
    (("name", "regex", "a", "{1}"), "uses more subexpressions"),
    (("name", "bogus", "a", "b"), "supports only exact"),
    (("name", "prefix", "a", "b", "answer", "auto", "answer", "name", "x", "y"),
     "cannot be combined"),
    (("frobnicate", "a", "b"), "invalid rule type"),
])
def test_refused(args, why):
    with pytest.raises(RuleError, match=why):
        rule(*args)


def test_corefile_forms():
    cfg = parse_corefile(
        ".:53 {\n    rewrite name foo.test bar.test\n    rewrite stop {\n"
        "        name regex (.*)-x\\.test {1}.y.test\n        answer name (.*)\\.y\\.test "
        "{1}-x.test\n    }\n    whoami\n}\n", "C")
    conf = cfg.servers[0].plugins["rewrite"]
    assert [r.match.kind for r in conf.rules] == ["exact", "regex"]
    assert conf.rules[1].answers[0].to == "{1}-x.test."
    with pytest.raises(CorefileError, match=r"^C:2: plugin rewrite: .*invalid rule type"):
        parse_corefile(".:53 {\n    rewrite bogus a b\n    whoami\n}\n", "C")
    with pytest.raises(Unsupported, match=r"^C:2: .*rewrite edns0 rules are not implemented"):
        parse_corefile(".:53 {\n    rewrite edns0 local set 0xffee abc\n    whoami\n}\n", "C")


COREFILE = """\
.:{port} {{
    bind 127.0.0.1
    rewrite name exact www.example.org kubernetes.default.svc.cluster.local
    rewrite name exact gone.example.org nothere.default.svc.cluster.local
    rewrite name exact _https._tcp.api.example.org _https._tcp.kubernetes.default.svc.cluster.local
    rewrite name suffix .corp.test .default.svc.cluster.local answer auto
    rewrite ttl exact short.hosts.test 100
    rewrite rcode exact gone.hosts.test SERVFAIL REFUSED
    hosts hosts.test {{
        10.1.1.1 short.hosts.test
    }}
    kubernetes cluster.local
}}
fwd.test:{port} {{
    bind 127.0.0.1
    rewrite name regex (.*)\\.fwd\\.test {{1}}.up.test answer auto
    forward . {up}
}}
"""


@pytest.fixture(scope="module", params=["c", "py"])
def server(request, tmp_path_factory):
    if request.param == "c" and NO_EXTENSIONS:
        pytest.skip("the Cython UDP path is not built")
    tmp = tmp_path_factory.mktemp(f"rewrite-{request.param}")
    th = UpstreamThread()
    up = th.start({"www.up.test.": [("A", "192.0.2.7")],
                   "alias.up.test.": [("CNAME", "web.www.up.test.")]}, zone="up.test.")
    port = free_port(v6=False)
    (tmp / "Corefile").write_text(COREFILE.format(port=port, up=up.addr))
    mp = pytest.MonkeyPatch()
    mp.setenv("FASTDNS_NO_EXTENSIONS", "1" if request.param == "py" else "0")
    srv = Server(tmp, ["--corefile", str(tmp / "Corefile"), "--state", str(DEMO),
                       "--workers", "1"], port)
    mp.undo()
    srv.path = request.param
    srv.upstream = up
    try:
        srv.wait_answering()
        yield srv
    finally:
        srv.stop_and_sweep()
        th.close()


def slow_count(srv) -> int:
    with shm.ControlSegment.attach(srv.instance) as ctl:
        return readout.read_counters(ctl.counters(0))["slow"]["total"]


def ask(srv, name, qtype="A", tcp=False):
    q = dns.message.make_query(name, qtype)
    how = dns.query.tcp if tcp else dns.query.udp
    r = how(q, "127.0.0.1", port=srv.port, timeout=3)
    assert r.question == q.question  # the question as asked, always
    return r


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_rewritten_names_answer_as_the_asked_ones(server, tcp):
    r = ask(server, "www.example.org.", tcp=tcp)  # exact onto a Service: the image answers
    [a] = r.answer
    assert str(a.name) == "www.example.org." and a[0].address == "10.96.0.1"
    r = ask(server, "kubernetes.corp.test.", tcp=tcp)  # suffix, answer auto
    [a] = r.answer
    assert str(a.name) == "kubernetes.corp.test." and a[0].address == "10.96.0.1"
    r = ask(server, "nothere.corp.test.", tcp=tcp)  # the rewritten name's NXDOMAIN
    assert r.rcode() == dns.rcode.NXDOMAIN and str(r.authority[0].name) == "cluster.local."
    r = ask(server, "www.fwd.test.", tcp=tcp)  # regex onto a forwarded name, auto: both owners
    [a] = r.answer
    assert str(a.name) == "www.fwd.test." and a[0].address == "192.0.2.7"
    r = ask(server, "alias.fwd.test.", "CNAME", tcp=tcp)  # auto: values under the name too
    [a] = r.answer
    assert str(a.name) == "alias.fwd.test." and a[0].target.to_text() == "web.www.up.test."
    asked = {q[1] for q in server.upstream.queries}
    assert "www.up.test." in asked and "www.fwd.test." not in asked  # upstream as rewritten


def test_ttl_and_rcode_rules(server):
    r = ask(server, "short.hosts.test.")
    assert r.answer[0].ttl == 100 and r.answer[0][0].address == "10.1.1.1"
    # hosts without fallthrough: SERVFAIL for a name it lacks (hosts.go), swapped
    r = ask(server, "gone.hosts.test.")
    assert r.rcode() == dns.rcode.REFUSED
    r = ask(server, "other.hosts.test.")  # no rule's name: hosts' own answer
    assert r.rcode() == dns.rcode.SERVFAIL


def test_untouched_queries_stay_on_the_fast_path(server):
    if server.path != "c":
        pytest.skip("the C filter")
    before = slow_count(server)
    for _ in range(5):
        ask(server, KUBERNETES)  # no rule can touch it: answered in C
        ask(server, "short.hosts.test.", "AAAA")  # hosts' block; the ttl rule's name: Python
    assert slow_count(server) - before == 5


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_exact_rules_in_c(server, tcp):
    """``name exact`` (stop, no answer rules) is renamed and reverted by the C
    hook: no Python per query, and the answer a client sees is the one the
    Python reverter gives (the pure-Python server's, same test)."""
    before = slow_count(server)
    r = ask(server, "WWW.Example.org.", tcp=tcp)
    [a] = r.answer
    assert str(a.name).lower() == "www.example.org." and a[0].address == "10.96.0.1"
    r = ask(server, "gone.example.org.", tcp=tcp)  # NXDOMAIN: the SOA's names written whole
    assert r.rcode() == dns.rcode.NXDOMAIN and not r.answer
    [soa] = r.authority
    assert str(soa.name) == "cluster.local." and str(soa[0].mname) == "ns.dns.cluster.local."
    r = ask(server, "_https._tcp.api.example.org.", "SRV", tcp=tcp)  # SRV + additional A
    [srv] = r.answer
    assert str(srv.name) == "_https._tcp.api.example.org." and srv[0].port == 443
    assert str(srv[0].target) == "kubernetes.default.svc.cluster.local."
    assert [(str(x.name), x[0].address) for x in r.additional] == [
        ("kubernetes.default.svc.cluster.local.", "10.96.0.1")]
    if server.path == "c" and not tcp:
        assert slow_count(server) == before
