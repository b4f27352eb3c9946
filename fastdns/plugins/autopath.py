"""autopath (``plugin/autopath`` with ``@kubernetes``): a pod's search path walked on the server.

A pod's resolv.conf has ``ndots:5`` and the search path ``NS.svc.ZONE
svc.ZONE ZONE``, so glibc asks ``www.example.com.NS.svc.ZONE``,
``www.example.com.svc.ZONE``, ``www.example.com.ZONE`` (three NXDOMAINs)
before ``www.example.com``. With autopath, CoreDNS answers the first query
with the result of the whole walk (plugin/autopath/autopath.go ServeDNS;
the search path from plugin/kubernetes/autopath.go AutoPath): for a query
from a pod (``pods verified``: its IP is a Pod's) whose name lies under its
own namespace's ``NS.svc.ZONE``, the base name is tried under each search
domain, then bare; the first answer that is not NXDOMAIN (nor SERVFAIL,
REFUSED, FORMERR, NOTIMP) is returned with the question as asked and a
CNAME from the asked name to the found one in front (cname.go); when every
try fails, the first try's answer goes out as it was.

fastdns keeps nothing per pod for this: ``pods verified`` already puts
``DASHED-IP.NS.pod.ZONE`` in the snapshot image, so "this client is a Pod of
namespace NS" is one lookup of that name; the namespace comes from the
query itself. The cluster-zone tries are answered from the image on the
spot; the bare name is handed on (``spec.Rewritten``) to the block's
forwarder, and its answer is renamed on the way back. Not walked: the
search domains of the server's own resolv.conf, which CoreDNS appends
(``autoPathSearch``) between the zone and the bare name; the
``autopath ZONE... RESOLV-CONF`` form with a file (refused as
unsupported).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import ClassVar

from fastdns.codec import wire
from fastdns.corefile.args import zones_arg
from fastdns.corefile.dispenser import Dispenser
from fastdns.corefile.errors import Unsupported
from fastdns.corefile.model import Config, PluginConfig, ServerBlock
from fastdns.names import zone_key
from fastdns.plugins import autopath_wire as aw
from fastdns.plugins import counting
from fastdns.plugins.spec import Plugin, Rewritten

SUCCESS = "coredns_autopath_success_total"  # plugin/autopath/metrics.go

NXDOMAIN = 3
FAILED = {1, 2, 4, 5}  # FORMERR, SERVFAIL, NOTIMP, REFUSED: plugin.ClientWrite false
A, AAAA = 1, 28


@dataclass(frozen=True)
class AutopathConfig(PluginConfig):
    name: ClassVar[str] = "autopath"
    zones: tuple[str, ...] = (".",)  # the search path comes from @kubernetes


def parse_autopath(d: Dispenser, zones: tuple[str, ...]) -> AutopathConfig:
    """autopath [ZONE...] RESOLV-CONF (setup.go autoPathParse)."""
    args = d.remaining_args()
    if not args:
        raise d.err("no resolv-conf specified")
    last = args[-1]
    if not last.text.startswith("@"):
        raise Unsupported(last.file, last.line, "a resolv.conf search path is not implemented "
                          "by fastdns (use @kubernetes)", "autopath")
    if last.text != "@kubernetes":
        raise d.err(f"{last.text[1:]} does not implement the AutoPather interface", last)
    z = zones_arg(d, args[:-1]) if len(args) > 1 else zones
    return AutopathConfig(tuple(z))


def _labels(key: bytes) -> list[bytes]:
    out, p = [], 0
    while key[p]:
        out.append(key[p:p + 1 + key[p]])
        p += 1 + key[p]
    return out


def _under(key: bytes, zone: bytes) -> bool:
    return zone == b"\x00" or (key.endswith(zone) and
                               _labels(key)[-len(_labels(zone)):] == _labels(zone))


def _dashed(ip: str) -> bytes | None:
    try:
        addr = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return None
    text = (str(addr) if addr.version == 4 else addr.exploded).replace(".", "-").replace(":", "-")
    return bytes([len(text)]) + text.encode()


def _ask(data: bytes, q: wire.Query, name: bytes, qtype: int | None = None) -> bytes:
    out = aw.renamed(data, q, name)
    if qtype is not None:
        end = 12 + len(name)
        out = out[:end] + qtype.to_bytes(2, "big") + out[end + 2:]
    return out


def before(data: bytes, q: wire.Query, addr: tuple[str, int], tcp: bool,
           block: ServerBlock) -> bytes | Rewritten | None:
    conf = block.plugins.get("autopath")
    kube = block.plugins.get("kubernetes")
    if not isinstance(conf, AutopathConfig) or getattr(kube, "pods", "") != "verified":
        return None  # CoreDNS: no pod cache, no autopath
    key = q.key
    if not any(_under(key, zone_key(z)) for z in conf.zones):
        return None
    kzones = [zone_key(z) for z in getattr(kube, "zones", ())
              if not z.endswith(("in-addr.arpa.", "ip6.arpa."))]
    zone = max((z for z in kzones if _under(key, z)), key=len, default=None)
    if zone is None:
        return None
    labels = _labels(key)[: -len(_labels(zone)) or None] if zone != b"\x00" else _labels(key)
    # NAME.NS.svc.ZONE: the base name, then the client's namespace's search domain
    if len(labels) < 3 or labels[-1] != b"\x03svc":
        return None
    ns = labels[-2]
    base = b"".join(labels[:-2])
    dashed = _dashed(str(addr[0]))
    if dashed is None:
        return None
    # the worker's code, imported where a worker runs this: the supervisor
    # parses the Corefile too and must not load it (tests/supervisor/test_imports.py)
    from fastdns.server import beforechain

    pod = _ask(data, q, dashed + ns + b"\x03pod" + zone, AAAA if ":" in str(addr[0]) else A)
    got = beforechain.image_answer(pod, tcp)
    if got is None or got[3] & 0xF or not (got[6] << 8 | got[7]):
        return None  # not a Pod of NS: the query goes on as asked
    first: bytes | None = None
    for suffix in (ns + b"\x03svc" + zone, b"\x03svc" + zone, zone):
        name = base + suffix
        found = beforechain.image_answer(_ask(data, q, name), tcp)
        if found is None:  # the image hands it on: forward this name (below)
            return _handed_on(data, q, name, first, block)
        if first is None:
            first = found
        if found[3] & 0xF == NXDOMAIN or found[3] & 0xF in FAILED:
            continue
        counting.add((SUCCESS, counting.server_of(block)))  # autopath.go autoPathCount
        return aw.cnamed(data, q, found) if suffix != ns + b"\x03svc" + zone else found
    return _handed_on(data, q, base + b"\x00", first, block)


def _handed_on(data: bytes, q: wire.Query, name: bytes, first: bytes | None,
               block: ServerBlock) -> Rewritten:
    """Forward ``name``; its answer renamed, or the first try's when it failed."""

    def after(original: bytes, resp: bytes) -> bytes:
        if len(resp) >= 12 and (resp[3] & 0xF == NXDOMAIN or resp[3] & 0xF in FAILED):
            return first if first is not None else resp
        try:
            renamed = aw.cnamed(original, q, resp)
        except Exception:  # noqa: BLE001 - an answer we cannot rename goes out failed
            return first if first is not None else resp
        counting.add((SUCCESS, counting.server_of(block)))
        return renamed

    return Rewritten(_ask(data, q, name), after)


def series(config: Config) -> list[counting.Series]:
    """coredns_autopath_success_total{server} of each block that can autopath."""
    return [(SUCCESS, counting.server_of(b)) for b in config.servers
            if "autopath" in b.plugins
            and getattr(b.plugins.get("kubernetes"), "pods", "") == "verified"]


def prelookup(config: Config) -> object | None:
    """The C hook (_autopath.pyx) for the blocks that have autopath; None (every
    UDP query to Python) without the build or past the hook's table."""
    try:
        from fastdns.plugins import _autopath
    except ImportError:
        return None
    rows = []
    for b in config.servers:
        kube = b.plugins.get("kubernetes")
        if "autopath" in b.plugins and getattr(kube, "pods", "") == "verified":
            rows += [(b.port, zone_key(z)) for z in getattr(kube, "zones", ())
                     if not z.endswith(("in-addr.arpa.", "ip6.arpa."))]
    try:  # no rows: a hook that hands nothing on (no block can autopath)
        return _autopath.hook(rows)
    except ValueError:
        return None


PLUGIN = Plugin("autopath", "full", config=AutopathConfig, parse=parse_autopath,
                stages=("fast_path", "slow_path"), before=before, prelookup=prelookup,
                metrics=(SUCCESS,), series=series)
