"""Per-worker counters in the control segment: the Python writer.

Each worker owns one block of ``layout.COUNTERS_SIZE`` octets (single
writer, so plain uint64 increments, no atomics), laid out as
``fastdns/ipc/layout.py`` declares. The UDP fast path writes it from Cython
(``_udp.pyx``, with the words of the generated ``_layout.pxi``), TCP and the
slow path through :class:`Counters`, whose classification functions are the
twins of the C ones. The metrics exporter reads the blocks back with
``fastdns/ipc/readout.py``; the metrics are CoreDNS's
(``plugin/metrics/vars``): ``coredns_dns_requests_total{proto,family,type}``,
``coredns_dns_responses_total{rcode}``, ``coredns_dns_request_size_bytes``,
``coredns_dns_response_size_bytes``, ``coredns_dns_request_duration_seconds``
and ``coredns_dns_do_requests_total``.

Accounting rule: every datagram or TCP frame a worker reads is one query
(its type bucket read best-effort from the question; "other" when the
question is unreadable) and ends in exactly one response bucket: the rcode
of what was sent, or ``dropped``. Slow-path packets are counted as queries
when read and as responses when their answer goes out, so
``sum(queries) == sum(responses)`` once nothing is in flight.

The forward region and the per-(server, zone) rows are described in
``fastdns/ipc/tables.py``, which also decides the row of a query.
"""

from __future__ import annotations

from fastdns.ipc.layout import (
    CACHE_END,
    FWD_END,
    LATENCY_BUCKETS,
    MAGIC,
    N_SIZE,
    PLUGIN_END,
    QT_OTHER,
    QTYPE_BUCKETS,
    QTYPES,
    R_BADVERS,
    R_DO,
    R_DROPPED,
    R_LATENCY,
    R_LATENCY_SUM_NS,
    R_QUERIES,
    R_REQ_SIZE,
    R_RESP_SIZE,
    R_RESPONSES,
    ROW_WORDS,
    ROWS_END,
    SIZE_BUCKETS,
    W_CACHE_TABLE,
    W_DO,
    W_END,
    W_FWD,
    W_LATENCY,
    W_LATENCY_SUM_NS,
    W_MAGIC,
    W_PID,
    W_PLUGIN_TABLE,
    W_QUERIES,
    W_REQ_SIZE,
    W_RESP_SIZE,
    W_RESPONSES,
    W_ROWS,
    W_ROWS_TABLE,
)
from fastdns.ipc.tables import rows_hash

_QTYPE_INDEX = {code: i for i, (_, code) in enumerate(QTYPES)}


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



class Counters:
    """Writer used by the Python paths (TCP, slow path, the pure-Python UDP).

    ``fwd`` views the forward region, ``rows`` the per-(server, zone)
    region and ``caches`` the cache rows (None when the block is too small,
    as in unit tests with a bare ``W_END`` block). ``row`` arguments are row
    indices (None: count the totals only).
    """

    __slots__ = ("w", "fwd", "rows", "caches", "plugins")

    def __init__(self, block: memoryview) -> None:
        self.w = block[: W_END * 8].cast("Q")
        self.fwd = block[W_FWD * 8 : FWD_END * 8].cast("Q") if len(block) >= FWD_END * 8 \
            else None
        self.rows = block[W_ROWS_TABLE * 8 : ROWS_END * 8].cast("Q") \
            if len(block) >= ROWS_END * 8 else None
        self.caches = block[W_CACHE_TABLE * 8 : CACHE_END * 8].cast("Q") \
            if len(block) >= CACHE_END * 8 else None
        # [table hash, PLUGIN_ROWS counters] (plugins/counting.py writes them)
        self.plugins = block[W_PLUGIN_TABLE * 8 : PLUGIN_END * 8].cast("Q") \
            if len(block) >= PLUGIN_END * 8 else None

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
        r, rw = self._row(row), self.rows
        if r >= 0 and rw is not None:  # _row() is -1 when rows is None; mypy can't see that
            rw[r + R_QUERIES + q] += 1
            if do:
                rw[r + R_DO] += 1
            base = r + R_REQ_SIZE + proto * (N_SIZE + 1)
            rw[base + sb] += 1
            rw[base + N_SIZE] += len(pkt)

    def response(self, proto: int, resp: bytes | memoryview | None,
                 row: int | None = None) -> None:
        """Count what was sent for one query (``None``: nothing was sent)."""
        w, rw = self.w, self.rows
        r = self._row(row)
        if resp is None:
            w[W_RESPONSES + R_DROPPED] += 1
            if r >= 0 and rw is not None:
                rw[r + R_RESPONSES + R_DROPPED] += 1
            return
        rb, sb = response_bucket(resp), size_bucket(len(resp))
        w[W_RESPONSES + rb] += 1
        base = W_RESP_SIZE + proto * (N_SIZE + 1)
        w[base + sb] += 1
        w[base + N_SIZE] += len(resp)
        if r >= 0 and rw is not None:
            rw[r + R_RESPONSES + rb] += 1
            base = r + R_RESP_SIZE + proto * (N_SIZE + 1)
            rw[base + sb] += 1
            rw[base + N_SIZE] += len(resp)

    def latency(self, seconds: float, n: int = 1, row: int | None = None) -> None:
        lb, ns = latency_bucket(seconds), int(seconds * 1e9) * n
        self.w[W_LATENCY + lb] += n
        self.w[W_LATENCY_SUM_NS] += ns
        r, rw = self._row(row), self.rows
        if r >= 0 and rw is not None:
            rw[r + R_LATENCY + lb] += n
            rw[r + R_LATENCY_SUM_NS] += ns

    def release(self) -> None:
        self.w.release()
        if self.fwd is not None:
            self.fwd.release()
        if self.rows is not None:
            self.rows.release()
