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
        """The Corefile in force (the supervisor's shm copy), parsed; None without one."""
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
        stats = self._stats
        if stats is None:
            try:
                stats = self._stats = SharedStats.attach(self.instance)
            except Exception:  # noqa: BLE001 - no control segment stats: no reload
                return None
        version = stats.get(layout.S_CONFIG_VERSION)
        if self.version is None:
            self.version = version
            return None
        if version == self.version:
            return None
        self.version = version
        return version
