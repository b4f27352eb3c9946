"""acl (fastdns/plugins/acl.py, plugin/acl/setup_test.go and acl_test.go):
the lines CoreDNS accepts and refuses, the decision table, and what clients
from several loopback sources see through `fastdns serve`: REFUSED with
EDE 15, an empty NOERROR with EDE 17, no answer, or the query answered; on
the C fast path (no query handed to Python) and the pure-Python path alike,
over UDP and TCP, the same bytes as the plugin's own ``refusal``."""

from __future__ import annotations

import ipaddress
import socket
import time

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from fastdns.codec import NO_EXTENSIONS, wire
from fastdns.corefile.config import parse_corefile
from fastdns.corefile.errors import CorefileError
from fastdns.ipc import readout, shm
from fastdns.plugins import acl
from tests.helpers import Server, free_port, scrape_metrics, wait_for


def conf(body: str, zone: str = "."):
    return parse_corefile(f"{zone}:53 {{\n    {body}\n    whoami\n}}\n", "C").servers[0].plugins


@pytest.mark.parametrize("body, rules", [
    ("acl {\n block type A net 192.168.0.0/16\n }",
     [((".",), [("block", {1}, ["192.168.0.0/16"])])]),
    ("acl {\n filter type A AAAA net 10.0.0.1 ::1\n }",
     [((".",), [("filter", {1, 28}, ["10.0.0.1/32", "::1/128"])])]),
    ("acl {\n allow net 192.168.1.0/24\n block net 192.168.0.0/16\n }",
     [((".",), [("allow", None, ["192.168.1.0/24"]), ("block", None, ["192.168.0.0/16"])])]),
    ("acl {\n allow net 192.168.0.0/24 192.168.1.0/24\n block\n }",
     [((".",), [("allow", None, ["192.168.0.0/24", "192.168.1.0/24"]),
                ("block", None, None)])]),
    ("acl a.example.org {\n drop type * net *\n }",
     [(("a.example.org.",), [("drop", None, None)])]),
    ("acl {\n BLOCK TYPE A NET 10.1.2.3/8\n }",  # host bits: ParseCIDR's network
     [((".",), [("block", {1}, ["10.0.0.0/8"])])]),
    ("acl x.test {\n block\n }\n    acl {\n allow\n }",
     [(("x.test.",), [("block", None, None)]), ((".",), [("allow", None, None)])]),
])
def test_accepted(body, rules):
    got = conf(body)["acl"]
    want = tuple(acl.Rule(z, tuple(acl.Policy(a, None if t is None else frozenset(t),
                                               None if n is None else
                                               tuple(ipaddress.ip_network(x) for x in n))
                                    for a, t, n in ps)) for z, ps in rules)
    assert got.rules == want


@pytest.mark.parametrize("body, why", [
    ("acl {\n blck net 10.0.0.0/8\n }", "expect 'allow', 'block', 'filter' or 'drop'"),
    ("acl {\n block type\n }", "no token specified in 'type' section"),
    ("acl {\n block net\n }", "no token specified in 'net' section"),
    ("acl {\n block type ABC\n }", "expect legal QTYPE"),
    ("acl {\n block net 10.0.0.0/33\n }", "illegal CIDR notation"),
    ("acl {\n block nets 10.0.0.0/8\n }", "expect 'type | net'"),
])
def test_refused(body, why):
    with pytest.raises(CorefileError, match=r"^C:\d+: plugin acl: .*" + why):
        conf(body)


#: acl_test.go's shape: (rules, source, name, type) -> action (None: on down the chain)
DECISIONS = [
    ("block type A net 192.168.0.0/16", "192.168.1.2", "a.test.", 1, "block"),
    ("block type A net 192.168.0.0/16", "192.168.1.2", "a.test.", 28, None),
    ("block type A net 192.168.0.0/16", "10.0.0.1", "a.test.", 1, None),
    ("filter net 10.0.0.0/8", "10.9.9.9", "a.test.", 16, "filter"),
    ("drop net ::1", "::1", "a.test.", 1, "drop"),
    ("drop net 127.0.0.1", "::ffff:127.0.0.1", "a.test.", 1, "drop"),  # mapped: IPv4
    ("block net ::/0", "10.0.0.1", "a.test.", 1, None),  # a v6 net holds no v4 source
    ("allow net 10.0.0.1\n block", "10.0.0.1", "a.test.", 1, None),
    ("allow net 10.0.0.1\n block", "10.0.0.2", "a.test.", 1, "block"),
    ("block", "not-an-ip", "a.test.", 1, "block"),
]


@pytest.mark.parametrize("rules, src, name, qtype, action", DECISIONS)
def test_decisions(rules, src, name, qtype, action):
    c = conf("acl {\n " + rules + "\n }")["acl"]
    assert acl.decide(c, _key(name), qtype, (src, 5353)) == action


def _key(name: str) -> bytes:
    return b"".join(bytes([len(x)]) + x.lower().encode() for x in name.rstrip(".").split(".")) \
        + b"\x00"


def test_allow_ends_every_rule_and_zones_pick_rules():
    """acl.go ``break RulesCheckLoop``: an allow in one rule skips the later
    rules; a rule applies only under its zones."""
    c = conf("acl {\n allow net 10.0.0.1\n }\n    acl only.test {\n block\n }")["acl"]
    assert acl.decide(c, _key("only.test."), 1, ("10.0.0.1", 1)) is None
    assert acl.decide(c, _key("x.only.test."), 1, ("10.0.0.2", 1)) == "block"
    assert acl.decide(c, _key("other.test."), 1, ("10.0.0.2", 1)) is None
    assert acl.decide(c, _key("notonly.test."), 1, ("10.0.0.2", 1)) is None


COREFILE = """\
.:{port} {{
    bind 127.0.0.1
    prometheus 127.0.0.1:{mport}
    acl {{
        allow net 127.0.0.1
        block type A net 127.0.0.2
        filter net 127.0.0.3
        drop net 127.0.0.4
    }}
    acl only.test {{
        block
    }}
    hosts {{
        10.0.0.1 a.test only.test
        fd00::1 a.test
    }}
}}
"""


@pytest.fixture(scope="module", params=["c", "py"])
def server(request, tmp_path_factory):
    if request.param == "c" and NO_EXTENSIONS:
        pytest.skip("the Cython UDP path is not built")
    tmp = tmp_path_factory.mktemp(f"acl-{request.param}")
    port = free_port(v6=False)
    mport = free_port(v6=False)
    (tmp / "Corefile").write_text(COREFILE.format(port=port, mport=mport))
    mp = pytest.MonkeyPatch()
    mp.setenv("FASTDNS_NO_EXTENSIONS", "1" if request.param == "py" else "0")
    srv = Server(tmp, ["--corefile", str(tmp / "Corefile"), "--workers", "1"], port)
    mp.undo()
    srv.path = request.param
    srv.mport = mport
    try:
        srv.wait_answering(name="a.test.")
        yield srv
    finally:
        srv.stop_and_sweep()


def slow_count(srv) -> int:
    with shm.ControlSegment.attach(srv.instance) as ctl:
        return readout.read_counters(ctl.counters(0))["slow"]["total"]


def ask(srv, name, qtype, source, tcp=False, **kw):
    q = dns.message.make_query(name, qtype, **kw)
    if tcp:
        return q, dns.query.tcp(q, "127.0.0.1", port=srv.port, timeout=2, source=source)
    return q, dns.query.udp(q, "127.0.0.1", port=srv.port, timeout=2, source=source)


def raw_udp(srv, data: bytes, source: str) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(2)
        s.sendto(data, ("127.0.0.1", srv.port))
        return s.recv(4096)


def ede(r) -> list[int]:
    return [o.code for o in r.options if o.otype == dns.edns.EDE]


def test_served(server):
    before = slow_count(server)
    _, r = ask(server, "a.test.", "A", "127.0.0.1")  # allowed
    assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].address == "10.0.0.1"
    _, r = ask(server, "a.test.", "A", "127.0.0.2")  # blocked: REFUSED, EDE 15
    assert r.rcode() == dns.rcode.REFUSED and not r.answer
    assert r.edns == 0 and r.payload == 4096 and r.ednsflags & dns.flags.DO
    assert ede(r) == [15]
    _, r = ask(server, "a.test.", "AAAA", "127.0.0.2")  # type A only: allowed
    assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].address == "fd00::1"
    _, r = ask(server, "a.test.", "A", "127.0.0.3")  # filtered: empty NOERROR, EDE 17
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and ede(r) == [17]
    with pytest.raises(dns.exception.Timeout):  # dropped: no answer at all
        ask(server, "a.test.", "A", "127.0.0.4")
    _, r = ask(server, "only.test.", "A", "127.0.0.1")  # allow ends the walk
    assert r.answer[0][0].address == "10.0.0.1"
    _, r = ask(server, "only.test.", "A", "127.0.0.5")  # no policy of rule 1: rule 2
    assert r.rcode() == dns.rcode.REFUSED and ede(r) == [15]
    _, r = ask(server, "a.test.", "A", "127.0.0.5")
    assert r.answer[0][0].address == "10.0.0.1"
    if server.path == "c":
        assert slow_count(server) == before  # decided in C: no Python per query
    _, r = ask(server, "a.test.", "A", "127.0.0.2", tcp=True)  # TCP: the same verdict
    assert r.rcode() == dns.rcode.REFUSED and ede(r) == [15]
    with pytest.raises((EOFError, ConnectionError, dns.exception.Timeout)):
        ask(server, "a.test.", "A", "127.0.0.4", tcp=True)


def acl_counts(srv) -> dict[tuple[str, str], float]:
    """coredns_acl_* by (family, zone) ("" for allowed, which has no zone)."""
    server = f"dns://127.0.0.1:{srv.port}"
    out: dict[tuple[str, str], float] = {}
    for (name, labels), v in scrape_metrics(srv.mport).items():
        lab = dict(labels)
        if name.startswith("coredns_acl_") and lab.get("server") == server:
            assert lab["view"] == ""
            out[(name, lab.get("zone", ""))] = v
    return out


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_metrics(server, tcp):
    """plugin/acl/metrics.go's four counters, with the rule zone that decided
    (allowed: no zone), counted in C on the UDP fast path and in Python."""
    time.sleep(0.7)  # earlier queries' counts reach the block on the 0.5 s export
    before = acl_counts(server)
    sends = [("a.test.", "A", "127.0.0.1"), ("a.test.", "AAAA", "127.0.0.2"),
             ("only.test.", "A", "127.0.0.1"), ("a.test.", "A", "127.0.0.5"),  # 4 allowed
             ("a.test.", "A", "127.0.0.2"), ("a.test.", "A", "127.0.0.2"),  # 2 blocked (.)
             ("only.test.", "A", "127.0.0.5"),  # 1 blocked (only.test.)
             ("a.test.", "A", "127.0.0.3")]  # 1 filtered
    for name, qtype, source in sends:
        ask(server, name, qtype, source, tcp=tcp)
    with pytest.raises((EOFError, ConnectionError, dns.exception.Timeout)):
        ask(server, "a.test.", "A", "127.0.0.4", tcp=tcp)  # 1 dropped
    want = {("coredns_acl_allowed_requests_total", ""): 4,
            ("coredns_acl_blocked_requests_total", "."): 2,
            ("coredns_acl_blocked_requests_total", "only.test."): 1,
            ("coredns_acl_filtered_requests_total", "."): 1,
            ("coredns_acl_dropped_requests_total", "."): 1}

    def delta():
        now = acl_counts(server)
        return {k: now.get(k, 0) - before.get(k, 0) for k in set(now) | set(want)}

    wait_for(lambda: all(delta().get(k, 0) >= n for k, n in want.items()), timeout=5)
    time.sleep(0.6)  # and nothing more comes
    got = delta()
    assert {k: v for k, v in got.items() if v} == want, got


@pytest.mark.parametrize("qtype, source, edns, cd", [
    ("A", "127.0.0.2", False, False), ("A", "127.0.0.2", True, True),
    ("MX", "127.0.0.3", True, False)])
def test_the_answer_is_refusal_byte_for_byte(server, qtype, source, edns, cd):
    """CoreDNS's shape (SetRcode + SetEdns0(4096, true) + EDE): the C hook
    and Python write the same octets; ID, RD, CD and the question's case kept."""
    q = dns.message.make_query("A.Test.", qtype, use_edns=0 if edns else False)
    if cd:
        q.flags |= dns.flags.CD
    data = q.to_wire()
    got = raw_udp(server, data, source)
    action = acl.BLOCK if source == "127.0.0.2" else acl.FILTER
    rcode, info = ((acl.REFUSED, acl.EDE_BLOCKED) if action == acl.BLOCK
                   else (acl.NOERROR, acl.EDE_FILTERED))
    assert got == acl.refusal(data, wire.parse_query(data), rcode, info)
    r = dns.message.from_wire(got)
    assert r.id == q.id and bool(r.flags & dns.flags.CD) == cd and r.flags & dns.flags.RD
    assert str(r.question[0].name) == "A.Test."
