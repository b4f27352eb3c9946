"""A doorbell per worker: the control process tells the workers it published.

A worker looks for a new generation before each UDP batch, on each TCP
query, and otherwise on a slow timer (``worker.GENERATION_POLL``, 0.5 s). A
worker that gets no queries therefore keeps the generation it mapped at its
last poll for up to half a second, and under churn that pins a recent image:
the segment the next publish would be written into (the one before the
current: ``Publisher.buffer``) is held, so a third image-sized segment is
made, 51 MB of the pod's memory more at 10k Services and 150k endpoints and
a 35 ms fresh mapping on the event path, twice a second (bench/bench_kube.py,
issue 14).

So each worker binds a datagram socket in the abstract Unix namespace,
``\\0fastdns-<instance>-w<index>``, and the control process sends one octet to
each after every publish (``ring``): the worker then does what its timer
would (map the new generation, let the old one go) within a millisecond.
The bell carries nothing and needs no reply; a worker that is not there
(starting, restarting) or whose queue is full is skipped, and its timer
still moves it. Anyone in the pod's network namespace could ring it: all
that does is make a worker look at the control segment.
"""

from __future__ import annotations

import contextlib
import os
import socket

from fastdns.ipc import shm


def address(instance: str, index: int) -> bytes:
    """Worker ``index``'s bell in the abstract namespace (Linux)."""
    return b"\0" + f"{shm.PREFIX}{shm.check_instance(instance)}-w{index}".encode()


class Doorbell:
    """The worker's end: a non-blocking socket to watch for readability."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def bind(cls, instance: str, index: int) -> Doorbell | None:
        """The bell of worker ``index``; None where it cannot be had (another
        process holds the name, or no abstract namespace): the timer then."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            sock.bind(address(instance, index))
        except OSError:
            sock.close()
            return None
        return cls(sock)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> int:
        """Read every ring queued; how many there were."""
        n = 0
        while True:
            try:
                self.sock.recv(16)
            except (BlockingIOError, InterruptedError):
                return n
            except OSError:
                return n
            n += 1

    def close(self) -> None:
        self.sock.close()


class Ringer:
    """The control process's end: one unbound socket for every worker's bell."""

    def __init__(self, instance: str, nworkers: int) -> None:
        self.addresses = [address(instance, i) for i in range(nworkers)]
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setblocking(False)

    def ring(self) -> int:
        """One octet to each worker's bell; how many took it."""
        rung = 0
        for addr in self.addresses:
            with contextlib.suppress(OSError):  # not there, or its queue is full
                self.sock.sendto(b"\1", addr)
                rung += 1
        return rung

    def close(self) -> None:
        self.sock.close()


def available() -> bool:
    """Whether this system has the abstract Unix namespace (Linux)."""
    return os.uname().sysname == "Linux"
