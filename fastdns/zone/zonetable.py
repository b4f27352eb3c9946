"""The image's zone table: which zones it answers for, and how a miss is answered.

The kubernetes block's forward and reverse zones are authoritative (misses
NXDOMAIN with the SOA, or with ``fallthrough`` the slow path); a fallthrough
zone narrower than them gets its own entry; with ``pods insecure`` each
``pod.ZONE`` is a ZK_POD zone whose misses the slow path synthesizes. Other
entries (forward-only zones of other server blocks, compiled plugins' zones)
come from ``ZoneSpec``s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fastdns.ipc import image as img
from fastdns.names import is_subdomain
from fastdns.zone.imagebuilder import ZoneSpec
from fastdns.zone.naming import name_wire, split_zones
from fastdns.zone.options import KubernetesOptions


@dataclass(slots=True)
class ZoneEntry:
    """One zone of the image's zone table, as the compiler lays it out."""

    name: bytes  # lowercased wire
    flags: int
    kind: int
    ttl: int
    block: int
    kube: bool  # a zone of the kubernetes block (has an SOA and negative answers)
    forward: bool = True
    negative: tuple[bytes, ...] = ()  # zones_config only: its own zone-miss templates


def zone_table(opts: KubernetesOptions | None, extra: Sequence[ZoneSpec]) -> list[ZoneEntry]:
    """The kubernetes block's zones (with fallthrough and pod zones), then the
    `extra` entries whose names are not taken, longest name first (image §2)."""
    zones: list[ZoneEntry] = []
    if opts is not None:
        fall = [name_wire(f).lower() for f in opts.fallthrough]
        forward, reverse = split_zones(opts.zones)
        for name in forward + reverse:
            flags = img.ZF_AUTH
            if any(is_subdomain(name, f) for f in fall):
                flags |= img.ZF_SLOW_MISS | img.ZF_FALLTHROUGH
            zones.append(ZoneEntry(name, flags, img.ZK_KUBERNETES, opts.ttl, opts.block, True,
                                   name in forward))
        for f in fall:
            # a fallthrough zone narrower than a kubernetes zone gets its own entry
            if any(is_subdomain(f, z.name) and f != z.name for z in zones if z.kube):
                zones.append(ZoneEntry(f, img.ZF_AUTH | img.ZF_SLOW_MISS | img.ZF_FALLTHROUGH,
                                       img.ZK_KUBERNETES, opts.ttl, opts.block, False))
        if opts.pods == "insecure":
            # misses below pod.ZONE go to podsynth.synthesize (a-b-c-d.ns.pod.ZONE)
            for name in forward:
                zones.append(ZoneEntry(b"\x03pod" + name, img.ZF_SLOW_MISS, img.ZK_POD,
                                       opts.ttl, opts.block, False))
    taken = {z.name for z in zones}
    for spec in extra:
        if spec.name.lower() in taken:
            continue
        taken.add(spec.name.lower())
        zones.append(ZoneEntry(spec.name.lower(), spec.flags, spec.kind, spec.ttl, spec.block,
                               False, negative=tuple(spec.negative)))
    zones.sort(key=lambda z: len(z.name), reverse=True)  # longest first (image §2)
    return zones
