"""The publisher's background spares: preallocated, used in order, removed at close."""

from __future__ import annotations

import struct
import time

from fastdns.control import publisher as pub_mod
from fastdns.control import spares as spares_mod
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
        assert len(_wait_spares(instance, spares_mod.SPARES)) == spares_mod.SPARES
        for gen, tag in enumerate(b"bcdef", start=2):
            # the same buffer, rewritten in place between publishes
            image[24:] = bytes([tag]) * (len(image) - 24)
            assert pub.publish(image) == gen
            cur = ctl.current()
            assert cur is not None
            assert bytes(cur.buf[24:]) == bytes(image[24:])
            assert struct.unpack_from("<Q", cur.buf, 16)[0] == gen
            cur.close()
            _wait_spares(instance, spares_mod.SPARES)
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


def test_control_loop_assembles_images_in_their_segment(instance):
    """The control process's compiler writes each image straight into the next
    segment (a spare when one is ready): no copy of it on the heap, the same
    octets a heap assembly gives, and an unchanged image gives its segment
    back as a spare instead of publishing it."""
    from fastdns.control.loop import ControlLoop
    from fastdns.zone.compiler import Compiler
    from fastdns.zone.options import KubernetesOptions
    from fastdns.zone.state import demo_path, load_state

    ctl = shm.ControlSegment.create(instance, 1)
    pub = Publisher(ctl, background=True)
    try:
        compiler = Compiler(KubernetesOptions(zones=("cluster.local", "in-addr.arpa")))
        loop = ControlLoop(compiler, pub)
        assert compiler.out_buffer is not None
        state = load_state(demo_path())
        for gen in (1, 2):  # the first into a fresh file, the second into a spare
            if gen == 2:
                state.apply("DELETED", ("Service", ("default", "kubernetes")))
            assert loop.publish_full(state, "test") == gen
            assert len(compiler._buf) == 0  # nothing assembled on the heap
            cur = ctl.current()
            assert cur is not None
            published = bytes(cur.buf)
            cur.close()
            compiler.out_buffer = None
            compiler.generation -= 1  # the same image again, on the heap this time
            heap = bytes(compiler.assemble())
            compiler.out_buffer = pub.buffer
            assert struct.unpack_from("<Q", published, 16)[0] == gen
            assert published[:16] + published[24:] == heap[:16] + heap[24:]
            _wait_spares(instance, spares_mod.SPARES)
        assert pub.spare_hits == 1 and pub.spare_misses == 1
        spares = _spares(instance)
        # unchanged (the serial of a full compile is the time: reassemble instead)
        assert pub.publish(compiler.assemble()) is None
        assert ctl.generation == 2 and [g for g, _ in shm.list_images(instance)][-1] == 2
        assert sorted(_spares(instance)) == sorted(spares)  # the segment went back
    finally:
        pub.close()
    assert _spares(instance) == []


def test_spares_are_bounded_by_the_memory_they_cost(instance, monkeypatch):
    """A spare is as large as the image and charged to the pod like it: past
    SPARE_BYTES fewer are kept, down to none, and retired images are then
    unlinked rather than recycled."""
    size = 1 << 16
    one = size + spares_mod.spare_slack(size)
    monkeypatch.setattr(spares_mod, "SPARES", 2)  # so that the byte bound is what limits
    assert spares_mod.spares_for(size) == 2
    monkeypatch.setattr(spares_mod, "SPARE_BYTES", one)
    assert spares_mod.spares_for(size) == 1
    ctl = shm.ControlSegment.create(instance, 1)
    pub = Publisher(ctl, background=True)
    try:
        for gen, tag in enumerate(b"abcd", start=1):
            assert pub.publish(_image(bytes([tag]), size)) == gen
            assert len(_wait_spares(instance, 1)) == 1
            time.sleep(0.05)  # a second spare would be made by now
            assert len(_spares(instance)) == 1
        monkeypatch.setattr(spares_mod, "SPARE_BYTES", one - 1)
        monkeypatch.setattr(pub_mod, "SPARE_LINGER", 0.3)
        assert spares_mod.spares_for(size) == 0
        assert pub.publish(_image(b"e", size)) == 5
        # none wanted: the retired image lingers as a spare while publishes
        # might follow, then goes (the control loop's periodic collect)
        time.sleep(0.1)
        pub.collect()
        assert len(_spares(instance)) == 1
        deadline = time.monotonic() + 5
        while (_spares(instance) or len(shm.list_images(instance)) > 1) \
                and time.monotonic() < deadline:
            pub.collect()
            time.sleep(0.01)
        assert _spares(instance) == []
        assert [g for g, _ in shm.list_images(instance)] == [5]
    finally:
        pub.close()


def test_in_place_images_rotate_through_the_one_the_workers_left(instance, monkeypatch):
    """Assembled in place, each image goes into the segment of the image before
    the last (the workers have left it: recycled, its mapping reused), so a
    57 MB image costs two segments, never a fresh file preallocated while
    another is unlinked."""
    size = 1 << 16
    # one spare's worth, as for the 51 MB image of 10k Services and 150k endpoints
    monkeypatch.setattr(spares_mod, "SPARE_BYTES", 3 * size)
    ctl = shm.ControlSegment.create(instance, 1)
    pub = Publisher(ctl, background=True)
    try:
        maps = {}
        for gen, tag in enumerate(b"abcdefg", start=1):
            n = size + 2048 * gen  # growing, as images patched in place do
            assert spares_mod.spares_for(n) == 1
            view = pub.buffer(n)
            maps[gen] = view.obj
            view[:] = _image(bytes([tag]), n)
            assert pub.publish(view) == gen
            cur = ctl.current()
            assert cur is not None and bytes(cur.buf[24:]) == bytes(_image(bytes([tag]), n)[24:])
            cur.close()
            if gen >= 4:  # the mapping of the image two before, reused though it grew
                assert maps[gen] is maps[gen - 2]
            del view
            ctl.set_mapped(0, gen)  # the worker moves on after the publish, as workers do
            deadline = time.monotonic() + 5
            while len(shm.list_segments(instance)) > 3 and time.monotonic() < deadline:
                time.sleep(0.005)
            # the control segment, the image in force and the one the worker
            # just left (the next image's segment): no third image-sized file
            assert len(shm.list_segments(instance)) <= 3, shm.list_segments(instance)
        assert pub.spare_misses <= 2  # a fresh file only before anything was retired
        assert pub.recycled >= 4
    finally:
        pub.close()
    ctl.close()
