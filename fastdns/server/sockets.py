"""The worker's listening sockets: how one (address, port) is bound.

Every worker binds every listen address itself with SO_REUSEPORT, so the
kernel spreads clients over workers and a dead worker takes only its own
sockets with it (``socket(7)``). The supervisor's pre-check
(``portcheck.py``) binds with the same options and words a failure the
same way (``fastdns.names.host_port``), so a clash is reported alike from either side.
Both the worker's start and its reload (a listen address added by a new
Corefile) bind through here.
"""

from __future__ import annotations

import errno
import socket

from fastdns.server import udpsource

UDP, TCP = 0, 1  # the proto index of the counters (ipc/layout.py PROTOS)
UDP_RCVBUF = 4 << 20  # octets asked for; the kernel caps it at net.core.rmem_max
# An IPv6 wildcard on a host without IPv6: optional when IPv4 is listened on too
NO_IPV6 = frozenset({errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT})

SockAddr = tuple[str, int] | tuple[str, int, int, int]


def family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def family_label(af: int) -> int:
    """The ``family`` index of the counters (1: IPv4, 2: IPv6), as CoreDNS labels it."""
    return 2 if af == socket.AF_INET6 else 1


def sockaddr(address: str, port: int) -> SockAddr:
    """What ``bind`` takes for ``address``; ``[:2]`` of it is what ``getsockname`` gives."""
    return (address, port, 0, 0) if ":" in address else (address, port)


def bind_udp(address: str, port: int) -> socket.socket:
    af = family_of(address)
    sock = socket.socket(af, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if af == socket.AF_INET6:
            # "::" must not also take the IPv4 port another listen entry binds
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
        except OSError:
            pass
        if udpsource.is_wildcard(address):
            udpsource.enable(sock)  # before bind: no query arrives without its destination
        sock.bind(sockaddr(address, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_tcp(address: str, port: int) -> socket.socket:
    af = family_of(address)
    sock = socket.socket(af, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if af == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr(address, port))
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
