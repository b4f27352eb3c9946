"""Which Corefile is in force, as a worker sees it: the reload's data-plane side.

The supervisor owns the Corefile segment and moves the version word of the
control segment's stats when it puts a reloaded Corefile in force
(``fastdns/control/reload.py``). A worker reads both on its slow timer: a
moved version means parse the segment's text and reconfigure. The
supervisor validated that text, so a failure here is logged, never fatal.
"""

from __future__ import annotations

import logging

from fastdns.control import reload
from fastdns.corefile.config import parse_corefile
from fastdns.corefile.model import Config
from fastdns.ipc import layout
from fastdns.ipc.stats import SharedStats

log = logging.getLogger("fastdns.server.worker")


class CorefileInForce:
    """The Corefile of ``instance`` for worker ``index``."""

    def __init__(self, instance: str, index: int) -> None:
        self.instance = instance
        self.index = index
        self.version: int | None = None  # the version in force here; None: not read yet
        self._stats: SharedStats | None = None

    def load(self) -> Config | None:
        """The Corefile in force (the supervisor's shm copy), parsed; None without one.

        The first load learns the version before it reads the text: a reload
        put in force after that read then moves the version past what was
        learned, and ``moved`` reports it. Learning it on the first timer tick
        instead missed a reload that came between the worker's start and its
        first tick (the worker kept the old Corefile for good)."""
        if self.version is None:
            self.version = self._current()
        try:
            text = reload.read_corefile(self.instance)
            name = reload.read_corefile_name(self.instance)  # relative imports
            return parse_corefile(text, name) if text else None
        except Exception:  # the supervisor validated it; never die of it here
            log.exception("worker %d: cannot read the Corefile; not forwarding", self.index)
            return None

    def moved(self) -> int | None:
        """The new version if it moved since the last call, else None.

        The first call only learns the version: the worker started on it.
        """
        version = self._current()
        if version is None:
            return None
        if self.version is None:
            self.version = version
            return None
        if version == self.version:
            return None
        self.version = version
        return version

    def _current(self) -> int | None:
        """The version word now; None without the control segment's stats."""
        if self._stats is None:
            try:
                self._stats = SharedStats.attach(self.instance)
            except Exception:  # noqa: BLE001 - no control segment stats: no reload
                return None
        return self._stats.get(layout.S_CONFIG_VERSION)
