"""`pods insecure`: answers for `a-b-c-d.ns.pod.ZONE` made at query time.

CoreDNS (`kubernetes.go` findPods) answers any well-formed pod name in an
exposed namespace without looking the pod up; there is nothing to
precompile, so the image marks `pod.ZONE` as a ZK_POD zone with SLOW_MISS and
the worker's slow path calls `synthesize`. What the image does hold is the
namespace check: `(ns.pod.ZONE, QT_NAME)` exists exactly when `ns` is exposed
(and pods are not disabled), and the kubernetes zone entry's negative answer
(NXDOMAIN, or SERVFAIL before the first sync) is reused for misses.
"""

from __future__ import annotations

import struct

from fastdns import wire
from fastdns.constants import QT_NAME, Flag, Qtype
from fastdns.ipc import image as img
from fastdns.names import pod_name_address, wire_labels

_RR_HEAD = struct.Struct(">HHIH")
_FLAGS = Flag.QR | Flag.AA | Flag.RA
_POD = b"\x03pod"


def _zones(image) -> list[tuple[int, bytes, int, int, int, int]]:
    h = img.read_header(image)
    out = []
    for zi in range(h.nzones):
        name, flags, neg, ttl, _block, kind = img.zone_entry(image, zi)
        out.append((zi, name, flags, neg, ttl, kind))
    return out


def synthesize(image, query_bytes: bytes, q) -> bytes | None:
    """The answer to a query below a ZK_POD zone, or None when `q` is not below one.

    `q` is the parsed query (either wire implementation's `Query`): its key
    must end in `pod.ZONE`. Answers: the pod's A or AAAA (TTL of the zone),
    NODATA for other types, NXDOMAIN (with the zone's SOA) for a malformed
    address, an unexposed namespace, or a deeper name.
    """
    key = q.key
    zones = _zones(image)
    pod = None
    for _zi, name, _flags, _neg, ttl, kind in zones:
        if (kind == img.ZK_POD and len(name) < len(key) and key.endswith(name)
                and len(key) - len(name) in img.label_starts(key)):
            pod = (name, ttl)
            break
    if pod is None:
        return None
    pod_zone, ttl = pod
    kube_zone = pod_zone[len(_POD):]
    negative = next((neg for _zi, name, _f, neg, _t, kind in zones
                     if kind == img.ZK_KUBERNETES and name == kube_zone and neg), 0)
    if not negative:
        return None
    miss = img.answer_variants(image, negative)[0]
    suffix_pos = 12 + len(key) - len(kube_zone)
    labels = wire_labels(key[: len(key) - len(pod_zone)] + b"\x00")
    packed = None
    if len(labels) == 2:
        ns_key = key[1 + len(labels[0]) :]
        if _exists(image, ns_key):
            packed = pod_name_address(labels[0].decode("ascii", "replace"))
    if packed is None:
        return wire.respond(query_bytes, q, miss, suffix_pos)
    rtype = Qtype.A if len(packed) == 4 else Qtype.AAAA
    if q.qtype != rtype:
        # NODATA: the miss template with its rcode cleared (NOERROR, SOA kept)
        (flags,) = struct.unpack_from(">H", miss)
        return wire.respond(query_bytes, q, struct.pack(">H", flags & ~0xF) + miss[2:],
                            suffix_pos)
    body = b"\xc0\x0c" + _RR_HEAD.pack(rtype, 1, ttl, len(packed)) + packed
    return wire.respond(query_bytes, q, img.make_template(_FLAGS, 1, 0, 0, body), 12)


def _exists(image, key: bytes) -> bool:
    """(key, QT_NAME) is an entry of the image itself (not a zone fallback)."""
    h = img.read_header(image)
    return bool(img.find(image, h, key, QT_NAME))
