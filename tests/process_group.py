"""`fastdns serve` as the leader of its own process group, and a steady query stream.

For the tests of signals sent to the whole group (systemd's
``KillMode=control-group``, Ctrl-C in a terminal, an OOM kill of the pod):
``GroupServer`` starts the server in a new session, so ``os.killpg`` reaches
the supervisor, the control process and every worker, and nothing else.
``QueryStream`` sends UDP queries at a fixed rate from several source ports
(so every worker gets some, SO_REUSEPORT hashes the 4-tuple) and records
which were answered correctly, and when.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.message
import dns.rdatatype

from tests.helpers import ROOT, Server, _serve_env


class GroupServer(Server):
    """A `python3 -m fastdns serve` that leads its own session and process group.

    ``env`` is added to the environment (``FASTDNS_SHM_DIR``: segments in a
    directory of the test's own). ``prefix`` goes before the interpreter
    (``setsid -c`` to take a terminal as the controlling one).
    """

    def __init__(self, tmp: Path, args: list[str], port: int, *, name: str = "serve",
                 env: dict[str, str] | None = None, prefix: tuple[str, ...] = (),
                 stdio: int | None = None) -> None:
        self.tmp = tmp
        self.port = port
        self.log_path = tmp / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        out = self._log if stdio is None else stdio
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "fastdns", "serve", *args], cwd=ROOT,
            stdin=subprocess.DEVNULL if stdio is None else stdio, stdout=out,
            stderr=subprocess.STDOUT if stdio is None else stdio,
            env=dict(_serve_env(), **(env or {})), start_new_session=prefix == ())
        self.pgid = self.proc.pid

    def killpg(self, sig: int) -> None:
        os.killpg(self.pgid, sig)

    def children(self) -> list[int]:
        """Every control and worker pid the supervisor logged."""
        return [int(p) for p in re.findall(r"\] supervisor: (?:control|worker \d+) started "
                                           r"\(pid (\d+)\)", self.log())]

    def kill_group(self) -> None:
        """SIGKILL whatever is left of this group (a finalizer: our own processes only)."""
        if self.proc.poll() is None or any(alive(p) for p in self.children()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if not self._log.closed:
            self._log.close()


def alive(pid: int) -> bool:
    """A running process (not a zombie) with this pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class QueryStream(threading.Thread):
    """``rate`` A queries per second for ``name`` over ``nsocks`` UDP sockets.

    A query counts as answered when a response with its ID, NOERROR and
    exactly the A records ``want`` arrives within ``patience`` seconds.
    """

    def __init__(self, port: int, name: str, want: set[str], rate: float = 200.0,
                 nsocks: int = 8, patience: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.port, self.name, self.want = port, name, want
        self.interval = 1.0 / rate
        self.nsocks = nsocks
        self.patience = patience
        self.sent: list[float] = []  # send time by query number (= DNS ID)
        self.answered: dict[int, float] = {}
        self.wrong = 0
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(self.patience + 5)

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        socks = []
        for _ in range(self.nsocks):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            socks.append(s)
        template = dns.message.make_query(self.name, "A")
        try:
            next_at = time.monotonic()
            ends = None
            while ends is None or time.monotonic() < ends:
                if ends is None and self._halt.is_set():
                    ends = time.monotonic() + self.patience
                now = time.monotonic()
                if ends is None and now >= next_at and len(self.sent) < 65536:
                    qid = len(self.sent)
                    template.id = qid
                    self.sent.append(now)
                    with contextlib.suppress(OSError):  # ICMP port unreachable: lost
                        socks[qid % self.nsocks].sendto(template.to_wire(),
                                                        ("127.0.0.1", self.port))
                    next_at += self.interval
                wait = max(0.0, min(next_at - time.monotonic(), 0.05))
                for key, _ev in sel.select(wait):
                    self._drain(key.fileobj)
        finally:
            sel.close()
            for s in socks:
                s.close()

    def _drain(self, s: socket.socket) -> None:
        while True:
            try:
                data = s.recv(4096)
            except BlockingIOError:
                return
            except OSError:  # ECONNREFUSED from an earlier send
                continue
            got = time.monotonic()
            try:
                r = dns.message.from_wire(data)
            except Exception:  # noqa: BLE001 - a malformed answer is a wrong one
                self.wrong += 1
                continue
            addrs = {rr.address for rrset in r.answer if rrset.rdtype == dns.rdatatype.A
                     for rr in rrset}
            if (r.id < len(self.sent) and r.rcode() == 0 and addrs == self.want
                    and got - self.sent[r.id] <= self.patience):
                self.answered[r.id] = got
            else:
                self.wrong += 1

    def between(self, t0: float, t1: float) -> tuple[int, int]:
        """(sent, answered) for the queries sent within [t0, t1)."""
        ids = [i for i, t in enumerate(self.sent) if t0 <= t < t1]
        return len(ids), sum(1 for i in ids if i in self.answered)
