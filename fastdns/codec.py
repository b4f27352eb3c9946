"""Chooses the wire codec: the Cython core, or its pure-Python twin.

``FASTDNS_NO_EXTENSIONS=1`` forces the twin (as yarl and frozenlist do);
otherwise a missing extension falls back to the twin, and ``NO_EXTENSIONS``
tells which one is in use (a test fails if the C module silently did not load).
"""

import os

NO_EXTENSIONS = os.environ.get("FASTDNS_NO_EXTENSIONS", "") not in ("", "0")

if NO_EXTENSIONS:
    from fastdns import wire
else:
    try:
        from fastdns import _wire as wire  # type: ignore[no-redef]
    except ImportError:  # pragma: no cover - exercised by the fallback test
        from fastdns import wire

        NO_EXTENSIONS = True

__all__ = ["wire", "NO_EXTENSIONS"]
