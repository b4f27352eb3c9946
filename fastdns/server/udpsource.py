"""UDP replies from the address the query was sent to, on wildcard sockets.

A socket bound to 0.0.0.0 or :: takes queries for every local address, but a
plain ``sendto`` lets the kernel pick the reply's source from the route to
the client. On a host with several addresses (a node, a hostNetwork pod,
``.:53`` without ``bind``) that may be another address than the one asked,
and stub resolvers drop such a reply: glibc (``resolv/res_send.c``,
``res_ourserver_p``) waits out its timeout, dnspython raises
UnexpectedSource. CoreDNS answers every query from its destination
(miekg/dns ``udp.go``: ``setUDPSocketOptions`` turns on the IPv4 and IPv6
packet-info control messages, ``ReadFromSessionUDP`` keeps them with the
query, ``correctSource`` makes the destination the reply's source, and
``WriteToSessionUDP`` sends it with ``WriteMsgUDP``); fastdns does the same.

Only wildcard sockets pay for it: a socket bound to one address already
replies from it. The Cython fast path reads and rewrites the control
messages in C (``_udp.pyx`` ``_reply_cmsg``); this module is the Python
side of the same rule (the pure-Python UDP path, and answers the slow path
sends later).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

# <linux/in.h>; the socket module names it from Python 3.12 on only
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IN_PKTINFO = 12  # struct in_pktinfo: ifindex, spec_dst, addr (ip(7))
_IN6_PKTINFO = 20  # struct in6_pktinfo: addr, ifindex (ipv6(7), RFC 3542 §6.1)
ANCBUFSIZE = socket.CMSG_SPACE(_IN6_PKTINFO)  # recvmsg's room for either
_NO_IFINDEX = b"\x00\x00\x00\x00"

Ancillary = Sequence[tuple[int, int, bytes]]  # (level, type, data) items for sendmsg


def is_wildcard(address: str) -> bool:
    """Whether a listen address is "every local address" (0.0.0.0, ::)."""
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_unspecified
    except ValueError:
        return False


def enable(sock: socket.socket) -> None:
    """Have the kernel hand every datagram's destination to recvmsg (ip(7)
    IP_PKTINFO, ipv6(7) IPV6_RECVPKTINFO)."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)


def reply_ancillary(ancdata) -> Ancillary:
    """The ancillary data that sends a reply from the query's destination,
    from what ``recvmsg`` gave with the query: its packet-info message with
    interface index 0, so the route picks the interface (CoreDNS's
    ``correctSource`` leaves it unset too). IPv4 replies from ``ipi_spec_dst``
    (the local address the kernel computed for the query: its destination
    when that is a unicast address of this host); IPv6 from ``ipi6_addr``,
    except a multicast one, which no reply can come from. Empty: let the
    kernel pick, as without packet info."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _IN_PKTINFO:
            return [(level, kind, _NO_IFINDEX + bytes(data[4:_IN_PKTINFO]))]
        if (level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO
                and len(data) >= _IN6_PKTINFO and data[0] != 0xFF):
            return [(level, kind, bytes(data[:16]) + _NO_IFINDEX)]
    return []


def send(sock: socket.socket, resp: bytes, addr, anc: Ancillary) -> None:
    """Send one reply, from the query's destination when ``anc`` names it.

    Raises OSError as ``sendto`` does (a full buffer, a firewall, an address
    removed since the query came): the caller counts it and UDP drops it.
    """
    if anc:
        sock.sendmsg([resp], anc, 0, addr)
    else:
        sock.sendto(resp, addr)
