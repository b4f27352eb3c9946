"""Reading counters blocks back: what the metrics exporter sums and decodes.

:func:`read_counters` turns one worker's block (``fastdns/ipc/layout.py``)
into a dict, :func:`sum_counters` adds the dicts of every worker, and
:func:`decode_forward` / :func:`decode_rows` name the position-keyed forward
slots and per-(server, zone) rows by the labels of
``fastdns/ipc/tables.py``. A block no worker has started reads as zeros; a
keyed region whose table word changed during the read is attributed to no
table.
"""

from __future__ import annotations

import operator
import struct

from fastdns.ipc.layout import (
    BLOCK_DNS,
    CACHE_END,
    CACHE_ROWS,
    CACHE_WORDS,
    CR_C_FORWARDED,
    CR_C_HITS_DENIAL,
    CR_C_HITS_SUCCESS,
    CR_ENTRIES_DENIAL,
    CR_ENTRIES_SUCCESS,
    CR_EVICTIONS_DENIAL,
    CR_EVICTIONS_SUCCESS,
    CR_HITS_DENIAL,
    CR_HITS_SUCCESS,
    CR_MISSES,
    CR_PREFETCH,
    CR_REQUESTS,
    CR_SERVED_STALE,
    CR_WORDS,
    FAMILIES,
    FS_CONN,
    FS_DURATIONS,
    FS_HC_FAILURES,
    FWD_CONN_PROTOS,
    FWD_END,
    FWD_HIST,
    FWD_RCODES,
    FWD_SLOT_WORDS,
    FWD_WORDS,
    LATENCY_BUCKETS,
    MAGIC,
    N_LAT,
    N_SIZE,
    PLUGIN_END,
    PLUGIN_WORDS,
    PROTOS,
    QTYPE_BUCKETS,
    RCODE_NAMES,
    ROW_DNS,
    ROW_WORDS,
    ROWS_END,
    ROWS_WORDS,
    SIZE_BUCKETS,
    W_BATCHES,
    W_CACHE_ENTRIES_DENIAL,
    W_CACHE_ENTRIES_SUCCESS,
    W_CACHE_EVICTIONS_DENIAL,
    W_CACHE_EVICTIONS_SUCCESS,
    W_CACHE_HITS_DENIAL,
    W_CACHE_HITS_SUCCESS,
    W_CACHE_MISSES,
    W_CACHE_PREFETCH,
    W_CACHE_REQUESTS,
    W_CACHE_ROWS,
    W_CACHE_SERVED_STALE,
    W_CACHE_TABLE,
    W_CC_ENTRIES,
    W_CC_FORWARDED,
    W_CC_HITS_DENIAL,
    W_CC_HITS_SUCCESS,
    W_CC_MISSES,
    W_END,
    W_FWD_BROKEN,
    W_FWD_MAX_CONCURRENT_REJECTS,
    W_FWD_SLOTS,
    W_FWD_TABLE,
    W_GENERATION,
    W_MAGIC,
    W_OVERSIZE,
    W_PID,
    W_PLUGIN_ROWS,
    W_PLUGIN_TABLE,
    W_REMAPS,
    W_ROWS,
    W_ROWS_TABLE,
    W_SEND_ERRORS,
    W_SLOW,
    W_SLOW_FORWARDED,
    W_SLOW_OTHER,
    W_SLOW_POD,
    W_SLOW_REFUSED,
    W_SLOW_SERVFAIL,
    W_TCP_ACCEPTED,
    W_TCP_IDLE_CLOSED,
    W_TCP_REJECTED,
    DnsWords,
)
from fastdns.ipc.tables import fwd_slot_labels, row_labels

# read_counters' "forward": (region word, count) pairs from W_FWD_BROKEN on, the
# shape sum_counters (and any walker of its dicts) already adds like buckets
FWD_ZERO = tuple((i, 0) for i in range(FWD_WORDS))
ROWS_ZERO = tuple((i, 0) for i in range(ROWS_WORDS))
CACHE_ZERO = tuple((i, 0) for i in range(CACHE_WORDS))
PLUGIN_ZERO = tuple((i, 0) for i in range(PLUGIN_WORDS))


def _hist(words: list[int] | tuple[int, ...], start: int, bounds: tuple[float, ...],
          scale: float = 1.0) -> dict:
    """Prometheus-shaped histogram: cumulative (le, count) pairs, sum, count."""
    counts = words[start : start + len(bounds) + 1]
    cum, buckets = 0, []
    for bound, c in zip((*bounds, float("inf")), counts, strict=True):
        cum += c
        buckets.append((float(bound), cum))
    return {"buckets": buckets, "sum": words[start + len(bounds) + 1] * scale, "count": cum}


def _queries(words: list[int], start: int) -> dict[tuple[str, int, str], int]:
    """The query counters from ``start``: one word per (proto, family, qtype
    bucket), in that order (a worker's block and a row lay them out alike)."""
    keys = ((p, f, qt) for p in PROTOS for f in FAMILIES for qt in QTYPE_BUCKETS)
    return {key: words[i] for i, key in enumerate(keys, start)}


def _latency(words: list[int], start: int, sum_word: int) -> dict:
    """The latency histogram: N_LAT bucket words from ``start``, the sum in ns apart."""
    return _hist(words[start : start + N_LAT] + [words[sum_word]], 0, LATENCY_BUCKETS, 1e-9)


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
    cache_table, cache_rows = _region(block, started, W_CACHE_TABLE, W_CACHE_ROWS, CACHE_WORDS,
                                      CACHE_END, CACHE_ZERO)
    plugin_table, plugin_rows = _region(block, started, W_PLUGIN_TABLE, W_PLUGIN_ROWS,
                                        PLUGIN_WORDS, PLUGIN_END, PLUGIN_ZERO)
    return {
        "pid": words[W_PID],
        "generation": words[W_GENERATION],
        "batches": words[W_BATCHES],
        "remaps": words[W_REMAPS],
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
            "c_forwarded": words[W_CC_FORWARDED],
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
        # the cache rows, raw (decode_cache_rows reads them); "cache_table" is the
        # cache_hash of the tables.cache_table they describe
        "cache_table": cache_table,
        "cache_rows": list(cache_rows),
        # the plugin counters, raw: word k counts series k of the plugin table
        # whose counting.plugin_hash "plugin_table" is
        "plugin_table": plugin_table,
        "plugin_rows": list(plugin_rows),
        "send_errors": words[W_SEND_ERRORS],
        "oversize": words[W_OVERSIZE],
        **_dns(words, BLOCK_DNS),
    }


_NOT_SUMMED = ("pid", "generation", "forward_table", "rows_table", "cache_table",
               "plugin_table")


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


def _dns(words: list[int], at: DnsWords) -> dict:
    """The DNS words of a block (``BLOCK_DNS``) or of a row (``ROW_DNS``)."""
    return {
        "queries": _queries(words, at.queries),
        "responses": dict(zip(RCODE_NAMES,
                              words[at.responses : at.responses + len(RCODE_NAMES)],
                              strict=True)),
        "do_requests": words[at.do],
        "request_size": {p: _hist(words, at.req_size + k * (N_SIZE + 1), SIZE_BUCKETS)
                         for k, p in enumerate(PROTOS)},
        "response_size": {p: _hist(words, at.resp_size + k * (N_SIZE + 1), SIZE_BUCKETS)
                          for k, p in enumerate(PROTOS)},
        "latency": _latency(words, at.latency, at.latency_sum_ns),
    }


def decode_cache_rows(rows: list[tuple[int, int]], n: int) -> list[dict]:
    """The first ``n`` cache rows of read_counters/sum_counters' ``cache_rows``, shaped
    as the ``cache`` dict's CoreDNS counts: the C side's hits are hits and
    requests, its forwarded misses misses and requests (as in CoreDNS, where
    every query through the plugin is one)."""
    words = list(map(_count, rows))
    out = []
    for k in range(min(n, CACHE_ROWS)):
        w = words[k * CR_WORDS : (k + 1) * CR_WORDS]
        c_hits = {"success": w[CR_C_HITS_SUCCESS], "denial": w[CR_C_HITS_DENIAL]}
        out.append({
            "requests": w[CR_REQUESTS] + c_hits["success"] + c_hits["denial"]
            + w[CR_C_FORWARDED],
            "misses": w[CR_MISSES] + w[CR_C_FORWARDED],
            "hits": {"success": w[CR_HITS_SUCCESS] + c_hits["success"],
                     "denial": w[CR_HITS_DENIAL] + c_hits["denial"]},
            "prefetch": w[CR_PREFETCH], "served_stale": w[CR_SERVED_STALE],
            "entries": {"success": w[CR_ENTRIES_SUCCESS], "denial": w[CR_ENTRIES_DENIAL]},
            "evictions": {"success": w[CR_EVICTIONS_SUCCESS],
                          "denial": w[CR_EVICTIONS_DENIAL]},
        })
    return out


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
            out[label] = _dns(w, ROW_DNS)
    return out
