"""chaos (fastdns/plugins/chaos.py; plugin/chaos/chaos_test.go and setup_test.go):
the Corefile lines, then a table of CH TXT queries against `fastdns serve`
with the answers CoreDNS gives: version, authors (one TXT each), host name,
TTL 0, NOERROR, not authoritative; other names, classes and types go on
down the chain (here to `forward`, whose loopback upstream counts them)."""

from __future__ import annotations

import socket

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdataclass
import pytest

from fastdns import __version__
from fastdns.corefile.config import parse_corefile
from fastdns.corefile.errors import CorefileError
from fastdns.plugins.chaos import OWNERS, ChaosConfig
from tests.helpers import DEMO, Server, free_port
from tests.upstreams import UpstreamThread


def conf(line: str):
    return parse_corefile(f".:53 {{\n    {line}\n}}\n", "C").servers[0].plugins["chaos"]


@pytest.mark.parametrize("line, want", [
    ("chaos", ChaosConfig("", OWNERS)),
    ("chaos CoreDNS-001", ChaosConfig("CoreDNS-001", OWNERS)),
    ("chaos v9 bob alice bob", ChaosConfig("v9", ("alice", "bob"))),
])
def test_accepted(line, want):
    assert conf(line) == want


def test_refused():
    with pytest.raises(CorefileError, match=r"^C:3: plugin chaos: unknown property 'x'"):
        conf("chaos v1 {\n        x\n    }")


HOST = socket.gethostname()[:255]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chaos")
    th = UpstreamThread()
    up = th.start({"www.example.test.": [("A", "192.0.2.1")]})
    port = free_port()
    (tmp / "Corefile").write_text(
        f".:{port} {{\n    bind 127.0.0.1\n    kubernetes cluster.local\n"
        f"    forward . {up.addr}\n}}\n"
        f"hostname.bind:{port} {{\n    bind 127.0.0.1\n    chaos\n}}\n"
        f"authors.bind:{port} {{\n    bind 127.0.0.1\n    chaos v9 bob alice\n}}\n"
        f"server:{port} {{\n    bind 127.0.0.1\n    chaos\n}}\n")
    srv = Server(tmp, ["--corefile", str(tmp / "Corefile"), "--state", str(DEMO),
                       "--workers", "1"], port)
    srv.up = up
    try:
        srv.wait_answering()
        yield srv
    finally:
        srv.stop_and_sweep()
        th.close()


def ask(srv, name: str, rdtype: str = "TXT", rdclass: str = "CH", tcp: bool = False):
    q = dns.message.make_query(name, rdtype, rdclass=dns.rdataclass.from_text(rdclass))
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=srv.port, timeout=3)
    return dns.query.udp(q, "127.0.0.1", port=srv.port, timeout=3)


@pytest.mark.parametrize("name, tcp, texts", [
    ("hostname.bind.", False, [HOST]),
    ("HostName.Bind.", True, [HOST]),
    ("version.server.", False, [f"fastdns-{__version__}"]),
    ("id.server.", False, [HOST]),
])
def test_answers(server, name, tcp, texts):
    r = ask(server, name, tcp=tcp)
    assert r.rcode() == dns.rcode.NOERROR and not r.flags & dns.flags.AA
    [rrset] = r.answer
    assert rrset.name.to_text() == name and rrset.rdclass == dns.rdataclass.CH
    assert rrset.ttl == 0 and [b"".join(rr.strings).decode() for rr in rrset] == texts


def test_authors_one_txt_each(server):
    r = ask(server, "authors.bind.")
    [rrset] = r.answer
    assert sorted(b"".join(rr.strings).decode() for rr in rrset) == ["alice", "bob"]
    assert r.rcode() == dns.rcode.NOERROR and rrset.ttl == 0


def test_a_block_without_chaos_and_other_types_go_on(server):
    before = server.up.count("version.bind.")
    r = ask(server, "version.bind.")  # the "." block has no chaos: forwarded
    assert not r.answer or all(b"".join(rr.strings) != f"fastdns-{__version__}".encode()
                               for rr in r.answer[0])
    assert server.up.count("version.bind.") == before + 1
    r = ask(server, "hostname.bind.", rdtype="A")  # chaos answers TXT only
    assert not r.answer
