"""Fuzz target ``query``: the parsing every packet gets on a worker's fast path.

Property, for any octets:

- ``parse_query`` of the Cython core (``fastdns._wire``, what workers run)
  and of its Python twin (``fastdns.wire``) agree: the same fields, or the
  same ``fastdns.errors`` class; nothing else is raised.
- ``answer`` (one packet) and ``answer_batch`` (the recvmmsg batch the
  workers use) give the same (status, octets, zone) in both, over UDP and
  TCP size limits, against an image the zone compiler built from the demo
  cluster.
- Whatever is sent is a response to that query: its ID, QR set, the
  question echoed octet for octet when one was read, and it parses both
  with ``parse_response`` and with dnspython (RFC 1035 §4.1).

The Python twin is the instrumented side, so it steers the search; the C
core is run on every input as the one that has to agree.
"""

from __future__ import annotations

from array import array
from typing import Any

FIELDS = ("id", "flags", "opcode", "qname", "key", "qtype", "qclass", "question_end",
          "edns", "edns_version", "payload", "do")

py: Any = None
c: Any = None
errors: Any = None
dns_message: Any = None
IMAGE = b""
_batch: dict[str, Any] = {}


def demo_image() -> bytes:
    """The demo cluster compiled under the demo Corefile: real templates, SRV, PTR."""
    from fastdns.control.process import build_compiler
    from fastdns.corefile.config import DEFAULT_DEMO_COREFILE, parse_corefile
    from fastdns.zone.state import demo_path, load_state

    compiler = build_compiler(parse_corefile(DEFAULT_DEMO_COREFILE))
    return bytes(compiler.full(load_state(demo_path()), now=1_700_000_000))


def setup() -> None:
    global py, c, errors, dns_message, IMAGE
    import dns.message

    from fastdns import errors as errs
    from fastdns import wire
    from fuzz import c_core

    py, c, errors, dns_message = wire, c_core(), errs, dns.message
    IMAGE = demo_image()
    for mod in (py, c):
        _batch[mod.__name__] = (bytearray(mod.SLOT), bytearray(mod.SLOT), array("H", [0]))


def parsed(mod: Any, data: bytes) -> tuple:
    try:
        q = mod.parse_query(data)
    except errors.WireError as e:
        return ("err", type(e))
    return ("ok",) + tuple(getattr(q, f) for f in FIELDS)


def batch_one(mod: Any, data: bytes, counter: int) -> tuple[int, bytes | None]:
    """``data`` through ``answer_batch`` as a batch of one: (status, octets)."""
    inbuf, outbuf, outlens = _batch[mod.__name__]
    inbuf[: len(data)] = data
    slow = mod.answer_batch(IMAGE, inbuf, array("H", [len(data)]), outbuf, outlens, counter)
    n = outlens[0]
    assert slow == (n == mod.STATUS_SLOW)
    if n == mod.STATUS_SLOW:
        return mod.ST_SLOW, None
    if n == 0:
        return mod.ST_DROP, None
    return mod.ST_ANSWER, bytes(outbuf[:n])


def check_sent(data: bytes, resp: bytes, pq: tuple) -> None:
    assert resp[:2] == data[:2], "the answer does not carry the query's ID"
    assert resp[2] & 0x80, "an answer without QR"
    if resp[4:6] == b"\0\0":
        # FORMERR/NOTIMP with no readable question: the header alone
        assert len(resp) == 12 and resp[3] & 0xF in (1, 4), resp.hex()
    else:
        qend = pq[FIELDS.index("question_end") + 1] if pq[0] == "ok" else None
        r = py.parse_response(resp)
        if qend is not None:
            assert resp[12:qend] == data[12:qend], "the question is not echoed"
        assert r.qname == data[12 : 12 + len(r.qname)], "the question is not the query's"
    if (resp[2] >> 3) & 0xF == 0:  # dnspython reads UPDATE's zone section its own way
        dns_message.from_wire(resp)  # what a client makes of it


def check(data: bytes) -> None:
    data = data[: py.SLOT]
    pq = parsed(py, data)
    assert pq == parsed(c, data), "parse_query: the C core and the twin disagree"
    counter = int.from_bytes(data[:2], "big")
    for max_size in (0, 65535):
        got = py.answer(IMAGE, data, counter, max_size)
        assert got == c.answer(IMAGE, data, counter, max_size), (
            f"answer(max_size={max_size}): the C core and the twin disagree")
        if got[0] == py.ST_ANSWER:
            check_sent(data, got[1], pq)
        else:
            assert got[1] is None
    # the worker's batch path: the same as answer() over UDP
    single = py.answer(IMAGE, data, counter, 0)[:2]
    assert batch_one(c, data, counter) == single, "answer_batch (C) differs from answer"
    if pq[0] == "ok" or counter % 8 == 0:  # the twin's batch loop is slow; sample it
        assert batch_one(py, data, counter) == single, "answer_batch (py) differs from answer"
