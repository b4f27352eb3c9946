"""The one exception the Corefile parser raises, and its "unsupported" flavour.

Every message points at the offending token: ``file:line: reason`` for a
syntax error, ``file:line: plugin NAME: reason`` for a plugin's argument.
CoreDNS prints ``file:line - Error during parsing: ...``; fastdns keeps the
file and line, which is what an operator needs to fix the ConfigMap.
"""

from __future__ import annotations


class CorefileError(Exception):
    """The Corefile cannot be run as written."""

    def __init__(self, file: str, line: int, reason: str, plugin: str | None = None) -> None:
        self.file = file
        self.line = line
        self.reason = reason
        self.plugin = plugin
        super().__init__(self._text())

    def _text(self) -> str:
        if self.plugin:
            return f"{self.file}:{self.line}: plugin {self.plugin}: {self.reason}"
        return f"{self.file}:{self.line}: {self.reason}"

    def __str__(self) -> str:
        return self._text()


class Unsupported(CorefileError):
    """Valid for CoreDNS, but something fastdns does not implement.

    ``check-corefile`` reports these as UNSUPPORTED rather than ERROR: the
    Corefile is not wrong, fastdns just cannot run it as-is.
    """
