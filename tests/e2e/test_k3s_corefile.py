"""k3s's default Corefile, end to end under `fastdns serve --state ...`.

k3s mounts the ``coredns`` ConfigMap's ``NodeHosts`` key (one line per node,
``IP NAME``) at /etc/coredns/NodeHosts and the ``coredns-custom`` ConfigMap
at /etc/coredns/custom/: ``*.override`` files are imported inside the main
block, ``*.server`` files after it as blocks of their own. Both globs may
match nothing, as on a fresh cluster (CoreDNS's ``import`` allows an empty
glob). Only what cannot work in a test is rewritten: the port, the health,
ready and metrics listeners (to 127.0.0.1 and free ports), the
/etc/coredns and /etc/resolv.conf paths (test-owned files; the resolv.conf
names a loopback upstream on port 53).
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import dns.rcode
import pytest

from tests.e2e.test_kubeadm_corefile import ThreadUpstream
from tests.helpers import DEMO, KUBERNETES, Server, a_records, ask, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM_HOST = "127.0.53.78"


def k3s_corefile(port: int, hp: int, rp: int, mp: int, etc: Path, resolv: Path) -> str:
    text = (ROOT / "corefiles" / "k3s.Corefile").read_text()
    for old, new in ((".:53 {", f".:{port} {{"),
                     ("    health\n", f"    health 127.0.0.1:{hp}\n"),
                     ("    ready\n", f"    ready 127.0.0.1:{rp}\n"),
                     ("prometheus :9153", f"prometheus 127.0.0.1:{mp}"),
                     ("/etc/coredns", str(etc)),
                     ("/etc/resolv.conf", str(resolv))):
        assert old in text, old
        text = text.replace(old, new)
    return text


def start(tmp: Path, override: str = "", server: str = ""):
    etc = tmp / "coredns"
    (etc / "custom").mkdir(parents=True)
    (etc / "NodeHosts").write_text("192.0.2.50 k3s-server-0\n192.0.2.51 k3s-agent-1\n")
    if override:
        (etc / "custom" / "log.override").write_text(override)
    resolv = tmp / "resolv.conf"
    resolv.write_text(f"nameserver {UPSTREAM_HOST}\noptions ndots:5\n")
    port, hp, rp, mp = (free_port() for _ in range(4))
    if server:
        (etc / "custom" / "lab.server").write_text(server.replace("PORT", str(port)))
    (tmp / "Corefile").write_text(k3s_corefile(port, hp, rp, mp, etc, resolv))
    shutil.copy(DEMO, tmp / "cluster.yaml")
    return Server(tmp, ["--corefile", str(tmp / "Corefile"), "--state",
                        str(tmp / "cluster.yaml"), "--workers", "2"], port)


@pytest.fixture(scope="module")
def upstream():
    try:
        th = ThreadUpstream({"www.example.test.": [("A", "192.0.2.1")],
                             "k3s-server-0.": [("A", "198.51.100.9")]}, UPSTREAM_HOST, 53)
        up = th.__enter__()
    except OSError as e:
        pytest.skip(f"cannot bind the upstream on {UPSTREAM_HOST}:53: {e}")
    yield up
    th.__exit__(None, None, None)


def stop(srv: Server) -> None:
    if srv.proc.poll() is None:
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
    srv.stop_and_sweep()


def test_k3s_corefile_with_empty_custom_globs(tmp_path, upstream):
    srv = start(tmp_path)
    try:
        srv.wait_answering()
        assert a_records(ask(KUBERNETES, port=srv.port)) == {"10.96.0.1"}
        # NodeHosts: the node names, TTL 60, from the file and not the upstream
        r = ask("k3s-server-0.", port=srv.port)
        assert a_records(r) == {"192.0.2.50"} and r.answer[0].ttl == 60, srv.log()[-2000:]
        assert upstream.count("k3s-server-0.") == 0
        # fallthrough: a name the file lacks goes on to forward
        assert a_records(ask("www.example.test.", port=srv.port, timeout=3)) == {"192.0.2.1"}
        assert ask("nope.default.svc.cluster.local.", port=srv.port).rcode() == \
            dns.rcode.NXDOMAIN
    finally:
        stop(srv)


def test_k3s_custom_override_and_server_files(tmp_path, upstream):
    srv = start(tmp_path, override="log\n",
                server="lab.test:PORT {\n    hosts {\n        192.0.2.77 gw.lab.test\n"
                       "    }\n}\n")
    try:
        srv.wait_answering()
        # *.server: a block of its own
        assert a_records(ask("gw.lab.test.", port=srv.port)) == {"192.0.2.77"}
        # *.override: `log` inside the main block, CoreDNS's line per query
        assert a_records(ask(KUBERNETES, port=srv.port)) == {"10.96.0.1"}
        deadline = time.monotonic() + 5
        while f'"A IN {KUBERNETES} udp' not in srv.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f'"A IN {KUBERNETES} udp' in srv.log(), srv.log()[-2000:]
    finally:
        stop(srv)
