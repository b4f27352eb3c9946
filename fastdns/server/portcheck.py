"""Can every listen address be bound? Asked once, before any child starts.

A bind error inside a worker is a worker that died at startup, reported
as an exit code. The supervisor therefore tries each (address, port)
itself first, for UDP and TCP, with the socket options the workers use
(SO_REUSEPORT, as CoreDNS binds on Linux: a second server of the same UID
may share the port, which is what a surge rollout on the host network
needs), and on failure says in one line what CoreDNS says (``listen udp
0.0.0.0:53: bind: address already in use``) plus who holds the port, read
from ``/proc/net/{udp,tcp}{,6}`` and the owners of those socket inodes
under ``/proc/*/fd``.
"""

from __future__ import annotations

import errno
import os
import socket

from fastdns.names import host_port
from fastdns.server.sockets import NO_IPV6, sockaddr

_TCP_LISTEN = "0A"  # include/net/tcp_states.h TCP_LISTEN, as /proc/net/tcp prints it


class BindError(Exception):
    """A listen address that cannot be bound; str is the operator's one line."""


def _try(proto: str, address: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    if proto == "udp":
        _try_udp(family, address, port)
        return
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # sockets.bind_udp/bind_tcp
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(sockaddr(address, port))  # bound, never listening: it takes no connection


def _try_udp(family: int, address: str, port: int) -> None:
    """A UDP probe that never joins a live reuseport group.

    A SO_REUSEPORT socket bound beside a serving one takes its share of the
    queries until it closes, and those queries are lost. That is what a surge
    rollout's new server would do to the old one while checking the port
    (tests/e2e/test_handover.py lost a few queries in one try out of ten).
    So the probe binds without SO_REUSEPORT. Where that succeeds, the port is
    free. Where it is in use, the holder may be a server this one is meant to
    share it with. The answer is then left to the TCP probe and the workers'
    own bind, which words a failure the same way (listeners._bind_failed).
    That holds only when every holder /proc shows is a fastdns process. Any
    other holder is reported here, as before.
    """
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            s.bind(sockaddr(address, port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            who = holders("udp", port)
            if not who or not all(_is_fastdns(pid) for pid, _comm in who):
                raise


def _is_fastdns(pid: int) -> bool:
    """Whether process ``pid`` is a ``fastdns serve`` (its command line says so)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"fastdns\x00serve\x00" in f.read()  # python3 -m fastdns serve, its workers
    except OSError:
        return False


def socket_inodes(proto: str, port: int) -> set[str]:
    """Inodes of the ``proto`` sockets bound to local ``port`` (TCP: listening)."""
    inodes: set[str] = set()
    for table in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) < 10:
                        continue
                    local, state, inode = fields[1], fields[3], fields[9]
                    if int(local.rsplit(":", 1)[1], 16) != port or inode == "0":
                        continue
                    if proto == "tcp" and state != _TCP_LISTEN:
                        continue
                    inodes.add(inode)
        except (OSError, ValueError, IndexError):
            continue
    return inodes


def holders(proto: str, port: int) -> list[tuple[int, str]]:
    """(pid, command name) of the processes holding ``proto`` ``port``, as far as
    /proc lets this process see (other users' fds need root)."""
    wanted = {f"socket:[{i}]" for i in socket_inodes(proto, port)}
    found: list[tuple[int, str]] = []
    if not wanted:
        return found
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    with open(f"/proc/{pid}/comm") as f:
                        found.append((int(pid), f.read().strip()))
                    break
            except OSError:
                continue
    return sorted(found)


def _holder_text(proto: str, port: int) -> str:
    who = holders(proto, port)
    if who:
        return "; held by " + ", ".join(f"pid {pid} ({comm})" for pid, comm in who[:4])
    if socket_inodes(proto, port):
        return "; held by a process this user cannot see"
    return ""


def check_listen(listen: tuple[tuple[str, int], ...]) -> None:
    """Raise BindError for the first (address, port) that UDP or TCP cannot bind."""
    for address, port in listen:
        for proto in ("udp", "tcp"):
            try:
                _try(proto, address, port)
            except OSError as e:
                if address == "::" and e.errno in NO_IPV6 and len(listen) > 1:
                    break  # the worker logs that it skips [::]
                reason = (e.strerror or str(e)).lower()
                hint = ""
                if e.errno == errno.EADDRINUSE:
                    hint = _holder_text(proto, port)
                elif e.errno == errno.EACCES and port < 1024:
                    hint = f"; port {port} needs root or CAP_NET_BIND_SERVICE"
                elif e.errno == errno.EADDRNOTAVAIL:
                    hint = "; no interface of this host has that address"
                raise BindError(
                    f"listen {proto} {host_port(address, port)}: bind: {reason}{hint}") from None
