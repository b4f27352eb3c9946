"""log, errors, loadbalance, hosts and whoami over real sockets against `fastdns serve`.

Two servers for the module: one with a kubernetes block (log class denial,
loadbalance), a hosts block and a whoami block on one port; one with a
hosts-only block (hosts file watched, ``fallthrough`` to whoami).
"""

from __future__ import annotations

import re
import shutil
import signal
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.helpers import DEMO, Server, a_records, ask, free_port

pytestmark = pytest.mark.slow

HOSTS = """\
# a hosts file: comments, several names, IPv6, a bad line
192.0.2.10   web.example.org  www.example.org
192.0.2.11   web.example.org
2001:db8::10 web.example.org
not-an-ip    bad.example.org
192.0.2.99   outside.example.net
"""


def _start(tmp: Path, corefile: str, port: int, probe: str, state: bool = True) -> Server:
    (tmp / "Corefile").write_text(corefile)
    args = ["--corefile", str(tmp / "Corefile"), "--workers", "2"]
    if state:
        shutil.copy(DEMO, tmp / "cluster.yaml")
        args += ["--state", str(tmp / "cluster.yaml")]
    srv = Server(tmp, args, port)
    try:
        srv.wait_answering(name=probe)
    except AssertionError:
        srv.stop(signal.SIGKILL)
        raise
    return srv


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mixed")
    (tmp / "hosts").write_text(HOSTS)
    port = free_port()
    corefile = f"""\
cluster.local:{port} in-addr.arpa:{port} {{
    bind 127.0.0.1
    errors
    log . {{
        class denial
    }}
    kubernetes cluster.local in-addr.arpa {{
        ttl 30
    }}
    loadbalance
}}
example.org:{port} {{
    bind 127.0.0.1
    hosts {tmp / "hosts"} example.org {{
        198.51.100.7 inline.example.org
        ttl 60
    }}
    log
}}
whoami.test:{port} {{
    bind 127.0.0.1
    whoami
}}
"""
    srv = _start(tmp, corefile, port, "kubernetes.default.svc.cluster.local.")
    yield srv
    srv.stop_and_sweep()


@pytest.fixture(scope="module")
def hosts_only(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostsonly")
    (tmp / "hosts").write_text(HOSTS)
    port = free_port()
    corefile = f"""\
.:{port} {{
    bind 127.0.0.1
    hosts {tmp / "hosts"} {{
        reload 1s
        fallthrough
    }}
    whoami
}}
"""
    srv = _start(tmp, corefile, port, "web.example.org.", state=False)
    srv.hosts = tmp / "hosts"
    yield srv
    srv.stop_and_sweep()


# -- loadbalance ---------------------------------------------------------------


def test_loadbalance_rotates_headless_answers(mixed):
    """web.shop: two ready endpoints; successive answers lead with each in turn."""
    firsts = []
    for _ in range(40):
        r = ask("web.shop.svc.cluster.local.", port=mixed.port)
        assert a_records(r) == {"10.244.2.20", "10.244.2.21"}, r
        firsts.append(r.answer[0][0].address)
    assert len(set(firsts)) == 2, firsts
    over_tcp = [ask("web.shop.svc.cluster.local.", port=mixed.port, tcp=True).answer[0][0].address
                for _ in range(6)]
    assert len(set(over_tcp)) == 2, over_tcp


# -- log ----------------------------------------------------------------------

LINE = re.compile(r'\[INFO\] 127\.0\.0\.1:(\d+) - (\d+) "(\S+) IN (\S+) (udp|tcp) (\d+) '
                  r'(true|false) (\d+)" (\S+) (\S*) (\d+) ([0-9.e-]+)s')


def _log_lines(srv: Server, name: str, timeout: float = 3.0) -> list[re.Match]:
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in LINE.finditer(srv.log()) if m.group(4) == name]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_log_class_denial_logs_nxdomain_in_coredns_format(mixed):
    q = dns.message.make_query("nope-log.default.svc.cluster.local.", "A", use_edns=0,
                               payload=1232)
    r = dns.query.udp(q, "127.0.0.1", port=mixed.port, timeout=2)
    assert r.rcode() == dns.rcode.NXDOMAIN
    lines = _log_lines(mixed, "nope-log.default.svc.cluster.local.")
    assert len(lines) == 1, mixed.log()[-2000:]
    m = lines[0]
    assert int(m.group(2)) == q.id
    assert m.group(3) == "A" and m.group(5) == "udp"
    assert int(m.group(6)) == len(q.to_wire())
    assert m.group(7) == "false" and m.group(8) == "1232"
    assert m.group(9) == "NXDOMAIN"
    assert m.group(10) == "qr,aa,rd,ra"
    assert int(m.group(11)) == len(r.to_wire())


def test_log_class_denial_skips_success(mixed):
    name = "kubernetes.default.svc.cluster.local."
    for tcp in (False, True):
        assert ask(name, port=mixed.port, tcp=tcp).rcode() == dns.rcode.NOERROR
    nodata = ask("kubernetes.default.svc.cluster.local.", "TXT", port=mixed.port, tcp=True)
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert _log_lines(mixed, "kubernetes.default.svc.cluster.local.", 1.0) != []
    got = _log_lines(mixed, name, 0)
    # only the NODATA (a denial) over TCP is logged, not the two positive answers
    assert [(m.group(3), m.group(5)) for m in got] == [("TXT", "tcp")], got


def test_log_all_classes_in_the_hosts_block(mixed):
    r = ask("web.example.org.", port=mixed.port)
    assert r.rcode() == dns.rcode.NOERROR
    lines = _log_lines(mixed, "web.example.org.")
    assert lines and lines[0].group(9) == "NOERROR" and lines[0].group(10) == "qr,aa,rd,ra"


# -- hosts ----------------------------------------------------------------------


def test_hosts_file_and_inline_entries(mixed):
    r = ask("web.example.org.", port=mixed.port)
    assert r.flags & dns.flags.AA
    assert a_records(r) == {"192.0.2.10", "192.0.2.11"}
    assert r.answer[0].ttl == 60
    r6 = ask("WEB.example.org.", "AAAA", port=mixed.port, tcp=True)
    assert [rr.address for rr in r6.answer[0]] == ["2001:db8::10"]
    assert str(r6.answer[0].name) == "WEB.example.org."  # the query's case
    assert a_records(ask("inline.example.org.", port=mixed.port)) == {"198.51.100.7"}
    assert a_records(ask("www.example.org.", port=mixed.port)) == {"192.0.2.10"}


def test_hosts_other_type_is_nodata_and_miss_is_servfail(mixed):
    r = ask("web.example.org.", "MX", port=mixed.port)
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and r.flags & dns.flags.AA
    # no SOA to make an NXDOMAIN with: CoreDNS's hosts answers SERVFAIL
    assert ask("nothere.example.org.", port=mixed.port).rcode() == dns.rcode.SERVFAIL
    # a name outside the plugin's zones was never loaded
    assert ask("outside.example.net.", port=mixed.port).rcode() == dns.rcode.REFUSED


def test_hosts_only_block_ptr_and_fallthrough(hosts_only):
    r = ask("10.2.0.192.in-addr.arpa.", "PTR", port=hosts_only.port)
    assert sorted(str(rr.target) for rr in r.answer[0]) == ["web.example.org.",
                                                           "www.example.org."]
    assert r.answer[0].ttl == 3600  # the default ttl
    # `fallthrough`: a miss goes on to the next plugin, here whoami
    miss = ask("nothere.example.org.", port=hosts_only.port)
    assert miss.rcode() == dns.rcode.NOERROR and not miss.answer
    assert any(rr.rdtype == dns.rdatatype.A for rr in miss.additional)


def test_hosts_file_change_is_picked_up(hosts_only):
    hosts_only.hosts.write_text(HOSTS + "203.0.113.5 added.example.org\n")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = ask("added.example.org.", port=hosts_only.port)
        if a_records(r) == {"203.0.113.5"}:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(hosts_only.log()[-3000:])


# -- whoami ----------------------------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_whoami(mixed, tcp):
    q = dns.message.make_query("who.whoami.test.", "A")
    if tcp:
        import socket

        with socket.create_connection(("127.0.0.1", mixed.port), timeout=2) as s:
            sport = s.getsockname()[1]
            r = dns.query.tcp(q, "127.0.0.1", port=mixed.port, timeout=2, sock=s)
    else:
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            sport = s.getsockname()[1]
            r = dns.query.udp(q, "127.0.0.1", port=mixed.port, timeout=2, sock=s)
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA and not r.answer
    by_type = {rr.rdtype: rr for rr in r.additional}
    a = by_type[dns.rdatatype.A]
    assert str(a.name) == "who.whoami.test." and a[0].address == "127.0.0.1" and a.ttl == 0
    srv = by_type[dns.rdatatype.SRV]
    proto = "tcp" if tcp else "udp"
    assert str(srv.name) == f"_{proto}.who.whoami.test."
    assert srv[0].port == sport and str(srv[0].target) == "."


# -- errors -----------------------------------------------------------------------


def test_errors_logs_forward_failures_consolidated(tmp_path):
    """A block whose upstream is dead: SERVFAIL, and `errors` says so (consolidated)."""
    port, dead = free_port(), free_port()
    corefile = f"""\
.:{port} {{
    bind 127.0.0.1
    errors {{
        consolidate 2s ^.*no.upstream.*$ warning
    }}
    forward . 127.0.0.1:{dead}
}}
ex.test:{port} {{
    bind 127.0.0.1
    errors
    forward . 127.0.0.1:{dead}
}}
"""
    (tmp_path / "Corefile").write_text(corefile)
    srv = Server(tmp_path, ["--corefile", str(tmp_path / "Corefile"), "--workers", "1"], port)
    try:
        deadline = time.monotonic() + 30
        got = None
        while time.monotonic() < deadline and got is None:
            assert srv.proc.poll() is None, srv.log()
            try:
                got = ask("a.example.", port=port, timeout=8)
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.1)
        assert got is not None and got.rcode() == dns.rcode.SERVFAIL
        ask("b.example.", port=port, timeout=8)
        assert ask("c.ex.test.", port=port, timeout=8).rcode() == dns.rcode.SERVFAIL
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and "errors like" not in srv.log():
            time.sleep(0.2)
        log = srv.log()
        assert "[ERROR] plugin/errors: 2 c.ex.test. A: " in log, log[-3000:]
        assert re.search(r"\[WARNING\] plugin/errors: 2 errors like '\^\.\*no\.upstream\.\*\$' "
                         r"occurred in last 2s", log), log[-3000:]
        assert "plugin/errors: 2 a.example." not in log
    finally:
        srv.stop_and_sweep()
