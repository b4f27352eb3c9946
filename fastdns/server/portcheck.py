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
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(family, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # sockets.bind_udp/bind_tcp
        if proto == "tcp":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(sockaddr(address, port))


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
