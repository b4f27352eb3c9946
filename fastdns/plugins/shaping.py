"""What header, minimal and nsid share: the per-block rows of their C hook, and the hook.

Each of the three plugins' C hooks (fastdns/plugins/_shape.pyx) holds one
row per zone of every block: (port, wire zone, whether the block has the
plugin, header's four masks, nsid's data). ``prelookup`` builds the hook of
one kind, or None (each UDP query to Python) without the build.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastdns.corefile.model import Config, PluginConfig
from fastdns.names import zone_key

HEADER, MINIMAL, NSID = 1, 2, 3
Row = tuple[int, int, int, int, bytes]  # qset, qclear, rset, rclear, data


def prelookup(kind: int, name: str, settings: Callable[[PluginConfig], Row]) -> Callable[
        [Config], Any]:
    def build(config: Config) -> Any:
        try:
            from fastdns.plugins import _shape
        except ImportError:
            return None
        rows = []
        for b in config.servers:
            conf = b.plugins.get(name)
            qset, qclear, rset, rclear, data = settings(conf) if conf is not None else (
                0, 0, 0, 0, b"")
            for z in b.zones:
                rows.append((b.port, zone_key(z), int(conf is not None), qset, qclear, rset,
                             rclear, data))
        try:
            return _shape.hook(kind, rows)
        except ValueError:
            return None

    return build
