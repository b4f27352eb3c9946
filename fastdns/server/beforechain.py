"""The plugins' ``before`` hooks, run in Python for one query (fastdns/plugins/spec.py ``Before``).

Plugins that decide per query before the image lookup (acl, template,
rewrite, autopath) give a ``before`` hook for the Python paths and a C
pre-lookup hook for the UDP fast path (server/_udp.pyx ``set_prelookup``).
This module runs the Python side for TCP, for the pure-Python UDP path,
and for each UDP packet a C hook handed on (zone ``ZONE_PRELOOKUP``): the
hooks of the block serving the name, in plugin.cfg order, until one
answers. A hook that rewrites the query (``spec.Rewritten``) passes the new
query on to the next hook and to the lookup, and its ``after`` reverts the
answer, last rewrite first, including an answer the forwarder sends later
(``wrap``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fastdns import errors as wire_errors
from fastdns.codec import wire
from fastdns.constants import Rcode
from fastdns.names import key_text
from fastdns.plugins.spec import Lookup, Pending, Plugin, Rewritten
from fastdns.server.slowpath import DEFERRED, Deferred
from fastdns.server.sockets import TCP, UDP

#: the zone the C fast path hands a packet on with when a pre-lookup hook
#: said PRE_SLOW (server/_udp.pyx ZONE_PRELOOKUP)
ZONE_PRELOOKUP = -3

log = logging.getLogger(__name__)

#: The image this worker answers from, for the ``before`` hooks that look
#: names up themselves (autopath walks the search path in it); the worker
#: sets it when it starts serving. Returns the image buffer or None.
image_of: Callable[[], Any] = lambda: None  # noqa: E731 - the worker sets its own


def image_answer(data: bytes, tcp: bool) -> bytes | None:
    """The snapshot image's own answer to ``data`` (None: it has none of its own,
    the query goes to the slow path or the forwarder)."""
    image = image_of()
    if image is None:
        return None
    try:
        status, resp, _zone = wire.answer(image, data, 0, 65535 if tcp else 0)
    except Exception:  # noqa: BLE001 - a lookup that fails has no answer
        return None
    if status != wire.ST_ANSWER or resp is None or resp[3] & 0x40:  # image.TF_EXTERNAL
        return None  # the slow path completes it
    return resp


After = Callable[[bytes, bytes], "bytes | Pending"]
Send = Callable[[bytes | None], None]


@dataclass(frozen=True)
class Verdict:
    """What the chain decided: an ``answer`` (``b""``: drop it), or the query
    to look up (``data``) with the ``afters`` its answer goes through."""

    answer: bytes | None
    data: bytes
    afters: tuple[After, ...] = ()
    #: the block a rewritten query is answered in (None: as its name selects)
    block: Any = None


def run(befores: Sequence[Plugin], block: Any, data: bytes, addr: tuple, tcp: bool) -> Verdict:
    """The ``before`` hooks of ``block`` on ``data``, in order; a query that
    does not parse goes on untouched (the lookup answers FORMERR)."""
    try:
        q = wire.parse_query(data)
    except wire_errors.WireError:
        return Verdict(None, data)
    original = data
    afters: list[After] = []
    pin = None
    for plugin in befores:
        if plugin.before is None or plugin.name not in block.plugins:
            continue
        try:
            got = plugin.before(data, q, addr, tcp, block)
        except Exception:  # a plugin's fault: SERVFAIL, as CoreDNS's chain gives
            log.exception("plugin/%s: failed on a query", plugin.name)
            try:
                return Verdict(wire.error_response(original, None, Rcode.SERVFAIL), data)
            except wire_errors.WireError:
                return Verdict(b"", data)
        if got is None:
            continue
        if isinstance(got, Rewritten):
            if got.data[12:] != data[12:]:
                pin = block
            data = got.data
            if got.after is not None:
                afters.append(got.after)
            try:
                q = wire.parse_query(data)
            except wire_errors.WireError:
                return Verdict(None, original)  # a broken rewrite: as it came
            continue
        return Verdict(now(tuple(afters), original, got) if got else got, data, ())
    return Verdict(None, data, tuple(afters), pin)


@contextmanager
def pinned(worker: Any, block: Any, query: bytes, port: int) -> Iterator[None]:
    """While a rewritten query is looked up: the slow path keeps it in
    ``block`` (server/slowpath.py ``pinned``), not the block its new name
    would select, as CoreDNS runs the rest of the original block's chain;
    a new name outside ``block`` in a block that forwards goes straight to
    its forwarder (the image holds the zones of the name's own block)."""
    slow = getattr(worker, "slow", None)
    config = worker.plugins.config
    servers = config.servers if config is not None else []
    index = next((i for i, b in enumerate(servers) if b is block), None)
    if block is None or slow is None or index is None:
        yield
        return
    slow.pinned = index
    if "forward" in block.plugins:
        try:
            sel = config.select(port or block.port, key_text(wire.parse_query(query).key))
        except wire_errors.WireError:
            sel = None
        slow.direct = sel is None or sel[0] is not block
    try:
        yield
    finally:
        slow.pinned = None
        slow.direct = False


def finish(afters: Sequence[After], original: bytes,
           resp: bytes | None) -> bytes | Pending | None:
    """``resp`` through the ``afters``, last first (None and drops stay as they
    are); a ``Pending`` when one of them needs another lookup first, whose
    work then runs the ``afters`` before it (``settle`` starts it)."""
    if not resp:
        return resp
    for i in range(len(afters) - 1, -1, -1):
        got = afters[i](original, resp)
        if isinstance(got, Pending):
            rest = tuple(afters[:i])
            if not rest:
                return got
            return Pending(_then(got.work, rest, original),
                           now(rest, original, got.answer) or got.answer)
        resp = got
    return resp


def now(afters: Sequence[After], original: bytes, resp: bytes | None) -> bytes | None:
    """``finish`` for a caller that cannot wait: a pending answer as it stands."""
    got = finish(afters, original, resp)
    return got.answer if isinstance(got, Pending) else got


def _then(work: Callable[[Lookup], Awaitable[bytes]], rest: tuple[After, ...],
          original: bytes) -> Callable[[Lookup], Awaitable[bytes]]:
    async def run(lookup: Lookup) -> bytes:
        got = finish(rest, original, await work(lookup))
        if isinstance(got, Pending):
            return await got.work(lookup)
        return got or b""
    return run


def lookup_for(worker: Any, addr: tuple | None, tcp: bool, port: int) -> Lookup:
    """A ``spec.Lookup`` for an ``after`` of a query from ``addr``: another
    query through the ``before`` hooks of its block, the image and the slow
    path, as CoreDNS's plugin/pkg/upstream asks its own server (nothing
    counted: the client's query is counted once)."""

    async def lookup(query: bytes) -> bytes | None:
        afters: tuple[After, ...] = ()
        block = None
        if addr and worker.plugins.befores:
            verdict = worker.plugins.before(query, addr, tcp, port)
            if verdict is not None and verdict.answer is not None:
                return verdict.answer or None
            if verdict is not None:
                query_, afters, block = verdict.data, verdict.afters, verdict.block
            else:
                query_ = query
        else:
            query_ = query
        fut: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

        def got(resp: bytes | None) -> None:
            if not fut.done():
                fut.set_result(resp)

        with pinned(worker, block, query_, port):
            resp = worker.lookup(query_, TCP if tcp else UDP, port, got)
        if isinstance(resp, Deferred):
            resp = await fut
        done = finish(afters, query, resp)
        if isinstance(done, Pending):
            return await done.work(lookup)
        return done

    return lookup


def settle(worker: Any, got: Pending, original: bytes, send: Send | None, addr: tuple | None,
           tcp: bool, port: int) -> bool:
    """Start a pending answer's work; ``send`` gets the final answer. False
    (the caller sends ``got.answer``) when it cannot wait: no ``send``, or the
    slow path's tasks are at their limit."""
    slow = getattr(worker, "slow", None)
    if send is None or slow is None or slow.busy:
        return False
    try:
        q = wire.parse_query(original)
    except wire_errors.WireError:
        return False
    lookup = lookup_for(worker, addr, tcp, port)
    slow.defer(lambda: got.work(lookup), original, q, send)
    return True


def wrap(send: Send | None, original: bytes, afters: Sequence[After], worker: Any = None,
         addr: tuple | None = None, tcp: bool = False, port: int = 0) -> Send | None:
    """``send`` with the ``afters`` applied to the answer it is given."""
    if send is None or not afters:
        return send

    def reverted(resp: bytes | None) -> None:
        got = finish(afters, original, resp)
        if isinstance(got, Pending):
            if settle(worker, got, original, send, addr, tcp, port):
                return
            got = got.answer
        send(got)

    return reverted


def answer(worker: Any, data: bytes, addr: tuple | None, proto: int, family: int, port: int,
           send: Send | None, row: int | None, t0: float) -> bytes | None:
    """The whole answer of TCP and the pure-Python UDP path (``worker``: a
    server.worker.Worker): the ``before`` hooks, then the slow-path answers
    (whoami, loop) for a name the image hands on, then the image and the
    slow path (counted here as ``Worker.answer_py`` counts). Logged here, sent
    by the caller; None when ``send`` gets it later (or it is dropped)."""
    plugins = worker.plugins
    tcp = proto == TCP
    query, afters, block = data, (), None
    if addr and plugins.befores:
        verdict = plugins.before(data, addr, tcp, port)
        if verdict is not None and verdict.answer is not None:
            resp = verdict.answer or None
            worker.counters.query(proto, family, data, row)
            worker.counters.response(proto, resp, row)
            if resp is not None:
                plugins.finished(data, addr, resp, tcp, port, t0)
            return resp
        if verdict is not None:
            query, afters, block = verdict.data, verdict.afters, verdict.block
            send = wrap(send, data, afters, worker, addr, tcp, port)
    if addr and plugins.intercepts:
        resp = worker.intercept(query, addr, tcp, port)
        if resp is not None:
            resp = now(afters, data, resp)
            worker.counters.query(proto, family, data, row)
            worker.counters.response(proto, resp, row)
            plugins.finished(data, addr, resp, tcp, port, t0)
            return resp
    if not afters:
        with pinned(worker, block, query, port):
            resp = worker.answer_py(query, proto, family, port, send, row)
        if resp is not None:
            plugins.finished(data, addr, resp, tcp, port, t0)
        return resp
    c = worker.counters
    c.query(proto, family, query, row)
    with pinned(worker, block, query, port):
        got = worker.lookup(query, proto, port, send)
    if isinstance(got, Deferred):
        return None  # ``send`` (wrapped: the afters) counts and logs it
    done = finish(afters, data, got)
    if isinstance(done, Pending):
        if send is not None and settle(worker, done, data, send, addr, tcp, port):
            return None
        done = done.answer
    c.response(proto, done, row)
    c.latency(time.perf_counter() - t0, 1, row)
    if done is not None:
        plugins.finished(data, addr, done, tcp, port, t0)
    return done


def handed_on(worker: Any, data: bytes, addr: tuple, port: int,
              send: Send | None) -> bytes | Deferred | None:
    """A UDP packet a C pre-lookup hook handed to Python (counted by the fast
    path): the ``before`` hooks, the slow-path answers, then the lookup the
    fast path would have made."""
    plugins = worker.plugins
    query, afters, block = data, (), None
    verdict = plugins.before(data, addr, False, port)
    if verdict is not None and verdict.answer is not None:
        return verdict.answer or None
    if verdict is not None:
        query, afters, block = verdict.data, verdict.afters, verdict.block
        send = wrap(send, data, afters, worker, addr, False, port)
    if plugins.intercepts:
        resp = worker.intercept(query, addr, False, port)
        if resp is not None:
            return now(afters, data, resp)
    with pinned(worker, block, query, port):
        got = worker.lookup(query, UDP, port, send)
    if isinstance(got, Deferred):
        return got
    done = finish(afters, data, got)
    if isinstance(done, Pending):
        if settle(worker, done, data, send, addr, False, port):
            return DEFERRED
        return done.answer
    return done
