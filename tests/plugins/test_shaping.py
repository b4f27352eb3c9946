"""header, minimal and nsid (fastdns/plugins/{header,minimal,nsid}.py; plugin/header,
plugin/minimal, plugin/nsid tests): the lines CoreDNS accepts and refuses, and
what a client sees through `fastdns serve` for image answers (the C hooks: no
Python per query) and for forwarded ones (Python), over UDP and TCP: flags set
and cleared, authority and additional sections dropped from NOERROR answers
only, the NSID option only when it is asked for."""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from fastdns.codec import NO_EXTENSIONS
from fastdns.corefile.config import parse_corefile
from fastdns.corefile.errors import CorefileError
from fastdns.ipc import readout, shm
from fastdns.plugins.header import HeaderConfig
from tests.helpers import DEMO, Server, free_port
from tests.upstreams import UpstreamThread


def plugins(body: str):
    return parse_corefile(f".:53 {{\n    {body}\n    whoami\n}}\n", "C").servers[0].plugins


def test_header_rules_fold_last_wins():
    c = plugins("header {\n  response set ra aa\n  response clear rd\n  query set rd\n"
                "  response clear aa\n}")["header"]
    assert c == HeaderConfig(query_set=0x0100, response_set=0x0080,
                             response_clear=0x0100 | 0x0400)


@pytest.mark.parametrize("body, why", [
    ("header {\n  answer set aa\n}", "invalid selector=answer"),
    ("header {\n  response toggle aa\n}", "unknown flag action=toggle"),
    ("header {\n  response set cd\n}", "unknown/unsupported flag=cd"),
    ("header {\n  response set\n}", "at least one should be provided"),
    ("header", "wrong argument count"),
    ("minimal x", "wrong argument count"),
])
def test_refused(body, why):
    with pytest.raises(CorefileError, match=r"^C:\d+: plugin \w+: .*" + why):
        plugins(body)


def test_nsid_data():
    assert plugins("nsid fastdns one")["nsid"].data == "fastdns one"
    assert plugins("nsid")["nsid"].data == ""


@pytest.fixture(scope="module", params=["c", "py"])
def server(request, tmp_path_factory):
    if request.param == "c" and NO_EXTENSIONS:
        pytest.skip("the Cython UDP path is not built")
    tmp = tmp_path_factory.mktemp(f"shape-{request.param}")
    th = UpstreamThread()
    up = th.start({"www.f.test.": [("A", "192.0.2.7")], "f.test.": [("NS", "ns1.f.test.")],
                   "ns1.f.test.": [("A", "192.0.2.53")]}, zone="f.test.")
    port = free_port(v6=False)
    (tmp / "Corefile").write_text(
        f"cluster.local:{port} {{\n    bind 127.0.0.1\n    minimal\n    nsid fastdns-test\n"
        "    kubernetes cluster.local\n}\n"
        f"h.test:{port} {{\n    bind 127.0.0.1\n    header {{\n        response set aa\n"
        "        response clear ra\n    }\n    hosts {\n        10.0.0.1 a.h.test\n    }\n}\n"
        f"f.test:{port} {{\n    bind 127.0.0.1\n    header {{\n        response set aa\n"
        f"    }}\n    minimal\n    nsid up-nsid\n    forward . {up.addr}\n}}\n")
    mp = pytest.MonkeyPatch()
    mp.setenv("FASTDNS_NO_EXTENSIONS", "1" if request.param == "py" else "0")
    srv = Server(tmp, ["--corefile", str(tmp / "Corefile"), "--state", str(DEMO),
                       "--workers", "1"], port)
    mp.undo()
    srv.path = request.param
    try:
        srv.wait_answering()
        yield srv
    finally:
        srv.stop_and_sweep()
        th.close()


def slow_count(srv) -> int:
    with shm.ControlSegment.attach(srv.instance) as ctl:
        return readout.read_counters(ctl.counters(0))["slow"]["total"]


def ask(srv, name, qtype="A", tcp=False, nsid=False):
    opts = [dns.edns.GenericOption(dns.edns.NSID, b"")] if nsid else []
    q = dns.message.make_query(name, qtype, use_edns=0, options=opts)
    how = dns.query.tcp if tcp else dns.query.udp
    return how(q, "127.0.0.1", port=srv.port, timeout=3)


def nsid_of(r) -> bytes | None:
    got = [o for o in r.options if o.otype == dns.edns.NSID]
    return got[0].to_wire() if got else None


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_image_answers(server, tcp):
    before = slow_count(server)
    srv = ask(server, "_https._tcp.kubernetes.default.svc.cluster.local.", "SRV", tcp=tcp)
    assert srv.answer and not srv.additional and not srv.authority  # minimal: trimmed
    assert srv.edns < 0  # the OPT went with the additional section (minimal.go: Extra nil)
    nx = ask(server, "nothere.default.svc.cluster.local.", tcp=tcp)  # a denial: as it is
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority and nx.edns == 0
    assert nsid_of(nx) is None  # not asked for
    nx = ask(server, "nothere.default.svc.cluster.local.", tcp=tcp, nsid=True)
    assert nsid_of(nx) == b"fastdns-test"
    h = ask(server, "a.h.test.", tcp=tcp)
    assert h.flags & dns.flags.AA and not h.flags & dns.flags.RA
    assert h.answer[0][0].address == "10.0.0.1"
    if server.path == "c" and not tcp:
        assert slow_count(server) == before  # the C hooks shaped them all


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_forwarded_answers(server, tcp):
    r = ask(server, "www.f.test.", tcp=tcp)
    assert r.answer[0][0].address == "192.0.2.7"
    assert r.flags & dns.flags.AA  # header
    assert not r.additional and not r.authority and r.edns < 0  # minimal drops the OPT too
    # nsid sits before minimal in the chain (plugin.cfg), so it sees the trimmed
    # answer last and adds an OPT of its own back (nsid.go WriteMsg)
    r = ask(server, "www.f.test.", tcp=tcp, nsid=True)
    assert not r.authority and r.edns == 0 and nsid_of(r) == b"up-nsid"
    nd = ask(server, "f.test.", "TXT", tcp=tcp, nsid=True)  # NODATA: minimal leaves it
    assert nd.authority and nsid_of(nd) == b"up-nsid"


def test_every_hook_plugin_in_one_block(tmp_path):
    """Nine plugins with C pre-lookup hooks in one block (the fast path once
    chained four and refused more): all chained, a cluster name and a
    rewritten one answered in C with every plugin's effect."""
    if NO_EXTENSIONS:
        pytest.skip("the Cython UDP path is not built")
    port = free_port(v6=False)
    (tmp_path / "Corefile").write_text(
        f".:{port} {{\n    bind 127.0.0.1\n    nsid x\n    bufsize 1232\n    any\n"
        "    rewrite name exact www.example.org kubernetes.default.svc.cluster.local\n"
        "    autopath @kubernetes\n    acl {\n        block type MX\n    }\n"
        "    header {\n        response set aa\n    }\n    minimal\n"
        "    template IN TXT tmpl.test {\n        answer \"tmpl.test. 60 IN TXT ok\"\n    }\n"
        "    kubernetes cluster.local {\n        pods verified\n    }\n}\n")
    srv = Server(tmp_path, ["--corefile", str(tmp_path / "Corefile"), "--state", str(DEMO),
                            "--workers", "1"], port)
    try:
        srv.wait_answering()
        before = slow_count(srv)
        for name in ("kubernetes.default.svc.cluster.local.", "www.example.org."):
            r = ask(srv, name)
            assert r.answer[0][0].address == "10.96.0.1" and r.flags & dns.flags.AA, r
            assert str(r.answer[0].name) == name
        assert ask(srv, "kubernetes.default.svc.cluster.local.", "MX").rcode() == \
            dns.rcode.REFUSED  # acl
        t = ask(srv, "tmpl.test.", "TXT")  # template's C answer, through header's post
        assert t.answer[0][0].strings == (b"ok",) and t.flags & dns.flags.AA
        assert slow_count(srv) == before
    finally:
        srv.stop_and_sweep()
