"""forward: its registry entry; the plugin's code stays where its stages run.

- parse: fastdns/corefile/plugin_forward.py (``ForwardConfig`` in corefile/model.py)
- slow path: fastdns/forward/ (upstreams, health checks, the resolver),
  wired into the worker by fastdns/server/forwarding.py
- metrics: per-upstream words in the counter block (fastdns/ipc/layout.py),
  reported by fastdns/control/metrics_plugins.py
"""

from __future__ import annotations

from fastdns.corefile.model import ForwardConfig
from fastdns.corefile.plugin_forward import parse_forward
from fastdns.plugins.spec import Plugin

PLUGIN = Plugin(
    "forward", "full", config=ForwardConfig, parse=parse_forward, stages=("slow_path",),
    answers=True, label_rank=4, metrics=("coredns_proxy_*", "coredns_forward_*"),
)
