"""Images patched from the one in force (zone/patch.py) answer as full assemblies do.

The control process's compiler writes the next image as a copy of the one in
force with only the changed fragments' slots and blobs touched. Its layout
differs from a full assembly of the same fragments (holes, tombstones, the
changed fragments at the end), so these tests compare what the data plane
reads: every entry (name, type, answer variants), the zone table with its
negative answers, the header's flags, serial and generation; and every
lookup the fast path makes, through the real wire core, for each name.
"""

from __future__ import annotations

import os
import random
import struct

from fastdns.codec import wire
from fastdns.ipc import image as img
from fastdns.zone import objects
from fastdns.zone import patch as patch_mod
from fastdns.zone.options import KubernetesOptions
from fastdns.zone.patch import TOMBSTONE
from tests.zone.inplace import generate, start_in_place

HERE = os.path.dirname(os.path.abspath(__file__))


def contents(image) -> tuple:
    """img.contents, and how many tombstones the slot table holds."""
    h = img.read_header(image)
    tombs = sum(1 for (sh, *_r) in img.SLOT.iter_unpack(
        image[h.slots_off : h.slots_off + h.nslots * img.SLOT.size]) if sh == TOMBSTONE)
    return img.contents(image), tombs


def _lookups_agree(a, b, names) -> None:
    """The wire core's answers to each name, several types, from both images."""
    for key in names:
        for qtype in (1, 28, 33, 12, 16, 255):
            q = bytearray(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00")
            q += key + struct.pack(">HH", qtype, 1)
            assert wire.answer(a, bytes(q)) == wire.answer(b, bytes(q)), (key, qtype)


def test_patched_images_answer_as_full_assemblies_do():
    doc = generate(150)
    opts = KubernetesOptions(zones=("cluster.local", "in-addr.arpa", "ip6.arpa"), ttl=30)
    state, heap, inplace = start_in_place(doc, opts)
    slices = [o for o in doc["items"] if o["kind"] == "EndpointSlice"]
    services = [o for o in doc["items"] if o["kind"] == "Service"]
    rnd = random.Random(11)
    patched = tombs_seen = 0
    for i in range(80):
        if i % 10 == 7:  # a Service goes, or comes back
            raw = rnd.choice(services)
            key = (raw["metadata"]["namespace"], raw["metadata"]["name"])
            if key in state.services:
                affected = state.apply("DELETED", ("Service", key))
            else:
                affected = state.apply("ADDED", objects.strip("Service", raw))
        else:
            raw = rnd.choice(slices)
            ep = rnd.choice(raw["endpoints"])
            if raw["addressType"] == "IPv4":
                ep["addresses"] = [f"10.251.{i}.{rnd.randrange(1, 250)}"]
            affected = state.apply("MODIFIED", objects.strip("EndpointSlice", raw))
        want = heap.update(state, affected, now=2 + i)
        before = inplace._lay
        got = inplace.update(state, affected, now=2 + i)
        if inplace._pending is not None and not hasattr(inplace._pending[1], "typecode"):
            patched += 1
        (cw, _), (cg, tombs) = contents(want), contents(got)
        tombs_seen = max(tombs_seen, tombs)
        assert cg == cw, f"change {i}"
        if i % 9 == 8:
            _lookups_agree(want, got, [k for k, _t in cw[3]][:60])
        if i % 7 != 6:  # every seventh not published: the next patches the image before
            inplace.placed(got)
        else:
            assert inplace._lay == before
    assert patched >= 60  # most changes were patches, not full assemblies
    assert tombs_seen > 0


def test_a_patch_declines_when_the_garbage_grows_and_the_full_assembly_compacts():
    doc = generate(60)
    opts = KubernetesOptions(zones=("cluster.local", "in-addr.arpa"), ttl=30)
    state, heap, inplace = start_in_place(doc, opts)
    slices = [o for o in doc["items"] if o["kind"] == "EndpointSlice"]
    sizes, fulls = [], 0
    for i in range(60):  # the same slice rewritten over and over: its old blobs pile up
        raw = slices[0]
        raw["endpoints"][0]["addresses"] = [f"10.252.{i}.{i + 1}"]
        affected = state.apply("MODIFIED", objects.strip("EndpointSlice", raw))
        want = heap.update(state, affected, now=2 + i)
        got = inplace.update(state, affected, now=2 + i)
        if hasattr(inplace._pending[1], "typecode"):
            fulls += 1
        assert contents(got)[0] == contents(want)[0]
        inplace.placed(got)
        sizes.append(len(got))
        assert inplace._lay.garbage * patch_mod.MAX_GARBAGE <= inplace._lay.blob_area
    assert fulls >= 1  # compacted at least once
    assert max(sizes) <= min(sizes) * 1.2
