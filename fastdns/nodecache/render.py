"""node-cache's Corefile, as ``updateCorefile`` writes it (kubernetes/dns
cmd/node-cache/app/configmap.go).

From the base Corefile (``-basecorefile``):
- ``__PILLAR__UPSTREAM__SERVERS__`` becomes the kube-dns ConfigMap's
  ``upstreamNameservers``, else ``/etc/resolv.conf``. With custom
  nameservers, the base's force_tcp upstream block turns into a UDP one.
- ``__PILLAR__CLUSTER__DNS__`` becomes the upstream Service's ClusterIP,
  from ``$<UPSTREAMSVC>_SERVICE_HOST``.
- ``__PILLAR__LOCAL__DNS__`` becomes the ``-localip`` addresses, and a
  leftover ``__PILLAR__DNS__SERVER__`` becomes nothing.
- A block per ``stubDomains`` entry is appended: errors, cache 30, bind the
  local IPs, forward to its servers.

Two differences, both deliberate. The stub blocks come in sorted order
(Go ranges over a map at random). A missing ClusterIP, which node-cache
writes as ``<nil>`` into a Corefile that then cannot load, is a one-line
error instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from fastdns.nodecache.flags import NodeCacheParams

UPSTREAM_SERVERS = "__PILLAR__UPSTREAM__SERVERS__"
CLUSTER_DNS = "__PILLAR__CLUSTER__DNS__"
LOCAL_DNS = "__PILLAR__LOCAL__DNS__"
DNS_SERVER = "__PILLAR__DNS__SERVER__"
DEFAULT_KUBEDNS_CM = "/etc/kube-dns"
STUB_TTL = 30
UPSTREAM_TCP_BLOCK = f"""
    forward . {UPSTREAM_SERVERS} {{
            force_tcp
    }}
"""
UPSTREAM_UDP_BLOCK = f"""
    forward . {UPSTREAM_SERVERS}
"""


class RenderError(ValueError):
    """Why the Corefile cannot be written now (one line; the last one stays)."""


@dataclass(frozen=True)
class KubeDNSConfig:
    """What node-cache reads of the kube-dns ConfigMap (pkg/dns/config)."""

    stub_domains: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    upstream_nameservers: tuple[str, ...] = ()


def service_env(name: str) -> str:
    """cache_app.go toSvcEnv: ``kube-dns-upstream`` -> ``KUBE_DNS_UPSTREAM_SERVICE_HOST``."""
    return name.replace("-", "_").upper() + "_SERVICE_HOST"


def read_kubedns(directory: str) -> KubeDNSConfig:
    """The ConfigMap as mounted (one file per key; hidden files skipped): its
    ``stubDomains`` (JSON object of lists) and ``upstreamNameservers`` (JSON
    list). RenderError for what pkg/dns/config refuses."""
    try:
        names = sorted(n for n in os.listdir(directory) if not n.startswith("."))
    except OSError as e:
        raise RenderError(f"kube-dns configmap {directory}: {e.strerror}") from None
    data = {}
    for n in names:
        path = os.path.join(directory, n)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="strict") as f:
                data[n] = f.read()
    stubs: dict[str, tuple[str, ...]] = {}
    upstreams: tuple[str, ...] = ()
    try:
        if data.get("stubDomains", "").strip():
            raw = json.loads(data["stubDomains"])
            if not isinstance(raw, dict) or not all(
                    isinstance(v, list) and all(isinstance(s, str) for s in v)
                    for v in raw.values()):
                raise ValueError("not a map of lists of strings")
            stubs = {str(k): tuple(v) for k, v in raw.items()}
        if data.get("upstreamNameservers", "").strip():
            raw = json.loads(data["upstreamNameservers"])
            if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
                raise ValueError("not a list of strings")
            upstreams = tuple(raw)
    except ValueError as e:
        raise RenderError(f"kube-dns configmap {directory}: {e}") from None
    return KubeDNSConfig(stubs, upstreams)


def _check_servers(servers: tuple[str, ...], what: str) -> None:
    """ValidateNodeLocalCacheConfig: forward's own parse of the addresses."""
    if not servers:
        return
    from fastdns.corefile.config import parse_corefile
    from fastdns.corefile.errors import CorefileError

    try:
        parse_corefile(". {\n    forward . " + " ".join(servers) + "\n}\n", what)
    except CorefileError as e:
        raise RenderError(f"invalid {what} {' '.join(servers)}: {e.reason}") from None


def render(base: str, p: NodeCacheParams, env: Mapping[str, str],
           kubedns: KubeDNSConfig | None = None) -> str:
    """The Corefile node-cache would write for ``base``."""
    kubedns = kubedns or KubeDNSConfig()
    for domain, servers in sorted(kubedns.stub_domains.items()):
        _check_servers(servers, f"nameservers for the stub domain {domain}")
    _check_servers(kubedns.upstream_nameservers, "upstream nameservers")
    text = base
    upstreams = " ".join(kubedns.upstream_nameservers)
    if not upstreams:
        text = text.replace(UPSTREAM_SERVERS, "/etc/resolv.conf")
    else:
        udp = UPSTREAM_UDP_BLOCK.replace(UPSTREAM_SERVERS, upstreams)
        text = text.replace(UPSTREAM_TCP_BLOCK, udp)
        text = text.replace(UPSTREAM_SERVERS, upstreams)
    if CLUSTER_DNS in text:
        var = service_env(p.upstream_svc)
        ip = env.get(var, "")
        try:
            import ipaddress

            ipaddress.ip_address(ip)
        except ValueError:
            raise RenderError(f"no ClusterIP for the upstream Service {p.upstream_svc}: "
                              f"${var} is {ip!r}") from None
        text = text.replace(CLUSTER_DNS, ip)
    text = text.replace(LOCAL_DNS, p.listen).replace(DNS_SERVER, "")
    for domain, servers in sorted(kubedns.stub_domains.items()):
        text += (f"\n{domain}:{p.dns_port} {{\n    errors\n    cache {STUB_TTL}\n"
                 f"    bind {p.listen}\n    forward . {' '.join(servers)}\n}}\n")
    return text
