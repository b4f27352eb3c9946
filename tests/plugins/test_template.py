"""template (fastdns/plugins/template/; plugin/template/template_test.go and the
README's examples), as a table of query -> answer through `fastdns serve`, on
the C fast path and the pure-Python path: regex groups into the answer, a
static answer C builds itself, rcode-only templates, fallthrough to the next
plugin or SERVFAIL without it, class/type filters, and the parser's refusals."""

from __future__ import annotations

import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from fastdns.codec import NO_EXTENSIONS
from fastdns.corefile.config import parse_corefile
from fastdns.corefile.errors import CorefileError
from fastdns.ipc import readout, shm
from tests.helpers import DEMO, Server, free_port, scrape_metrics, wait_for

IP = ".".join(f"{{{{ .Group.{g} }}}}" for g in "abcd")  # {{ .Group.a }}.{{ .Group.b }}...
COREFILE = """\
example.:{port} {{
    bind 127.0.0.1
    prometheus 127.0.0.1:{mport}
    template IN A example. {{
        match "^static[.]example[.]$"
        answer "static.example. 30 IN A 192.0.2.7"
        fallthrough
    }}
    template IN A example. {{
        match "^ip-(?P<a>[0-9]*)-(?P<b>[0-9]*)-(?P<c>[0-9]*)-(?P<d>[0-9]*)[.]example[.]$"
        answer "{{{{ .Name }}}} 60 IN A {IP}"
    }}
    template IN TXT example. {{
        answer "{{{{ .Name }}}} 5 IN TXT \\"class {{{{ .Class }}}} type {{{{ .Type }}}}\\""
    }}
    template ANY AAAA example. {{
        rcode NXDOMAIN
    }}
}}
"""


@pytest.fixture(scope="module", params=["c", "py"])
def server(request, tmp_path_factory):
    if request.param == "c" and NO_EXTENSIONS:
        pytest.skip("the Cython UDP path is not built")
    tmp = tmp_path_factory.mktemp(f"template-{request.param}")
    port = free_port()
    mport = free_port(v6=False)
    (tmp / "Corefile").write_text(COREFILE.format(port=port, mport=mport, IP=IP) +
                                  f"cluster.local:{port} {{\n    bind 127.0.0.1\n"
                                  "    kubernetes cluster.local\n}\n")
    mp = pytest.MonkeyPatch()
    mp.setenv("FASTDNS_NO_EXTENSIONS", "1" if request.param == "py" else "0")
    srv = Server(tmp, ["--corefile", str(tmp / "Corefile"), "--state", str(DEMO),
                       "--workers", "1"], port)
    mp.undo()
    srv.path = request.param
    srv.mport = mport
    try:
        srv.wait_answering()
        yield srv
    finally:
        srv.stop_and_sweep()


def ask(srv, name: str, rdtype: str) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=srv.port,
                         timeout=3)


@pytest.mark.parametrize("name, rdtype, rcode, answer", [
    ("ip-10-1-2-3.example.", "A", dns.rcode.NOERROR, "ip-10-1-2-3.example. 60 IN A 10.1.2.3"),
    ("IP-10-1-2-3.Example.", "A", dns.rcode.NOERROR, "ip-10-1-2-3.example. 60 IN A 10.1.2.3"),
    ("static.example.", "A", dns.rcode.NOERROR, "static.example. 30 IN A 192.0.2.7"),
    ("x.example.", "TXT", dns.rcode.NOERROR, 'x.example. 5 IN TXT "class IN type TXT"'),
    ("x.example.", "AAAA", dns.rcode.NXDOMAIN, None),
    # matched by no regex: the first template falls through, the second has no
    # fallthrough: SERVFAIL (template.go)
    ("other.example.", "A", dns.rcode.SERVFAIL, None),
])
def test_answers(server, name, rdtype, rcode, answer):
    r = ask(server, name, rdtype)
    assert r.rcode() == rcode, r
    got = [f"{rrset.name} {rrset.ttl} IN {dns.rdatatype.to_text(rrset.rdtype)} {rd}"
           for rrset in r.answer for rd in rrset]
    assert got == ([answer] if answer else []), got
    if rcode == dns.rcode.NOERROR:
        assert r.flags & dns.flags.AA


def test_static_and_rcode_templates_stay_in_c(server):
    if server.path != "c":
        pytest.skip("the C hook is the Cython path's")
    with shm.ControlSegment.attach(server.instance) as ctl:
        before = readout.read_counters(ctl.counters(0))["slow"]["total"]
    for _ in range(5):
        assert ask(server, "static.example.", "A").answer
        assert ask(server, "x.example.", "AAAA").rcode() == dns.rcode.NXDOMAIN
    with shm.ControlSegment.attach(server.instance) as ctl:
        assert readout.read_counters(ctl.counters(0))["slow"]["total"] == before


def matches(srv) -> dict[tuple[str, str, str], float]:
    """coredns_template_matches_total by (zone, class, type)."""
    out = {}
    for (name, labels), v in scrape_metrics(srv.mport).items():
        lab = dict(labels)
        if name == "coredns_template_matches_total":
            assert lab["server"] == f"dns://127.0.0.1:{srv.port}" and lab["view"] == ""
            out[(lab["zone"], lab["class"], lab["type"])] = v
    return out


def test_matches_are_counted(server):
    """template.go counts a match before its rcode: the static answer and the
    rcode-only one (both in C), the regex groups and the TXT (Python); not the
    SERVFAIL of a query no regex matched."""
    time.sleep(0.7)  # earlier tests' counts reach the block (the 0.5 s export)
    before = matches(server)
    for name, rdtype in [("static.example.", "A"), ("ip-10-1-2-3.example.", "A"),
                         ("x.example.", "TXT"), ("x.example.", "AAAA"),
                         ("other.example.", "A")]:
        ask(server, name, rdtype)
    want = {("example.", "IN", "A"): 2, ("example.", "IN", "TXT"): 1,
            ("example.", "IN", "AAAA"): 1}

    def delta():
        now = matches(server)
        return {k: now.get(k, 0) - before.get(k, 0) for k in set(now) | set(want)}

    wait_for(lambda: all(delta().get(k, 0) >= n for k, n in want.items()), timeout=5)
    time.sleep(0.6)
    assert {k: v for k, v in delta().items() if v} == want


@pytest.mark.parametrize("body, message", [
    ("template", "wrong argument count"),
    ("template IN", "wrong argument count"),
    ("template FOO A", "invalid query class"),
    ("template IN BAR", "invalid RR"),
    ('template IN A {\n        match "(unclosed"\n    }', "plugin template:"),
    ("template IN A {\n        rcode BOGUS\n    }", "plugin template:"),
    ("template IN A {\n        bogus\n    }", "plugin template:"),
])
def test_refused(body, message):
    with pytest.raises(CorefileError) as e:
        parse_corefile(f"example.:53 {{\n    {body}\n}}\n", "C")
    assert message.lower() in str(e.value).lower(), str(e.value)
