"""Retiring images: what a worker holds is never retired, and recycled segments
(renamed and written over, shm.RECYCLE) are never ones a reader still maps."""

from __future__ import annotations

import os
import threading
import time

import pytest

from fastdns.control.publisher import Publisher
from fastdns.ipc import shm


def _image(gen_tag: int, size: int = 1 << 16) -> bytes:
    # every octet after the header says which publish this is
    return b"FDNSIMG1" + bytes(16) + bytes([gen_tag % 251 + 1]) * (size - 24)


def _wait(pred, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.005)
    return pred()


def test_holds_protect_from_retirement(instance):
    ctl = shm.ControlSegment.create(instance, 2)
    pub = Publisher(ctl)
    try:
        # worker 0 maps 1; worker 1 is attaching 2, then let go of 3 with a view alive
        pub.publish(_image(1))
        ctl.set_mapped(0, 1)
        pub.publish(_image(2))
        ctl.set_attaching(1, 2)
        pub.publish(_image(3))
        ctl.set_lingering(1, 3)
        pub.publish(_image(4))
        assert ctl.holds(1) == (0, 2, 3) and ctl.held() == {1, 2, 3}
        assert pub.collect() == []
        assert [g for g, _ in shm.list_images(instance)] == [1, 2, 3, 4]
        ctl.release_worker(1)
        assert ctl.holds(1) == (0, 0, 0)
        assert pub.collect() == [shm.image_name(instance, 2), shm.image_name(instance, 3)]
        assert [g for g, _ in shm.list_images(instance)] == [1, 4]
    finally:
        pub.close()


def test_retired_images_are_recycled_as_spares(instance, monkeypatch):
    monkeypatch.setattr(shm, "RECYCLE", True)
    ctl = shm.ControlSegment.create(instance, 1)
    pub = Publisher(ctl, background=True)
    try:
        inodes = {}
        for n in range(1, 9):
            assert pub.publish(_image(n)) == n
            path = os.path.join(shm.SHM_DIR, shm.image_name(instance, n))
            inodes[n] = os.stat(path).st_ino
            cur = ctl.current()
            assert bytes(cur.buf[24:]) == _image(n)[24:]
            cur.close()
            _wait(lambda: pub._spare_pending == 0)
        assert pub.recycled >= 4
        # later images live in the files of earlier ones: no new pages, no unlink
        assert set(list(inodes.values())[4:]) <= set(list(inodes.values())[:6])
        assert len([g for g, _ in shm.list_images(instance)]) == 1
    finally:
        pub.close()


def test_recycling_off_unlinks(instance, monkeypatch):
    monkeypatch.setattr(shm, "RECYCLE", False)
    ctl = shm.ControlSegment.create(instance, 1)
    pub = Publisher(ctl, background=True)
    try:
        for n in range(1, 5):
            pub.publish(_image(n))
            _wait(lambda: pub._spare_pending == 0)
        assert pub.recycled == 0
    finally:
        pub.close()


def test_close_reports_a_lingering_view(instance):
    ctl = shm.ControlSegment.create(instance, 1)
    pub = Publisher(ctl)
    try:
        pub.publish(_image(1))
        seg = ctl.current()
        view = seg.buf[100:200]  # e.g. a task that captured part of the image
        assert seg.close() is False  # the mapping lives on with the view
        assert bytes(view[:1]) == bytes([2])
        view.release()
        assert seg.close() is True
    finally:
        pub.close()


@pytest.mark.parametrize("recycle", [True, False])
def test_reader_never_sees_a_held_image_change(instance, monkeypatch, recycle):
    """A worker-like reader remaps as fast as it can while images are published
    back to back; every image it holds keeps the octets it had when attached."""
    monkeypatch.setattr(shm, "RECYCLE", recycle)
    ctl = shm.ControlSegment.create(instance, 1)
    pub = Publisher(ctl, background=True)
    stop = threading.Event()
    errors: list[str] = []
    remaps = [0]

    def reader() -> None:
        rctl = shm.ControlSegment.attach(instance)
        held = None
        try:
            while not stop.is_set():
                seg = rctl.current(worker=0)
                if seg is None or (held is not None and seg.generation == held.generation):
                    if seg is not None:
                        seg.close()
                    rctl.set_attaching(0, 0)
                    continue
                want = seg.buf[30]  # what this image says, checked again below
                old, held = held, seg
                rctl.set_mapped(0, seg.generation)
                rctl.set_attaching(0, 0)
                if old is not None:
                    old.close()
                remaps[0] += 1
                for _ in range(3):  # keep reading it while the publisher goes on
                    if held.buf[30] != want or held.buf[-1] != want:
                        errors.append(f"generation {held.generation} changed under its reader")
                    time.sleep(0.0005)
        finally:
            if held is not None:
                held.close()
            rctl.release_worker(0)
            rctl.close()

    t = threading.Thread(target=reader)
    t.start()
    try:
        deadline = time.monotonic() + 3.0
        n = 0
        while n < 400 and time.monotonic() < deadline:
            n += 1
            pub.publish(_image(n, 1 << 18))
        stop.set()
        t.join(5)
        assert not t.is_alive()
        assert not errors, errors[:3]
        assert remaps[0] >= 10 and n >= 50
        if recycle:
            assert pub.recycled > 0
    finally:
        stop.set()
        pub.close()
