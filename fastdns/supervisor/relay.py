"""The supervisor's side of ``reload``: check the Corefile, relay a good one.

The supervisor owns the Corefile segment (``fastdns/control/reload.py``) for
the instance's life, so a reload survives a crash of any child. A changed
Corefile (the ``reload`` plugin's timer, or SIGUSR1) is checked as at
startup (``plan.reload_plan``); a bad one is logged and counted, and the
one in force stays. A good one is written to the segment and the version
word moves: workers pick it up on their own timer and keep every socket
that stays, and the supervisor restarts the control process on it
(``on_plan``), whose workers keep serving the image in force until the new
one is published.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fastdns.control import reload
from fastdns.ipc import layout
from fastdns.ipc.stats import SharedStats
from fastdns.supervisor.plan import ServePlan, parse_config, reload_plan

log = logging.getLogger("supervisor")


class ReloadRelay:
    """Writes the first Corefile to its segment, then watches for the next ones."""

    def __init__(self, instance: str, plan: ServePlan, stats: SharedStats | None,
                 on_plan: Callable[[ServePlan], None]) -> None:
        self.instance = instance
        self.plan = plan
        self.stats = stats
        self.on_plan = on_plan
        reload.write_corefile(instance, plan.corefile_text, plan.corefile_name)
        config = parse_config(plan.corefile_text, plan.corefile_name)
        self.reloader = reload.Reloader(
            plan.corefile_path, plan.corefile_text, config,
            lambda text: reload_plan(self.plan, text), self._apply,
            stats.reload_failed if stats is not None else lambda: None,
            clock=time.monotonic)

    @property
    def next_at(self) -> float | None:
        """When the ``reload`` plugin looks next (monotonic); None without it."""
        return self.reloader.next_at

    def maybe_reload(self, requested: bool) -> None:
        """Look now if ``requested`` (SIGUSR1) or the plugin's timer says so."""
        if requested or self.reloader.due():
            try:
                self.reloader.check()
            except Exception:  # noqa: BLE001 - a reload never takes the server down
                log.exception("reload failed")

    def _apply(self, text: str, plan: ServePlan) -> None:
        """Put a validated Corefile in force without closing a socket that stays."""
        self.plan = plan
        reload.write_corefile(self.instance, text)
        if self.stats is not None:
            self.stats.add(layout.S_CONFIG_VERSION)
        self.on_plan(plan)
