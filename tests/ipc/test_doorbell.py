"""The workers' doorbells (ipc/doorbell.py): one name per worker, rung without a reply."""

from __future__ import annotations

import select

import pytest

from fastdns.ipc import doorbell

pytestmark = pytest.mark.skipif(not doorbell.available(), reason="abstract sockets are Linux's")


def test_a_ring_reaches_each_workers_bell_and_nobody_else():
    bells = [doorbell.Doorbell.bind("tbell1", i) for i in range(2)]
    assert all(b is not None for b in bells)
    other = doorbell.Doorbell.bind("tbell2", 0)  # another instance's worker 0
    assert other is not None
    try:
        # one name, one worker: a second bind of it is refused (the timer then)
        assert doorbell.Doorbell.bind("tbell1", 0) is None
        ringer = doorbell.Ringer("tbell1", 3)  # worker 2 is not there: skipped
        assert ringer.ring() == 2
        assert ringer.ring() == 2
        for b in bells:
            assert b is not None
            assert select.select([b], [], [], 1.0)[0] == [b]
            assert b.drain() == 2
            assert b.drain() == 0  # non-blocking: nothing left
        assert select.select([other], [], [], 0.05)[0] == []
        ringer.close()
    finally:
        for b in (*bells, other):
            if b is not None:
                b.close()
