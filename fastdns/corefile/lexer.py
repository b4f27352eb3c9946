"""Corefile tokens, exactly as CoreDNS's Caddyfile lexer cuts them.

Rules (``coredns/caddy`` ``caddyfile/lexer.go``): tokens are separated by
whitespace; ``#`` starts a comment that runs to the end of the line, even in
the middle of a word; a token that *starts* with ``"`` is quoted and runs to
the next unescaped ``"``, newlines included; inside quotes only ``\\"`` is an
escape (any other backslash is kept). Braces are tokens only when they stand
alone. A token remembers the line it starts on and how many newlines it holds,
because "same line" decides where a directive's arguments end.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastdns.corefile.errors import CorefileError


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    file: str
    line: int
    quoted: bool = False

    @property
    def end_line(self) -> int:
        """Line on which the token ends (a quoted token may span lines)."""
        return self.line + self.text.count("\n")

    def with_text(self, text: str) -> Token:
        return Token(text, self.file, self.line, self.quoted)


def tokenize(text: str, filename: str) -> list[Token]:
    """Split Corefile ``text`` into tokens; ``filename`` is kept for messages."""
    if text.startswith("\ufeff"):
        text = text[1:]
    tokens: list[Token] = []
    line = 1
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
            continue
        if ch.isspace():
            i += 1
            continue
        if ch == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        start_line = line
        if ch == '"':
            # Quoted: only \" is an escape; other backslashes stay (lexer.go).
            buf: list[str] = []
            escaped = False
            i += 1
            while True:
                if i >= n:
                    raise CorefileError(filename, start_line, "unterminated quoted string")
                c = text[i]
                i += 1
                if not escaped:
                    if c == "\\":
                        escaped = True
                        continue
                    if c == '"':
                        break
                if c == "\n":
                    line += 1
                if escaped and c != '"':
                    buf.append("\\")
                buf.append(c)
                escaped = False
            tokens.append(Token("".join(buf), filename, start_line, True))
            continue
        j = i
        while j < n and not text[j].isspace() and text[j] != "#":
            j += 1
        tokens.append(Token(text[i:j], filename, start_line))
        i = j
    return tokens
