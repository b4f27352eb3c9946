"""kubernetes: its registry entry; the plugin's code stays where its stages run.

- parse: fastdns/corefile/plugin_kubernetes.py (``KubernetesConfig`` in corefile/model.py)
- compile: the zone compiler itself (fastdns/zone/compiler.py), fed by the
  API watch (fastdns/control/kube.py); the workers answer from the image
- observability: ``/ready`` waits for the first sync (fastdns/control/httpd.py)
"""

from __future__ import annotations

from fastdns.corefile.model import KubernetesConfig
from fastdns.corefile.plugin_kubernetes import parse_kubernetes
from fastdns.plugins.spec import Plugin

PLUGIN = Plugin(
    "kubernetes", "full", config=KubernetesConfig, parse=parse_kubernetes,
    stages=("compile", "observability"), answers=True, label_rank=0,
    metrics=("coredns_kubernetes_dns_programming_duration_seconds",),
)
