"""Handing the UDP sockets over to the instance that replaces this one, without losing a query.

A DaemonSet rolling update with ``maxSurge: 1, maxUnavailable: 0`` starts
the new node-local pod while the old one still runs: both bind the node's
addresses with SO_REUSEPORT (every worker of both instances is in one
reuseport group per address), and the kernel hashes each datagram to one
socket of the group. When the old pod stops, whatever its sockets hold is
lost with them, and until they are closed the hash keeps sending them a
share of the new datagrams: the 0.01-0.02 % lost per planned restart of
kubernetes/dns#617.

So a stopping worker first *connects* each UDP socket to a peer that never
sends (the discard port of its own address). The kernel's reuseport
selection skips connected sockets (net/core/sock_reuseport.c,
``reuseport_select_sock_by_hash``: a TCP_ESTABLISHED member is passed
over; udp4_lib_lookup2 falls back to scoring, where a connected socket
only matches its peer), so from that instant every new datagram goes to the
other instance's sockets, while the datagrams already queued on ours stay
readable. The worker keeps reading and answering until its queues are
empty and its forwarded queries are answered (at most ``DRAIN_MAX``), then
closes. A connected UDP socket still sends to any address given to
``sendto``/``sendmmsg``, so the answers go out as before. No classic BPF
program (SO_ATTACH_REUSEPORT_CBPF) is needed: it would have to know each
socket's index in the group, which a new instance's binds and an old one's
closes move, while a connected socket steps out of the hash by itself.

When no other instance holds the address (a plain restart), the kernel
finds no socket for a new datagram and answers ICMP port unreachable, so a
client fails over to its next server at once instead of timing out; what
was queued is still answered. TCP listeners are closed as before: set the
node's ``net.ipv4.tcp_migrate_req=1`` (Linux 5.14) and the kernel moves the
connections waiting in a closed listener's accept queue to another
listener of the group (README, "Node-local DNS cache").
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import struct
import termios
from collections.abc import Callable, Iterable

log = logging.getLogger("fastdns.server.worker")

DISCARD_PORT = 9  # RFC 863: nothing answers from it, so the connected socket hears nothing new
DRAIN_MAX = 2.0  # s: the most a stopping worker spends answering what it still holds
QUIET = 0.05  # s: empty queues and no forwarded query pending for this long: done
STEP = 0.005  # s between looks at the queues
OFF_ENV = "FASTDNS_NO_HANDOVER"  # "1": close at once (benchmarks of the old behaviour)

_WILDCARD = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}


def detach(sock: socket.socket) -> bool:
    """Take ``sock`` out of its reuseport group's hash (connect it to a silent
    peer); False when it cannot be (it is then closed as before)."""
    try:
        host = sock.getsockname()[0]
        if host in ("0.0.0.0", "::"):
            host = _WILDCARD[sock.family]
        sock.connect((host, DISCARD_PORT))
    except (OSError, KeyError) as e:
        log.debug("handover: %s stays in the hash: %s", sock, e)
        return False
    return True


def queued(sock: socket.socket) -> int:
    """The size of the next datagram waiting on ``sock`` (SIOCINQ); 0 when none."""
    try:
        got = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return struct.unpack("i", got)[0]


async def drain(socks: Iterable[socket.socket], pending: Callable[[], int]) -> int:
    """Detach ``socks`` and wait, reading on, until nothing is queued on them and
    ``pending()`` (forwarded queries not yet answered) is 0 for ``QUIET``, at
    most ``DRAIN_MAX``; returns how many sockets were detached."""
    if os.environ.get(OFF_ENV) == "1":
        return 0
    held = [s for s in socks if s.fileno() >= 0 and detach(s)]
    if not held:
        return 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_MAX
    quiet_since: float | None = None
    while (now := loop.time()) < deadline:
        busy = pending() > 0 or any(queued(s) for s in held)
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= QUIET:
            break
        await asyncio.sleep(STEP)
    return len(held)
