"""Walk one directive's tokens the way CoreDNS plugin setup code does.

A port of caddyfile ``Dispenser`` (``NextArg``, ``RemainingArgs``,
``NextBlock``) so that each plugin parser reads like its Go ``setup.go``:
arguments are the tokens on the directive's own line, and an optional
``{ ... }`` opened on that line holds one sub-directive per line.
"""

from __future__ import annotations

from fastdns.corefile.errors import CorefileError
from fastdns.corefile.lexer import Token


class TokenCursor:
    """caddyfile Dispenser's ``Next``/``NextArg`` over ``tokens``; shared by the
    block grammar (blocks.BlockParser) and the plugin parsers (Dispenser)."""

    tokens: list[Token]
    cursor: int

    def next(self) -> bool:
        if self.cursor < len(self.tokens) - 1:
            self.cursor += 1
            return True
        return False

    def next_arg(self) -> bool:
        """Advance only if the next token is on the same line as this one."""
        if self.cursor >= len(self.tokens) - 1:
            return False
        cur, nxt = self.tokens[self.cursor], self.tokens[self.cursor + 1]
        if cur.file == nxt.file and cur.end_line == nxt.line:
            self.cursor += 1
            return True
        return False


class Dispenser(TokenCursor):
    def __init__(self, tokens: list[Token], plugin: str) -> None:
        self.tokens = tokens
        self.plugin = plugin
        self.cursor = 0  # on the directive name
        self.nesting = 0

    @property
    def tok(self) -> Token:
        return self.tokens[min(self.cursor, len(self.tokens) - 1)]

    def val(self) -> str:
        return self.tok.text

    def remaining_args(self) -> list[Token]:
        """The rest of this line, stopping before a '{' that opens a block."""
        args: list[Token] = []
        while self.next_arg():
            if self.val() == "{":
                self.cursor -= 1
                break
            args.append(self.tok)
        return args

    def next_block(self) -> bool:
        """Move to the next sub-directive of a '{ ... }' opened on this line."""
        if self.nesting > 0:
            if not self.next():
                return False
            if self.val() == "}":
                self.nesting -= 1
                return False
            return True
        if not self.next_arg():
            return False
        if self.val() != "{":
            self.cursor -= 1
            return False
        self.next()
        if self.val() == "}":
            return False
        self.nesting += 1
        return True

    def err(self, reason: str, tok: Token | None = None) -> CorefileError:
        t = tok or self.tok
        return CorefileError(t.file, t.line, reason, self.plugin)

    def arg_err(self) -> CorefileError:
        return self.err(f"wrong argument count or unexpected line ending after '{self.val()}'")

    def one_arg(self) -> Token:
        """The only argument of the current (sub-)directive: the rest of its line
        must be exactly one token (else ``arg_err``)."""
        args = self.remaining_args()
        if len(args) != 1:
            raise self.arg_err()
        return args[0]

    def unknown_property(self) -> CorefileError:
        return self.err(f"unknown property '{self.val()}'")

    def no_args(self) -> None:
        """The current (sub-)directive takes no arguments."""
        if self.next_arg():
            raise self.err(f"unexpected argument '{self.val()}'")

    def finish(self) -> None:
        """Every token must have been consumed; point at the first one that was not."""
        if self.cursor < len(self.tokens) - 1:
            extra = self.tokens[self.cursor + 1]
            raise self.err(f"unexpected token '{extra.text}'", extra)
