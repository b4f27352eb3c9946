"""`fastdns serve` end to end: real processes, real sockets, dnspython as the client.

One server (2 workers, UDP+TCP on 127.0.0.1 and ::1, a state file in a
temporary directory) is shared by the tests of this module in file order;
the tests that kill processes run after the ones that only query it, and
the last one stops it with SIGTERM and checks /dev/shm.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from fastdns.ipc import shm
from tests.helpers import (
    DEMO,
    HAS_IPV6,
    KUBERNETES,
    Server,
    a_records,
    ask,
    corefile_for,
    free_port,
    http_get,
    run_serve,
    wait_for,
)

pytestmark = pytest.mark.slow

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not alive
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- the shared server ---------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    state_dir = tmp / "state"
    state_dir.mkdir()
    shutil.copy(DEMO, state_dir / "cluster.yaml")
    port = free_port()
    (tmp / "Corefile").write_text(corefile_for(port))
    srv = Server(tmp, ["--corefile", str(tmp / "Corefile"), "--state", str(state_dir),
                       "--workers", "2", "--log-level", "info"], port)
    srv.state_dir = state_dir
    try:
        srv.wait_answering()
        yield srv
    finally:
        srv.stop_and_sweep(signal.SIGKILL)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("where", ["127.0.0.1", "::1"])
def test_answers(server, where, tcp):
    if where == "::1" and not HAS_IPV6:
        pytest.skip("no IPv6 loopback on this machine")
    r = ask(KUBERNETES, port=server.port, where=where, tcp=tcp)
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA
    assert a_records(r) == {"10.96.0.1"}
    assert r.answer[0].ttl == 30  # the Corefile's ttl, so the Corefile was applied
    nx = ask("nope.default.svc.cluster.local.", port=server.port, where=where, tcp=tcp)
    assert nx.rcode() == dns.rcode.NXDOMAIN
    assert nx.authority and nx.authority[0].rdtype == dns.rdatatype.SOA
    ptr = ask("1.0.96.10.in-addr.arpa.", "PTR", port=server.port, where=where, tcp=tcp)
    assert [str(rr.target) for rr in ptr.answer[0]] == [KUBERNETES]


def test_startup_log_says_what_is_served(server):
    log = server.log()
    assert re.search(r"\[INFO\] supervisor: serving .*cluster\.local.* on 127\.0\.0\.1:"
                     rf"{server.port}.* with 2 workers", log), log
    assert re.search(r"\[INFO\] control.*\d+ services", log), log


def test_both_workers_answer(server):
    """SO_REUSEPORT spreads clients over the workers by 4-tuple hash."""
    before = server.worker_queries()
    for _ in range(40):  # 40 source ports: P(one worker gets none) = 2 * 2**-40
        r = ask(KUBERNETES, port=server.port)
        assert a_records(r) == {"10.96.0.1"}
    after = server.worker_queries()
    assert all(b > a for a, b in zip(before, after, strict=True)), (before, after)


# -- state changes ---------------------------------------------------------------

NEW_SERVICE = """
---
apiVersion: v1
kind: Service
metadata:
  name: fresh-{n}
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 10.96.77.{n}
  clusterIPs: [10.96.77.{n}]
  ports:
  - name: http
    port: 80
    protocol: TCP
"""


def test_state_change_is_served_within_one_second(server):
    state = server.state_dir / "cluster.yaml"
    base = state.read_text()
    name = "fresh-7.default.svc.cluster.local."
    assert ask(name, port=server.port).rcode() == dns.rcode.NXDOMAIN
    tmp = state.with_suffix(".tmp")
    tmp.write_text(base + NEW_SERVICE.format(n=7))
    t0 = time.monotonic()
    os.replace(tmp, state)  # atomic, as kubectl/ConfigMap updates are
    seen = None
    while time.monotonic() - t0 < 3.0:
        r = ask(name, port=server.port)
        if a_records(r) == {"10.96.77.7"}:
            seen = time.monotonic() - t0
            break
        time.sleep(0.02)
    assert seen is not None and seen < 1.0, (seen, server.log()[-2000:])
    # a second, in-place rewrite (same inode) is seen too, over TCP as well
    with open(state, "w") as f:
        f.write(base + NEW_SERVICE.format(n=8))
    ok = wait_for(lambda: a_records(ask("fresh-8.default.svc.cluster.local.", port=server.port,
                                     tcp=True)) == {"10.96.77.8"}, 1.5, 0.02)
    assert ok, server.log()[-2000:]
    assert ask(name, port=server.port).rcode() == dns.rcode.NXDOMAIN


def test_broken_state_keeps_last_good(server):
    state = server.state_dir / "cluster.yaml"
    good = state.read_text()
    state.write_text(good + "\n---\nkind: Service\nmetadata: {name: broken, namespace: default}\n"
                     "spec: {clusterIP: 10.96.5.5, ports: [{port: eighty}]}\n")
    assert wait_for(lambda: "broken" in server.log(), 3.0), server.log()[-2000:]
    assert re.search(r"\[ERROR\] control/statefile: .*cluster\.yaml.*broken", server.log())
    assert a_records(ask("fresh-8.default.svc.cluster.local.", port=server.port)) \
        == {"10.96.77.8"}
    state.write_text(good)


# -- garbage -----------------------------------------------------------------------


def _mutations(rng: random.Random, n: int) -> list[bytes]:
    base = [dns.message.make_query(KUBERNETES, t, want_dnssec=d).to_wire()
            for t in ("A", "AAAA", "SRV", "TXT") for d in (False, True)]
    out = []
    for i in range(n):
        if i % 2 == 0:
            out.append(rng.randbytes(rng.randrange(0, 600)))
            continue
        p = bytearray(rng.choice(base))
        for _ in range(rng.randrange(1, 6)):
            op = rng.randrange(4)
            if op == 0 and p:
                p[rng.randrange(len(p))] = rng.randrange(256)
            elif op == 1:
                del p[rng.randrange(len(p) + 1):]
            elif op == 2:
                p += rng.randbytes(rng.randrange(1, 64))
            elif op == 3 and len(p) > 12:
                struct.pack_into(">H", p, 2 * rng.randrange(2, 6), rng.randrange(65536))
        out.append(bytes(p))
    return out


def test_garbage_leaves_every_worker_alive_and_answering(server):
    workers = [server.pids(f"worker {i}")[-1] for i in range(2)]
    before = server.worker_queries()
    rng = random.Random(4)
    packets = _mutations(rng, 10_000)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
    try:
        for s in socks:
            s.setblocking(False)
        for i, pkt in enumerate(packets):
            s = socks[i % len(socks)]
            try:
                s.sendto(pkt, ("127.0.0.1", server.port))
            except BlockingIOError:
                time.sleep(0.001)
            if i % 200 == 0:  # drain answers; keeps our receive buffers from filling
                for t in socks:
                    try:
                        while True:
                            t.recv(4096)
                    except BlockingIOError:
                        pass
    finally:
        for s in socks:
            s.close()
    # a few garbage TCP frames too, including a length that lies
    for frame in (b"\x00\x05hello", b"\x00\x00", b"\xff\xff" + b"x" * 100, b"\x00\x0c" + bytes(12)):
        with socket.create_connection(("127.0.0.1", server.port), timeout=1) as c:
            c.sendall(frame)
    for _ in range(40):
        assert a_records(ask(KUBERNETES, port=server.port)) == {"10.96.0.1"}
    assert all(_alive(p) for p in workers)
    assert "died" not in server.log()
    after = server.worker_queries()
    assert all(b - a >= 40 for a, b in zip(before, after, strict=True)), (before, after)
    assert sum(after) - sum(before) >= 5000  # the garbage did reach the workers


# -- crashes -----------------------------------------------------------------------


def _hammer(server, seconds: float) -> tuple[int, int]:
    """Query for `seconds`; (answered, unanswered)."""
    ok = bad = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            r = ask(KUBERNETES, port=server.port, timeout=0.25)
            ok += a_records(r) == {"10.96.0.1"}
        except dns.exception.Timeout:
            bad += 1
    return ok, bad


def test_worker_killed_is_replaced(server):
    old = server.pids("worker 0")[-1]
    os.kill(old, signal.SIGKILL)
    assert wait_for(lambda: len(server.pids("worker 0")) >= 2, 10.0), server.log()[-2000:]
    new = server.pids("worker 0")[-1]
    assert new != old and _alive(new)
    assert re.search(rf"\[WARNING\] supervisor: worker 0 \(pid {old}\) died: signal SIGKILL",
                     server.log())
    # the new worker maps the current image and answers: both workers take queries
    assert wait_for(lambda: _worker_mapped(server, 0), 10.0)
    before = server.worker_queries()
    ok, _ = _hammer(server, 0.5)
    after = server.worker_queries()
    assert ok > 0
    assert all(b > a for a, b in zip(before, after, strict=True)), (before, after)


def _worker_mapped(server, i: int) -> bool:
    with shm.ControlSegment.attach(server.instance) as ctl:
        return ctl.mapped(i) == ctl.generation > 0


def test_control_killed_workers_keep_answering(server):
    old = server.pids("control")[-1]
    with shm.ControlSegment.attach(server.instance) as ctl:
        gen = ctl.generation
    os.kill(old, signal.SIGKILL)
    ok, bad = _hammer(server, 0.3)  # while the control process is down
    assert ok > 0 and bad == 0
    assert wait_for(lambda: len(server.pids("control")) >= 2, 10.0), server.log()[-2000:]
    # the new control process republishes: a new generation appears
    with shm.ControlSegment.attach(server.instance) as ctl:
        assert wait_for(lambda: ctl.generation > gen, 10.0), server.log()[-2000:]
    assert "restarted: generation" in server.log()
    # and it watches the state file again
    state = server.state_dir / "cluster.yaml"
    state.write_text(state.read_text() + NEW_SERVICE.format(n=9))
    assert wait_for(lambda: a_records(ask("fresh-9.default.svc.cluster.local.",
                                       port=server.port)) == {"10.96.77.9"}, 2.0)
    # the restarts are counted where the metrics exporter reads them
    from fastdns.ipc import layout
    from fastdns.ipc.stats import SharedStats

    stats = SharedStats.attach(server.instance)
    try:
        assert stats.get(layout.S_WORKER_RESTARTS) == 1
        assert stats.get(layout.S_CONTROL_RESTARTS) == 1
        assert stats.get(layout.S_SUPERVISOR_PID) == server.proc.pid
        assert stats.get(layout.S_CONTROL_PID) == server.pids("control")[-1]
    finally:
        stats.close()
    # old images were retired: at most the current one and the previous one remain
    assert wait_for(lambda: len(shm.list_images(server.instance)) <= 2, 3.0), \
        shm.list_images(server.instance)


def test_sigterm_exits_zero_and_sweeps_shm(server):
    inst = server.instance
    assert shm.list_segments(inst)
    children = [server.pids("control")[-1]] + [server.pids(f"worker {i}")[-1] for i in range(2)]
    assert server.stop(signal.SIGTERM) == 0, server.log()[-2000:]
    assert shm.list_segments(inst) == []
    assert not any(_alive(p) for p in children)


def test_supervisor_killed_leaves_nothing(tmp_path):
    """SIGKILL of the supervisor: PR_SET_PDEATHSIG stops the children, control sweeps."""
    port = free_port()
    (tmp_path / "Corefile").write_text(corefile_for(port))
    srv = Server(tmp_path, ["--corefile", str(tmp_path / "Corefile"), "--demo",
                            "--workers", "1"], port)
    try:
        srv.wait_answering()
        inst = srv.instance
        children = [srv.pids("control")[-1], srv.pids("worker 0")[-1]]
        assert shm.list_segments(inst)
        srv.proc.kill()
        srv.proc.wait()
        assert wait_for(lambda: not any(_alive(p) for p in children), 10.0)
        assert shm.list_segments(inst) == []
    finally:
        srv.stop(signal.SIGKILL)


def test_no_bind_listens_everywhere_and_lameduck(tmp_path):
    """No `bind`: both wildcards (CoreDNS's default). health `lameduck 1s`: after
    SIGTERM /ready is 503 while DNS still answers, then exit 0."""
    port, ready_port = free_port(), free_port(v6=False)
    extra = (f"    health 127.0.0.1:{free_port(v6=False)} {{\n        lameduck 1s\n    }}\n"
             f"    ready 127.0.0.1:{ready_port}\n")
    (tmp_path / "Corefile").write_text(corefile_for(port, extra=extra, bind=False))
    srv = Server(tmp_path, ["--corefile", str(tmp_path / "Corefile"), "--demo",
                            "--workers", "1"], port)
    try:
        srv.wait_answering()
        assert f"0.0.0.0:{port}, [::]:{port}" in srv.log()
        if HAS_IPV6:
            assert a_records(ask(KUBERNETES, port=port, where="::1", tcp=True)) == {"10.96.0.1"}
        ready = f"http://127.0.0.1:{ready_port}/ready"
        assert wait_for(lambda: http_get(ready, timeout=1)[0] == 200, 5.0)
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: http_get(ready, timeout=1)[0] == 503, 0.8)
        assert a_records(ask(KUBERNETES, port=port)) == {"10.96.0.1"}
        assert srv.proc.wait(10) == 0
        assert time.monotonic() - t0 >= 1.0
        assert "lameduck" in srv.log()
    finally:
        srv.stop(signal.SIGKILL)


# -- startup errors and the demo ----------------------------------------------


def test_unknown_plugin_is_a_startup_error(tmp_path):
    cf = tmp_path / "Corefile"
    cf.write_text(corefile_for(free_port(), extra="    whoami\n    frobnicate 1 2\n"))
    r = run_serve(["--corefile", str(cf), "--demo", "--workers", "1"])
    assert r.returncode == 1
    assert re.search(rf"{re.escape(str(cf))}:(6|7): plugin (whoami|frobnicate): ", r.stderr), \
        r.stderr


def test_unsupported_known_plugin_names_its_line(tmp_path):
    cf = tmp_path / "Corefile"
    text = corefile_for(free_port(), extra="    k8s_external example.org\n")
    cf.write_text(text)
    line = text.splitlines().index("    k8s_external example.org") + 1
    r = run_serve(["--corefile", str(cf), "--demo", "--workers", "1"])
    assert r.returncode == 1
    assert f"{cf}:{line}: plugin k8s_external: " in r.stderr, r.stderr


def test_missing_corefile_and_state(tmp_path):
    r = run_serve(["--corefile", str(tmp_path / "nope"), "--demo"])
    assert r.returncode == 1 and "nope" in r.stderr
    cf = tmp_path / "Corefile"
    cf.write_text(corefile_for(free_port()))
    r = run_serve(["--corefile", str(cf), "--state", str(tmp_path / "missing.yaml")])
    assert r.returncode == 1 and "missing.yaml" in r.stderr


def test_broken_state_at_startup_exits_1(tmp_path):
    cf = tmp_path / "Corefile"
    cf.write_text(corefile_for(free_port()))
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Service\nmetadata: {name: x, namespace: default}\n"
                   "spec: {clusterIP: 10.96.5.5, ports: [{port: eighty}]}\n")
    r = run_serve(["--corefile", str(cf), "--state", str(bad), "--workers", "1"])
    assert r.returncode == 1, r.stderr
    assert "bad.yaml" in r.stderr and "Service default/x" in r.stderr, r.stderr
    assert shm.list_segments(_segment_instance_of(r.stderr)) == []


def test_the_port_check_never_joins_a_serving_reuseport_group(tmp_path):
    """A second server's pre-check of a port a fastdns serves (a surge) passes,
    and its UDP probe never takes a place in the port's reuseport group, where
    it would take queries and lose them when it closes (server/portcheck.py)."""
    from fastdns.server import portcheck

    port = free_port(v6=False)
    cf = tmp_path / "Corefile"
    cf.write_text(corefile_for(port, v6=False))
    srv = Server(tmp_path, ["--corefile", str(cf), "--demo", "--workers", "1"], port)
    try:
        srv.wait_answering()
        before = portcheck.socket_inodes("udp", port)
        seen: set[str] = set()
        real = socket.socket.bind

        def bind(sock, addr):  # each probe bind, and what the port holds right after
            real(sock, addr)
            seen.update(portcheck.socket_inodes("udp", port))

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(socket.socket, "bind", bind)
            portcheck.check_listen((("127.0.0.1", port),))  # no BindError: shareable
        assert seen <= before, (seen, before)  # no new UDP socket on the port, ever
    finally:
        srv.stop_and_sweep()


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_port_in_use_is_a_startup_error(tmp_path, proto):
    """CoreDNS exits when it cannot listen; so does `serve` (no restart loop), in one
    line with CoreDNS's words, the address and who holds it; nothing started."""
    port = free_port(v6=False)
    blocker = socket.socket(socket.AF_INET,  # no SO_REUSEPORT
                            socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", port))
    if proto == "tcp":
        blocker.listen(1)
    try:
        cf = tmp_path / "Corefile"
        cf.write_text(corefile_for(port, v6=False))
        r = run_serve(["--corefile", str(cf), "--demo", "--workers", "1"])
    finally:
        blocker.close()
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"listen {proto} 127.0.0.1:{port}: bind: address already in use; "
        f"held by pid {os.getpid()} ({_comm()})"], r.stderr


def test_address_not_on_this_host_is_one_line(tmp_path):
    cf = tmp_path / "Corefile"
    port = free_port(v6=False)
    cf.write_text(corefile_for(port, v6=False).replace("bind 127.0.0.1", "bind 192.0.2.53"))
    r = run_serve(["--corefile", str(cf), "--demo", "--workers", "1"])
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == (f"listen udp 192.0.2.53:{port}: bind: cannot assign requested "
                                "address; no interface of this host has that address"), r.stderr


def _comm() -> str:
    with open(f"/proc/{os.getpid()}/comm") as f:
        return f.read().strip()


def _segment_instance_of(log: str) -> str:
    m = re.search(r"shm instance (\w+)", log)
    assert m, log
    return m.group(1)


def _port_free(port: int) -> bool:
    for typ in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, typ) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def test_demo_quick_start_on_1053():
    """The README's first command: `fastdns serve --demo`, then dig on 127.0.0.1:1053."""
    if not _port_free(1053):
        pytest.skip("127.0.0.1:1053 is in use")
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="fastdns-demo-"))
    srv = Server(tmp, ["--demo", "--workers", "1"], 1053)
    try:
        srv.wait_answering()
        assert a_records(ask(KUBERNETES, port=1053, tcp=True)) == {"10.96.0.1"}
        log = srv.log()
        assert "127.0.0.1:1053" in log and re.search(r"\d+ services", log), log
        if shutil.which("dig"):
            out = subprocess.run(["dig", "@127.0.0.1", "-p", "1053", "+short", "+time=2",
                                  "+tries=2", "kubernetes.default.svc.cluster.local"],
                                 capture_output=True, text=True, timeout=15)
            assert out.stdout.split() == ["10.96.0.1"], out
            out = subprocess.run(["dig", "@127.0.0.1", "-p", "1053", "+tcp", "+short",
                                  "+time=2", "kubernetes.default.svc.cluster.local"],
                                 capture_output=True, text=True, timeout=15)
            assert out.stdout.split() == ["10.96.0.1"], out
        inst = srv.instance
        assert srv.stop(signal.SIGINT) == 0, srv.log()
        assert shm.list_segments(inst) == []
    finally:
        if srv.proc.poll() is None:
            srv.stop(signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
