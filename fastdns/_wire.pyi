"""Type stubs of the Cython wire core; the API is the one of fastdns.wire (docs/internals.md §1)."""

import mmap
from array import array
from typing import Final, TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview | mmap.mmap | array[int]

SLOT: int
STATUS_SLOW: int
ST_ANSWER: int
ST_DROP: int
ST_SLOW: int
MAX_POINTERS: int
DEBUG_BUILD: bool  # built with FASTDNS_DEBUG=1 (invariant asserts, bounds checks)

class Query:
    id: Final[int]
    flags: Final[int]
    opcode: Final[int]
    qname: Final[bytes]
    key: Final[bytes]
    qtype: Final[int]
    qclass: Final[int]
    question_end: Final[int]
    edns: Final[bool]
    edns_version: Final[int]
    payload: Final[int]
    do: Final[bool]

class Response:
    id: Final[int]
    flags: Final[int]
    rcode: Final[int]
    tc: Final[bool]
    qname: Final[bytes]
    key: Final[bytes]
    qtype: Final[int]
    qclass: Final[int]
    ancount: Final[int]
    nscount: Final[int]
    arcount: Final[int]
    ttl_offsets: Final[list[int]]
    min_ttl: Final[int]
    soa_minimum: Final[int]

def crc32(data: Buffer, value: int = 0) -> int: ...
def parse_query(data: Buffer) -> Query: ...
def encode_name(name: str | bytes) -> bytes: ...
def decode_name(data: Buffer, offset: int) -> tuple[bytes, int]: ...
def error_response(data: Buffer, q: Query | None, rcode: int) -> bytes: ...
def respond(data: Buffer, q: Query, template: Buffer, suffix_pos: int = 12) -> bytes: ...
def answer(
    image: Buffer, data: Buffer, counter: int = 0, max_size: int = 0
) -> tuple[int, bytes | None, int]: ...
def answer_batch(
    image: Buffer,
    inbuf: Buffer,
    inlens: Buffer,
    outbuf: Buffer,
    outlens: Buffer,
    counter: int = 0,
) -> int: ...
def parse_response(data: Buffer) -> Response: ...
