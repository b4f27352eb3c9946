"""Fragments placed in the published image (Compiler.placed) assemble the same images.

The control process assembles each image in its shared-memory segment and
then lets every cached fragment's blob be its bytes there instead of a copy
on the heap; the next assembly copies them from that image. These tests run
a compiler that does so beside one that keeps every blob on the heap, over
changes, unpublished images and a relist, and compare every image octet.
"""

from __future__ import annotations

import mmap
import os
import random

import pytest

from fastdns.ipc import image as img
from fastdns.zone import objects
from fastdns.zone.compiler import Compiler
from fastdns.zone.fragments import Fragment
from fastdns.zone.options import KubernetesOptions
from fastdns.zone.state import ClusterState
from tests.zone.inplace import generate, start_in_place

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("loadbalance", [False, True])
def test_placed_fragments_give_the_images_a_heap_compile_gives(loadbalance):
    doc = generate(120)
    opts = KubernetesOptions(zones=("cluster.local", "in-addr.arpa", "ip6.arpa"), ttl=30,
                             loadbalance=loadbalance)
    state, heap, placed = start_in_place(doc, opts)
    frags = list(placed._frags.values())
    assert all(f.placed and f.blob == b"" for f in frags if f.size)  # nothing left on the heap
    slices = [o for o in doc["items"] if o["kind"] == "EndpointSlice"]
    rnd = random.Random(7)
    for i in range(40):
        raw = rnd.choice(slices)
        key = (raw["metadata"]["namespace"], raw["metadata"]["name"])
        if i % 9 == 4:
            affected = state.apply("DELETED", ("EndpointSlice", key))
        else:
            ep = rnd.choice(raw["endpoints"])
            if raw["addressType"] == "IPv4":
                ep["addresses"] = [f"10.250.{i}.{rnd.randrange(1, 250)}"]
            ep["conditions"]["ready"] = not ep["conditions"]["ready"] if i % 4 == 0 else True
            affected = state.apply("MODIFIED", objects.strip("EndpointSlice", raw))
        want = heap.update(state, affected, now=2 + i)
        got = placed.update(state, affected, now=2 + i)
        # in place, a change is mostly a patch of the image before (zone/patch.py):
        # the same entries and answers, laid out otherwise
        assert img.contents(got) == img.contents(want), f"change {i}"
        if i % 6 != 5:  # every sixth not published: its fragments stay in the image before
            placed.placed(got)
    # a relist compiles everything afresh, then places it again
    assert bytes(placed.full(state, now=99)) == bytes(heap.full(state, now=99))


def test_a_recompiled_fragment_equal_to_its_placed_self_is_no_change():
    """An unchanged Service recompiled keeps its placed fragment and the serial
    (the image, and so the publish, stays the same)."""
    frag = Fragment(b"blob-bytes", b"\x01" * 16, b"")
    p = frag.place()
    assert p.size == len(b"blob-bytes") and p.blob == b"" and p.placed
    assert p.same(frag) and frag.same(p) and p.place() is p
    assert not p.same(Fragment(b"blob-byteX", b"\x01" * 16, b""))
    assert not p.same(Fragment(b"blob-bytes", b"\x02" * 16, b""))


def test_assembling_over_the_image_the_fragments_lie_in_is_refused():
    """A segment handed out for the next image that is the one the placed
    fragments are read from (a bug in spare rotation) must not be written:
    the image would be copied onto itself, half overwritten."""
    doc = generate(120)
    state = ClusterState(objects.strip(o["kind"], o) for o in doc["items"])
    compiler = Compiler(KubernetesOptions(zones=("cluster.local", "in-addr.arpa")))
    mm = mmap.mmap(-1, 1 << 22)
    compiler.out_buffer = lambda size: memoryview(mm)[:size]
    compiler.placed(compiler.full(state, now=1))
    with pytest.raises(ValueError, match="placed fragments are read from"):
        compiler.assemble()
