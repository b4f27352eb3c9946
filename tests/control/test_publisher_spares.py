"""The publisher's background spares: preallocated, used in order, removed at close."""

from __future__ import annotations

import struct
import time

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


def test_control_loop_reuses_one_image_buffer(instance):
    """The compiler reuses one buffer that the publisher pwrite()s."""
    from fastdns.control.loop import ControlLoop
    from fastdns.zone.compiler import Compiler
    from fastdns.zone.options import KubernetesOptions

    ctl = shm.ControlSegment.create(instance, 1)
    pub = Publisher(ctl, background=True)
    try:
        compiler = Compiler(KubernetesOptions(zones=("cluster.local",)))
        ControlLoop(compiler, pub)
        assert compiler.reuse_buffer is True
    finally:
        pub.close()
