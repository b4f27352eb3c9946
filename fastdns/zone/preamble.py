"""The image's preamble: what every image holds before its fragments.

Zone names and their negative answers (NXDOMAIN + SOA with relocations, or
SERVFAIL + SOA before the first sync), the shared NODATA region (one answer
per kubernetes zone and question length: every name's `QT_NAME` entry points
into it) and each apex's SOA. Rebuilt at every assembly with the serial in
force; its size depends only on the zones, so a patch rewrites it where it
lies (zone/patch.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from fastdns.constants import Rcode
from fastdns.ipc import image as img
from fastdns.zone.fragments import Fragment, FragmentWriter
from fastdns.zone.options import KubernetesOptions
from fastdns.zone.records import SOA, SOA_EXPIRE, SOA_REFRESH, SOA_RETRY
from fastdns.zone.templates import (
    CLASS_IN,
    FLAGS_ANSWER,
    HOSTMASTER,
    NS_DNS,
    PTR12,
    RR_HEAD,
    SOA_RELOCS,
    SOA_TAIL,
    name_pointer,
    soa_rr,
)
from fastdns.zone.zonetable import ZoneEntry


def shared_layout(kzones: Sequence[ZoneEntry]) -> tuple[dict[bytes, dict[int, int]], int]:
    """Fixed layout of the shared NODATA region: zone by zone, name length by
    length; (zone name -> question length -> offset, size of one answer)."""
    rel: dict[bytes, dict[int, int]] = {}
    off = 0
    size = 0
    for z in kzones:
        # answer record (12) + template head (10) + SOA RR with 2-octet pointers
        size = 12 + 10 + len(soa_rr(PTR12, 0, 0, 0))
        rel[z.name] = {n: off + (n - len(z.name)) * size for n in range(len(z.name), 256)}
        off += (256 - len(z.name)) * size
    return rel, size


def preamble(zones: Sequence[ZoneEntry], kzones: Sequence[ZoneEntry],
             opts: KubernetesOptions | None, serial: int, synced: bool,
             shared_rel: dict[bytes, dict[int, int]], shared_size: int,
             ) -> tuple[Fragment, int, dict[bytes, tuple[int, int]]]:
    """The region rebuilt every time: zone names, zone misses, shared NODATA, apex SOA.

    Returns (fragment, offset of the shared region in it, zone name ->
    (name offset, negative answer offset) in it).
    """
    soa_ttl = opts.soa_ttl if opts else 0
    minimum = opts.ttl if opts else 0
    w = FragmentWriter()
    where: dict[bytes, tuple[int, int]] = {}
    miss_rcode = Rcode.NXDOMAIN if synced else Rcode.SERVFAIL
    for z in zones:
        name_off = w.key(z.name)
        neg = 0
        if z.kube:
            body = soa_rr(PTR12, soa_ttl, serial, minimum)
            t = img.make_template(FLAGS_ANSWER | miss_rcode, 0, 1, 0, body, SOA_RELOCS)
            neg = w.answer(t)
        elif z.negative:  # a zones_config entry that brought its own
            neg = w.answer_variants(z.negative)
        where[z.name] = (name_off, neg)
    shared_off = w.size
    nodata_head = img.TEMPLATE_HEAD.pack(FLAGS_ANSWER, 0, 1, 0, 0)
    for z in kzones:
        # soa_rr(p, ...) unrolled: the pointer is the only part that varies
        tail = SOA_TAIL.pack(serial & 0xFFFFFFFF, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, minimum)
        rr_head = RR_HEAD.pack(SOA, CLASS_IN, soa_ttl,
                               len(NS_DNS) + len(HOSTMASTER) + 4 + len(tail))
        for n in range(len(z.name), 256):
            p = name_pointer(12 + n - len(z.name))
            w.answer(b"".join((nodata_head, p, rr_head, NS_DNS, p, HOSTMASTER, p, tail)))
        assert w.size - shared_off == shared_rel[z.name][255] + shared_size
    for z in kzones:
        body = soa_rr(PTR12, soa_ttl, serial, minimum)
        t = img.make_template(FLAGS_ANSWER, 1, 0, 0, body)
        w.entry(z.name, where[z.name][0], SOA, w.answer(t))
    return w.finish(), shared_off, where
