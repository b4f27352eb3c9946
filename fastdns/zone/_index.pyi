"""Stub of the Cython build of ``fastdns.zone.fragments.assemble_py`` (same signature)."""

from fastdns.zone.fragments import Fragment

def assemble(header: bytes, zone_table: bytes, nslots: int, frags: list[Fragment],
             shared_base: int, out: bytearray | None = None) -> bytes | bytearray: ...
