"""Signals to the whole process group: the supervisor alone decides (issue 12).

systemd's default ``KillMode=control-group``, Ctrl-C in a terminal and an
init that forwards signals all send SIGTERM/SIGINT to every process of
``fastdns serve``. The workers must go on answering through health's
``lameduck`` (``fastdns/procsignals.py``); a second signal cuts it short;
the exit status is 0 and no segment is left in /dev/shm.
"""

from __future__ import annotations

import os
import pty
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from fastdns.ipc import shm
from fastdns.server.childproc import ChildProcess
from tests.helpers import (
    KUBERNETES,
    a_records,
    ask,
    corefile_for,
    free_port,
    http_get,
    wait_for,
)
from tests.process_group import GroupServer, QueryStream, alive

WANT = {"10.96.0.1"}  # kubernetes.default in the demo cluster


def _lameduck_corefile(tmp: Path, port: int, lameduck: str) -> tuple[Path, str]:
    ready_port = free_port(v6=False)
    extra = (f"    health 127.0.0.1:{free_port(v6=False)} {{\n        lameduck {lameduck}\n    }}\n"
             f"    ready 127.0.0.1:{ready_port}\n")
    path = tmp / "Corefile"
    path.write_text(corefile_for(port, extra=extra))
    return path, f"http://127.0.0.1:{ready_port}/ready"


@pytest.fixture
def group_servers():
    """Every GroupServer a test starts; SIGKILLed as a group and swept afterwards."""
    started: list[GroupServer] = []
    yield started
    for srv in started:
        srv.kill_group()
        inst = _instance(srv)
        if inst:
            shm.sweep(inst)


def _instance(srv: GroupServer) -> str | None:
    try:
        return srv.instance
    except AssertionError:
        return None


@pytest.mark.slow
def test_group_sigterm_serves_through_lameduck(tmp_path, group_servers):
    """SIGTERM to every process: DNS answered for the whole lameduck, /ready 503
    meanwhile, then exit 0 and nothing left in /dev/shm."""
    lameduck = 2.0
    port = free_port()
    corefile, ready = _lameduck_corefile(tmp_path, port, f"{lameduck:g}s")
    srv = GroupServer(tmp_path, ["--corefile", str(corefile), "--demo", "--workers", "2"], port)
    group_servers.append(srv)
    srv.wait_answering()
    assert wait_for(lambda: http_get(ready, timeout=1)[0] == 200, 10.0)
    inst = srv.instance
    children = srv.children()
    assert len(children) == 3 and all(alive(p) for p in children)

    stream = QueryStream(port, KUBERNETES, WANT)
    stream.start()
    time.sleep(1.0)
    t_kill = time.monotonic()
    srv.killpg(signal.SIGTERM)
    assert wait_for(lambda: http_get(ready, timeout=0.5)[0] == 503, 1.0, step=0.02), srv.log()
    t_503 = time.monotonic()
    rc = srv.proc.wait(lameduck + 10)
    t_exit = time.monotonic()
    stream.stop()

    assert rc == 0, srv.log()[-3000:]
    sent, answered = stream.between(t_kill, t_kill + lameduck)
    before_sent, before_answered = stream.between(t_kill - 1.0, t_kill)
    after_503 = stream.between(t_503, t_kill + lameduck)
    share = answered / sent if sent else 0.0
    print(f"\ngroup SIGTERM, lameduck {lameduck:g}s: {answered}/{sent} queries sent during "
          f"lameduck answered ({100 * share:.2f}%); before it {before_answered}/{before_sent}; "
          f"/ready 503 after {t_503 - t_kill:.3f}s; exit {rc} after {t_exit - t_kill:.2f}s")
    assert sent >= 100
    assert share >= 0.90, srv.log()[-3000:]
    assert after_503[1] > 0  # DNS answered while /ready said 503
    assert lameduck <= t_exit - t_kill < lameduck + 6
    assert stream.wrong == 0
    log = srv.log()
    assert "SIGTERM: shutting down" in log and "going into lameduck mode for 2s" in log
    assert " died: " not in log  # no child stopped, none was restarted
    assert shm.list_segments(inst) == []
    assert wait_for(lambda: not any(alive(p) for p in children), 5.0)


@pytest.mark.slow
@pytest.mark.parametrize("second", ["supervisor-SIGTERM", "group-SIGINT"])
def test_second_signal_cuts_lameduck_short(tmp_path, group_servers, second):
    """kubeadm's `lameduck 5s`; a second signal 0.5 s into it ends it at once, exit 0.
    SIGUSR1 and SIGHUP to the group first: a reload and nothing, no child killed."""
    port = free_port()
    corefile, ready = _lameduck_corefile(tmp_path, port, "5s")
    srv = GroupServer(tmp_path, ["--corefile", str(corefile), "--demo", "--workers", "2"], port)
    group_servers.append(srv)
    srv.wait_answering()
    inst = srv.instance
    children = srv.children()
    srv.killpg(signal.SIGUSR1)  # CoreDNS's reload signal, here to the whole group
    srv.killpg(signal.SIGHUP)
    time.sleep(0.5)
    assert all(alive(p) for p in children), srv.log()[-2000:]
    assert a_records(ask(KUBERNETES, port=port)) == WANT

    stream = QueryStream(port, KUBERNETES, WANT)
    stream.start()
    time.sleep(0.3)
    t_kill = time.monotonic()
    srv.killpg(signal.SIGTERM)
    time.sleep(0.5)
    t_second = time.monotonic()
    if second == "supervisor-SIGTERM":
        os.kill(srv.proc.pid, signal.SIGTERM)
    else:
        srv.killpg(signal.SIGINT)  # Ctrl-C twice
    rc = srv.proc.wait(10)
    t_exit = time.monotonic()
    stream.stop()
    assert rc == 0, srv.log()[-3000:]
    sent, answered = stream.between(t_kill, t_second)
    print(f"\n{second} 0.5s into a 5s lameduck: exit {rc} {t_exit - t_second:.2f}s later; "
          f"{answered}/{sent} queries between the two signals answered")
    assert t_exit - t_kill < 3.0  # well before the 5 s
    assert sent >= 50 and answered / sent >= 0.90
    log = srv.log()
    assert "lameduck cut short" in log, log[-2000:]
    assert " died: " not in log
    assert shm.list_segments(inst) == []
    assert wait_for(lambda: not any(alive(p) for p in children), 5.0)
    assert http_get(ready, timeout=0.5)[0] == 0  # nothing listens any more


DEMO_PORT = 1053  # the built-in demo Corefile's (README quick start)


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_stops_the_demo_at_once(tmp_path, group_servers):
    """`fastdns serve --demo` in a terminal, then Ctrl-C: the tty sends SIGINT to
    the whole foreground group; no lameduck in the demo, so exit 0 promptly."""
    if shutil.which("setsid") is None:
        pytest.skip("setsid (util-linux) is not installed")
    if not wait_for(lambda: _port_free(DEMO_PORT), 20.0, step=0.5):
        pytest.skip(f"port {DEMO_PORT} (the demo Corefile's) is in use")
    master, slave = pty.openpty()
    out = bytearray()
    reader = threading.Thread(target=_read_all, args=(master, out), daemon=True)
    try:
        # setsid -c: a new session whose controlling terminal is the pty, as a shell gives
        srv = GroupServer(tmp_path, ["--demo"], DEMO_PORT, prefix=("setsid", "-c"),
                          stdio=slave)
        group_servers.append(srv)
        os.close(slave)
        slave = -1
        reader.start()
        deadline = time.monotonic() + 30
        while b"supervisor: serving " not in out and time.monotonic() < deadline:
            assert srv.proc.poll() is None, bytes(out).decode(errors="replace")
            time.sleep(0.05)
        assert os.getpgid(srv.proc.pid) == srv.proc.pid == os.tcgetpgrp(master)
        assert a_records(ask(KUBERNETES, port=DEMO_PORT)) == WANT
        text = bytes(out).decode(errors="replace")
        inst = text.split("shm instance ", 1)[1].split()[0]
        t0 = time.monotonic()
        os.write(master, b"\x03")  # Ctrl-C: the line discipline signals the group
        rc = srv.proc.wait(10)
        took = time.monotonic() - t0
        reader.join(5)
        text = bytes(out).decode(errors="replace")
        print(f"\nCtrl-C on `fastdns serve --demo`: exit {rc} after {took:.2f}s")
        assert rc == 0, text
        assert "SIGINT: shutting down" in text and "lameduck" not in text, text
        assert took < 3.0
        assert shm.list_segments(inst) == []
    finally:
        if slave >= 0:
            os.close(slave)
        reader.join(5)
        os.close(master)


def _port_free(port: int) -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False


def _read_all(fd: int, out: bytearray) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: every process holding the pty's other side is gone
            return
        if not chunk:
            return
        out += chunk


# -- the launcher: a signal that lands while a child boots waits for its handlers --------


def _report_signals(path: str) -> None:
    """In the child: what is blocked and pending now; then ignore SIGTERM and unblock."""
    status = Path("/proc/self/status").read_text()
    Path(path).write_text(status)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _mask(status: str, field: str) -> set[int]:
    bits = int(next(line for line in status.splitlines() if line.startswith(field)).split()[1],
               16)
    return {n + 1 for n in range(64) if bits >> n & 1}


def test_held_signals_wait_for_the_child(tmp_path):
    """ChildProcess(hold_signals=...): SIGTERM sent right after the fork is pending,
    not fatal, until the child's code unblocks it."""
    out = tmp_path / "status"
    p = ChildProcess(_report_signals, (str(out),), name="held", hold_signals={signal.SIGTERM})
    p.start()
    try:
        os.kill(p.pid, signal.SIGTERM)  # long before the interpreter is up
        p.join(20)
        assert p.exitcode == 0
        status = out.read_text()
        assert signal.SIGTERM in _mask(status, "SigBlk:")
        assert signal.SIGTERM in _mask(status, "ShdPnd:") | _mask(status, "SigPnd:")
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # ours again
    finally:
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
            p.join(5)
        p.close()
