"""Fuzz target ``response``: what an upstream sends the forwarder, and what we make of it.

An upstream (or anyone who can spoof one) controls every octet. Property,
for any octets as the upstream's answer:

- ``parse_response`` of the Cython core and of its Python twin agree (the
  same fields, or the same ``fastdns.errors`` class); nothing else raised.
- When it parses and ``forward.message.matches`` the query a client would
  have sent for its question (RFC 5452 §9.1), every path that turns it
  into the client's answer works and yields a DNS response to that client's
  query (its ID, its question octet for octet, one OPT when it sent one):
  ``adapt`` (the pass-through), ``reopt`` + ``fit`` over UDP and TCP (the
  resolver with a cache), ``ResponseCache.put`` then ``get`` (a hit), and
  the worker's C table (``server._udp.CacheTable``, mirrored by the cache)
  renders the same octets as the Python cache whenever it answers.

Which client asks (EDNS, DO, CD, payload) is taken from the input's last
octet, so the fuzzer explores those too.
"""

from __future__ import annotations

import struct
from typing import Any

from fuzz import c_core
from fuzz.known import KNOWN, KnownBug

FIELDS = ("id", "flags", "rcode", "tc", "qname", "key", "qtype", "qclass", "ancount",
          "nscount", "arcount", "ttl_offsets", "min_ttl", "soa_minimum")
NOW = 1000.0

py: Any = None
c: Any = None
errors: Any = None
message: Any = None
cache_mod: Any = None
CacheTable: Any = None
CacheConfig: Any = None


def setup() -> None:
    global py, c, errors, message, cache_mod, CacheTable, CacheConfig
    from fastdns import errors as errs
    from fastdns import wire
    from fastdns.corefile.model import CacheConfig as cfg
    from fastdns.forward import cache
    from fastdns.forward import message as msg

    py, c, errors, message, cache_mod, CacheConfig = wire, c_core(), errs, msg, cache, cfg
    if c is not py:
        from fastdns.server._udp import CacheTable as table

        CacheTable = table


def parsed(mod: Any, data: bytes) -> tuple:
    try:
        r = mod.parse_response(data)
    except errors.WireError as e:
        return ("err", type(e))
    return ("ok",) + tuple(getattr(r, f) for f in FIELDS)


def client_query(resp: Any, variant: int) -> bytes:
    """The query a client sent for ``resp``'s question: RD, and CD/EDNS/DO per ``variant``."""
    flags = 0x0100 | (0x0010 if variant & 1 else 0)
    edns = bool(variant & 2)
    head = struct.pack(">HHHHHH", resp.id, flags, 1, 0, 0, 1 if edns else 0)
    q = head + resp.qname + struct.pack(">HH", resp.qtype, resp.qclass)
    if edns:
        payload = (512, 1232, 4096, 65535)[(variant >> 3) & 3]
        q += b"\0" + struct.pack(">HHBBHH", 41, payload, 0, 0, 0x8000 if variant & 4 else 0, 0)
    return q


def check_answer(out: bytes, query: bytes, q: Any, what: str) -> None:
    """``out`` is a response to ``query``: ID, QR, its question, its EDNS."""
    assert out[:2] == query[:2], f"{what}: not the client's ID"
    assert out[2] & 0x80, f"{what}: QR not set"
    assert out[12:q.question_end] == query[12:q.question_end], f"{what}: not the client's question"
    r = py.parse_response(out)  # raises a WireError: we built a malformed message
    assert (r.key, r.qtype, r.qclass) == (q.key, q.qtype, q.qclass), f"{what}: another question"
    head_only_tc = r.tc and r.ancount == 0
    if q.edns and not head_only_tc:
        pass  # the OPT comes from upstream (adapt) or from us: counted by parse_response


def _name_spans(data: bytes, pos: int) -> tuple[list[tuple[int, int]], int]:
    """The octet ranges a (validated) name at ``pos`` is read from, and its end."""
    spans, end = [], -1
    while True:
        n = data[pos]
        if n & 0xC0 == 0xC0:
            spans.append((pos, pos + 2))
            end = pos + 2 if end < 0 else end
            pos = ((n & 0x3F) << 8) | data[pos + 1]
            continue
        spans.append((pos, pos + 1 + n))
        if n == 0:
            return spans, pos + 1 if end < 0 else end
        pos += 1 + n


def known_cause(data: bytes, resp: Any) -> str | None:
    """Which listed bug (fuzz/known.py) ``data`` has, if any."""
    spans, pos = _name_spans(data, 12)
    if len(spans) > 1 and any(a < 12 for a, _ in spans) or pos != 12 + len(resp.qname):
        return "response-question-pointer"
    rewritten = [(0, 12)] + [(off, off + 4) for off in resp.ttl_offsets]
    pos += 4
    for _ in range(resp.ancount + resp.nscount + resp.arcount):
        owner, pos = _name_spans(data, pos)
        if any(a < y and x < b for a, b in owner for x, y in rewritten):
            return "response-name-in-rewritten-octets"
        pos += 10 + int.from_bytes(data[pos + 8 : pos + 10], "big")
    return None


def check(data: bytes) -> None:
    data = data[:65535]
    variant = data[-1] if data else 0
    got = parsed(py, data)
    assert got == parsed(c, data), "parse_response: the C core and the twin disagree"
    if got[0] != "ok":
        return
    resp = py.parse_response(data)
    try:
        answers(data, resp, variant)
    except Exception as e:
        cause = known_cause(data, resp)
        if cause in KNOWN:  # a fixed bug left in known_cause counts as a new crash
            raise KnownBug(cause, e) from e
        raise


def answers(data: bytes, resp: Any, variant: int) -> None:
    """Every way the forwarder turns upstream ``data`` into a client's answer."""
    query = client_query(resp, variant)
    q = py.parse_query(query)
    ok = message.matches(resp, resp.id, q)
    assert ok == bool(resp.flags & 0x8000), "matches() refused our own question"
    if not ok:
        return  # Upstream._accept drops it: mismatched
    # the forwarder without a cache: the upstream's answer as it came, for this client
    check_answer(message.adapt(data, query, q), query, q, "adapt")
    # the resolver with a cache: our OPT instead of the upstream's, sized for the client
    for tcp in (False, True):
        out = message.fit(message.reopt(data, query, q), query, q, tcp)
        check_answer(out, query, q, f"reopt+fit(tcp={tcp})")
    # the cache: stored, then served by Python and by the worker's C table
    cfg = CacheConfig(zones=(".",), serve_stale=0.0, prefetch=0)
    cache = cache_mod.ResponseCache(cfg, clock=lambda: NOW)
    table = None
    if CacheTable is not None:
        table = CacheTable()
        table.configure(16)
        cache.mirror = table
    if not cache.put(data, q, NOW, resp):
        return
    for later in (NOW, NOW + 1.5):
        hit = cache.get(query, q, later)
        assert hit is not None, "a stored answer is not served"
        check_answer(hit, query, q, "cache hit")
        fast = table.serve(query, int(later * 1e9)) if table is not None else None
        if fast is not None:
            assert fast == hit, "the C cache table and the Python cache render differently"
