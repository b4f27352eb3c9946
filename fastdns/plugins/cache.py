"""cache: its registry entry; the plugin's code stays where its stages run.

- parse: fastdns/corefile/plugin_cache.py (``CacheConfig`` in corefile/model.py)
- slow path: fastdns/forward/cache.py (the response cache of forwarded answers)
- fast path: the C table of cached answers (fastdns/server/_udp_cache.pxi)

A block of cache alone answers nothing (``answers`` is False), but a block's
cache names the ``plugin`` label before forward does (``label_rank``).
"""

from __future__ import annotations

from fastdns.corefile.model import CacheConfig
from fastdns.corefile.plugin_cache import parse_cache
from fastdns.plugins.spec import Plugin

PLUGIN = Plugin(
    "cache", "full", config=CacheConfig, parse=parse_cache,
    stages=("fast_path", "slow_path"), label_rank=3, metrics=("coredns_cache_*",),
)
