"""Per-worker counters in the control segment, and their reader.

Each worker owns one block of ``shm.COUNTERS_SIZE`` octets (single writer,
so plain uint64 increments, no atomics). The UDP fast path writes it from
Cython (``_udp.pyx`` mirrors the offsets below; a test checks they agree),
TCP and the slow path through :class:`Counters`. The metrics exporter reads
every block with :func:`read_counters` and adds them up with
:func:`sum_counters`; the metrics are CoreDNS's (``plugin/metrics/vars``):
``coredns_dns_requests_total{proto,family,type}``,
``coredns_dns_responses_total{rcode}``, ``coredns_dns_request_size_bytes``,
``coredns_dns_response_size_bytes``, ``coredns_dns_request_duration_seconds``
and ``coredns_dns_do_requests_total``.

Accounting rule: every datagram or TCP frame a worker reads is one query
(its type bucket read best-effort from the question; "other" when the
question is unreadable) and ends in exactly one response bucket: the rcode
of what was sent, or ``dropped``. Slow-path packets are counted as queries
when read and as responses when their answer goes out, so
``sum(queries) == sum(responses)`` once nothing is in flight.

Layout: native-endian uint64 words; word ``i`` is at octet ``8*i``.

Per-upstream forward region (words ``W_FWD`` .. ``FWD_END``, after everything
the C fast path mirrors, so no ``_udp.pyx`` offset moved): the data of
CoreDNS's ``coredns_proxy_*{proxy_name="forward",to}`` series and
``coredns_forward_healthcheck_broken_total``, written only by the worker's
0.5 s export (``fastdns/server/forwarding.py``). Upstreams are *slots*:
the distinct ``to`` labels of the Corefile in order (server blocks in
Corefile order, then the ``forward`` TOs in order; :func:`upstream_table`),
the first ``FWD_MAX_UPSTREAMS``; any further upstream is counted in the
catch-all slot ``FWD_MAX_UPSTREAMS``, exported as ``to="other"``. Word
``W_FWD_TABLE`` holds :func:`table_hash` of the slot table the words
describe (0 while a worker rewrites the region); the exporter derives the
table from its own Corefile and ignores a block whose hash differs (a
worker still on the Corefile before a reload), so a count is never
reported under another upstream's ``to``.

Per-(server, zone) region (words ``W_ROWS`` .. ``ROWS_END``, after the
forward region): CoreDNS labels every ``coredns_dns_*`` series with the
``server`` (listener address) and ``zone`` that handled the query
(``plugin/metrics/vars/report.go``); a query whose name no zone on its
listener matches is counted under zone ``dropped`` (``core/dnsserver/
server.go`` errorAndMetricsFunc). Rows are the pairs of :func:`row_table`:
per listener in Corefile order, the zones of its blocks, then its
``dropped`` row; the first ``ROW_MAX`` are exact, any further pair shares
the catch-all row ``ROW_MAX`` (exported as ``server="other", zone="other"``).
A row repeats the totals' DNS words (requests, responses, DO, sizes,
latency; ``R_*`` offsets) for the queries of its pair; the totals words
stay the sum over every row. The row of a query is decided from its name
alone (longest zone suffix among the listener's zones, as CoreDNS's
``ServeDNS`` and metrics plugin do), so it is known before the answer and
every path (C fast path, slow path, TCP) counts it the same way. Word
``W_ROWS_TABLE`` holds :func:`table_hash` of the row labels, with the same
reload rule as the forward region.
"""

from __future__ import annotations

import hashlib
import operator
import struct
from collections.abc import Iterable, Iterator

from fastdns.constants import Qtype
from fastdns.server import shm

MAGIC = 0x46444E53_43540001  # "FDNSCT" + layout version 1

PROTOS = ("udp", "tcp")
FAMILIES = (1, 2)  # CoreDNS's family label: 1 = IPv4, 2 = IPv6
QTYPE_BUCKETS = ("A", "AAAA", "SRV", "PTR", "TXT", "NS", "SOA", "CNAME", "MX", "other")
_QTYPE_INDEX = {
    Qtype.A: 0, Qtype.AAAA: 1, Qtype.SRV: 2, Qtype.PTR: 3, Qtype.TXT: 4,
    Qtype.NS: 5, Qtype.SOA: 6, Qtype.CNAME: 7, Qtype.MX: 8,
}
QT_OTHER = 9
RCODE_NAMES = (
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN",
    "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE", "RCODE11", "RCODE12", "RCODE13",
    "RCODE14", "RCODE15", "BADVERS", "dropped",
)
R_BADVERS = 16  # any extended rcode (> 15) lands here; fastdns only sends BADVERS
R_DROPPED = 17
# CoreDNS plugin/metrics/vars/vars.go: sizes use these buckets (octets) ...
SIZE_BUCKETS = (0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16e3, 32e3, 48e3, 64e3)
# ... and durations prometheus.ExponentialBuckets(0.00025, 2, 16) (seconds).
LATENCY_BUCKETS = tuple(0.00025 * 2**k for k in range(16))

# -- word indices -------------------------------------------------------------
W_MAGIC = 0
W_PID = 1
W_GENERATION = 2  # generation this worker serves
W_BATCHES = 3  # UDP recvmmsg batches that returned packets
W_REMAPS = 4  # image remaps after a publish
W_DO = 5  # queries with the EDNS DO bit
W_SLOW = 6  # packets handed to the Python slow path
W_SLOW_POD = 7  # ... answered by pod synthesis
W_SLOW_REFUSED = 8  # ... REFUSED (outside every zone, until the forwarder exists)
W_SLOW_SERVFAIL = 9  # ... SERVFAIL after an internal error
W_SLOW_OTHER = 10  # ... any other slow answer (e.g. a zone's negative answer)
W_TCP_ACCEPTED = 11
W_TCP_REJECTED = 12  # closed at once: over the per-worker connection cap
W_TCP_IDLE_CLOSED = 13
W_SEND_ERRORS = 14  # answers the kernel refused (counted as dropped too)
W_OVERSIZE = 15  # datagrams larger than a receive slot (dropped)
# forward + cache (issue 7). The C fast path writes W_CC_* (its cache table,
# fastdns/server/_udp_cache.pxi); the worker copies the Python objects'
# counters (ResponseCache, Forwarder, summed over its blocks) into the others
# on its 0.5 s timer. coredns_cache_* = the C words + the Python words.
W_SLOW_FORWARDED = 16  # slow packets answered by a forwarder (cache hits in Python included)
W_CC_HITS_SUCCESS = 17  # cache hits served by the C fast path, success store
W_CC_HITS_DENIAL = 18  # ... denial store
W_CC_MISSES = 19  # C table lookups that missed (the packet went on to Python)
W_CC_ENTRIES = 20  # entries in the C table now
W_CACHE_REQUESTS = 21  # Python ResponseCache lookups
W_CACHE_MISSES = 22
W_CACHE_HITS_SUCCESS = 23
W_CACHE_HITS_DENIAL = 24
W_CACHE_PREFETCH = 25
W_CACHE_SERVED_STALE = 26
W_CACHE_ENTRIES_SUCCESS = 27  # gauges
W_CACHE_ENTRIES_DENIAL = 28
W_CACHE_EVICTIONS_SUCCESS = 29
W_CACHE_EVICTIONS_DENIAL = 30
W_FWD_MAX_CONCURRENT_REJECTS = 31

N_Q = len(PROTOS) * len(FAMILIES) * len(QTYPE_BUCKETS)  # 40
N_SIZE = len(SIZE_BUCKETS) + 1  # + the +Inf bucket
N_LAT = len(LATENCY_BUCKETS) + 1

W_QUERIES = 32  # [proto][family][qtype]
W_RESPONSES = W_QUERIES + N_Q  # [rcode 0..15, BADVERS, dropped]
W_REQ_SIZE = 96  # [proto][N_SIZE buckets + sum]
W_RESP_SIZE = W_REQ_SIZE + 2 * (N_SIZE + 1)
W_LATENCY = W_RESP_SIZE + 2 * (N_SIZE + 1)  # [N_LAT buckets], sum in ns
W_LATENCY_SUM_NS = W_LATENCY + N_LAT
W_END = W_LATENCY_SUM_NS + 1

assert W_RESPONSES + len(RCODE_NAMES) <= W_REQ_SIZE

# -- per-upstream forward region (see the module docstring) --------------------
# CoreDNS plugin/pkg/proxy/metrics.go (1.11+): coredns_proxy_request_duration_seconds
# {proxy_name,to,rcode} (plugin.TimeBuckets), coredns_proxy_healthcheck_failures_total
# {proxy_name,to}, coredns_proxy_conn_cache_{hits,misses}_total{proxy_name,to,proto};
# plugin/forward/metrics.go: coredns_forward_healthcheck_broken_total.
FWD_MAX_UPSTREAMS = 16  # slots 0..15 exact; slot 16 is the catch-all ("other")
FWD_SLOTS = FWD_MAX_UPSTREAMS + 1
FWD_OTHER = "other"  # the catch-all slot's ``to`` label
# The rcode of an upstream answer as the forwarder records it: the 4-bit
# header rcode, so these 16 cover every value (names as CoreDNS's rcode
# label: miekg RcodeToString, else the number).
FWD_RCODES = 16
FWD_CONN_PROTOS = ("udp", "tcp")
FWD_HIST = len(LATENCY_BUCKETS) + 2  # [17 non-cumulative bucket counts][sum in ns]
# slot layout: [healthcheck failures][conn hits udp, misses udp, hits tcp, misses tcp]
#              [FWD_RCODES x FWD_HIST]
FS_HC_FAILURES = 0
FS_CONN = 1  # + 2*proto + (0 hit, 1 miss)
FS_DURATIONS = FS_CONN + 2 * len(FWD_CONN_PROTOS)
FWD_SLOT_WORDS = FS_DURATIONS + FWD_RCODES * FWD_HIST  # 293

W_FWD = 256  # first word of the region (octet 2048); words W_END..255 stay free
# ... except the image protocol's hold words (shm.py: what a worker still reads)
assert W_END <= shm.HOLD_ATTACHING_WORD < shm.HOLD_LINGERING_WORD < W_FWD
W_FWD_TABLE = W_FWD  # table_hash() of the slot table; 0 = none / being rewritten
W_FWD_BROKEN = W_FWD + 1  # coredns_forward_healthcheck_broken_total
W_FWD_SLOTS = W_FWD + 8  # slot k at W_FWD_SLOTS + k * FWD_SLOT_WORDS
FWD_END = W_FWD_SLOTS + FWD_SLOTS * FWD_SLOT_WORDS
FWD_WORDS = FWD_END - W_FWD_BROKEN  # what read_counters returns as "forward"
# read_counters' "forward": (region word, count) pairs from W_FWD_BROKEN on, the
# shape sum_counters (and any walker of its dicts) already adds like buckets
FWD_ZERO = tuple((i, 0) for i in range(FWD_WORDS))

assert W_END <= W_FWD and FWD_END * 8 <= 65536  # shm.COUNTERS_SIZE

# -- per-(server, zone) region (see the module docstring) ------------------------
ROW_MAX = 16  # rows 0..15 exact; row 16 is the catch-all ("other", "other")
ROWS = ROW_MAX + 1
ROW_OTHER = ("other", "other")
ZONE_DROPPED = "dropped"  # CoreDNS vars.Dropped
# row layout: the totals' DNS words in the same order, packed
R_QUERIES = 0  # [proto][family][qtype]
R_RESPONSES = R_QUERIES + N_Q  # [rcode 0..15, BADVERS, dropped]
R_DO = R_RESPONSES + len(RCODE_NAMES)
R_REQ_SIZE = R_DO + 1  # [proto][N_SIZE buckets + sum]
R_RESP_SIZE = R_REQ_SIZE + 2 * (N_SIZE + 1)
R_LATENCY = R_RESP_SIZE + 2 * (N_SIZE + 1)  # [N_LAT buckets], sum in ns
R_LATENCY_SUM_NS = R_LATENCY + N_LAT
ROW_WORDS = 144  # R_LATENCY_SUM_NS + 1 = 141, padded to whole 64-octet lines
assert R_LATENCY_SUM_NS < ROW_WORDS and ROW_WORDS % 8 == 0

W_ROWS_TABLE = (FWD_END + 7) // 8 * 8  # table_hash() of row_table(); 0 = none
W_ROWS = W_ROWS_TABLE + 8  # row k at W_ROWS + k * ROW_WORDS (cache-line aligned)
ROWS_END = W_ROWS + ROWS * ROW_WORDS
ROWS_WORDS = ROWS_END - W_ROWS
ROWS_ZERO = tuple((i, 0) for i in range(ROWS_WORDS))
assert ROWS_END * 8 <= 65536  # shm.COUNTERS_SIZE

LAYOUT = {
    "MAGIC": MAGIC, "W_PID": W_PID, "W_GENERATION": W_GENERATION, "W_BATCHES": W_BATCHES,
    "W_REMAPS": W_REMAPS, "W_DO": W_DO, "W_SLOW": W_SLOW, "W_SEND_ERRORS": W_SEND_ERRORS,
    "W_OVERSIZE": W_OVERSIZE, "W_QUERIES": W_QUERIES, "W_RESPONSES": W_RESPONSES,
    "W_REQ_SIZE": W_REQ_SIZE, "W_RESP_SIZE": W_RESP_SIZE, "W_LATENCY": W_LATENCY,
    "W_LATENCY_SUM_NS": W_LATENCY_SUM_NS, "N_SIZE": N_SIZE, "N_LAT": N_LAT,
    "R_BADVERS": R_BADVERS, "R_DROPPED": R_DROPPED, "QT_OTHER": QT_OTHER,
    "SIZE_BUCKETS": tuple(int(b) for b in SIZE_BUCKETS),
    "W_CC_HITS_SUCCESS": W_CC_HITS_SUCCESS, "W_CC_HITS_DENIAL": W_CC_HITS_DENIAL,
    "W_CC_MISSES": W_CC_MISSES, "W_CC_ENTRIES": W_CC_ENTRIES,
    "W_ROWS": W_ROWS, "ROW_WORDS": ROW_WORDS, "ROWS": ROWS, "R_RESPONSES": R_RESPONSES,
    "R_DO": R_DO, "R_REQ_SIZE": R_REQ_SIZE, "R_RESP_SIZE": R_RESP_SIZE,
    "R_LATENCY": R_LATENCY, "R_LATENCY_SUM_NS": R_LATENCY_SUM_NS,
}


def qtype_bucket(qtype: int) -> int:
    return _QTYPE_INDEX.get(qtype, QT_OTHER)


def classify_query(pkt: bytes | memoryview) -> tuple[int, bool]:
    """(qtype bucket, DO bit) of a query, best effort and never raising.

    The DO bit is read from an OPT that directly follows the question of a
    query without answer/authority records (how every stub sends it).
    """
    n = len(pkt)
    if n < 12 or not (pkt[4] or pkt[5]):
        return QT_OTHER, False
    p = 12
    while p < n:
        length = pkt[p]
        if length == 0:
            p += 1
            break
        if length & 0xC0:
            return QT_OTHER, False
        p += length + 1
    else:
        return QT_OTHER, False
    if p + 4 > n:
        return QT_OTHER, False
    bucket = qtype_bucket(pkt[p] << 8 | pkt[p + 1])
    o = p + 4
    do = (not (pkt[6] | pkt[7] | pkt[8] | pkt[9]) and (pkt[10] or pkt[11]) and o + 11 <= n
          and pkt[o] == 0 and pkt[o + 1] == 0 and pkt[o + 2] == 41 and bool(pkt[o + 7] & 0x80))
    return bucket, bool(do)


def response_bucket(resp: bytes | memoryview) -> int:
    """Rcode bucket of an answer: header rcode, or BADVERS for an extended one.

    fastdns appends its OPT last and without options (docs/internals.md §1),
    so its extended-rcode octet is 6 octets before the end.
    """
    n = len(resp)
    if n < 12:
        return R_DROPPED
    rcode = resp[3] & 0x0F
    if (n >= 23 and (resp[10] or resp[11]) and resp[n - 11] == 0 and resp[n - 10] == 0
            and resp[n - 9] == 41 and resp[n - 2] == 0 and resp[n - 1] == 0 and resp[n - 6]):
        return R_BADVERS
    return rcode


def size_bucket(size: int) -> int:
    for i, bound in enumerate(SIZE_BUCKETS):
        if size <= bound:
            return i
    return len(SIZE_BUCKETS)


def latency_bucket(seconds: float) -> int:
    for i, bound in enumerate(LATENCY_BUCKETS):
        if seconds <= bound:
            return i
    return len(LATENCY_BUCKETS)


def upstream_table(addrs: Iterable[str]) -> tuple[str, ...]:
    """The slot table: distinct ``to`` labels in first-seen order, at most FWD_MAX_UPSTREAMS.

    CoreDNS keys each series by (proxy_name, to) only, so two ``forward``
    stanzas with the same TO share one series; here they share one slot.
    """
    return tuple(dict.fromkeys(addrs))[:FWD_MAX_UPSTREAMS]


def config_upstreams(config: object) -> Iterator[str]:
    """Every ``forward`` TO's ``to`` label (``IP:port``, IPv6 bracketed) in Corefile order.

    Read by attribute (``servers[i].plugins["forward"].to[j].addr``) so the
    worker (``corefile.Config``) and the exporter derive the same table.
    """
    for b in getattr(config, "servers", config):  # type: ignore[union-attr]
        plugins = getattr(b, "plugins", None)
        fwd = plugins.get("forward") if isinstance(plugins, dict) else None
        for u in getattr(fwd, "to", ()):
            yield u.addr


def table_hash(table: tuple[str, ...]) -> int:
    """A stable non-zero 64-bit id of a slot table (the same in every process)."""
    digest = hashlib.blake2b("\n".join(table).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") | 1


def fwd_slot_labels(table: tuple[str, ...]) -> tuple[str, ...]:
    """The ``to`` label of every slot: the table, unused slots "", then the catch-all."""
    return (*table, *[""] * (FWD_MAX_UPSTREAMS - len(table)), FWD_OTHER)


# -- per-(server, zone) rows ----------------------------------------------------------


def server_label(port: int, host: str = "", transport: str = "dns") -> str:
    """``dns://:53`` / ``dns://127.0.0.1:53`` / ``dns://[::1]:53``, as CoreDNS prints it."""
    h = f"[{host}]" if ":" in host else host
    return f"{transport}://{h}:{port}"


def listener_zones(config: object) -> dict[str, tuple[str, ...]]:
    """``server`` label -> the zones of the blocks on that listener, in Corefile order.

    core/dnsserver/register.go groupConfigsByListenAddr: one server per bind
    address and port, serving every block bound there. Read by attribute
    (``port``, ``transport``, ``listen_hosts``, ``zones``) like config_upstreams.
    """
    out: dict[str, list[str]] = {}
    for b in getattr(config, "servers", config):  # type: ignore[union-attr]
        port = int(getattr(b, "port", 53) or 53)
        transport = getattr(b, "transport", "dns") or "dns"
        for h in tuple(getattr(b, "listen_hosts", ()) or ()) or ("",):
            out.setdefault(server_label(port, h, transport), []).extend(
                str(z) for z in getattr(b, "zones", (".",)))
    return {k: tuple(dict.fromkeys(v)) for k, v in out.items()}


def row_table(listeners: dict[str, tuple[str, ...]]) -> tuple[tuple[str, str], ...]:
    """Every (server, zone) pair, each listener's ``dropped`` last; row = min(index, ROW_MAX)."""
    rows: list[tuple[str, str]] = []
    for server, zones in listeners.items():
        rows.extend((server, z) for z in zones)
        rows.append((server, ZONE_DROPPED))
    return tuple(rows)


def row_labels(table: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The (server, zone) of every row: the exact ones, unused rows ("", ""), the catch-all."""
    exact = table[:ROW_MAX]
    return (*exact, *[("", "")] * (ROW_MAX - len(exact)), ROW_OTHER)


def rows_hash(table: tuple[tuple[str, str], ...]) -> int:
    return table_hash(tuple(f"{s} {z}" for s, z in table))


def zone_wire(zone: str) -> bytes:
    """Lowercased wire form of a zone name (``"cluster.local."``; ``"."`` is ``b"\\0"``)."""
    labels = [lbl for lbl in zone.lower().rstrip(".").split(".") if lbl]
    return b"".join(len(lbl).to_bytes(1, "big") + lbl.encode("ascii") for lbl in labels) + b"\0"


class ListenerRows:
    """One listener's zones as the counters match them: longest first."""

    __slots__ = ("zones", "dropped")

    def __init__(self, zones: tuple[tuple[bytes, int], ...], dropped: int) -> None:
        self.zones = zones  # (lowercased wire, row), longest wire first
        self.dropped = dropped

    def match(self, pkt: bytes | memoryview) -> int:
        """The row of a query: its name's longest zone suffix, else ``dropped``.

        An unreadable question counts as ``dropped`` too (CoreDNS never gets
        as far as a zone for it). Twin of ``_udp.pyx`` match_row.
        """
        n = len(pkt)
        if n < 12 or not (pkt[4] or pkt[5]):
            return self.dropped
        p, starts = 12, set()
        while p < n:
            starts.add(p)
            length = pkt[p]
            if length == 0:
                p += 1
                break
            if length & 0xC0:
                return self.dropped
            p += length + 1
        else:
            return self.dropped
        if p > n:
            return self.dropped
        name = bytes(pkt[12:p]).lower()
        for wire, row in self.zones:
            s = len(name) - len(wire)
            if s >= 0 and 12 + s in starts and name[s:] == wire:
                return row
        return self.dropped


def listener_rows(listeners: dict[str, tuple[str, ...]]) -> dict[str, ListenerRows]:
    """``server`` label -> its ListenerRows, rows numbered as row_table does."""
    out, i = {}, 0
    for server, zones in listeners.items():
        zs = []
        for z in zones:
            zs.append((zone_wire(z), min(i, ROW_MAX)))
            i += 1
        zs.sort(key=lambda t: len(t[0]), reverse=True)
        # more zones than exact rows on one listener (the fast path's table
        # holds ROW_MAX): the whole listener counts into the catch-all
        out[server] = (ListenerRows(tuple(zs), min(i, ROW_MAX)) if len(zs) <= ROW_MAX
                       else ListenerRows((), ROW_MAX))
        i += 1
    return out


def socket_rows(rows: dict[str, ListenerRows], address: str, port: int,
                transport: str = "dns") -> ListenerRows:
    """The ListenerRows of a socket bound to (address, port): its ``bind`` host's
    listener, else the wildcard's (the supervisor binds 0.0.0.0 and :: for it)."""
    lr = rows.get(server_label(port, address, transport))
    if lr is None:
        lr = rows.get(server_label(port, "", transport))
    return lr if lr is not None else ListenerRows((), ROW_MAX)


class Counters:
    """Writer used by the Python paths (TCP, slow path, the pure-Python UDP).

    ``fwd`` views the forward region and ``rows`` the per-(server, zone)
    region (None when the block is too small, as in unit tests with a bare
    ``W_END`` block). ``row`` arguments are row indices (None: count the
    totals only).
    """

    __slots__ = ("w", "fwd", "rows")

    def __init__(self, block: memoryview) -> None:
        self.w = block[: W_END * 8].cast("Q")
        self.fwd = block[W_FWD * 8 : FWD_END * 8].cast("Q") if len(block) >= FWD_END * 8 \
            else None
        self.rows = block[W_ROWS_TABLE * 8 : ROWS_END * 8].cast("Q") \
            if len(block) >= ROWS_END * 8 else None

    def take_rows(self, table: tuple[tuple[str, str], ...]) -> None:
        """Make the row region describe ``table``: kept when it already does
        (a respawned worker, a reload with the same rows), else zeroed first."""
        rows = self.rows
        if rows is None:
            return
        thash = rows_hash(table)
        if rows[0] == thash:
            return
        rows[0] = 0  # readers ignore the region from here ...
        rows[1:] = memoryview(bytes(8 * (len(rows) - 1))).cast("Q")
        rows[0] = thash  # ... to here

    def _row(self, row: int | None) -> int:
        """Index in ``self.rows`` of the row's word 0, or -1 when not counted."""
        if row is None or self.rows is None:
            return -1
        return W_ROWS - W_ROWS_TABLE + row * ROW_WORDS

    def start(self, pid: int) -> None:
        self.w[W_PID] = pid
        self.w[W_MAGIC] = MAGIC

    def incr(self, word: int, n: int = 1) -> None:
        self.w[word] += n

    def query(self, proto: int, family: int, pkt: bytes | memoryview,
              row: int | None = None) -> None:
        """Count one query read on ``proto`` (0 udp, 1 tcp) and ``family`` (1, 2)."""
        w = self.w
        bucket, do = classify_query(pkt)
        q = (proto * 2 + family - 1) * len(QTYPE_BUCKETS) + bucket
        sb = size_bucket(len(pkt))
        w[W_QUERIES + q] += 1
        if do:
            w[W_DO] += 1
        base = W_REQ_SIZE + proto * (N_SIZE + 1)
        w[base + sb] += 1
        w[base + N_SIZE] += len(pkt)
        r = self._row(row)
        if r >= 0:
            rw = self.rows
            rw[r + R_QUERIES + q] += 1
            if do:
                rw[r + R_DO] += 1
            base = r + R_REQ_SIZE + proto * (N_SIZE + 1)
            rw[base + sb] += 1
            rw[base + N_SIZE] += len(pkt)

    def response(self, proto: int, resp: bytes | memoryview | None,
                 row: int | None = None) -> None:
        """Count what was sent for one query (``None``: nothing was sent)."""
        w = self.w
        r = self._row(row)
        if resp is None:
            w[W_RESPONSES + R_DROPPED] += 1
            if r >= 0:
                self.rows[r + R_RESPONSES + R_DROPPED] += 1
            return
        rb, sb = response_bucket(resp), size_bucket(len(resp))
        w[W_RESPONSES + rb] += 1
        base = W_RESP_SIZE + proto * (N_SIZE + 1)
        w[base + sb] += 1
        w[base + N_SIZE] += len(resp)
        if r >= 0:
            rw = self.rows
            rw[r + R_RESPONSES + rb] += 1
            base = r + R_RESP_SIZE + proto * (N_SIZE + 1)
            rw[base + sb] += 1
            rw[base + N_SIZE] += len(resp)

    def latency(self, seconds: float, n: int = 1, row: int | None = None) -> None:
        lb, ns = latency_bucket(seconds), int(seconds * 1e9) * n
        self.w[W_LATENCY + lb] += n
        self.w[W_LATENCY_SUM_NS] += ns
        r = self._row(row)
        if r >= 0:
            self.rows[r + R_LATENCY + lb] += n
            self.rows[r + R_LATENCY_SUM_NS] += ns

    def release(self) -> None:
        self.w.release()
        if self.fwd is not None:
            self.fwd.release()
        if self.rows is not None:
            self.rows.release()


def _hist(words: list[int] | tuple[int, ...], start: int, bounds: tuple[float, ...],
          scale: float = 1.0) -> dict:
    """Prometheus-shaped histogram: cumulative (le, count) pairs, sum, count."""
    counts = words[start : start + len(bounds) + 1]
    cum, buckets = 0, []
    for bound, c in zip((*bounds, float("inf")), counts, strict=True):
        cum += c
        buckets.append((float(bound), cum))
    return {"buckets": buckets, "sum": words[start + len(bounds) + 1] * scale, "count": cum}


def _region(block: memoryview | bytes, started: bool, table_word: int, first: int,
            nwords: int, end: int, zero: tuple) -> tuple[int, tuple]:
    """(table hash, enumerated words) of a keyed region (forward, rows); (0, zero)
    when the block has no such region yet. The worker zeroes the table word
    while it rewrites the region: a read that raced a rewrite is attributed
    to no table."""
    if not started or len(block) < end * 8:
        return 0, zero
    table = struct.unpack_from("=Q", block, table_word * 8)[0]
    words = tuple(enumerate(struct.unpack_from(f"={nwords}Q", block, first * 8)))
    if struct.unpack_from("=Q", block, table_word * 8)[0] != table:
        table = 0
    return table, words


def read_counters(block: memoryview | bytes) -> dict:
    """One worker block as a dict the metrics exporter can sum (see sum_counters).

    A block no worker has started yet (magic missing) reads as all zeros.
    """
    words = list(struct.unpack_from(f"={W_END}Q", block))
    if words[W_MAGIC] != MAGIC:
        words = [0] * W_END
    started = words[W_MAGIC] == MAGIC
    fwd_table, fwd = _region(block, started, W_FWD_TABLE, W_FWD_BROKEN, FWD_WORDS, FWD_END,
                             FWD_ZERO)
    rows_table, rows = _region(block, started, W_ROWS_TABLE, W_ROWS, ROWS_WORDS, ROWS_END,
                               ROWS_ZERO)
    queries = {}
    i = W_QUERIES
    for proto in PROTOS:
        for family in FAMILIES:
            for qt in QTYPE_BUCKETS:
                queries[(proto, family, qt)] = words[i]
                i += 1
    lat = words[W_LATENCY : W_LATENCY + N_LAT] + [words[W_LATENCY_SUM_NS]]
    return {
        "pid": words[W_PID],
        "generation": words[W_GENERATION],
        "batches": words[W_BATCHES],
        "remaps": words[W_REMAPS],
        "do_requests": words[W_DO],
        "slow": {
            "total": words[W_SLOW], "pod": words[W_SLOW_POD], "refused": words[W_SLOW_REFUSED],
            "servfail": words[W_SLOW_SERVFAIL], "other": words[W_SLOW_OTHER],
        },
        "tcp": {
            "accepted": words[W_TCP_ACCEPTED], "rejected": words[W_TCP_REJECTED],
            "idle_closed": words[W_TCP_IDLE_CLOSED],
        },
        "forwarded": words[W_SLOW_FORWARDED],
        "cache": {
            "c_hits": {"success": words[W_CC_HITS_SUCCESS], "denial": words[W_CC_HITS_DENIAL]},
            "c_misses": words[W_CC_MISSES], "c_entries": words[W_CC_ENTRIES],
            "requests": words[W_CACHE_REQUESTS], "misses": words[W_CACHE_MISSES],
            "hits": {"success": words[W_CACHE_HITS_SUCCESS],
                     "denial": words[W_CACHE_HITS_DENIAL]},
            "prefetch": words[W_CACHE_PREFETCH], "served_stale": words[W_CACHE_SERVED_STALE],
            "entries": {"success": words[W_CACHE_ENTRIES_SUCCESS],
                        "denial": words[W_CACHE_ENTRIES_DENIAL]},
            "evictions": {"success": words[W_CACHE_EVICTIONS_SUCCESS],
                          "denial": words[W_CACHE_EVICTIONS_DENIAL]},
        },
        "forward_max_concurrent_rejects": words[W_FWD_MAX_CONCURRENT_REJECTS],
        # the per-upstream region after W_FWD_TABLE, raw (decode_forward reads
        # it); "forward_table" says which slot table it describes
        "forward_table": fwd_table,
        "forward": list(fwd),
        # the per-(server, zone) rows, raw (decode_rows reads them); "rows_table"
        # is the rows_hash of the row table they describe
        "rows_table": rows_table,
        "rows": list(rows),
        "send_errors": words[W_SEND_ERRORS],
        "oversize": words[W_OVERSIZE],
        "queries": queries,
        "responses": dict(zip(RCODE_NAMES, words[W_RESPONSES : W_RESPONSES + len(RCODE_NAMES)],
                              strict=True)),
        "request_size": {
            p: _hist(words, W_REQ_SIZE + k * (N_SIZE + 1), SIZE_BUCKETS)
            for k, p in enumerate(PROTOS)
        },
        "response_size": {
            p: _hist(words, W_RESP_SIZE + k * (N_SIZE + 1), SIZE_BUCKETS)
            for k, p in enumerate(PROTOS)
        },
        "latency": _hist(lat, 0, LATENCY_BUCKETS, 1e-9),
    }


_NOT_SUMMED = ("pid", "generation", "forward_table", "rows_table")


def sum_counters(blocks: list[dict]) -> dict:
    """Add up read_counters() dicts of several workers (pid/generation dropped)."""

    def add(a, b):
        if isinstance(a, dict):
            return {k: add(a[k], b[k]) for k in a}
        if isinstance(a, list):
            return [(x[0], x[1] + y[1]) for x, y in zip(a, b, strict=True)]
        return a + b

    if not blocks:
        return {k: v for k, v in read_counters(bytes(W_END * 8)).items() if k not in _NOT_SUMMED}
    total = {k: v for k, v in blocks[0].items() if k not in _NOT_SUMMED}
    for blk in blocks[1:]:
        total = add(total, {k: v for k, v in blk.items() if k not in _NOT_SUMMED})
    return total


_count = operator.itemgetter(1)


def forward_sum(fwd: list[tuple[int, int]]) -> int:
    """All counts of a ``forward`` region added up (a region that went back was reset)."""
    return sum(map(_count, fwd))


def decode_forward(fwd: list[tuple[int, int]], table: tuple[str, ...]) -> dict:
    """The ``forward`` pairs of read_counters/sum_counters, by ``to`` label.

    ``{"healthcheck_broken": n, "upstreams": {to: {"healthcheck_failures": n,
    "conn": {(proto, "hits"|"misses"): n}, "durations": {rcode_index: hist}}}}``
    where ``hist`` is shaped like read_counters' histograms (seconds) and
    only upstreams and rcodes with a count appear.
    """
    words = list(map(_count, fwd))
    labels = fwd_slot_labels(table)
    ups: dict[str, dict] = {}
    base = W_FWD_SLOTS - W_FWD_BROKEN
    for k, to in enumerate(labels):
        s = base + k * FWD_SLOT_WORDS
        slot = words[s : s + FWD_SLOT_WORDS]
        if not to or not any(slot):
            continue
        conn = {(p, kind): slot[FS_CONN + 2 * i + j]
                for i, p in enumerate(FWD_CONN_PROTOS)
                for j, kind in enumerate(("hits", "misses"))}
        durations = {}
        for rc in range(FWD_RCODES):
            h = FS_DURATIONS + rc * FWD_HIST
            if any(slot[h : h + FWD_HIST - 1]):
                durations[rc] = _hist(slot, h, LATENCY_BUCKETS, 1e-9)
        ups[to] = {"healthcheck_failures": slot[FS_HC_FAILURES], "conn": conn,
                   "durations": durations}
    return {"healthcheck_broken": words[0], "upstreams": ups}


def _row_dns(words: list[int]) -> dict:
    """One row's words shaped like read_counters' DNS keys."""
    queries, i = {}, R_QUERIES
    for proto in PROTOS:
        for family in FAMILIES:
            for qt in QTYPE_BUCKETS:
                queries[(proto, family, qt)] = words[i]
                i += 1
    lat = words[R_LATENCY : R_LATENCY + N_LAT] + [words[R_LATENCY_SUM_NS]]
    return {
        "queries": queries,
        "responses": dict(zip(RCODE_NAMES, words[R_RESPONSES : R_RESPONSES + len(RCODE_NAMES)],
                              strict=True)),
        "do_requests": words[R_DO],
        "request_size": {p: _hist(words, R_REQ_SIZE + k * (N_SIZE + 1), SIZE_BUCKETS)
                         for k, p in enumerate(PROTOS)},
        "response_size": {p: _hist(words, R_RESP_SIZE + k * (N_SIZE + 1), SIZE_BUCKETS)
                          for k, p in enumerate(PROTOS)},
        "latency": _hist(lat, 0, LATENCY_BUCKETS, 1e-9),
    }


def decode_rows(rows: list[tuple[int, int]], table: tuple[tuple[str, str], ...]) -> dict:
    """The ``rows`` pairs of read_counters/sum_counters, by (server, zone).

    Values are shaped like read_counters' DNS keys (``queries``,
    ``responses``, ``do_requests``, ``request_size``, ``response_size``,
    ``latency``); only rows with a count appear.
    """
    words = list(map(_count, rows))
    out = {}
    for k, label in enumerate(row_labels(table)):
        w = words[k * ROW_WORDS : (k + 1) * ROW_WORDS]
        if label[0] and any(w):
            out[label] = _row_dns(w)
    return out
