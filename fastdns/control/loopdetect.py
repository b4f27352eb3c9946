"""CoreDNS's ``loop`` plugin: detect a forwarding loop at startup and stop.

CoreDNS (``plugin/loop/setup.go``, ``loop.go``): once the server is up it
sends ``<random>.<random>.ZONE. HINFO`` to its own listen address, every
second until it gets an answer (at most 30 s), and stays armed 2 s more;
every time the query passes through the plugin it is counted, and when it
came back more than twice the process dies with::

    Loop (REMOTE -> LISTEN) detected for zone "ZONE", see
    https://coredns.io/plugins/loop#troubleshooting. Query: "HINFO QNAME"

fastdns splits that across processes: the supervisor's ``LoopProbe``
thread sends the probe (only once every worker serves); the workers count
the probe names they receive in ``/dev/shm/fastdns-<instance>-loop`` (one
word per worker, single writer) and the one that sees the sum pass 2
prints CoreDNS's message and exits with ``EXIT_LOOP``, on which the
supervisor stops the server with exit status 1.

Segment (``layout.LOOP_*``, docs/internals.md §4; at most
``layout.MAX_PROBES`` blocks with ``loop``): the armed word (1 while
probing; 0 = counting off), the base of each probe p (the supervisor's: its
hits when it was last sent, since CoreDNS resets its count when an exchange
fails, and only the supervisor may write here), the hits of probe p seen by
worker i (single writer), and the probes as text lines ``qname zone
listen`` (qname lowercased, with the trailing dot), line p = probe p.
"""

from __future__ import annotations

import logging
import mmap
import os
import random
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from fastdns.ipc import layout, shm

if TYPE_CHECKING:  # types only
    from fastdns.corefile.model import Config, LoopConfig

log = logging.getLogger("plugin/loop")

EXIT_LOOP = 4  # a worker that detected a loop: the supervisor stops everything
# the segment's u64 words, as indices (the layout declares octets)
W_ARMED = layout.LOOP_ARMED // 8
W_BASE = layout.LOOP_BASE // 8
W_HITS = layout.LOOP_HITS // 8
HINFO = 13
PROBE_FOR = 30.0  # seconds of probing at most (setup.go deadline)
ARMED_AFTER_ANSWER = 2.0


@dataclass(frozen=True)
class Probe:
    qname: str  # "123.456." + zone
    zone: str
    listen: str  # CoreDNS's l.address(): JoinHostPort(first listen host, port)
    target: tuple[str, int]  # where to send it


def segment_path(instance: str) -> str:
    return os.path.join(shm.SHM_DIR, f"{shm.PREFIX}{instance}-loop")


def plan_probes(config: Config) -> list[Probe]:
    """One probe per Corefile block with ``loop`` (its first listen host and port)."""
    out: list[Probe] = []
    seen: set[int] = set()
    for b in config.servers:
        conf = b.plugins.get("loop")
        if conf is None or id(conf) in seen:
            continue
        seen.add(id(conf))
        host = b.listen_hosts[0] if b.listen_hosts else ""
        listen = f"[{host}]:{b.port}" if ":" in host else f"{host}:{b.port}"
        target = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        lz = cast("LoopConfig", conf).zone
        zone = lz if lz.endswith(".") else lz + "."
        # loop.go qname(): strconv.Itoa(rand.Int()) twice (non-negative 63-bit ints)
        qname = f"{random.getrandbits(63)}.{random.getrandbits(63)}.{zone if zone != '.' else ''}"
        out.append(Probe(qname.lower(), zone, listen, (target, int(b.port))))
    return out[:layout.MAX_PROBES]


def create_segment(instance: str, probes: Sequence[Probe]) -> None:
    """Write the segment before the workers start (disarmed until the probe runs)."""
    text = "".join(f"{p.qname} {p.zone} {p.listen}\n" for p in probes).encode()
    buf = bytearray(layout.LOOP_SIZE)
    at = layout.LOOP_TEXT
    buf[at:at + len(text)] = text[:layout.LOOP_SIZE - at]
    path = segment_path(instance)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(buf)
    os.replace(tmp, path)


class _Segment:
    def __init__(self, instance: str) -> None:
        fd = os.open(segment_path(instance), os.O_RDWR | os.O_CLOEXEC)
        try:
            self.mm = mmap.mmap(fd, layout.LOOP_SIZE, mmap.MAP_SHARED,
                                mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.words = memoryview(self.mm)[:layout.LOOP_TEXT].cast("Q")

    def close(self) -> None:
        self.words.release()
        self.mm.close()


class LoopCounter:
    """A worker's side: counts probe names it receives; True = a loop."""

    def __init__(self, instance: str, index: int) -> None:
        self.index = index
        self.seg: _Segment | None = None
        self.probes: dict[bytes, tuple[int, Probe]] = {}
        try:
            self.seg = _Segment(instance)
        except OSError:
            return
        text = bytes(self.seg.mm[layout.LOOP_TEXT:]).split(b"\x00", 1)[0].decode()
        for p, line in enumerate(text.splitlines()):
            qname, zone, listen = line.split(" ")
            self.probes[_wire_key(qname)] = (p, Probe(qname, zone, listen, ("", 0)))

    @property
    def armed(self) -> bool:
        return self.seg is not None and bool(self.seg.words[W_ARMED])

    def seen(self, key: bytes, qtype: int, remote: Any) -> bool:
        """Count a query (lowercased wire name ``key``); True when it is a loop."""
        if qtype != HINFO or self.seg is None:
            return False
        got = self.probes.get(key)
        if got is None or not self.seg.words[W_ARMED]:
            return False
        p, probe = got
        w = self.seg.words
        w[W_HITS + p * layout.MAX_WORKERS + self.index] += 1
        if _hits(w, p) - w[W_BASE + p] <= 2:
            return False
        host, port = (remote[0], remote[1]) if remote else ("", 0)
        addr = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
        sys.stderr.write(
            f'[FATAL] plugin/loop: Loop ({addr} -> {probe.listen}) detected for zone '
            f'"{probe.zone}", see https://coredns.io/plugins/loop#troubleshooting. '
            f'Query: "HINFO {probe.qname}"\n')
        sys.stderr.flush()
        return True


def _hits(words: memoryview, p: int) -> int:
    start = W_HITS + p * layout.MAX_WORKERS
    return sum(words[start:start + layout.MAX_WORKERS])


def _wire_key(qname: str) -> bytes:
    out = b""
    for label in qname.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def _query(qname: str) -> bytes:
    qid = random.getrandbits(16)
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + _wire_key(qname) + \
        struct.pack(">HH", HINFO, 1)


class LoopProbe:
    """The supervisor's side: arm the counters and send each probe (a thread)."""

    def __init__(self, instance: str, probes: Sequence[Probe]) -> None:
        self.instance = instance
        self.probes = list(probes)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.probes:
            return
        self._thread = threading.Thread(target=self._run, name="loop-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        try:
            seg = _Segment(self.instance)
        except OSError:
            return
        try:
            seg.words[W_ARMED] = 1
            deadline = time.monotonic() + PROBE_FOR
            pending = list(self.probes)
            while pending and time.monotonic() < deadline and not self._stop.is_set():
                for i, p in enumerate(self.probes):
                    if p not in pending:
                        continue
                    if self._exchange(p):
                        pending.remove(p)
                    else:
                        # loop.go: a failed exchange resets the count (l.reset())
                        seg.words[W_BASE + i] = _hits(seg.words, i)
                if pending:
                    self._stop.wait(1.0)
            self._stop.wait(ARMED_AFTER_ANSWER)
            seg.words[W_ARMED] = 0
        finally:
            seg.close()

    @staticmethod
    def _exchange(p: Probe) -> bool:
        """One probe; True when any answer came back (setup.go: then disarm in 2 s)."""
        fam = socket.AF_INET6 if ":" in p.target[0] else socket.AF_INET
        try:
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.settimeout(2.0)
                s.sendto(_query(p.qname), p.target)
                s.recv(4096)
                return True
        except OSError:
            return False
