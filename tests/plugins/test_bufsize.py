"""bufsize (fastdns/plugins/bufsize.py, plugin/bufsize/setup_test.go and
bufsize_test.go): the lines CoreDNS accepts and refuses, the OPT capped in
the query, and what a client sees through `fastdns serve`: an answer larger
than SIZE comes back truncated from a block with the plugin, whole from a
block on the same port without it, on the C fast path (without handing the
query to Python) and on the pure-Python path alike."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest

from fastdns.codec import NO_EXTENSIONS, wire
from fastdns.corefile.config import parse_corefile
from fastdns.corefile.errors import CorefileError
from fastdns.ipc import readout, shm
from fastdns.plugins.bufsize import BufsizeConfig, capped
from tests.helpers import DEMO, Server, free_port


def conf(line: str):
    return parse_corefile(f".:53 {{\n    {line}\n    whoami\n}}\n", "C").servers[0].plugins


@pytest.mark.parametrize("line, size", [
    ("bufsize", 1232), ("bufsize 512", 512), ("bufsize 1232", 1232), ("bufsize 4096", 4096)])
def test_accepted(line, size):
    assert conf(line)["bufsize"] == BufsizeConfig(size)


@pytest.mark.parametrize("line", [
    "bufsize 511", "bufsize 4097", "bufsize -1", "bufsize abc", "bufsize 1232 512",
    "bufsize 1232 {\n    x\n    }"])
def test_refused(line):
    with pytest.raises(CorefileError, match=r"^C:2: plugin bufsize: "):
        conf(line)


@pytest.mark.parametrize("edns, payload, want", [
    (0, 4096, 1232), (0, 1500, 1232), (0, 1232, None), (0, 512, None), (False, 0, None)])
def test_the_query_opt_is_capped(edns, payload, want):
    q = dns.message.make_query("a.example.", "A", use_edns=edns, payload=payload or 1232)
    data = q.to_wire()
    got = capped(data, wire.parse_query(data), 1232)
    if want is None:
        assert got is None
    else:
        m = dns.message.from_wire(got)
        assert m.payload == want and m.id == q.id and m.question == q.question


BIG = [f"10.9.{i // 250}.{i % 250 + 1}" for i in range(100)]  # 100 A: ~1.6 KB


@pytest.fixture(scope="module", params=["c", "py"])
def server(request, tmp_path_factory):
    if request.param == "c" and NO_EXTENSIONS:
        pytest.skip("the Cython UDP path is not built")
    tmp = tmp_path_factory.mktemp(f"bufsize-{request.param}")
    port = free_port()
    hosts = "".join(f"        {ip} big.capped.test big.whole.test\n" for ip in BIG)
    (tmp / "Corefile").write_text(
        f"capped.test:{port} {{\n    bind 127.0.0.1\n    bufsize 1232\n    hosts {{\n{hosts}"
        f"    }}\n}}\nwhole.test:{port} {{\n    bind 127.0.0.1\n    hosts {{\n{hosts}    }}\n}}\n"
        f"cluster.local:{port} {{\n    bind 127.0.0.1\n    kubernetes cluster.local\n}}\n")
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


def ask_big(srv, name: str, payload: int) -> dns.message.Message:
    q = dns.message.make_query(name, "A", use_edns=0, payload=payload)
    return dns.query.udp(q, "127.0.0.1", port=srv.port, timeout=3, ignore_trailing=True)


def slow_count(srv) -> int:
    with shm.ControlSegment.attach(srv.instance) as ctl:
        return readout.read_counters(ctl.counters(0))["slow"]["total"]


def test_an_answer_past_the_size_is_truncated(server):
    before = slow_count(server)
    r = ask_big(server, "big.capped.test.", 4096)
    assert r.flags & dns.flags.TC and not r.answer  # TC, question only: retry over TCP
    whole = ask_big(server, "big.whole.test.", 4096)  # same port, no bufsize in its block
    assert not whole.flags & dns.flags.TC and len(whole.answer[0]) == 100
    small = ask_big(server, "big.capped.test.", 1200)  # under the cap: the client's size
    assert small.flags & dns.flags.TC
    if server.path == "c":
        assert slow_count(server) == before  # the C hook capped it: no Python per query
    tcp = dns.query.tcp(dns.message.make_query("big.capped.test.", "A", use_edns=0,
                                               payload=4096), "127.0.0.1", port=server.port,
                        timeout=3)
    assert len(tcp.answer[0]) == 100  # TCP: the frame is the limit
