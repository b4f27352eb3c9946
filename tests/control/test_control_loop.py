"""The control process in-process: state-file watching, state diffs, the loop."""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time

import pytest

from fastdns.control import statefile
from fastdns.control.loop import ControlLoop, sync_state
from fastdns.control.publisher import Publisher
from fastdns.ipc import shm
from fastdns.zone.state import ClusterState, load_state

NS = """
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
"""
SVC = """
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  clusterIP: {ip}
  clusterIPs: [{ip}]
  ports: [{{name: http, port: 80, protocol: TCP}}]
"""
SLICE = """
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-abc
  namespace: {ns}
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
endpoints:
- addresses: [{ep}]
  conditions: {{ready: true}}
ports: [{{name: http, port: 8080, protocol: TCP}}]
"""


def cluster(*services: tuple[str, str], ns: str = "default", eps: dict | None = None) -> str:
    text = NS.format(ns=ns)
    for name, ip in services:
        text += SVC.format(name=name, ns=ns, ip=ip)
        if eps and name in eps:
            text += SLICE.format(name=name, ns=ns, ep=eps[name])
    return text


# -- fingerprints ----------------------------------------------------------------


def test_fingerprint_sees_every_kind_of_write(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("a: 1\n")
    fp0 = statefile.fingerprint(str(f))
    assert statefile.fingerprint(str(f)) == fp0
    f.write_text("a: 2\n")  # same size, in place: mtime (ns) moves
    fp1 = statefile.fingerprint(str(f))
    assert fp1 != fp0
    tmp = tmp_path / "s.tmp"
    tmp.write_text("a: 2\n")
    os.utime(tmp, ns=(os.stat(f).st_atime_ns, os.stat(f).st_mtime_ns))
    os.replace(tmp, f)  # same size and mtime, new inode
    assert statefile.fingerprint(str(f)) != fp1
    f.unlink()
    assert statefile.fingerprint(str(f)) == ()


def test_fingerprint_of_a_directory(tmp_path):
    (tmp_path / "a.yaml").write_text("x")
    fp0 = statefile.fingerprint(str(tmp_path))
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden.yaml").write_text("ignored")
    assert statefile.fingerprint(str(tmp_path))[1:] == fp0[1:]
    (tmp_path / "b.json").write_text("{}")
    assert statefile.fingerprint(str(tmp_path))[1:] != fp0[1:]


# -- the source --------------------------------------------------------------------


def test_source_reloads_and_keeps_last_good(tmp_path, caplog):
    f = tmp_path / "cluster.yaml"
    f.write_text(cluster(("web", "10.96.0.10")))
    got = []
    src = statefile.StateFileSource(str(f), got.append)
    first = src.load_now()
    assert ("default", "web") in first.services
    assert not src.poll()  # nothing changed
    f.write_text(cluster(("web", "10.96.0.10"), ("api", "10.96.0.11")))
    assert src.poll()
    assert ("default", "api") in got[-1].services
    caplog.set_level(logging.ERROR, logger="control/statefile")
    f.write_text(cluster(("bad", "10.96.0.30")).replace("port: 80,", "port: eighty,"))
    assert not src.poll()
    assert len(got) == 1
    msg = caplog.records[-1].getMessage()
    assert str(f) in msg and "Service default/bad" in msg and "last good" in msg
    assert not src.poll()  # logged once per bad version, not every poll
    assert len(caplog.records) == 1
    f.write_text(cluster(("web", "10.96.0.12")))
    assert src.poll() and got[-1].services[("default", "web")].cluster_ips == ("10.96.0.12",)


def test_source_thread_notices_within_a_poll(tmp_path):
    f = tmp_path / "cluster.yaml"
    f.write_text(cluster(("web", "10.96.0.10")))
    seen = threading.Event()
    src = statefile.StateFileSource(str(f), lambda s: seen.set(), interval=0.05)
    src.load_now()
    src.start()
    try:
        t0 = time.monotonic()
        f.write_text(cluster(("web", "10.96.0.20")))
        assert seen.wait(2.0)
        assert time.monotonic() - t0 < 1.0
    finally:
        src.stop()


# -- whole-state diffs -------------------------------------------------------------


def test_sync_state_turns_one_state_into_another(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text(cluster(("web", "10.96.0.10"), ("api", "10.96.0.11"), ("db", "10.96.0.12"),
                         eps={"web": "10.0.0.1", "api": "10.0.0.2"}))
    b.write_text(cluster(("web", "10.96.0.10"), ("api", "10.96.0.11"), ("new", "10.96.0.13"),
                         eps={"web": "10.0.0.1", "api": "10.0.0.9"}))
    cur, new = load_state(str(a)), load_state(str(b))
    affected = sync_state(cur, new)
    assert affected.services == {("default", "api"), ("default", "db"), ("default", "new")}
    assert not affected.namespaces
    for attr in ("namespaces", "services", "slices", "pods"):
        assert getattr(cur, attr) == getattr(new, attr)
    assert not sync_state(cur, load_state(str(b)))  # no change, nothing affected


def test_sync_state_namespace_going_away():
    from fastdns.zone.objects import Namespace, Service

    cur = ClusterState([Namespace("gone"), Service("gone", "x", "ClusterIP", ("10.96.1.1",),
                                                   False, None, ())])
    affected = sync_state(cur, ClusterState())
    assert affected.namespaces == {"gone"} and affected.services == {("gone", "x")}
    assert len(cur) == 0


# -- the loop with the real compiler and shared memory ---------------------------------


@pytest.fixture
def instance():
    inst = "c" + secrets.token_hex(5)
    yield inst
    shm.sweep(inst)


COREFILE = """\
cluster.local:53 {
    kubernetes cluster.local in-addr.arpa {
        ttl 7
    }
}
"""


def _loop(instance, state):
    from fastdns.control.process import build_compiler
    from fastdns.corefile.config import parse_corefile

    ctl = shm.ControlSegment.create(instance, 1)
    loop = ControlLoop(build_compiler(parse_corefile(COREFILE, "Corefile")), Publisher(ctl),
                       coalesce=0.02)
    loop.publish_full(state, "test")
    t = threading.Thread(target=loop.run, daemon=True)
    t.start()
    return ctl, loop, t


def _resolve(ctl, name: str) -> tuple[int, set[str]]:
    """(rcode, A addresses) of `name` answered from the published image by the wire core."""
    import dns.message

    from fastdns.codec import wire

    seg = ctl.current()
    try:
        q = dns.message.make_query(name, "A")
        status, resp, _ = wire.answer(seg.buf, q.to_wire(), 0)
        assert status == wire.ST_ANSWER
        r = dns.message.from_wire(resp)
        return r.rcode(), {rr.address for rrset in r.answer for rr in rrset}
    finally:
        seg.close()


def _wait_gen(ctl, gen: int, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ctl.generation >= gen:
            return True
        time.sleep(0.005)
    return False


def test_loop_publishes_a_new_state_incrementally(instance, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(cluster(("web", "10.96.0.10"), ("api", "10.96.0.11")))
    ctl, loop, t = _loop(instance, load_state(str(f)))
    calls = []
    real_update = loop.compiler.update
    loop.compiler.update = lambda state, affected: (calls.append(affected),
                                                    real_update(state, affected))[1]
    try:
        assert ctl.generation == 1
        assert _resolve(ctl, "web.default.svc.cluster.local.")[1] == {"10.96.0.10"}
        f.write_text(cluster(("web", "10.96.0.20"), ("api", "10.96.0.11")))
        loop.post_state(load_state(str(f)))
        assert _wait_gen(ctl, 2)
        assert _resolve(ctl, "web.default.svc.cluster.local.")[1] == {"10.96.0.20"}
        assert _resolve(ctl, "api.default.svc.cluster.local.")[1] == {"10.96.0.11"}
        assert [c.services for c in calls] == [{("default", "web")}]  # only what changed
        # the same state again: nothing to publish
        loop.post_state(load_state(str(f)))
        time.sleep(0.2)
        assert ctl.generation == 2
        # the image that is no longer mapped by anyone was unlinked
        assert [g for g, _ in shm.list_images(instance)] == [2]
    finally:
        loop.stop()
        t.join(5)
        ctl.close()


def test_loop_coalesces_a_burst_of_events(instance, tmp_path):
    from fastdns.zone.objects import Service, ServicePort

    f = tmp_path / "c.yaml"
    f.write_text(cluster(("web", "10.96.0.10")))
    ctl, loop, t = _loop(instance, load_state(str(f)))
    try:
        for i in range(200):
            svc = Service("default", f"s{i}", "ClusterIP", (f"10.96.1.{i}",), False, None,
                          (ServicePort("http", "TCP", 80),))
            loop.post_event("Service", "ADDED", svc)
        assert _wait_gen(ctl, 2)
        time.sleep(0.2)
        # Posting 200 events normally fits in one 10 ms window (one publish); on a
        # loaded machine the window may close once mid-burst, never 200 times.
        assert ctl.generation <= 3, "a burst of events is coalesced into few publishes"
        assert _resolve(ctl, "s199.default.svc.cluster.local.")[1] == {"10.96.1.199"}
        gen = ctl.generation
        loop.post_event("Service", "DELETED", ("Service", ("default", "s5")))
        assert _wait_gen(ctl, gen + 1)
        assert _resolve(ctl, "s5.default.svc.cluster.local.")[0] == 3  # NXDOMAIN
    finally:
        loop.stop()
        t.join(5)
        ctl.close()


def test_loop_schedules_the_cyclic_gc_itself(instance, tmp_path):
    """Automatic collections are off while the loop runs (a full collection
    stalled event -> publish by 100-200 ms at scale); the loop collects once
    the queue has been idle, and gives the GC back when it stops."""
    import gc

    f = tmp_path / "c.yaml"
    f.write_text(cluster(("web", "10.96.0.10")))
    assert gc.isenabled()
    ctl, loop, t = _loop(instance, load_state(str(f)))
    try:
        deadline = time.monotonic() + 2
        while gc.isenabled() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not gc.isenabled(), "the running loop owns the cyclic GC"
        runs = loop.pygc_runs
        loop.post_state(load_state(str(f)))  # activity, then idle
        deadline = time.monotonic() + 3
        while loop.pygc_runs == runs and time.monotonic() < deadline:
            time.sleep(0.05)
        assert loop.pygc_runs > runs, "an idle loop collects"
    finally:
        loop.stop()
        t.join(5)
        ctl.close()
    assert gc.isenabled(), "stopping the loop gives automatic GC back"


def test_busy_loop_widens_its_window_to_the_compile_cost(instance, tmp_path):
    """An event that arrives right after a publish, while events keep coming,
    waits as long as the last compile took (not just `coalesce`), so batches
    grow with the load instead of compiling one event at a time."""
    from fastdns.zone.objects import Service, ServicePort

    f = tmp_path / "c.yaml"
    f.write_text(cluster(("web", "10.96.0.10")))
    ctl, loop, t = _loop(instance, load_state(str(f)))
    real_update = loop.compiler.update

    def slow_update(state, affected, **kw):
        time.sleep(0.15)  # a 150 ms compile
        return real_update(state, affected, **kw)

    def svc(i):
        return Service("default", f"s{i}", "ClusterIP", (f"10.96.1.{i}",), False, None,
                       (ServicePort("http", "TCP", 80),))

    loop.compiler.update = slow_update
    try:
        gen = ctl.generation
        loop.post_event("Service", "ADDED", svc(1))
        assert _wait_gen(ctl, gen + 1)
        t0 = time.monotonic()  # just after that publish: the loop is "busy"
        loop.post_event("Service", "ADDED", svc(2))
        assert _wait_gen(ctl, gen + 2)
        elapsed = time.monotonic() - t0
        # coalesce (20 ms) + compile (150 ms) would be ~0.17 s; the widened
        # window (~150 ms) + compile is ~0.3 s
        assert elapsed >= 0.25, f"published {elapsed * 1e3:.0f} ms after the event"
        assert _resolve(ctl, "s2.default.svc.cluster.local.")[1] == {"10.96.1.2"}
    finally:
        loop.stop()
        t.join(5)
        ctl.close()
