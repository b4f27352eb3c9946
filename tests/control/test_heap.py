"""heap.trim gives freed C-heap pages back: what a compile freed stops counting."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fastdns.control import heap

SCRIPT = r"""
import sys
from fastdns.control import heap

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) // 1024

# blobs below glibc's mmap threshold live in its heap; keep every tenth so
# the freed ones are holes that the heap's top cannot give back by itself
blobs = [bytes([i & 255]) * 100_000 for i in range(1500)]
kept = blobs[::10]
del blobs
before = anon()
heap.trim()
after = anon()
print(before, after, len(kept))
"""


@pytest.mark.skipif(heap._trim is None, reason="no glibc malloc_trim here")
def test_trim_returns_what_was_freed():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    before, after = int(out[0]), int(out[1])
    assert before >= 100  # ~135 MB freed in holes, still resident
    assert after < before - 80, (before, after)
