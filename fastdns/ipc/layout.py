"""The shared-memory layout of fastdns, declared once.

Every octet two processes (or Python and the C fast path) read at an agreed
place is declared here: the control segment, its process-level stats words,
each worker's counters block with its forward and per-(server, zone)
regions, and the loop-detection segment. Each region is a table of fields
with sizes (and, where it matters, an alignment); the offsets are computed
from the table, never typed, so moving or growing a field moves everything
after it in every reader at once.

The Cython fast path does not mirror these numbers: ``setup.py`` loads this
module by file path at build time and writes ``fastdns/server/_layout.pxi``
(``pxi()``), which ``_udp.pyx`` includes. This module therefore imports
nothing but the standard library (it runs in an isolated build environment
where fastdns itself is not importable). The tables of docs/internals.md §4
are ``layout_doc.markdown()``'s output::

    python3 -m fastdns.ipc.layout --pxi        # what setup.py generates
    python3 -m fastdns.ipc.layout_doc          # the tables of internals.md §4

All integers are native-endian and naturally aligned; counters are u64
words with a single writer each (plain increments, no atomics).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class Field:
    name: str
    offset: int  # in the region's unit
    size: int  # in the region's unit; 0 = the rest of the segment
    doc: str


class Region:
    """Consecutive fields of one segment or block; ``field`` returns the offset
    (``words`` and ``integers`` the offsets of a run of fields, from a table).

    ``unit`` is ``"octet"`` or ``"word"`` (u64). A field starts where the
    previous one ended, rounded up to ``align`` units, or at ``at`` (a
    position that must not overlap what came before).
    """

    def __init__(self, name: str, unit: str, doc: str) -> None:
        self.name = name
        self.unit = unit
        self.doc = doc
        self.fields: list[Field] = []
        self.end = 0

    def field(self, name: str, size: int = 1, doc: str = "", *, align: int = 1,
              at: int | None = None) -> int:
        start = self.end if at is None else at
        start = -(-start // align) * align
        if start < self.end:
            raise ValueError(f"{self.name}.{name} at {start} overlaps the field before it")
        self.fields.append(Field(name, start, size, doc))
        self.end = start + size
        return start

    def words(self, *table: tuple[str, str], align: int = 1) -> tuple[int, ...]:
        """Fields of one unit each, one after the other, from a table of
        ``(name, doc)`` rows (the first rounded up to ``align``); their offsets."""
        return tuple(self.field(name, 1, doc, align=align if k == 0 else 1)
                     for k, (name, doc) in enumerate(table))

    def integers(self, *table: tuple[str, int, str]) -> tuple[int, ...]:
        """Integer fields from a table of ``(name, octets, doc)`` rows, each
        naturally aligned (at a multiple of its size); their offsets."""
        return tuple(self.field(name, size, doc, align=size) for name, size, doc in table)

    def pad(self, align: int) -> int:
        """Round the region's end up to ``align`` units; returns the new end."""
        self.end = -(-self.end // align) * align
        return self.end


REGIONS: list[Region] = []


def _region(name: str, unit: str, doc: str) -> Region:
    r = Region(name, unit, doc)
    REGIONS.append(r)
    return r


# -- what the counters count (bucket tables shared by every writer and reader) --

PROTOS = ("udp", "tcp")
FAMILIES = (1, 2)  # CoreDNS's family label: 1 = IPv4, 2 = IPv6
# qtype buckets in word order; the C fast path's qtype_bucket() is generated from it
QTYPES = (("A", 1), ("AAAA", 28), ("SRV", 33), ("PTR", 12), ("TXT", 16), ("NS", 2),
          ("SOA", 6), ("CNAME", 5), ("MX", 15))
QTYPE_BUCKETS = (*(name for name, _ in QTYPES), "other")
N_QTYPES = len(QTYPE_BUCKETS)
QT_OTHER = N_QTYPES - 1
RCODE_NAMES = (
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN",
    "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE", "RCODE11", "RCODE12", "RCODE13",
    "RCODE14", "RCODE15", "BADVERS", "dropped",
)
R_BADVERS = RCODE_NAMES.index("BADVERS")  # any extended rcode (> 15); fastdns only sends BADVERS
R_DROPPED = RCODE_NAMES.index("dropped")
# CoreDNS plugin/metrics/vars/vars.go: sizes use these buckets (octets) ...
SIZE_BUCKETS = (0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16e3, 32e3, 48e3, 64e3)
# ... and durations prometheus.ExponentialBuckets(0.00025, 2, 16) (seconds).
LATENCY_BUCKETS = tuple(0.00025 * 2**k for k in range(16))
LATENCY_FIRST_NS = round(LATENCY_BUCKETS[0] * 1e9)  # the C side doubles this bound
N_Q = len(PROTOS) * len(FAMILIES) * N_QTYPES  # requests [proto][family][qtype]
N_SIZE = len(SIZE_BUCKETS) + 1  # + the +Inf bucket
N_LAT = len(LATENCY_BUCKETS) + 1
SIZE_HIST = len(PROTOS) * (N_SIZE + 1)  # [proto][N_SIZE buckets + sum]

# -- the control segment ``fastdns-<instance>-ctl`` (octets) ---------------------

MAX_WORKERS = 64
NAME_MAX = 64  # octets of an image segment name
STATS_WORDS = 8
COUNTERS_SIZE = 65536  # octets of one worker's counters block

CTL = _region("control segment", "octet", "``fastdns-<instance>-ctl``, created by the "
              "supervisor; the publish protocol is ``fastdns/ipc/shm.py``'s")
CTL_GENERATION = CTL.field("CTL_GENERATION", 8, "u64 generation published (0 = none yet)")
CTL_NAME_LEN = CTL.field("CTL_NAME_LEN", 4, "u32 length of the current image's name")
CTL_NAME = CTL.field("CTL_NAME", NAME_MAX, "the current image segment's name (ASCII)")
CTL_NWORKERS = CTL.field("CTL_NWORKERS", 4, "u32 nworkers", align=64)
CTL_COUNTERS_SIZE = CTL.field("CTL_COUNTERS_SIZE", 4, "u32 COUNTERS_SIZE (a layout check)")
CTL_MAPPED = CTL.field("CTL_MAPPED", 8 * MAX_WORKERS,
                       "u64 [MAX_WORKERS]: generation worker i has mapped (0 = none)", align=64)
STATS_OFFSET = CTL.field("STATS_OFFSET", 8 * STATS_WORDS,
                         "u64 [STATS_WORDS]: process-level stats (words ``S_*``)")
COUNTERS_OFFSET = CTL.field("COUNTERS_OFFSET", 0,
                            "worker i's counters block at + i*COUNTERS_SIZE", align=1024)

# -- the stats words at STATS_OFFSET (u64 word indices; one writing process each) --

STATS = _region("stats words", "word", "at ``STATS_OFFSET``; each word has one writing "
                "process; they outlive a control-process restart")
(S_WORKER_RESTARTS, S_CONTROL_RESTARTS, S_RELOAD_FAILED, S_SUPERVISOR_PID, S_CONTROL_PID,
 S_LAMEDUCK, S_CONFIG_VERSION) = STATS.words(
    ("S_WORKER_RESTARTS", "writer: supervisor (a worker was respawned)"),
    ("S_CONTROL_RESTARTS", "writer: supervisor (the control process was respawned)"),
    ("S_RELOAD_FAILED", "writer: the process that validates a reloaded Corefile "
                        "(coredns_reload_failed_total)"),
    ("S_SUPERVISOR_PID", "writer: supervisor (process_* metrics)"),
    ("S_CONTROL_PID", "writer: control process (process_* metrics)"),
    ("S_LAMEDUCK", "writer: supervisor; non-zero from SIGTERM until it stops the children "
                   "(/ready answers 503)"),
    ("S_CONFIG_VERSION", "writer: supervisor; the version of the Corefile in force (workers "
                         "re-read it when it moves)"),
)

# -- one worker's counters block (u64 word indices) ------------------------------

MAGIC = 0x46444E53_43540001  # "FDNSCT" + layout version 1: the block was started

CB = _region("counters block", "word", "worker i's, at ``COUNTERS_OFFSET + "
             "i*COUNTERS_SIZE``; written by that worker only (C fast path and Python)")
(W_MAGIC, W_PID, W_GENERATION, W_BATCHES, W_REMAPS, W_DO, W_SLOW, W_SLOW_POD, W_SLOW_REFUSED,
 W_SLOW_SERVFAIL, W_SLOW_OTHER, W_TCP_ACCEPTED, W_TCP_REJECTED, W_TCP_IDLE_CLOSED, W_SEND_ERRORS,
 W_OVERSIZE) = CB.words(
    ("W_MAGIC", "MAGIC once the worker started the block"),
    ("W_PID", "the worker's pid"),
    ("W_GENERATION", "generation this worker serves"),
    ("W_BATCHES", "UDP recvmmsg batches that returned packets"),
    ("W_REMAPS", "image remaps after a publish"),
    ("W_DO", "queries with the EDNS DO bit"),
    ("W_SLOW", "packets handed to the Python slow path"),
    ("W_SLOW_POD", "... answered by pod synthesis"),
    ("W_SLOW_REFUSED", "... REFUSED (outside every zone)"),
    ("W_SLOW_SERVFAIL", "... SERVFAIL after an internal error"),
    ("W_SLOW_OTHER", "... any other slow answer"),
    ("W_TCP_ACCEPTED", "TCP connections accepted"),
    ("W_TCP_REJECTED", "closed at once: over the connection cap"),
    ("W_TCP_IDLE_CLOSED", "closed for idleness"),
    ("W_SEND_ERRORS", "answers the kernel refused (also dropped)"),
    ("W_OVERSIZE", "datagrams larger than a receive slot (dropped)"),
)
# forward + cache: the C fast path writes W_CC_* (its cache table); the worker
# copies the Python objects' counters into the others on its 0.5 s timer
(W_SLOW_FORWARDED, W_CC_HITS_SUCCESS, W_CC_HITS_DENIAL, W_CC_MISSES, W_CC_ENTRIES, W_CC_FORWARDED,
 W_CACHE_REQUESTS, W_CACHE_MISSES, W_CACHE_HITS_SUCCESS, W_CACHE_HITS_DENIAL, W_CACHE_PREFETCH,
 W_CACHE_SERVED_STALE, W_CACHE_ENTRIES_SUCCESS, W_CACHE_ENTRIES_DENIAL, W_CACHE_EVICTIONS_SUCCESS,
 W_CACHE_EVICTIONS_DENIAL, W_FWD_MAX_CONCURRENT_REJECTS) = CB.words(
    ("W_SLOW_FORWARDED", "slow packets a forwarder answered"),
    ("W_CC_HITS_SUCCESS", "C cache hits, success store"),
    ("W_CC_HITS_DENIAL", "C cache hits, denial store"),
    ("W_CC_MISSES", "C cache lookups that missed"),
    ("W_CC_ENTRIES", "entries in the C cache table now"),
    ("W_CC_FORWARDED", "misses the C forwarder answered through the cache: its requests and "
                       "misses (coredns_cache_*)"),
    ("W_CACHE_REQUESTS", "Python ResponseCache lookups"),
    ("W_CACHE_MISSES", "... that missed"),
    ("W_CACHE_HITS_SUCCESS", "... hits, success"),
    ("W_CACHE_HITS_DENIAL", "... hits, denial"),
    ("W_CACHE_PREFETCH", "prefetches"),
    ("W_CACHE_SERVED_STALE", "stale answers served"),
    ("W_CACHE_ENTRIES_SUCCESS", "gauge"),
    ("W_CACHE_ENTRIES_DENIAL", "gauge"),
    ("W_CACHE_EVICTIONS_SUCCESS", "evictions, success"),
    ("W_CACHE_EVICTIONS_DENIAL", "evictions, denial"),
    ("W_FWD_MAX_CONCURRENT_REJECTS", "forward queries refused over max_concurrent"),
)
# the DNS words (the row layout below repeats them per (server, zone))
W_QUERIES = CB.field("W_QUERIES", N_Q, "requests [proto][family][qtype]")
W_RESPONSES = CB.field("W_RESPONSES", len(RCODE_NAMES),
                       "responses [rcode 0..15, BADVERS, dropped]")
W_REQ_SIZE = CB.field("W_REQ_SIZE", SIZE_HIST, "request sizes [proto][N_SIZE buckets + "
                      "sum]", align=8)
W_RESP_SIZE = CB.field("W_RESP_SIZE", SIZE_HIST, "response sizes, the same shape")
W_LATENCY = CB.field("W_LATENCY", N_LAT, "latency [N_LAT buckets]")
W_LATENCY_SUM_NS = CB.field("W_LATENCY_SUM_NS", 1, "latency sum in ns")
W_END = CB.end  # the words every block has (a bare test block is this long)
# the image protocol's words (fastdns/ipc/shm.py: what a worker still reads)
HOLD_ATTACHING_WORD = CB.field("HOLD_ATTACHING_WORD", doc="generation the worker is "
                               "attaching now (stored before it reads the name)", at=250)
HOLD_LINGERING_WORD = CB.field("HOLD_LINGERING_WORD", doc="oldest generation a live view "
                               "still reads after the worker let go of it")

# per-upstream forward region: slot k describes the k-th ``to`` of tables.upstream_table
FWD_MAX_UPSTREAMS = 16  # slots 0..15 exact; slot 16 is the catch-all ("other")
FWD_SLOTS = FWD_MAX_UPSTREAMS + 1
FWD_RCODES = 16  # the 4-bit header rcode of an upstream answer
FWD_CONN_PROTOS = ("udp", "tcp")
FWD_HIST = len(LATENCY_BUCKETS) + 2  # [17 non-cumulative bucket counts][sum in ns]

SLOT = _region("forward slot", "word", "at ``W_FWD_SLOTS + k*FWD_SLOT_WORDS``; "
               "CoreDNS's coredns_proxy_* series of one ``to``")
FS_HC_FAILURES = SLOT.field("FS_HC_FAILURES", doc="health-check failures")
FS_CONN = SLOT.field("FS_CONN", 2 * len(FWD_CONN_PROTOS),
                     "connection cache [proto][hit, miss]")
FS_DURATIONS = SLOT.field("FS_DURATIONS", FWD_RCODES * FWD_HIST,
                          "[rcode][FWD_HIST]: duration histograms by answer rcode")
FWD_SLOT_WORDS = SLOT.end

W_FWD = W_FWD_TABLE = CB.field("W_FWD_TABLE", doc="tables.table_hash of the slot table; "
                               "0 = none / being rewritten", align=8)
W_FWD_BROKEN = CB.field("W_FWD_BROKEN", doc="coredns_forward_healthcheck_broken_total")
W_FWD_SLOTS = CB.field("W_FWD_SLOTS", FWD_SLOTS * FWD_SLOT_WORDS,
                       "[FWD_SLOTS] forward slots", align=8)
FWD_END = CB.end
FWD_WORDS = FWD_END - W_FWD_BROKEN  # what counters_reader returns as "forward"

# per-(server, zone) rows: row k counts the queries of the k-th pair of tables.row_table
ROW_MAX = 16  # rows 0..15 exact; row 16 is the catch-all ("other", "other")
ROWS = ROW_MAX + 1

ROW = _region("row", "word", "at ``W_ROWS + k*ROW_WORDS``; the totals' DNS words for "
              "the queries of one (server, zone)")
R_QUERIES = ROW.field("R_QUERIES", N_Q, "requests [proto][family][qtype]")
R_RESPONSES = ROW.field("R_RESPONSES", len(RCODE_NAMES), "responses [rcode]")
R_DO = ROW.field("R_DO", 1, "queries with the DO bit")
R_REQ_SIZE = ROW.field("R_REQ_SIZE", SIZE_HIST, "request sizes")
R_RESP_SIZE = ROW.field("R_RESP_SIZE", SIZE_HIST, "response sizes")
R_LATENCY = ROW.field("R_LATENCY", N_LAT, "latency buckets")
R_LATENCY_SUM_NS = ROW.field("R_LATENCY_SUM_NS", 1, "latency sum in ns")
ROW_WORDS = ROW.pad(8)  # whole 64-octet lines, so a row shares none with the next


class DnsWords(NamedTuple):
    """Where the DNS words start: a counters block and a row lay them out alike."""

    queries: int
    responses: int
    do: int
    req_size: int
    resp_size: int
    latency: int
    latency_sum_ns: int


BLOCK_DNS = DnsWords(W_QUERIES, W_RESPONSES, W_DO, W_REQ_SIZE, W_RESP_SIZE, W_LATENCY,
                     W_LATENCY_SUM_NS)
ROW_DNS = DnsWords(R_QUERIES, R_RESPONSES, R_DO, R_REQ_SIZE, R_RESP_SIZE, R_LATENCY,
                   R_LATENCY_SUM_NS)

W_ROWS_TABLE = CB.field("W_ROWS_TABLE", doc="tables.rows_hash of the row table; 0 = none",
                        align=8)
W_ROWS = CB.field("W_ROWS", ROWS * ROW_WORDS, "[ROWS] rows (cache-line aligned)", align=8)
ROWS_END = CB.end
ROWS_WORDS = ROWS_END - W_ROWS

# the C forwarder (server/_udp_forward.pxi): misses it forwards from the fast
# path itself; its per-upstream series go into the forward region above through
# the worker's BlockRouter.export (server/cforward.py), these words it writes here
(W_CFWD_SENT, W_CFWD_ANSWERED, W_CFWD_MISMATCHED, W_CFWD_TIMEOUTS, W_CFWD_SERVFAIL, W_CFWD_REFUSED,
 W_CFWD_HANDED, W_CFWD_JOINED, W_CFWD_PENDING) = CB.words(
    ("W_CFWD_SENT", "queries the C forwarder sent upstream (retries included)"),
    ("W_CFWD_ANSWERED", "clients it answered with an upstream answer"),
    ("W_CFWD_MISMATCHED", "upstream datagrams dropped: unknown ID, wrong question, not QR, "
                          "unparsable"),
    ("W_CFWD_TIMEOUTS", "attempts that timed out or were refused"),
    ("W_CFWD_SERVFAIL", "clients answered SERVFAIL: every attempt failed"),
    ("W_CFWD_REFUSED", "clients answered REFUSED: max_concurrent"),
    ("W_CFWD_HANDED", "queries handed back to Python after an upstream answer "
                      "(TC, next/failover rcode, oversize)"),
    ("W_CFWD_JOINED", "misses that joined a query in flight for the same cache key"),
    ("W_CFWD_PENDING", "gauge: queries in flight now"),
    align=8,
)
CFWD_END = CB.end

# per ``cache`` stanza: row k holds the coredns_cache_* counts of the k-th cache
# of tables.cache_table, so each is reported with its own server, zones and
# view labels (CoreDNS plugin/cache/metrics.go). The worker's 0.5 s export
# writes the Python ResponseCache's words; the C fast path adds its hits and
# the C forwarder its misses live (CR_C_*). Row k is also cache number k of
# the shared table (ResponseCache.attach), so a C hit knows its row.
CACHE_ROWS = 16  # == CT_MAX_CACHES (checked below): one row per cache of the table
CR = _region("cache row", "word", "at ``W_CACHE_ROWS + k*CR_WORDS``; the counts of the "
             "k-th cache of tables.cache_table")
(CR_REQUESTS, CR_MISSES, CR_HITS_SUCCESS, CR_HITS_DENIAL, CR_PREFETCH, CR_SERVED_STALE,
 CR_ENTRIES_SUCCESS, CR_ENTRIES_DENIAL, CR_EVICTIONS_SUCCESS, CR_EVICTIONS_DENIAL,
 CR_C_HITS_SUCCESS, CR_C_HITS_DENIAL, CR_C_FORWARDED) = CR.words(
    ("CR_REQUESTS", "Python ResponseCache lookups (worker export)"),
    ("CR_MISSES", "... that missed"),
    ("CR_HITS_SUCCESS", "... hits, success"),
    ("CR_HITS_DENIAL", "... hits, denial"),
    ("CR_PREFETCH", "prefetches"),
    ("CR_SERVED_STALE", "stale answers served"),
    ("CR_ENTRIES_SUCCESS", "gauge (the shared table's: worker 0)"),
    ("CR_ENTRIES_DENIAL", "gauge"),
    ("CR_EVICTIONS_SUCCESS", "evictions, success"),
    ("CR_EVICTIONS_DENIAL", "evictions, denial"),
    ("CR_C_HITS_SUCCESS", "C fast path hits, success (live)"),
    ("CR_C_HITS_DENIAL", "C fast path hits, denial (live)"),
    ("CR_C_FORWARDED", "misses the C forwarder answered (live)"),
)
CR_WORDS = CR.end
W_CACHE_TABLE = CB.field("W_CACHE_TABLE", doc="tables.table_hash of the cache table; "
                         "0 = none / being rewritten", align=8)
W_CACHE_ROWS = CB.field("W_CACHE_ROWS", CACHE_ROWS * CR_WORDS, "[CACHE_ROWS] cache rows")
CACHE_END = CB.end
CACHE_WORDS = CACHE_END - W_CACHE_ROWS

# the plugins' own counters (coredns_acl_*, coredns_template_matches_total,
# coredns_autopath_success_total, coredns_dns64_requests_translated_total):
# word k counts series k of plugins/counting.py ``plugin_table`` (a family and
# its label values, fixed by the Corefile). The worker's 0.5 s export writes
# them: its Python counts and its C hooks', on top of the base the region held
# when it took the Corefile in (the reload rule of the cache rows).
PLUGIN_ROWS = 64
W_PLUGIN_TABLE = CB.field("W_PLUGIN_TABLE", doc="counting.plugin_hash of the plugin table; "
                          "0 = none / being rewritten", align=8)
W_PLUGIN_ROWS = CB.field("W_PLUGIN_ROWS", PLUGIN_ROWS, "[PLUGIN_ROWS] plugin counters")
PLUGIN_END = CB.end
PLUGIN_WORDS = PLUGIN_END - W_PLUGIN_ROWS

# -- the loop-detection segment ``fastdns-<instance>-loop`` (octets) ------------

MAX_PROBES = 8
LOOP = _region("loop segment", "octet", "``fastdns-<instance>-loop``, written by the "
               "supervisor before the workers start (control/loopdetect.py)")
LOOP_ARMED = LOOP.field("LOOP_ARMED", 8, "u64: 1 while probing; 0 = counting off")
LOOP_BASE = LOOP.field("LOOP_BASE", 8 * MAX_PROBES,
                       "u64 [MAX_PROBES]: probe p's hits when it was last sent (supervisor)")
LOOP_HITS = LOOP.field("LOOP_HITS", 8 * MAX_PROBES * MAX_WORKERS,
                       "u64 [MAX_PROBES][MAX_WORKERS]: hits of probe p seen by worker i",
                       align=128)
LOOP_TEXT = LOOP.field("LOOP_TEXT", 2048, "the probes as lines ``qname zone listen``",
                       align=2048)
LOOP_SIZE = LOOP.end


# -- the shared response cache ``fastdns-<instance>-cache-<tag>`` (octets) -------
# One table for every worker of a host (fastdns/ipc/cachetable.py creates,
# names and unlinks it; server/_udp_cache.pxi reads and writes it): a header,
# then CT_NBUCKETS buckets of CT_WAYS fixed-size slots. Each slot is guarded
# by its CS_SEQ word (a seqlock: low 32 bits the sequence, odd while a
# writer holds the slot; high 32 bits that writer's pid, 0 when even).

CT_MAGIC_VALUE = 0x46444E53_43430001  # "FDNSCC" + layout version 1
CT_WAYS_N = 8  # slots per bucket: insert and evict look at one bucket only
CT_SLOT_OCTETS = 1024  # one slot; an entry that does not fit stays per worker
CT_MAX_CACHES = 16  # ``cache`` stanzas one table serves (one capacity pair each)

CT = _region("cache segment", "octet", "``fastdns-<instance>-cache-<tag>``, created by "
             "the first worker that needs it; fastdns/ipc/cachetable.py")
CT_MAGIC = CT.field("CT_MAGIC", 8, "u64 CT_MAGIC_VALUE, stored last by the creator")
CT_WAYS = CT.field("CT_WAYS", 4, "u32 slots per bucket (a layout check)")
CT_SLOT_SIZE = CT.field("CT_SLOT_SIZE", 4, "u32 octets per slot (a layout check)")
CT_NBUCKETS = CT.field("CT_NBUCKETS", 8, "u64 buckets")
CT_TOOBIG = CT.field("CT_TOOBIG", 8, "u64 entries refused: larger than a slot")
CT_CAPACITY = CT.field("CT_CAPACITY", 8 * 2 * CT_MAX_CACHES,
                       "u64 [CT_MAX_CACHES][success, denial] capacities", align=64)
CT_COUNT = CT.field("CT_COUNT", 8 * 2 * CT_MAX_CACHES,
                    "u64 [CT_MAX_CACHES][success, denial] entries now (atomic adds)", align=64)
CT_EVICTIONS = CT.field("CT_EVICTIONS", 8 * 2 * CT_MAX_CACHES,
                        "u64 [CT_MAX_CACHES][success, denial] evictions (atomic adds)",
                        align=64)
CT_SLOTS = CT.field("CT_SLOTS", 0, "slot (b, w) at + (b*CT_WAYS + w)*CT_SLOT_SIZE",
                    align=4096)

CS = _region("cache slot", "octet", "one slot of the cache segment; every field but "
             "CS_HITS and CS_LAST_HIT_NS is read under the CS_SEQ seqlock")
(CS_SEQ, CS_HASH, CS_KIND, CS_CACHE, CS_KEEPTTL, CS_RCODE, CS_KEYLEN, CS_BODYLEN, CS_NOFFSETS,
 CS_QEND, CS_TTL, CS_STORED_NS, CS_UNTIL_NS, CS_EXPIRES_NS, CS_DEAD_NS, CS_PREFETCH_NS, CS_HITS,
 CS_LAST_HIT_NS) = CS.integers(
    ("CS_SEQ", 8, "u64 seqlock word (see above)"),
    ("CS_HASH", 8, "u64 FNV-1a of the key; 0 = empty"),
    ("CS_KIND", 1, "u8 0 empty, 1 success, 2 denial"),
    ("CS_CACHE", 1, "u8 which ``cache`` stanza owns it (0..CT_MAX_CACHES-1)"),
    ("CS_KEEPTTL", 1, "u8 1: serve the original TTL (keepttl)"),
    ("CS_RCODE", 2, "u16 the answer's rcode"),
    ("CS_KEYLEN", 2, "u16 octets of the key"),
    ("CS_BODYLEN", 2, "u16 octets of the stored message"),
    ("CS_NOFFSETS", 2, "u16 TTL offsets after the message"),
    ("CS_QEND", 2, "u16 offset just past the question in the message"),
    ("CS_TTL", 4, "u32 the original TTL"),
    ("CS_STORED_NS", 8, "i64 CLOCK_MONOTONIC ns when stored"),
    ("CS_UNTIL_NS", 8, "i64 the C path serves it while now < this"),
    ("CS_EXPIRES_NS", 8, "i64 fresh while now < this"),
    ("CS_DEAD_NS", 8, "i64 of no use after this (expiry + serve_stale)"),
    ("CS_PREFETCH_NS", 8, "i64 the prefetch frequency window"),
    ("CS_HITS", 8, "u64 hits within the window (advisory, no seqlock)"),
    ("CS_LAST_HIT_NS", 8, "i64 the last hit (advisory, no seqlock)"),
)
CS_DATA = CS.field("CS_DATA", 0, "key, message, then u16 TTL offsets (native order), "
                   "to the slot's end", align=8)
CS_DATA_MAX = CT_SLOT_OCTETS - CS_DATA


def _check() -> None:
    g = globals()
    for region in REGIONS:
        for f in region.fields:
            assert g[f.name] == f.offset, f.name
    assert W_END <= HOLD_ATTACHING_WORD < HOLD_LINGERING_WORD < W_FWD
    assert PLUGIN_END * 8 <= COUNTERS_SIZE
    assert CACHE_ROWS == CT_MAX_CACHES
    assert STATS.end <= STATS_WORDS
    assert CS_DATA_MAX >= 512 + 260


_check()

# -- generators ----------------------------------------------------------------

# The names the C fast path uses, besides every counters-block, row and
# control-segment field.
_C_SCALARS: tuple[str, ...] = (
              "W_END", "N_QTYPES", "QT_OTHER", "R_BADVERS", "R_DROPPED", "N_SIZE", "N_LAT",
              "ROW_WORDS", "ROWS", "ROW_MAX", "ROWS_END", "LATENCY_FIRST_NS")
_C_REGIONS: tuple[Region, ...] = (CTL, CB, ROW, CR)
_C_REGIONS += (CT, CS)  # the shared response cache
_C_SCALARS += ("CT_WAYS_N", "CT_SLOT_OCTETS", "CT_MAX_CACHES", "CS_DATA_MAX", "CR_WORDS",
                "CACHE_ROWS")


def pxi() -> str:
    """The Cython include ``setup.py`` writes to ``fastdns/server/_layout.pxi``."""
    g = globals()
    out = [
        "# Generated by fastdns/ipc/layout.py (python3 -m fastdns.ipc.layout --pxi)",
        "# at build time; do not edit. The shared-memory layout as the UDP fast",
        "# path sees it (docs/internals.md section 4).",
        "",
        "cdef enum:",
    ]
    for region in _C_REGIONS:
        out.append(f"    # {region.name} ({region.unit}s)")
        out.extend(f"    {f.name} = {f.offset}" for f in region.fields)
    out.append("    # sizes")
    out.extend(f"    {name} = {g[name]}" for name in _C_SCALARS)
    out.append(f"    N_SIZE_BOUNDS = {len(SIZE_BUCKETS)}")
    out.append(f"    N_LAT_BOUNDS = {len(LATENCY_BUCKETS)}")
    bounds = ", ".join(str(int(b)) for b in SIZE_BUCKETS)
    out += [
        "",
        f"cdef int SIZE_BOUNDS[{len(SIZE_BUCKETS)}]",
        f"SIZE_BOUNDS[:] = [{bounds}]",
        "",
        "",
        "cdef inline int qtype_bucket(unsigned int qtype) noexcept nogil:",
        '    """The bucket of ``qtype`` in the [qtype] words (layout.QTYPES, then other)."""',
    ]
    for i, (name, code) in enumerate(QTYPES):
        out += [f"    if qtype == {code}:  # {name}", f"        return {i}"]
    out += ["    return QT_OTHER", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m fastdns.ipc.layout",
                                 description="Print the Cython include generated from the "
                                 "layout (the docs' tables: python3 -m fastdns.ipc.layout_doc).")
    ap.add_argument("--pxi", action="store_true", required=True, help="the Cython include")
    ap.parse_args(argv)
    sys.stdout.write(pxi())
    return 0


if __name__ == "__main__":
    sys.exit(main())
