"""hosts: its registry entry; the plugin's code stays where its stages run.

- parse: ``parse_hosts`` in fastdns/corefile/parsers.py (``HostsConfig`` in corefile/model.py)
- compile: an ``ImageContributor`` (fastdns/zone/hosts.py, the interface in
  fastdns/zone/contributor.py): its records are in the image, the file is
  watched and re-read by the control process
"""

from __future__ import annotations

from fastdns.corefile.model import HostsConfig
from fastdns.corefile.parsers import parse_hosts
from fastdns.plugins.spec import Plugin
from fastdns.zone.hosts import HostsContributor

PLUGIN = Plugin(
    "hosts", "full", config=HostsConfig, parse=parse_hosts, stages=("compile",),
    contributor=HostsContributor.for_config, answers=True, label_rank=1,
)
