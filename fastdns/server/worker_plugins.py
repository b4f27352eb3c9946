"""The per-query plugins a worker runs itself: ``log``, ``errors``, ``debug``, slow-path answers.

The worker builds one ``WorkerPlugins`` from the Corefile in force (and a
new one on reload). Each hook is a no-op when no block uses its plugin, so
a Corefile without them costs nothing per query:

- ``log`` (``fastdns/server/querylog.py``): the UDP fast path hands only
  the answers a rule may want (``FastPath.set_logger``); TCP and forwarded
  answers go through ``log_one``.
- ``errors``: SERVFAIL answers are logged as CoreDNS's errors plugin does
  (``[ERROR] plugin/errors: 2 NAME TYPE: cause``); ``consolidate`` turns
  matching lines into one ``N errors like 'RE' occurred in last D`` line per
  period (``plugin/errors/errors.go``).
- ``debug``: CoreDNS stops recovering panics; fastdns never lets a query
  kill a worker, so here it logs every slow-path failure with its traceback
  (not only the first) and turns on debug logging.
- slow-path answers: every plugin of the registry (fastdns/plugins/registry.py)
  with an ``answer`` hook, in plugin.cfg order, for the queries the image
  passed on, in the block that serves the name (whoami,
  fastdns/plugins/whoami.py). They need the client address.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from fastdns import errors as wire_errors
from fastdns.codec import wire
from fastdns.names import to_text
from fastdns.plugins import counting, registry
from fastdns.plugins.series import plugin_table
from fastdns.plugins.spec import Plugin
from fastdns.server import beforechain
from fastdns.server.beforechain import Verdict
from fastdns.server.querylog import QueryLog, type_text

errlog = logging.getLogger("plugin/errors")

#: the most pre-lookup hooks the fast path chains (server/_udp.pyx MAX_HOOKS)
MAX_HOOKS = 12
#: in ``WorkerPlugins.prelookup``: the C hook that hands every query to Python
ALL_SLOW = object()


class ErrorLog:
    """The errors plugin of one block: log or consolidate SERVFAIL causes."""

    def __init__(self, conf: Any, debug: bool = False) -> None:
        self.patterns = [(c.period, re.compile(c.pattern), c.pattern, c.level)
                         for c in getattr(conf, "consolidate", ())]
        self.debug = debug
        self.counts = [0] * len(self.patterns)
        self.since = [time.monotonic()] * len(self.patterns)

    def report(self, rcode: int, qname: str, qtype: str, cause: str) -> None:
        text = f"{rcode} {qname} {qtype}: {cause}"
        for i, (_p, rx, _t, _l) in enumerate(self.patterns):
            if rx.search(text):
                self.counts[i] += 1
                return
        errlog.error("%s", text)

    def flush(self, now: float | None = None) -> None:
        """Called on the worker's timer: consolidated lines whose period ended."""
        now = time.monotonic() if now is None else now
        for i, (period, _rx, pattern, level) in enumerate(self.patterns):
            if now - self.since[i] >= period:
                if self.counts[i]:
                    lvl = {"warning": logging.WARNING, "error": logging.ERROR,
                           "info": logging.INFO, "debug": logging.DEBUG}.get(level,
                                                                            logging.ERROR)
                    errlog.log(lvl, "%d errors like '%s' occurred in last %s",
                               self.counts[i], pattern, _go_duration(period))
                self.counts[i] = 0
                self.since[i] = now


def _go_duration(s: float) -> str:
    """time.Duration.String() for whole seconds and minutes (30s, 5m0s)."""
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60}m{s % 60}s"
    if s >= 60:
        return f"{s // 60}m{s % 60}s"
    return f"{s}s"


class WorkerPlugins:
    """What one worker runs for the Corefile in force (rebuilt on reload)."""

    def __init__(self, config: Any, port_of_fd: Any = None,
                 loop: tuple[str, int] | None = None) -> None:
        self.config = config
        self.loop: Any = None  # fastdns.control.loopdetect.LoopCounter
        if loop is not None and config is not None and any(
                "loop" in b.plugins for b in config.servers):
            from fastdns.control.loopdetect import LoopCounter

            self.loop = LoopCounter(*loop)
            if not self.loop.probes:
                self.loop = None
        self.qlog = QueryLog(config, port_of_fd) if config is not None else None
        if self.qlog is not None and not self.qlog:
            self.qlog = None
        self.debug = config is not None and any("debug" in b.plugins for b in config.servers)
        self._errors: dict[int, ErrorLog] = {}
        # the registry's slow-path answers some block uses, in plugin.cfg order
        self.answers: list[Plugin] = []
        # the plugins that decide per query before the lookup, in Python
        # (server/beforechain.py), and the C fast path's pre-lookup hooks, in
        # plugin.cfg order (ALL_SLOW: a ``before`` with no C hook here)
        self.befores: list[Plugin] = []
        self.prelookup: list[object] = []
        #: the plugins' metric counts (plugins/counting.py), Python and C
        self.counts = counting.Counts()
        self._ports: set[int] = set()
        if config is not None:
            self._ports = {b.port for b in config.servers}
            self.answers = [p for p in registry.PLUGINS if p.answer is not None
                            and any(p.name in b.plugins for b in config.servers)]
            used = [p for p in registry.PLUGINS
                    if any(p.name in b.plugins for b in config.servers)]
            self.befores = [p for p in used if p.before is not None]
            self.counts = counting.Counts(plugin_table(config))
            for p in used:
                hook = p.prelookup(config) if p.prelookup is not None else None
                if hook is None and p.before is not None:
                    self.prelookup.append(ALL_SLOW)  # Python decides each query
                    break
                if hook is not None:
                    self.prelookup.append(hook)
                    if p.c_counts is not None:
                        self.counts.c_readers.append(
                            lambda p=p, hook=hook: p.c_counts(hook, config))  # type: ignore[misc]
            if len(self.prelookup) > MAX_HOOKS:  # more than the fast path chains
                self.prelookup = [ALL_SLOW]
            for b in config.servers:
                conf = b.plugins.get("errors")
                if conf is not None and id(b.plugins) not in self._errors:
                    self._errors[id(b.plugins)] = ErrorLog(conf, self.debug)
        if self.debug:
            logging.getLogger().setLevel(logging.DEBUG)

    def before(self, data: bytes, addr: Any, tcp: bool, port: int) -> Verdict | None:
        """The ``before`` hooks of the block serving ``data`` (beforechain.py);
        None when no block has one or none serves the name."""
        if not self.befores:
            return None
        try:
            qname = to_text(wire.parse_query(data).qname)
        except wire_errors.WireError:
            return None
        block = self._block(port, qname)
        if block is None:
            return None
        return beforechain.run(self.befores, block, data, addr, tcp)

    @property
    def intercepts(self) -> bool:
        """Whether slow queries must be looked at first (a slow-path answer, an
        armed loop probe)."""
        return bool(self.answers) or (self.loop is not None and self.loop.armed)

    def intercept(self, data: bytes, addr: Any, tcp: bool, port: int) -> bytes | None:
        """Before the slow path: the loop probe count (exits on a loop), the answers."""
        if self.loop is not None:
            try:
                q = wire.parse_query(data)
            except wire_errors.WireError:
                return None
            if self.loop.seen(q.key, q.qtype, addr):
                import os

                from fastdns.control.loopdetect import EXIT_LOOP

                os._exit(EXIT_LOOP)  # CoreDNS: log.Fatalf
        if self.answers:
            return self.answer(data, addr, tcp, port)
        return None

    # which block ----------------------------------------------------------

    def _block(self, port: int, qname: str) -> Any:
        if self.config is None:
            return None
        if port not in self._ports:
            port = next(iter(self._ports))
        got = self.config.select(port, qname)
        return got[0] if got is not None else None

    def _query_block(self, data: bytes, port: int) -> tuple[Any, str, Any]:
        """(parsed query, its name as text, the block serving it); (None, "", None)
        for a query that does not parse."""
        try:
            q = wire.parse_query(data)
        except wire_errors.WireError:
            return None, "", None
        qname = to_text(q.qname)
        return q, qname, self._block(port, qname)

    # hooks ----------------------------------------------------------------

    def fast_path(self, fast: Any) -> None:
        """Tell the UDP fast path what to hand to the log and which pre-lookup
        hook to call (nothing and none: zero cost)."""
        if fast is None or not hasattr(fast, "set_logger"):
            return
        if self.qlog is None:
            fast.set_logger(0, None)
        else:
            fast.set_logger(self.qlog.mask, self.qlog.udp_batch)
        if hasattr(fast, "set_prelookup"):
            hooks = self.prelookup
            if ALL_SLOW in hooks:
                from fastdns.server import _udp  # a FastPath is here: it is built

                hooks = [_udp.all_slow_hook() if h is ALL_SLOW else h for h in hooks]
            fast.set_prelookup(hooks or None)

    def install(self) -> None:
        """Make these the counts the plugins' Python hooks add to (the worker's
        Corefile in force)."""
        counting.use(self.counts)

    def export(self, counters: Any) -> None:
        """The plugin counters into the worker's block (its 0.5 s timer)."""
        self.counts.export(getattr(counters, "plugins", None))

    def log_one(self, query: bytes, addr: Any, resp: bytes | None, tcp: bool, port: int,
                seconds: float) -> None:
        if self.qlog is not None and resp is not None:
            self.qlog.one(query, addr, resp, "tcp" if tcp else "udp", port, seconds)

    @property
    def wants_peer(self) -> bool:
        """Whether TCP answers need the client's address (log, errors, the answers)."""
        return (self.qlog is not None or bool(self.answers) or bool(self._errors)
                or bool(self.befores))

    def finished(self, query: bytes, addr: Any, resp: bytes | None, tcp: bool, port: int,
                 t0: float) -> None:
        """An answer that did not go through the UDP fast path's batch: log, errors."""
        if self.qlog is not None and resp is not None and addr:
            self.qlog.one(query, addr, resp, "tcp" if tcp else "udp", port,
                          time.perf_counter() - t0)
        if self._errors:
            self.answered(query, resp, port)

    def answer(self, data: bytes, addr: Any, tcp: bool, port: int) -> bytes | None:
        """The first slow-path answer of the block serving the name, among the
        plugins it has (called for queries the image passed on); None: none."""
        if not self.answers or not addr:
            return None
        q, _qname, block = self._query_block(data, port)
        if block is None:
            return None
        for plugin in self.answers:
            if plugin.name in block.plugins and plugin.answer is not None:
                resp = plugin.answer(data, q, addr, tcp, block)
                if resp is not None:
                    return resp
        return None

    @property
    def reports_errors(self) -> bool:
        """Does a block have ``errors`` (SERVFAIL answers must be reported)?"""
        return bool(self._errors)

    def answered(self, query: bytes, resp: bytes | None, port: int) -> None:
        """errors: report a SERVFAIL answer of a block that has the plugin."""
        if not self._errors or resp is None or len(resp) < 4 or resp[3] & 0xF != 2:
            return
        self.report_servfail(query, port)

    def report_servfail(self, query: bytes, port: int) -> None:
        """errors: ``query`` was answered SERVFAIL on ``port`` (the slow path's
        answers through ``answered``, the C forwarder's from its reports)."""
        q, qname, block = self._query_block(query, port)
        if block is None:
            return
        elog = self._errors.get(id(block.plugins))
        if elog is None:
            return
        cause = ("plugin/forward: no upstream answered" if "forward" in block.plugins
                 else "plugin/kubernetes: SERVFAIL")
        elog.report(2, qname, type_text(q.qtype), cause)

    def tick(self) -> None:
        for e in self._errors.values():
            e.flush()
