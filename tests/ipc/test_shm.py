"""Shared-memory segments: layout, publish protocol, retirement, sweeping."""

from __future__ import annotations

import multiprocessing
import os
import secrets
import struct

import pytest

from fastdns.control.publisher import Publisher
from fastdns.ipc import layout, shm


def _image(tag: bytes, size: int = 256) -> bytes:
    head = b"FDNSIMG1" + bytes(8) + bytes(8)  # magic, version/flags, generation
    return (head + tag * size)[: max(size, 64)]


def test_names(instance):
    assert shm.control_name(instance) == f"fastdns-{instance}-ctl"
    assert shm.image_name(instance, 7) == f"fastdns-{instance}-img-7"
    assert shm.image_generation(f"fastdns-{instance}-img-7") == 7
    assert shm.image_generation(f"fastdns-{instance}-ctl") == -1
    with pytest.raises(ValueError):
        shm.control_name("../etc")
    with pytest.raises(ValueError):
        shm.ImageSegment.attach("/etc/passwd")


def test_control_segment_is_written_as_the_layout_declares(instance):
    """Offsets from fastdns/ipc/layout.py, read straight from the file."""
    ctl = shm.ControlSegment.create(instance, 3)
    img = shm.ImageSegment.create(instance, 5, _image(b"x"))
    ctl.publish(img.name, 5)
    ctl.set_mapped(2, 5)
    ctl.set_attaching(1, 4)
    ctl.counters(1)[:4] = b"abcd"
    with open(os.path.join(shm.SHM_DIR, shm.control_name(instance)), "rb") as f:
        raw = f.read()
    block1 = layout.COUNTERS_OFFSET + layout.COUNTERS_SIZE
    assert len(raw) == layout.COUNTERS_OFFSET + 3 * layout.COUNTERS_SIZE
    assert struct.unpack_from("=Q", raw, layout.CTL_GENERATION)[0] == 5
    n = struct.unpack_from("=I", raw, layout.CTL_NAME_LEN)[0]
    assert raw[layout.CTL_NAME:layout.CTL_NAME + n].decode() == img.name
    assert struct.unpack_from("=I", raw, layout.CTL_NWORKERS)[0] == 3
    assert struct.unpack_from("=I", raw, layout.CTL_COUNTERS_SIZE)[0] == layout.COUNTERS_SIZE
    assert struct.unpack_from("=Q", raw, layout.CTL_MAPPED + 8 * 2)[0] == 5
    assert struct.unpack_from("=Q", raw, block1 + 8 * layout.HOLD_ATTACHING_WORD)[0] == 4
    assert raw[block1:block1 + 4] == b"abcd"
    img.close()
    ctl.close()


def test_publish_and_attach(instance):
    ctl = shm.ControlSegment.create(instance, 2)
    reader = shm.ControlSegment.attach(instance)
    assert reader.generation == 0 and reader.current() is None
    data = _image(b"a", 1000)
    img = shm.ImageSegment.create(instance, 1, data)
    ctl.publish(img.name, 1)
    cur = reader.current()
    assert cur is not None and cur.generation == 1 and bytes(cur.buf) == data
    with pytest.raises(ValueError):
        ctl.publish(img.name, 1)  # generations only grow
    cur.close()
    img.close()
    reader.close()
    ctl.close()


def test_reader_retries_when_segment_was_unlinked(instance):
    """A reader that races a publish + unlink retries and gets the new image."""
    ctl = shm.ControlSegment.create(instance, 1)
    a = shm.ImageSegment.create(instance, 1, _image(b"a"))
    ctl.publish(a.name, 1)
    a.close()
    # Simulate the race: name 1 read, but segment 1 already gone and 2 published.
    shm.ImageSegment.unlink(a.name)
    with pytest.raises(FileNotFoundError):
        shm.ImageSegment.attach(a.name)
    b = shm.ImageSegment.create(instance, 2, _image(b"b"))
    ctl.publish(b.name, 2)
    cur = ctl.current()
    assert cur.generation == 2 and bytes(cur.buf[64:65]) == b"b"
    cur.close()
    b.close()
    ctl.close()


def test_unlinked_mapping_stays_readable(instance):
    """Linux keeps the pages of an unlinked tmpfs file until the last munmap."""
    data = _image(b"z", 5000)
    img = shm.ImageSegment.create(instance, 1, data)
    reader = shm.ImageSegment.attach(img.name)
    shm.ImageSegment.unlink(img.name)
    assert bytes(reader.buf) == data
    reader.close()
    img.close()


def test_create_replaces_an_unpublished_leftover(instance):
    shm.ImageSegment.create(instance, 4, _image(b"old")).close()
    img = shm.ImageSegment.create(instance, 4, _image(b"new"))
    assert bytes(img.buf[24:27]) == b"new"
    img.close()


def test_close_tolerates_exported_views(instance):
    img = shm.ImageSegment.create(instance, 1, _image(b"v"))
    held = img.buf[10:20]
    img.close()  # must not raise although `held` still references the map
    assert len(held) == 10


def _child_reads(instance: str, q) -> None:
    ctl = shm.ControlSegment.attach(instance)
    cur = ctl.current()
    q.put((cur.generation, bytes(cur.buf[64:70])))
    ctl.set_mapped(0, cur.generation)
    ctl.counters(0)[0] = 42
    cur.close()
    ctl.close()


def test_cross_process(instance):
    ctl = shm.ControlSegment.create(instance, 1)
    img = shm.ImageSegment.create(instance, 9, _image(b"c"))
    ctl.publish(img.name, 9)
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child_reads, args=(instance, q))
    p.start()
    got = q.get(timeout=30)
    p.join(30)
    assert p.exitcode == 0
    assert got == (9, b"cccccc")
    assert ctl.mapped(0) == 9 and ctl.counters(0)[0] == 42
    q.close()
    q.join_thread()
    img.close()
    ctl.close()


def test_publisher_retires_images_once_workers_moved(instance):
    ctl = shm.ControlSegment.create(instance, 2)
    pub = Publisher(ctl)
    assert pub.publish(_image(b"1")) == 1
    ctl.set_mapped(0, 1)
    ctl.set_mapped(1, 1)
    assert pub.publish(_image(b"2")) == 2
    # both workers still on 1: both images stay
    assert [g for g, _ in shm.list_images(instance)] == [1, 2]
    ctl.set_mapped(0, 2)
    pub.collect()
    assert [g for g, _ in shm.list_images(instance)] == [1, 2]
    ctl.set_mapped(1, 0)  # worker 1 died (the supervisor zeroes its slot)
    pub.collect()
    assert [g for g, _ in shm.list_images(instance)] == [2]
    # an image nobody maps is retired at once when the next one is published
    assert pub.publish(_image(b"3")) == 3
    ctl.set_mapped(0, 3)
    assert pub.publish(_image(b"4")) == 4
    assert [g for g, _ in shm.list_images(instance)] == [3, 4]
    # the generation field in the image header is the published one
    cur = ctl.current()
    assert struct.unpack_from("<Q", cur.buf, 16)[0] == 4
    cur.close()
    ctl.close()


def test_publisher_skips_identical_images(instance):
    ctl = shm.ControlSegment.create(instance, 1)
    pub = Publisher(ctl)
    assert pub.publish(_image(b"s")) == 1
    assert pub.publish(_image(b"s")) is None
    assert pub.publish(_image(b"t")) == 2
    ctl.close()


def test_publisher_recover_after_control_crash(instance):
    """A restarted control keeps the published image, drops leftovers, counts on."""
    ctl = shm.ControlSegment.create(instance, 2)
    pub = Publisher(ctl)
    pub.publish(_image(b"1"))
    ctl.set_mapped(0, 1)
    pub.publish(_image(b"2"))
    ctl.set_mapped(1, 2)
    shm.ImageSegment.create(instance, 3, _image(b"3")).close()  # created, never published
    del pub  # "crash"
    pub2 = Publisher(ctl)
    removed = pub2.recover()
    assert removed == [shm.image_name(instance, 3)]
    assert [g for g, _ in shm.list_images(instance)] == [1, 2]
    assert pub2.publish(_image(b"x")) == 3
    ctl.set_mapped(0, 3)
    ctl.set_mapped(1, 3)
    pub2.collect()
    assert [g for g, _ in shm.list_images(instance)] == [3]
    ctl.close()


def test_sweep(instance):
    other = "o" + secrets.token_hex(5)
    ctl = shm.ControlSegment.create(instance, 1)
    mine = shm.ImageSegment.create(instance, 1, _image(b"m"))
    theirs = shm.ImageSegment.create(other, 1, _image(b"o"))
    try:
        removed = shm.sweep(instance)
        assert sorted(removed) == sorted([ctl.name, mine.name])
        assert shm.list_segments(other) == [theirs.name]
    finally:
        shm.sweep(other)
        for s in (ctl, mine, theirs):
            s.close()
