"""any (fastdns/plugins/anyq.py, plugin/any/any_test.go): an ANY query in a
block with the plugin gets RFC 8482's HINFO, the same octets from the C hook
and from Python, over UDP and TCP; other types and blocks without the plugin
are answered as before."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from fastdns.codec import NO_EXTENSIONS, wire
from fastdns.corefile.config import parse_corefile
from fastdns.corefile.errors import CorefileError
from fastdns.ipc import readout, shm
from fastdns.plugins import anyq
from tests.helpers import DEMO, KUBERNETES, Server, free_port


@pytest.mark.parametrize("line", ["any x", "any {\n  x\n  }"])
def test_refused(line):
    with pytest.raises(CorefileError, match=r"^C:2: plugin any: "):
        parse_corefile(f".:53 {{\n  {line}\n  whoami\n}}\n", "C")


def test_the_answer():
    q = dns.message.make_query("Example.ORG.", "ANY")
    q.flags |= dns.flags.CD
    data = q.to_wire()
    m = dns.message.from_wire(anyq.hinfo(data, wire.parse_query(data)))
    assert m.id == q.id and m.flags & dns.flags.QR and m.flags & dns.flags.RD
    assert m.flags & dns.flags.CD and not m.flags & dns.flags.AA
    [rr] = m.answer
    assert str(rr.name) == "Example.ORG." and rr.ttl == 8482 and rr.rdtype == dns.rdatatype.HINFO
    assert (rr[0].cpu, rr[0].os) == (b"ANY obsoleted", b"See RFC 8482")


@pytest.fixture(scope="module", params=["c", "py"])
def server(request, tmp_path_factory):
    if request.param == "c" and NO_EXTENSIONS:
        pytest.skip("the Cython UDP path is not built")
    tmp = tmp_path_factory.mktemp(f"any-{request.param}")
    port = free_port(v6=False)
    (tmp / "Corefile").write_text(
        f"cluster.local:{port} {{\n    bind 127.0.0.1\n    any\n    kubernetes cluster.local\n}}\n"
        f"plain.test:{port} {{\n    bind 127.0.0.1\n    hosts {{\n        10.0.0.1 a.plain.test\n"
        "    }\n}\n")
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


def slow_count(srv) -> int:
    with shm.ControlSegment.attach(srv.instance) as ctl:
        return readout.read_counters(ctl.counters(0))["slow"]["total"]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_served(server, tcp):
    before = slow_count(server)
    how = dns.query.tcp if tcp else dns.query.udp
    q = dns.message.make_query(KUBERNETES, "ANY")
    data = q.to_wire()
    r = how(q, "127.0.0.1", port=server.port, timeout=3)
    assert r.to_wire() == anyq.hinfo(data, wire.parse_query(data))  # the same octets
    a = how(dns.message.make_query(KUBERNETES, "A"), "127.0.0.1", port=server.port, timeout=3)
    assert a.answer[0][0].address == "10.96.0.1"  # other types: as before
    other = how(dns.message.make_query("a.plain.test.", "ANY"), "127.0.0.1", port=server.port,
                timeout=3)  # a block without the plugin
    assert not any(rr.rdtype == dns.rdatatype.HINFO for rr in other.answer)
    if server.path == "c" and not tcp:
        assert slow_count(server) == before  # answered by the C hook
