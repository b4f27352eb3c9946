"""The table of the plugins' metric series for a Corefile (the contract of plugins/counting.py).

Its own module: it reads the registry, which imports every plugin, and the
plugins import counting.py to count.
"""

from __future__ import annotations

from typing import Any

from fastdns.ipc import layout
from fastdns.plugins import registry
from fastdns.plugins.counting import Series


def plugin_table(config: Any) -> tuple[Series, ...]:
    """Every series the plugins of ``config`` count, in registry order, at most PLUGIN_ROWS."""
    if config is None:
        return ()
    out: dict[Series, None] = {}
    for p in registry.PLUGINS:
        if p.series is not None and any(p.name in b.plugins for b in config.servers):
            for s in p.series(config):
                out.setdefault(s, None)
    return tuple(out)[:layout.PLUGIN_ROWS]
