"""The child-process launcher (fastdns/server/childproc.py) and the process tree
of `fastdns serve` it gives: supervisor, control, workers, and nothing else
(no multiprocessing resource tracker)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dns.rcode
import pytest

from fastdns.ipc import shm
from fastdns.server import childproc
from fastdns.server.childproc import ChildProcess
from tests.helpers import KUBERNETES, Server, a_records, ask, corefile_for, free_port, wait_for


@pytest.fixture(params=["pidfd", "pipe"])
def sentinel_kind(request, monkeypatch):
    """Both exit sentinels: a pidfd, and the pipe kept for kernels without pidfd_open."""
    if request.param == "pidfd":
        if not childproc._HAVE_PIDFD:
            pytest.skip("pidfd_open(2) is not available here")
    else:
        monkeypatch.setattr(childproc, "_HAVE_PIDFD", False)
    return request.param


@pytest.fixture
def procs():
    """Every ChildProcess a test starts, killed and reaped afterwards whatever happened."""
    started: list[ChildProcess] = []
    yield started
    for p in started:
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
            p.join(5)
        p.close()


@pytest.fixture(params=[False, True], ids=["exec", "fork"])
def fork(request) -> bool:
    """Both ways to start a child: a fresh interpreter, and fork(2) alone."""
    return request.param


def _start(procs, target, args=(), name="test child", fork=False) -> ChildProcess:
    p = ChildProcess(target, args, name=name, fork=fork)
    p.start()
    procs.append(p)
    assert p.forked == fork
    return p


def _gone(pid: int) -> bool:
    """No process and no zombie with this pid (it was reaped)."""
    return not os.path.exists(f"/proc/{pid}")


@dataclass(frozen=True)
class _Spec:
    out: str
    word: str


def _report(spec: _Spec) -> None:
    """Write what a child sees of its own process to ``spec.out``."""
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the directory listing's own fd, closed by now
            pass
    status = Path("/proc/self/status").read_text()
    Path(spec.out).write_text(json.dumps({
        "word": spec.word, "fds": fds, "sys_path": sys.path,
        "comm": Path("/proc/self/comm").read_text().strip(),
        "cmdline": Path("/proc/self/cmdline").read_text().split("\0"),
        "ppid": os.getppid(),
        "handlers": {int(s): str(signal.getsignal(s)) for s in
                     (signal.SIGUSR1, signal.SIGHUP, signal.SIGINT, signal.SIGTERM)},
        "wakeup_fd": signal.set_wakeup_fd(-1),
        "sigblk": int(status.split("SigBlk:")[1].split()[0], 16)}))


def _sleep_forever() -> None:
    time.sleep(120)


# -- exit status -----------------------------------------------------------------


def test_exit_codes(procs, fork, sentinel_kind):
    cases = [(os._exit, (7,), 7), (sys.exit, (4,), 4), (sys.exit, (None,), 0),
             (len, ("returns",), 0)]
    started = [(_start(procs, fn, args, fork=fork), want) for fn, args, want in cases]
    for p, want in started:
        p.join(20)
        assert not p.is_alive()
        assert p.exitcode == want, (p, want)
        assert _gone(p.pid)  # reaped: no zombie


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_signal_exit_code_is_negative(procs, fork, sig):
    p = _start(procs, _sleep_forever, fork=fork)
    assert p.is_alive() and p.exitcode is None
    os.kill(p.pid, sig)
    p.join(20)
    assert p.exitcode == -sig
    assert _gone(p.pid)


def test_sentinel_readable_only_after_exit(procs, fork, sentinel_kind):
    p = _start(procs, _sleep_forever, fork=fork)
    assert childproc.wait([p.sentinel], 0.3) == []
    t0 = time.monotonic()
    os.kill(p.pid, signal.SIGKILL)
    assert childproc.wait([p.sentinel], 10) == [p.sentinel]
    assert time.monotonic() - t0 < 5
    p.join(5)
    assert not p.is_alive() and p.exitcode == -signal.SIGKILL
    assert _gone(p.pid)
    sentinel = p.sentinel
    p.close()
    with pytest.raises(OSError):
        os.fstat(sentinel)  # close() released it
    with pytest.raises(ValueError):
        p.sentinel  # noqa: B018


def test_join_timeout(procs, fork, sentinel_kind):
    p = _start(procs, _sleep_forever, fork=fork)
    t0 = time.monotonic()
    p.join(0.4)
    waited = time.monotonic() - t0
    assert 0.35 <= waited < 3
    assert p.is_alive() and p.exitcode is None
    with pytest.raises(ValueError):
        p.close()  # still running
    os.kill(p.pid, signal.SIGTERM)
    p.join()
    assert p.exitcode == -signal.SIGTERM


def test_raising_target_prints_traceback_and_exits_1(procs, fork, capfd):
    p = _start(procs, int, ("not a number",), name="fastdns crasher", fork=fork)
    p.join(20)
    assert p.exitcode == 1
    err = capfd.readouterr().err
    assert f"Process fastdns crasher (pid {p.pid}):" in err
    assert "Traceback (most recent call last):" in err
    assert "ValueError: invalid literal for int()" in err


def test_system_exit_message_exits_1(procs, fork, capfd):
    p = _start(procs, sys.exit, ("fatal: told so",), fork=fork)
    p.join(20)
    assert p.exitcode == 1
    assert "fatal: told so" in capfd.readouterr().err


# -- what the child is given ----------------------------------------------------


def test_child_environment(procs, tmp_path, sentinel_kind):
    """Args arrive unpickled; stdin is /dev/null; no fd but stdio (and the
    liveness pipe without pidfds) leaks in; the parent's sys.path is kept;
    the name is in argv and comm."""
    out = tmp_path / "report.json"
    p = ChildProcess(_report, (_Spec(str(out), "hello"),), name="fastdns worker 3",
                     comm="fastdns-w3")
    p.start()
    procs.append(p)
    p.join(20)
    assert p.exitcode == 0
    got = json.loads(out.read_text())
    assert got["word"] == "hello"
    assert got["ppid"] == os.getpid()
    assert got["fds"]["0"] == "/dev/null"
    extra = set(got["fds"]) - {"0", "1", "2"}
    assert len(extra) == (0 if sentinel_kind == "pidfd" else 1), got["fds"]
    assert got["sys_path"] == sys.path
    assert got["comm"] == "fastdns-w3"
    argv = got["cmdline"]
    at = argv.index("fastdns.server.childproc")
    assert argv[at - 1] == "-m" and argv[at + 1:at + 3] == ["fastdns worker 3", "fastdns-w3"]


def test_forked_child_environment(procs, tmp_path, sentinel_kind):
    """fork=True: what a fresh interpreter would not inherit is undone. Only
    stdio (and the liveness pipe) is open, stdin is /dev/null, the parent's
    Python signal handlers and wakeup fd are gone (an ignored signal stays
    ignored, as across execve), the held signals are blocked; the name is in
    comm (argv stays the parent's)."""
    out = tmp_path / "report.json"
    kept = open(tmp_path / "parent-file", "w")  # noqa: SIM115 - an fd the child must not get
    r, w = os.pipe()
    os.set_blocking(w, False)
    old_usr1 = signal.signal(signal.SIGUSR1, lambda *_: None)
    old_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    old_wake = signal.set_wakeup_fd(w)
    try:
        p = ChildProcess(_report, (_Spec(str(out), "forked"),), name="fastdns worker 4",
                         comm="fastdns-w4", hold_signals={signal.SIGUSR2}, fork=True)
        p.start()
        procs.append(p)
        p.join(20)
    finally:
        signal.set_wakeup_fd(old_wake)
        signal.signal(signal.SIGUSR1, old_usr1)
        signal.signal(signal.SIGHUP, old_hup)
        kept.close()
        os.close(r)
        os.close(w)
    assert p.forked and p.exitcode == 0
    got = json.loads(out.read_text())
    assert got["word"] == "forked" and got["ppid"] == os.getpid()
    assert got["fds"]["0"] == "/dev/null"
    extra = set(got["fds"]) - {"0", "1", "2"}
    assert len(extra) == (0 if sentinel_kind == "pidfd" else 1), got["fds"]
    assert got["comm"] == "fastdns-w4"
    h = got["handlers"]
    assert h[str(int(signal.SIGUSR1))] == str(signal.SIG_DFL)
    assert h[str(int(signal.SIGHUP))] == str(signal.SIG_IGN)
    assert h[str(int(signal.SIGINT))] == str(signal.default_int_handler)
    assert got["wakeup_fd"] == -1
    assert got["sigblk"] & (1 << (signal.SIGUSR2 - 1))
    assert signal.SIGUSR2 not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # ours again


def _close_without_proc(out: str) -> None:
    """``_close_fds`` as where /proc/self/fd cannot be read: by number."""
    gone, keep = os.pipe()
    real = os.listdir

    def unreadable(path):
        raise OSError("no /proc")

    os.listdir = unreadable
    try:
        childproc._close_fds({0, 1, 2, keep})
    finally:
        os.listdir = real
    def is_open(fd: int) -> bool:
        try:
            os.fstat(fd)
        except OSError:
            return False
        return True

    Path(out).write_text(json.dumps({"keep": is_open(keep), "gone": not is_open(gone),
                                     "stdio": all(map(is_open, (0, 1, 2)))}))


def test_close_fds_without_proc(procs, tmp_path):
    """In a child (forked, so the test's own fds are not at stake)."""
    out = tmp_path / "report.json"
    p = _start(procs, _close_without_proc, (str(out),), fork=True)
    p.join(20)
    assert p.exitcode == 0
    assert json.loads(out.read_text()) == {"keep": True, "gone": True, "stdio": True}


def test_fork_with_another_thread_starts_a_fresh_interpreter(procs, tmp_path):
    """A thread could hold a lock the forked child would inherit held."""
    import threading

    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)
    t.start()
    try:
        out = tmp_path / "report.json"
        p = ChildProcess(_report, (_Spec(str(out), "spawned"),), fork=True)
        p.start()
        procs.append(p)
        p.join(20)
    finally:
        stop.set()
        t.join()
    assert not p.forked and p.exitcode == 0
    assert "fastdns.server.childproc" in json.loads(out.read_text())["cmdline"]


def test_starts_from_another_directory(procs, tmp_path, monkeypatch):
    """A parent that found fastdns through a run-time sys.path entry (as here,
    pytest's `pythonpath`) still starts children from any directory."""
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.chdir(tmp_path)
    env = childproc._child_env()
    if env is not None:
        assert env["PYTHONPATH"].split(os.pathsep)[0] == str(Path(childproc.__file__)
                                                             .resolve().parents[2])
    p = _start(procs, os._exit, (5,))
    p.join(20)
    assert p.exitcode == 5


def test_misuse(procs):
    p = ChildProcess(os._exit, (0,))
    assert p.pid is None and p.exitcode is None and not p.is_alive()
    with pytest.raises(ValueError):
        p.join()
    p.start()
    procs.append(p)
    with pytest.raises(RuntimeError):
        p.start()
    # an argument that cannot be pickled fails in the parent, before any process
    q = ChildProcess(os._exit, (lambda: 0,))
    with pytest.raises(Exception, match="pickle"):
        q.start()
    assert q.pid is None


# -- `fastdns serve`: the process tree -----------------------------------------


def _children(pid: int) -> dict[int, str]:
    """{pid: state} of the processes whose parent is ``pid`` (scans /proc: the
    ``task/*/children`` files need CONFIG_PROC_CHILDREN)."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            status = Path(f"/proc/{d}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if int(fields["PPid"]) == pid:
            out[int(d)] = fields["State"].split()[0]
    return out


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.mark.slow
def test_serve_process_tree(tmp_path):
    """Supervisor + control + N workers, no resource tracker; a killed worker
    is reaped and replaced; SIGTERM exits 0 and leaves nothing in /dev/shm."""
    nworkers = 2
    port = free_port()
    (tmp_path / "Corefile").write_text(corefile_for(port))
    srv = Server(tmp_path, ["--demo", "--corefile", str(tmp_path / "Corefile"),
                            "--workers", str(nworkers)], port)
    try:
        srv.wait_answering()
        r = ask(KUBERNETES, port=port)
        assert r.rcode() == dns.rcode.NOERROR and a_records(r)
        sup = srv.proc.pid
        expected = {srv.pids("control")[-1]: "fastdns-ctl"}
        expected.update({srv.pids(f"worker {i}")[-1]: f"fastdns-w{i}" for i in range(nworkers)})
        kids = _children(sup)
        assert set(kids) == set(expected), {p: _cmdline(p) for p in kids}
        assert not any("resource_tracker" in _cmdline(p) or "multiprocessing" in _cmdline(p)
                       for p in kids)
        for pid, comm in expected.items():
            assert Path(f"/proc/{pid}/comm").read_text().strip() == comm
            assert _children(pid) == {}  # nothing below the children either
        assert Path(f"/proc/{sup}/comm").read_text().strip() == "fastdns"

        old = srv.pids("worker 0")[-1]
        os.kill(old, signal.SIGKILL)
        assert wait_for(lambda: len(srv.pids("worker 0")) == 2, 10.0), srv.log()[-2000:]
        assert wait_for(lambda: old not in _children(sup), 5.0)  # reaped, not a zombie
        kids = _children(sup)
        assert len(kids) == 1 + nworkers and "Z" not in kids.values(), kids
        assert f"worker 0 (pid {old}) died: signal SIGKILL" in srv.log()
        srv.wait_answering()
        inst = srv.instance
        assert srv.stop(signal.SIGTERM) == 0, srv.log()[-2000:]
        assert shm.list_segments(inst) == []
        assert not any(os.path.exists(f"/proc/{p}") for p in kids)
    finally:
        srv.stop_and_sweep(signal.SIGKILL)
