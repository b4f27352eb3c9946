"""The metrics' (server, zone) row of each query a worker counts.

CoreDNS labels its request metrics with the server block (``dns://:53``)
and the zone that matched; fastdns counts into rows of a table both the
worker and the exporter derive from the same Corefile (``ipc/tables.py``),
so the worker writes row numbers only. A UDP socket's table goes to the C
fast path (``FastPath.set_rows``); the Python paths match here, with the
same match on the same table.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING

from fastdns.corefile.model import Config
from fastdns.ipc import counters as ctr
from fastdns.ipc import tables

if TYPE_CHECKING:  # the extension may not be built (FASTDNS_NO_EXTENSIONS=1)
    from fastdns.server._udp import FastPath

log = logging.getLogger("fastdns.server.worker")


class QueryRows:
    """Worker ``index``'s row tables: per listener, per socket, per fd."""

    def __init__(self, counters: ctr.Counters, index: int) -> None:
        self.counters = counters
        self.index = index
        self._rows: dict[str, tables.ListenerRows] = {}  # server label -> its zones
        self._rows_of_sock: dict[tuple, tables.ListenerRows] = {}  # (host, port) -> its rows
        self._sockname_of_fd: dict[int, tuple] = {}  # fd -> (host, port)

    def row_of(self, sockname: tuple | None, data: bytes) -> int | None:
        """The (server, zone) row of a query read on the socket bound to ``sockname``
        (None before a Corefile gave the rows)."""
        if not self._rows or not sockname:
            return None
        key = (sockname[0], sockname[1])
        lr = self._rows_of_sock.get(key)
        if lr is None:
            lr = self._rows_of_sock[key] = tables.socket_rows(self._rows, key[0], key[1])
        return lr.match(data)

    def row_of_fd(self, fd: int, data: bytes) -> int | None:
        """The row the fast path counted a query read on UDP socket ``fd`` in."""
        return self.row_of(self._sockname_of_fd.get(fd), data)

    def configure(self, config: Config | None, udp_by_fd: Mapping[int, socket.socket],
                  fast: FastPath | None) -> None:
        """Derive the row table from ``config`` (the exporter derives the same one
        from its copy) and hand every UDP socket's zones to the fast path."""
        self._rows_of_sock = {}
        self._sockname_of_fd = {fd: sock.getsockname()[:2] for fd, sock in udp_by_fd.items()}
        if config is None:
            self._rows = {}
            if fast is not None:
                fast.clear_rows()
            return
        listeners = tables.listener_zones(config)
        self.counters.take_rows(tables.row_table(listeners))
        self._rows = tables.listener_rows(listeners)
        if fast is not None:
            fast.clear_rows()
            for fd, (host, port) in list(self._sockname_of_fd.items()):
                lr = tables.socket_rows(self._rows, host, port)
                if not fast.set_rows(fd, lr.zones, lr.dropped):
                    del self._sockname_of_fd[fd]  # totals only, as _udp counts it
                    log.warning("worker %d: queries on %s:%d are not counted per zone",
                                self.index, host, port)
