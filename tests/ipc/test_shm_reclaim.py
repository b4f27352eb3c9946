"""Leak-free restarts (issue 12): a starting instance reclaims what dead ones left.

SIGKILL of the whole tree (an OOM kill of the pod) runs no cleanup, and a
memory-backed emptyDir at /dev/shm outlives the container. The rule
(``fastdns/ipc/reclaim.py``'s docstring): a live instance's supervisor holds
an flock on ``fastdns-<instance>-lock``; a starting supervisor sweeps every
instance whose lock it can take, and nothing else.

Every test here works in a directory of its own (``FASTDNS_SHM_DIR``), so
no other server on this machine can reclaim, or be reclaimed by, what a
test kills on purpose.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from fastdns.ipc import reclaim, shm
from tests.helpers import (
    KUBERNETES,
    ROOT,
    _serve_env,
    a_records,
    ask,
    corefile_for,
    free_port,
    wait_for,
)
from tests.process_group import GroupServer, alive

WANT = {"10.96.0.1"}


@pytest.fixture
def shm_dir(monkeypatch):
    """A tmpfs directory of the test's own, as this process's and the servers' SHM_DIR."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    path = tempfile.mkdtemp(prefix="reclaim-test-", dir=base)
    monkeypatch.setattr(shm, "SHM_DIR", path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _names(d: str) -> set[str]:
    return set(os.listdir(d))


def _octets(d: str, names) -> int:
    return sum(os.stat(os.path.join(d, n)).st_blocks * 512 for n in names)


class _Owner:
    """Another process that owns an instance: its lock, a control segment and an image."""

    def __init__(self, d: str, instance: str) -> None:
        code = ("import sys\n"
                "from fastdns.ipc import reclaim, shm\n"
                f"lock = reclaim.InstanceLock.acquire({instance!r})\n"
                f"ctl = shm.ControlSegment.create({instance!r}, 2)\n"
                f"img = shm.ImageSegment.create({instance!r}, 1, b'x' * 300000)\n"
                "print('ready', flush=True)\n"
                "sys.stdin.read()\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=dict(_serve_env(), FASTDNS_SHM_DIR=d))
        assert self.proc.stdout.readline().strip() == "ready"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            f.close()


def test_reclaim_sweeps_dead_instances_only(shm_dir):
    live, dead, lockless = "tlive1", "tdead1", "tnolock1"
    owners = [_Owner(shm_dir, live), _Owner(shm_dir, dead)]
    try:
        ctl = shm.ControlSegment.create(lockless, 1)  # a test's own segments: no lock
        ctl.close()
        owners[1].kill()  # SIGKILL: no cleanup ran, the kernel dropped its flock
        before = _names(shm_dir)
        dead_names = {n for n in before if n.startswith(f"fastdns-{dead}-")}
        assert dead_names == {f"fastdns-{dead}-lock", f"fastdns-{dead}-ctl",
                              f"fastdns-{dead}-img-1"}
        dead_octets = _octets(shm_dir, dead_names)
        assert dead_octets >= 300000

        done = reclaim.reclaim()
        assert done.instances == [dead]
        assert done.segments == 3 and done.octets == dead_octets
        assert done.unowned == [lockless] and done.unowned_segments == 1
        assert _names(shm_dir) == before - dead_names  # the live and the lockless untouched

        again = reclaim.reclaim()  # nothing more to do; the live one still holds its lock
        assert again.instances == [] and _names(shm_dir) == before - dead_names
        owners[0].kill()
        assert reclaim.reclaim(own=lockless).instances == [live]
        assert _names(shm_dir) == {f"fastdns-{lockless}-ctl"}
    finally:
        for o in owners:
            o.close()


def test_an_empty_lock_is_a_starting_owner_until_it_is_old(shm_dir):
    """Created, not locked yet (the owner is between open and flock): left alone;
    the same empty file EMPTY_LOCK_GRACE later has no owner."""
    inst = "tempty1"
    path = os.path.join(shm_dir, reclaim.lock_name(inst))
    with open(path, "w"):
        pass
    shm.ControlSegment.create(inst, 1).close()
    assert reclaim.reclaim().instances == []
    assert len(_names(shm_dir)) == 2
    old = time.time() - reclaim.EMPTY_LOCK_GRACE - 1
    os.utime(path, (old, old))
    assert reclaim.reclaim().instances == [inst]
    assert _names(shm_dir) == set()


def test_instance_lock_is_exclusive_and_released(shm_dir):
    lock = reclaim.InstanceLock.acquire("tlock1")
    path = os.path.join(shm_dir, lock.name)
    with open(path) as f:
        assert f.read() == f"{os.getpid()}\n"
    with pytest.raises(FileExistsError):
        reclaim.InstanceLock.acquire("tlock1")
    assert reclaim.reclaim().instances == []  # held (by this process: flock is per open file)
    lock.release()
    assert not os.path.exists(path)
    lock.release()  # twice is harmless


# -- end to end: `fastdns serve` killed as a whole, then started again ----------------


@pytest.fixture
def servers(shm_dir):
    started: list[GroupServer] = []
    yield started
    for srv in started:
        srv.kill_group()


def _start(tmp, shm_dir, port, servers, name="serve") -> GroupServer:
    corefile = tmp / f"Corefile-{port}"
    if not corefile.exists():
        corefile.write_text(corefile_for(port))
    srv = GroupServer(tmp, ["--corefile", str(corefile), "--demo", "--workers", "2"], port,
                      name=name, env={"FASTDNS_SHM_DIR": shm_dir})
    servers.append(srv)
    srv.wait_answering()
    return srv


@pytest.mark.slow
def test_group_sigkill_then_restart_leaves_no_segment_of_the_dead(tmp_path, shm_dir, servers):
    port = free_port()
    first = _start(tmp_path, shm_dir, port, servers, name="first")
    dead = first.instance
    children = first.children()
    first.killpg(signal.SIGKILL)  # what the OOM killer does to the pod
    first.proc.wait(10)
    assert wait_for(lambda: not any(alive(p) for p in children), 5.0)
    leaked = _names(shm_dir)
    assert {f"fastdns-{dead}-lock", f"fastdns-{dead}-ctl",
            f"fastdns-{dead}-img-1"} <= leaked  # the leak: nothing cleaned up
    leaked_octets = _octets(shm_dir, leaked)
    shm.ControlSegment.create("tolder1", 1).close()  # an older fastdns's: no lock file

    second = _start(tmp_path, shm_dir, port, servers, name="second")  # same Corefile
    left = _names(shm_dir)
    assert not any(n.startswith(f"fastdns-{dead}-") for n in left), left
    assert "fastdns-tolder1-ctl" in left
    assert a_records(ask(KUBERNETES, port=port)) == WANT
    log = second.log()
    line = next(ln for ln in log.splitlines() if "reclaimed" in ln)
    print(f"\ngroup SIGKILL left {len(leaked)} segments ({leaked_octets} octets); "
          f"the restart logged: {line}")
    assert f"reclaimed {len(leaked)} shm segments" in line and line.endswith(dead), log
    assert "left alone 1 shm segments" in log and "tolder1" in log, log

    assert second.stop(signal.SIGTERM) == 0
    assert _names(shm_dir) == {"fastdns-tolder1-ctl"}


@pytest.mark.slow
def test_a_live_instance_keeps_its_segments(tmp_path, shm_dir, servers):
    """Two servers on one node (different Corefiles, one /dev/shm): the second
    one's start leaves every segment of the first exactly as it was."""
    port_a, port_b = free_port(), free_port()
    a = _start(tmp_path, shm_dir, port_a, servers, name="a")
    inst_a = a.instance
    # its restart copy of the state is written 1 s after the load (process.py
    # save_delay): the segments are all there once it is
    wait_for(lambda: f"fastdns-{inst_a}-state" in _names(shm_dir), timeout=5)
    before = {n: os.stat(os.path.join(shm_dir, n)).st_ino for n in _names(shm_dir)}
    assert f"fastdns-{inst_a}-lock" in before
    b = _start(tmp_path, shm_dir, port_b, servers, name="b")
    after = {n: os.stat(os.path.join(shm_dir, n)).st_ino for n in _names(shm_dir)
             if n.startswith(f"fastdns-{inst_a}-")}
    assert after == before
    assert "reclaimed" not in b.log()
    assert a_records(ask(KUBERNETES, port=port_a)) == WANT
    assert a_records(ask(KUBERNETES, port=port_b)) == WANT
    assert b.stop(signal.SIGTERM) == 0 and a.stop(signal.SIGTERM) == 0
    assert _names(shm_dir) == set()
