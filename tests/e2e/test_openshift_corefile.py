"""OpenShift dns-operator's Corefile, end to end under `fastdns serve --state ...`.

The operator's Corefile (tests/corefiles/openshift.Corefile) serves on 5353
with `bufsize 1232`, `log . { class error }`, `health { lameduck 20s }`,
`forward . /etc/resolv.conf { policy sequential }`, `cache 900 { denial
9984 30 }` and a `hostname.bind:5353 { chaos }` block. Only what cannot
work in a test is rewritten: the port, the health/ready/metrics listeners
(127.0.0.1 and free ports), and /etc/resolv.conf (a test-owned one naming a
loopback upstream on port 53).
"""

from __future__ import annotations

import shutil
import signal
import socket
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdataclass
import pytest

from tests.e2e.test_kubeadm_corefile import ThreadUpstream
from tests.helpers import DEMO, KUBERNETES, Server, a_records, ask, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM_HOST = "127.0.53.79"
BIG = [("A", f"192.0.2.{i}") for i in range(1, 121)]  # ~1.9 KB of answer


def openshift_corefile(port: int, hp: int, rp: int, mp: int, resolv: Path) -> str:
    text = (ROOT / "corefiles" / "openshift.Corefile").read_text()
    for old, new in ((".:5353 {", f".:{port} {{"),
                     ("hostname.bind:5353 {", f"hostname.bind:{port} {{"),
                     ("    health {", f"    health 127.0.0.1:{hp} {{"),
                     ("    ready\n", f"    ready 127.0.0.1:{rp}\n"),
                     ("prometheus 127.0.0.1:9153", f"prometheus 127.0.0.1:{mp}"),
                     ("/etc/resolv.conf", str(resolv))):
        assert old in text, old
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def openshift(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openshift")
    try:
        th = ThreadUpstream({"www.example.test.": [("A", "192.0.2.1")],
                             "big.example.test.": BIG}, UPSTREAM_HOST, 53)
        up = th.__enter__()
    except OSError as e:
        pytest.skip(f"cannot bind the upstream on {UPSTREAM_HOST}:53: {e}")
    resolv = tmp / "resolv.conf"
    resolv.write_text(f"nameserver {UPSTREAM_HOST}\n")
    port, hp, rp, mp = (free_port() for _ in range(4))
    (tmp / "Corefile").write_text(openshift_corefile(port, hp, rp, mp, resolv))
    shutil.copy(DEMO, tmp / "cluster.yaml")
    srv = Server(tmp, ["--corefile", str(tmp / "Corefile"), "--state",
                       str(tmp / "cluster.yaml"), "--workers", "2"], port)
    srv.up = up
    try:
        srv.wait_answering()
        yield srv
    finally:
        if srv.proc.poll() is None:  # `lameduck 20s`: a second SIGTERM cuts it short
            srv.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
        srv.stop_and_sweep()
        th.__exit__(None, None, None)


def test_cluster_names_and_forwarding(openshift):
    r = ask(KUBERNETES, port=openshift.port)
    assert a_records(r) == {"10.96.0.1"} and r.flags & dns.flags.AA
    assert ask("nope.default.svc.cluster.local.", port=openshift.port).rcode() == \
        dns.rcode.NXDOMAIN
    assert a_records(ask("www.example.test.", port=openshift.port, timeout=3)) == \
        {"192.0.2.1"}


def test_hostname_bind_is_answered_by_the_chaos_block(openshift):
    q = dns.message.make_query("hostname.bind.", "TXT", rdclass=dns.rdataclass.CH)
    r = dns.query.udp(q, "127.0.0.1", port=openshift.port, timeout=3)
    [rrset] = r.answer
    assert b"".join(rrset[0].strings).decode() == socket.gethostname()[:255]
    assert openshift.up.count("hostname.bind.") == 0


def test_bufsize_truncates_a_large_answer_at_1232(openshift):
    q = dns.message.make_query("big.example.test.", "A", use_edns=0, payload=4096)
    r = dns.query.udp(q, "127.0.0.1", port=openshift.port, timeout=3, ignore_trailing=True)
    assert r.flags & dns.flags.TC, r  # 120 A records do not fit in 1232 octets
    t = dns.query.tcp(q, "127.0.0.1", port=openshift.port, timeout=3)
    assert len(t.answer[0]) == 120


def test_log_class_error_logs_no_success(openshift):
    ask(KUBERNETES, port=openshift.port)
    time.sleep(0.3)
    assert f'"A IN {KUBERNETES} udp' not in openshift.log()
