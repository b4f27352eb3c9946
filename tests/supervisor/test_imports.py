"""What each process of `fastdns serve` imports: the supervisor stays small.

Every module a process loads stays in its memory for its whole life, and
the supervisor lives as long as the pod, so it must not load the workers'
or the control process's code (issue 14: the tree must fit kubeadm's 170Mi).
This runs a real tree with a ``sitecustomize`` first on its ``PYTHONPATH``
that writes ``sys.modules`` to a file when each process exits (keyed by its
``comm``: fastdns, fastdns-ctl, fastdns-w0), then checks what each one had
loaded. The workers' lists prove the hook sees the imports: they must hold
the worker's own modules.

Workers forked from the supervisor (the default, ``tree.py``) share its
modules by design: the supervisor then holds the workers' modules, but still
never the control plane's, and the workers hold the supervisor's. A forked
process leaves by ``os._exit``, which runs no ``atexit`` handler, so the hook
also dumps from ``os._exit`` in a forked child.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.helpers import Server, free_port

_HOOK = '''\
import atexit, os, sys

def _dump():
    comm = open("/proc/self/comm").read().strip()
    path = os.path.join(os.environ["FASTDNS_TEST_MODULES_DIR"], f"modules-{comm}-{os.getpid()}")
    with open(path, "w") as f:
        f.write(" ".join(sys.argv) + "\\n" + "\\n".join(sorted(sys.modules)))

def _in_forked_child():
    real = os._exit

    def _exit(code):
        _dump()
        real(code)

    os._exit = _exit

if os.environ.get("FASTDNS_TEST_MODULES_DIR"):
    atexit.register(_dump)
    os.register_at_fork(after_in_child=_in_forked_child)
'''

#: Modules (and everything under them) that only a worker or the control
#: process needs; each is megabytes of a process that would keep them.
NOT_IN_SUPERVISOR = (
    "asyncio", "uvloop", "kubernetes", "urllib3",
    "fastdns.server.worker", "fastdns.server.tcp", "fastdns.server.forwarding",
    "fastdns.server.cforward", "fastdns.server._udp", "fastdns.forward",
    "fastdns.control.process", "fastdns.control.publisher", "fastdns.control.statefile",
    "fastdns.control.kube", "fastdns.control.kubeclient", "fastdns.control.observability",
    "fastdns.control.httpd", "fastdns.control.metrics", "fastdns.zone.compiler",
)
#: The control plane, which neither a worker nor the supervisor runs.
CONTROL_PLANE = (
    "kubernetes", "urllib3", "fastdns.control.process", "fastdns.control.publisher",
    "fastdns.control.statefile", "fastdns.control.kube", "fastdns.control.kubeclient",
    "fastdns.control.observability", "fastdns.control.httpd", "fastdns.zone.compiler",
)


def _rollup(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup in KiB."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        lines = f.read().splitlines()[1:]
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines)}


def _loaded(mods: set[str], roots: tuple[str, ...]) -> list[str]:
    return sorted(m for m in mods if any(m == r or m.startswith(r + ".") for r in roots))


@pytest.mark.parametrize("fork", [True, False], ids=["forked", "fresh"])
def test_supervisor_and_workers_import_only_their_own_code(tmp_path, monkeypatch, fork):
    monkeypatch.setenv("FASTDNS_FORK_WORKERS", "1" if fork else "0")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_HOOK)
    out = tmp_path / "modules"
    out.mkdir()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(hook), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("FASTDNS_TEST_MODULES_DIR", str(out))
    port = free_port(v6=False)
    # kubeadm's plugins that a worker runs (forward, cache, errors, loop, reload)
    # and the control process's (health, ready, prometheus): all of them loaded
    (tmp_path / "Corefile").write_text(
        f".:{port} {{\n    bind 127.0.0.1\n    errors\n    health 127.0.0.1:{free_port(False)}\n"
        f"    ready 127.0.0.1:{free_port(False)}\n"
        "    kubernetes cluster.local in-addr.arpa ip6.arpa {\n"
        "        pods insecure\n        fallthrough in-addr.arpa ip6.arpa\n    }\n"
        f"    prometheus 127.0.0.1:{free_port(False)}\n"
        "    forward . 127.0.0.1:9\n    cache 30\n    loop\n    reload\n    loadbalance\n}\n")
    srv = Server(tmp_path, ["--demo", "--corefile", str(tmp_path / "Corefile"),
                            "--workers", "2"], port)
    try:
        srv.wait_answering()
        shared = {i: _rollup(srv.pids(f"worker {i}")[-1]) for i in (0, 1)}
    finally:
        assert srv.stop_and_sweep(signal.SIGTERM) == 0, srv.log()
    if fork:
        # the supervisor's pages (interpreter, modules) are the workers' too:
        # most of a worker's written memory is shared (~13 of ~20 MB here)
        for i, m in shared.items():
            assert m["Shared_Dirty"] >= 4 * 1024, (i, m)
            assert m["Shared_Dirty"] > m["Private_Dirty"], (i, m)
    dumps: dict[str, set[str]] = {}
    for f in out.iterdir():
        comm = f.name.split("-", 1)[1].rsplit("-", 1)[0]
        dumps[comm] = set(f.read_text().splitlines()[1:])
    assert {"fastdns", "fastdns-ctl", "fastdns-w0", "fastdns-w1"} <= set(dumps), (
        sorted(dumps), srv.log())
    sup = dumps["fastdns"]
    assert "fastdns.supervisor.tree" in sup
    assert _loaded(sup, CONTROL_PLANE) == []
    if fork:  # what the workers run, loaded once for all of them
        assert {"fastdns.server.worker", "fastdns.server.forwarding", "uvloop"} <= sup
    else:
        assert _loaded(sup, NOT_IN_SUPERVISOR) == []
    for w in ("fastdns-w0", "fastdns-w1"):
        # the hook sees a worker's real imports ...
        assert {"fastdns.server.worker", "fastdns.server.forwarding", "uvloop"} <= dumps[w]
        # ... forked (the supervisor's modules came along) or not ...
        assert ("fastdns.supervisor.tree" in dumps[w]) == fork
        # ... and none of the control plane
        assert _loaded(dumps[w], CONTROL_PLANE) == []
    assert "fastdns.control.process" in dumps["fastdns-ctl"]
