"""Stub of the Cython build of ``fastdns.zone.fragments.assemble_py`` (same signature)."""

from array import array
from collections.abc import Callable

from fastdns.zone.fragments import Buffer, Fragment

def assemble(header: bytes, zone_table: bytes, nslots: int, frags: list[Fragment],
             shared_base: int, out: bytearray | None = None,
             into: Callable[[int], Buffer] | None = None,
             prev: Buffer | None = None, at: array | None = None) -> Buffer: ...
