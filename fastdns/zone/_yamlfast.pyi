from typing import Any

STR_TAG: str

class Reader:
    def __init__(self, data: bytes, skip: frozenset[str], not_plain: type[Exception]) -> None: ...
    unsafe: bool
    def document(self) -> Any: ...
