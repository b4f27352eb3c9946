"""The publisher's background spares: preallocated, used in order, removed at close."""

from __future__ import annotations

import struct
import time

import pytest

from fastdns.control import publisher as publisher_mod
from fastdns.control.publisher import SPARE_TAG, Publisher
from fastdns.ipc import shm


def _image(tag: bytes, size: int = 4096) -> bytearray:
    # a bytearray, as the control loop's compiler hands over its reused buffer
    return bytearray((b"FDNSIMG1" + bytes(16) + tag * size)[:size])


def _spares(instance: str) -> list[str]:
    return [n for n in shm.list_segments(instance) if SPARE_TAG in n]


def _wait_spares(instance: str, n: int) -> list[str]:
    deadline = time.monotonic() + 5
    while len(got := _spares(instance)) < n and time.monotonic() < deadline:
        time.sleep(0.005)
    return got


def test_spares_are_kept_ready_and_used(instance):
    ctl = shm.ControlSegment.create(instance, 1)
    pub = Publisher(ctl, background=True)
    try:
        image = _image(b"a")
        assert pub.publish(image) == 1  # no spare yet: a fresh file
        assert len(_wait_spares(instance, publisher_mod.SPARES)) == publisher_mod.SPARES
        for gen, tag in enumerate(b"bcdef", start=2):
            # the same buffer, rewritten in place between publishes
            image[24:] = bytes([tag]) * (len(image) - 24)
            assert pub.publish(image) == gen
            cur = ctl.current()
            assert cur is not None
            assert bytes(cur.buf[24:]) == bytes(image[24:])
            assert struct.unpack_from("<Q", cur.buf, 16)[0] == gen
            cur.close()
            _wait_spares(instance, publisher_mod.SPARES)
        assert pub.spare_hits == 5 and pub.spare_misses == 1
        assert pub.publish(image) is None  # unchanged: nothing published, no spare used
        assert pub.spare_hits == 5
        # an image larger than the spares were sized for gets a fresh segment
        assert pub.publish(_image(b"g", 1 << 20)) == 7
        assert pub.spare_misses == 2
    finally:
        pub.close()
    assert _spares(instance) == []
    assert [g for g, _ in shm.list_images(instance)] == [7]
    ctl.close()


def test_deferred_images_are_laid_out_in_their_segment(instance):
    """Compiler.deferred: the image is written straight into the published
    segment; the bytes are those of an ordinary compile, an unchanged image
    publishes nothing and keeps its spare, and a changed one goes out."""
    import dataclasses

    from fastdns.zone.compiler import Compiler, DeferredImage
    from fastdns.zone.records import KubernetesOptions
    from fastdns.zone.state import demo_path, load_state

    opts = KubernetesOptions(zones=("cluster.local", "in-addr.arpa"))
    state = load_state(demo_path())
    plain, deferred = Compiler(opts), Compiler(opts)
    deferred.deferred = True
    ctl = shm.ControlSegment.create(instance, 1)
    pub = Publisher(ctl, background=True)
    try:
        image = deferred.full(state, now=7)
        assert isinstance(image, DeferredImage)
        want = plain.full(state, now=7)
        assert len(image) == len(want)
        assert pub.publish(image) == 1
        cur = ctl.current()
        assert bytes(cur.buf[:16]) == want[:16] and bytes(cur.buf[24:]) == want[24:]
        assert struct.unpack_from("<Q", cur.buf, 16)[0] == 1
        cur.close()
        _wait_spares(instance, publisher_mod.SPARES)
        spares = sorted(_spares(instance))
        assert pub.publish(deferred.assemble()) is None  # same records: nothing goes out
        assert sorted(_spares(instance)) == spares and ctl.generation == 1
        svc = state.services[("default", "nginx")]
        affected = state.apply("MODIFIED", dataclasses.replace(svc, cluster_ips=("10.96.9.9",)))
        assert pub.publish(deferred.update(state, affected, now=8)) == 2
        cur = ctl.current()
        want = plain.update(state, affected, now=8)
        assert len(cur.buf) == len(want) and bytes(cur.buf[24:]) == want[24:]
        cur.close()
    finally:
        pub.close()


@pytest.mark.parametrize("flag", [False, True])
def test_control_loop_picks_the_image_path(instance, monkeypatch, flag):
    """FASTDNS_DEFERRED_IMAGES (process.DEFERRED_IMAGES) picks deferred images;
    by default the compiler reuses one buffer that the publisher pwrite()s."""
    from fastdns.control import process
    from fastdns.zone.compiler import Compiler
    from fastdns.zone.records import KubernetesOptions

    monkeypatch.setattr(process, "DEFERRED_IMAGES", flag)
    ctl = shm.ControlSegment.create(instance, 1)
    pub = Publisher(ctl, background=True)
    try:
        compiler = Compiler(KubernetesOptions(zones=("cluster.local",)))
        process.ControlLoop(compiler, pub)
        assert compiler.deferred is flag and compiler.reuse_buffer is (not flag)
    finally:
        pub.close()
