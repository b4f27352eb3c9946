"""Shared fixtures. `wire` runs a test over both wire implementations.

The `py`/`c` parametrisation follows multidict's conftest: every wire test
runs against the pure-Python twin and the Cython core. The C run is skipped
only when FASTDNS_NO_EXTENSIONS=1; otherwise a missing extension is an error
(and tests/wire/test_wire.py::test_c_extension_loaded fails on its own).
"""

import os
import secrets

import pytest

NO_EXTENSIONS = os.environ.get("FASTDNS_NO_EXTENSIONS", "") not in ("", "0")


@pytest.fixture(params=["py", "c"])
def wire(request):
    """The wire module under test: fastdns.wire (py) or fastdns._wire (c)."""
    if request.param == "py":
        from fastdns import wire as module
    else:
        if NO_EXTENSIONS:
            pytest.skip("FASTDNS_NO_EXTENSIONS=1: the Cython core is not tested")
        from fastdns import _wire as module
    return module


@pytest.fixture
def wire_pair():
    """(python twin, Cython core) for differential tests; skipped without extensions."""
    if NO_EXTENSIONS:
        pytest.skip("FASTDNS_NO_EXTENSIONS=1: nothing to compare the twin with")
    from fastdns import _wire, wire

    return wire, _wire


@pytest.fixture
def instance():
    """A fresh shm instance name; every segment of it must be gone afterwards."""
    from fastdns.ipc import shm

    inst = "t" + secrets.token_hex(5)
    yield inst
    shm.sweep(inst)
    assert shm.list_segments(inst) == []
