"""A small authoritative DNS server on loopback for forwarder and cache tests.

Runs inside the test's event loop (UDP and TCP on 127.0.0.1, one ephemeral
port for both) and answers from a dict of records built with dnspython.
Knobs, changeable while it runs: ``delay`` (seconds before each answer),
``drop`` (answer nothing), ``tc_udp`` (UDP answers are header+question with
TC), ``spoof`` (before the real answer, send one with a wrong ID and one
with a wrong question, both carrying ``SPOOF_ADDR``; ``"only"``: and no real
answer), ``servfail``,
``negative_soa`` (False: NXDOMAIN/NODATA without the SOA); over TCP
``tcp_hold`` (hold the answers on a connection until that many queries are
unanswered on it, then answer them newest first: proves pipelining and
out-of-order answers, RFC 7766 §6.2.1.1) and ``tcp_close_after`` (the first
connection to receive its Nth query is closed, that query unanswered, and
the knob goes back to 0). It counts the queries
it received per transport (and ``tcp_connections``, ``tcp_max_pending``:
the most queries seen unanswered on one connection) and keeps the last ones.
TCP queries are answered concurrently, each after ``delay``.

    async with TestUpstream({"www.example.test.": [("A", "192.0.2.1")]}) as up:
        up.addr   # "127.0.0.1:PORT"
"""

from __future__ import annotations

import asyncio
import struct
from collections import Counter, deque
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

SPOOF_ADDR = "6.6.6.6"


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: TestUpstream) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.server._spawn(self.server._udp(self.transport, data, addr))


class TestUpstream:
    """Authoritative test server; ``records`` maps owner -> [(type, rdata text), ...]."""

    __test__ = False  # not a pytest class

    def __init__(self, records: dict[str, list[tuple[str, str]]] | None = None, *,
                 zone: str = "example.test.", ttl: int = 300, soa_ttl: int = 3600,
                 soa_minimum: int = 60, host: str = "127.0.0.1", port: int = 0,
                 tls: Any = None) -> None:
        self.zone = dns.name.from_text(zone)
        self.ttl = ttl
        self.host = host
        self.port = port
        self.tls = tls
        self.delay = 0.0
        self.drop = False
        self.tc_udp = False
        self.spoof: bool | str = False
        self.servfail = False
        self.negative_soa = True
        self.tcp_hold = 0
        self.tcp_close_after = 0
        self.tcp_connections = 0
        self.tcp_max_pending = 0
        self.counts: Counter[str] = Counter()  # "udp" / "tcp" -> queries received
        self.queries: deque[tuple[str, str, int, int, tuple]] = deque(maxlen=1000)
        self._records: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
        self._names: set[dns.name.Name] = set()
        self._soa = dns.rrset.from_text(
            self.zone, soa_ttl, "IN", "SOA",
            f"ns1.{zone} hostmaster.{zone} 1 7200 1800 86400 {soa_minimum}")
        self.set_records(records or {})
        self._udp_transport: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    # -- records

    def set_records(self, records: dict[str, list[tuple[str, str]]], ttl: int | None = None):
        self._records.clear()
        self._names.clear()
        for owner, rrs in records.items():
            name = dns.name.from_text(owner)
            self._names.add(name)
            for rtype, text in rrs:
                rdtype = dns.rdatatype.from_text(rtype)
                rrset = self._records.get((name, rdtype))
                if rrset is None:
                    rrset = self._records[(name, rdtype)] = dns.rrset.RRset(
                        name, dns.rdataclass.IN, rdtype)
                rrset.add(dns.rrset.from_text(name, ttl or self.ttl, "IN", rtype, text)[0],
                          ttl or self.ttl)

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def total(self) -> int:
        return sum(self.counts.values())

    def count(self, qname: str, proto: str | None = None) -> int:
        """Queries received for ``qname`` (case-insensitive), optionally per transport."""
        want = dns.name.from_text(qname)
        return sum(1 for p, n, _t, _id, _src in self.queries
                   if dns.name.from_text(n) == want and (proto is None or p == proto))

    # -- lifecycle

    async def start(self) -> TestUpstream:
        loop = asyncio.get_running_loop()
        wanted = self.port
        for attempt in range(20):
            # tls: an ssl.SSLContext: the TCP port speaks DNS over TLS (RFC 7858)
            server = await asyncio.start_server(self._tcp_client, self.host, wanted,
                                                ssl=self.tls)
            port = server.sockets[0].getsockname()[1]
            try:
                self._udp_transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Udp(self), local_addr=(self.host, port))
            except OSError:
                server.close()
                await server.wait_closed()
                if wanted or attempt == 19:
                    raise
                continue  # the TCP port's UDP twin is taken: another ephemeral port
            self._tcp_server, self.port = server, port
            return self
        raise AssertionError("unreachable")

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._udp_transport is not None:
            self._udp_transport.close()
        if self._tcp_server is not None:
            self._tcp_server.close()
        for w in list(self._writers):
            w.close()
        if self._tcp_server is not None:
            await self._tcp_server.wait_closed()
        await asyncio.sleep(0)

    async def __aenter__(self) -> TestUpstream:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- answering

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        """The authoritative answer to ``query`` (also usable without sockets)."""
        resp = dns.message.make_response(query)
        resp.flags |= dns.flags.AA
        if self.servfail:
            resp.flags &= ~dns.flags.AA
            resp.set_rcode(dns.rcode.SERVFAIL)
            return resp
        qn = query.question[0]
        name, rdtype = qn.name, qn.rdtype
        if name == dns.name.root and rdtype == dns.rdatatype.NS:
            resp.answer.append(dns.rrset.from_text(".", 518400, "IN", "NS", f"ns1.{self.zone}"))
            return resp
        rrset = self._records.get((name, rdtype))
        if rrset is not None:
            out = dns.rrset.RRset(name, rrset.rdclass, rrset.rdtype)  # owner in query case
            out.update(rrset)
            out.ttl = rrset.ttl
            resp.answer.append(out)
            return resp
        if name not in self._names:
            resp.set_rcode(dns.rcode.NXDOMAIN)
        if self.negative_soa:
            resp.authority.append(self._soa)
        return resp

    def _reply(self, data: bytes, proto: str, src) -> list[bytes]:
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return []
        qn = query.question[0]
        self.counts[proto] += 1
        self.queries.append((proto, qn.name.to_text(), qn.rdtype, query.id, src))
        if self.drop:
            return []
        resp = self.answer(query)
        out = []
        if self.spoof:
            bad_id = dns.message.make_response(query)
            bad_id.id = query.id ^ 0x5A5A
            bad_id.answer.append(dns.rrset.from_text(qn.name, 3600, "IN", "A", SPOOF_ADDR))
            spoofed_q = dns.message.make_query("spoofed." + self.zone.to_text(), "A")
            spoofed_q.id = query.id
            bad_q = dns.message.make_response(spoofed_q)
            bad_q.answer.append(dns.rrset.from_text(qn.name, 3600, "IN", "A", SPOOF_ADDR))
            out += [bad_id.to_wire(), bad_q.to_wire()]
        if self.spoof == "only":
            return out
        if proto == "udp" and self.tc_udp:
            tc = dns.message.make_response(query)
            tc.flags |= dns.flags.TC
            out.append(tc.to_wire())
        else:
            out.append(resp.to_wire(max_size=65535))
        return out

    async def _udp(self, transport, data: bytes, addr) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        for wire in self._reply(data, "udp", addr):
            transport.sendto(wire, addr)

    async def _tcp_client(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self.tcp_connections += 1
        peer = writer.get_extra_info("peername")
        held: list[bytes] = []
        pending = [0]  # queries read on this connection and not yet answered
        seen = 0
        try:
            while True:
                try:
                    n = struct.unpack(">H", await reader.readexactly(2))[0]
                    data = await reader.readexactly(n)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                seen += 1
                if self.tcp_close_after and seen >= self.tcp_close_after:
                    self.tcp_close_after = 0
                    return
                pending[0] += 1
                self.tcp_max_pending = max(self.tcp_max_pending, pending[0])
                if self.tcp_hold:
                    held.append(data)
                    if len(held) < self.tcp_hold:
                        continue
                    batch, held = held[::-1], []
                else:
                    batch = [data]
                for query in batch:
                    self._spawn(self._tcp_answer(writer, query, peer, pending))
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _tcp_answer(self, writer: asyncio.StreamWriter, data: bytes, peer,
                          pending: list[int]) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        pending[0] -= 1
        if writer.is_closing():
            return
        for wire in self._reply(data, "tcp", peer):
            writer.write(struct.pack(">H", len(wire)) + wire)
