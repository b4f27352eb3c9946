"""timeouts (plugin/timeouts/timeouts.go and timeouts_test.go): the Corefile
lines CoreDNS accepts and refuses, and what they do to a served TCP
connection: ``idle`` closes a quiet connection, ``maxtcpqueries`` closes one
after its last allowed answer, and a reload without the plugin restores the
defaults."""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import time

import dns.message
import pytest

from fastdns.corefile import config as corefile
from fastdns.corefile.errors import CorefileError
from fastdns.corefile.verdict import problems
from tests.helpers import DEMO, KUBERNETES, Server, free_port, wait_for


def parse(body: str):
    text = f".:53 {{\n    timeouts {body}\n    whoami\n}}\n"
    return corefile.parse_corefile(text, "Corefile").servers[0].plugins["timeouts"]


@pytest.mark.parametrize("body, want", [
    ("{\n read 30s\n }", {"read": 30.0}),
    ("{\n read 1m\n write 2m\n }", {"read": 60.0, "write": 120.0}),
    ("{\n idle 1h\n }", {"idle": 3600.0}),
    ("{\n read 10\n }", {"read": 10.0}),  # durations.NewDurationFromArg: plain seconds
    ("{\n maxtcpqueries 128\n }", {"maxtcpqueries": 128}),
    ("{\n maxtcpqueries -1\n idle 5s\n }", {"maxtcpqueries": -1, "idle": 5.0}),
])
def test_accepted(body, want):
    conf = parse(body)
    assert {k: getattr(conf, k) for k in want} == want


@pytest.mark.parametrize("body, message", [
    ("", "timeouts block with no timeouts specified"),
    ("{\n }", "timeouts block with no timeouts specified"),
    ("30s {\n read 1s\n }", "wrong argument count"),
    ("{\n read\n }", "wrong argument count"),
    ("{\n read 0.5s\n }", "needs to be between 1 second and 24 hours"),
    ("{\n idle 25h\n }", "needs to be between 1 second and 24 hours"),
    ("{\n read abc\n }", 'time: invalid duration "abc"'),
    ("{\n reed 3s\n }", "unknown option: 'reed'"),
    ("{\n maxtcpqueries 0\n }", "needs to be -1 (unlimited) or a positive integer"),
    ("{\n maxtcpqueries -2\n }", "needs to be -1 (unlimited) or a positive integer"),
    ("{\n maxtcpqueries x\n }", "invalid value for maxtcpqueries 'x'"),
])
def test_refused(body, message):
    with pytest.raises(CorefileError) as e:
        parse(body)
    assert message in str(e.value) and "plugin timeouts:" in str(e.value), str(e.value)


def test_two_blocks_must_agree():
    one = "    timeouts {\n        idle 5s\n    }\n"
    two = "    timeouts {\n        idle 7s\n    }\n"
    text = f"a.test:53 {{\n{one}    whoami\n}}\nb.test:54 {{\n{one}    whoami\n}}\n"
    assert problems(corefile.parse_corefile(text, "C")) == []  # the same setting twice
    text = f"a.test:53 {{\n{one}    whoami\n}}\nb.test:54 {{\n{two}    whoami\n}}\n"
    [p] = problems(corefile.parse_corefile(text, "C"))
    assert str(p).startswith("C:8: plugin timeouts: differs from the timeouts at C:2")


def frame(name: str, qid: int) -> bytes:
    q = dns.message.make_query(name, "A")
    q.id = qid
    w = q.to_wire()
    return struct.pack(">H", len(w)) + w


def read_answers(s: socket.socket, deadline: float) -> tuple[list[int], bool]:
    """(ids of the answers read, whether the server closed) until ``deadline``."""
    buf, ids = b"", []
    s.settimeout(0.1)
    while time.monotonic() < deadline:
        try:
            got = s.recv(65535)
        except TimeoutError:
            continue
        if not got:
            return ids, True
        buf += got
        while len(buf) >= 2 and len(buf) >= 2 + struct.unpack(">H", buf[:2])[0]:
            n = struct.unpack(">H", buf[:2])[0]
            ids.append(dns.message.from_wire(buf[2:2 + n]).id)
            buf = buf[2 + n:]
    return ids, False


@pytest.fixture
def server(tmp_path):
    port = free_port()
    cf = tmp_path / "Corefile"
    cf.write_text(f".:{port} {{\n    bind 127.0.0.1\n    timeouts {{\n        idle 1s\n"
                  f"        maxtcpqueries 2\n    }}\n    kubernetes cluster.local\n}}\n")
    srv = Server(tmp_path, ["--corefile", str(cf), "--state", str(DEMO), "--workers", "1"], port)
    srv.corefile = cf
    srv.wait_answering()
    yield srv
    srv.stop_and_sweep()


def test_maxtcpqueries_closes_after_the_last_allowed_answer(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(frame(KUBERNETES, 1) + frame(KUBERNETES, 2) + frame(KUBERNETES, 3))
        ids, closed = read_answers(s, time.monotonic() + 3)
    assert ids == [1, 2] and closed


def test_idle_closes_a_quiet_connection(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(frame(KUBERNETES, 7))
        t0 = time.monotonic()
        ids, closed = read_answers(s, t0 + 6)
        took = time.monotonic() - t0
    assert ids == [7] and closed and 0.8 < took < 3.0, took  # CoreDNS's default is 10 s


def test_a_reload_without_timeouts_restores_the_defaults(server):
    text = server.corefile.read_text()
    start, end = text.index("    timeouts"), text.index("    kubernetes")
    server.corefile.write_text(text[:start] + text[end:])
    os.kill(server.proc.pid, signal.SIGUSR1)  # CoreDNS's reload signal
    in_force = re.compile(r"worker 0: Corefile version \d+ in force")
    assert wait_for(lambda: in_force.search(server.log()), timeout=8), server.log()[-2000:]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(frame(KUBERNETES, 1) + frame(KUBERNETES, 2) + frame(KUBERNETES, 3))
        ids, closed = read_answers(s, time.monotonic() + 2)
    assert ids == [1, 2, 3] and not closed  # no bound, and open well past 1 s
