"""Pod records from a state file: `pods verified` keeps the Pods, the other modes
do not need them (the control process skips them, as CoreDNS does not watch Pods)."""

from __future__ import annotations

import dns.rcode
import pytest

from fastdns.control.process import state_loader
from fastdns.zone.compiler import Compiler
from fastdns.zone.options import KubernetesOptions
from fastdns.zone.state import demo_path
from tests.helpers import Server, a_records, ask, free_port

pytestmark = pytest.mark.slow

LISTED = "10-244-1-10.default.pod.cluster.local."  # the demo's nginx Pod
UNLISTED = "10-244-1-99.default.pod.cluster.local."  # well formed, no such Pod


def corefile(port: int, mode: str) -> str:
    return (f"cluster.local:{port} {{\n    bind 127.0.0.1\n"
            f"    kubernetes cluster.local {{\n        pods {mode}\n    }}\n}}\n")


@pytest.mark.parametrize("mode", ["insecure", "verified"])
def test_loader_keeps_pods_only_when_verified(mode):
    state = state_loader(Compiler(KubernetesOptions(pods=mode)))(demo_path()).state
    assert bool(state.pods) == (mode == "verified")
    assert state.services  # everything else is loaded either way


@pytest.mark.parametrize("mode,unlisted", [("verified", dns.rcode.NXDOMAIN),
                                           ("insecure", dns.rcode.NOERROR)])
def test_pod_names_over_dns(tmp_path, mode, unlisted):
    port = free_port(v6=False)
    (tmp_path / "Corefile").write_text(corefile(port, mode))
    srv = Server(tmp_path, ["--corefile", str(tmp_path / "Corefile"), "--demo",
                            "--workers", "1"], port)
    try:
        srv.wait_answering()
        r = ask(LISTED, port=port)
        assert r.rcode() == dns.rcode.NOERROR and a_records(r) == {"10.244.1.10"}, r
        r = ask(UNLISTED, port=port)
        assert r.rcode() == unlisted, r
        if unlisted == dns.rcode.NOERROR:
            assert a_records(r) == {"10.244.1.99"}
    finally:
        srv.stop()
