"""Give freed heap back to the kernel after the control process's big allocations.

A full compile or a relist allocates and frees hundreds of MB in objects
larger than pymalloc's 512 octets (fragment blobs, list pages): glibc keeps
what it freed in its heap for later, so the pages stay resident and charged
to the pod's memory limit. ``malloc_trim(0)`` returns the free pages: 25 MB
after the first compile of 10k Services and 150k endpoints (issue 14: the
compiling process's RssAnon 201 -> 176 MiB). Elsewhere than glibc it does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("control")

_trim = None
try:  # glibc only; musl and others have no malloc_trim
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _trim = getattr(_libc, "malloc_trim", None)
except OSError:  # pragma: no cover - no C library to load
    _trim = None
if _trim is not None:
    _trim.argtypes = [ctypes.c_size_t]
    _trim.restype = ctypes.c_int


def trim() -> bool:
    """Return the C heap's free pages to the kernel; whether any were returned."""
    if _trim is None:
        return False
    return bool(_trim(0))
