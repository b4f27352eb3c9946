"""Group Corefile tokens into server blocks and directives (no plugin meaning yet).

A port of the structural half of CoreDNS's Caddyfile parser
(``coredns/caddy`` ``caddyfile/parse.go``): block keys up to the end of the
line (a trailing comma continues them on the next line), ``{ ... }`` bodies
(optional for a lone block), snippets ``(name) { ... }``, ``import`` of a
snippet or of files matched by a glob relative to the importing file, and
``{$ENV}`` / ``{%ENV%}`` substitution in keys and directive tokens.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from fastdns.corefile.dispenser import TokenCursor
from fastdns.corefile.errors import CorefileError
from fastdns.corefile.lexer import Token, tokenize

# parse.go: a hard cap on snippet and file expansions, against import cycles.
MAX_EXPANSIONS = 1000


@dataclass
class RawDirective:
    """A directive occurrence: its name token, then every token up to its end."""

    name: Token
    tokens: list[Token]  # tokens[0] is the name; nested braces included


@dataclass
class RawBlock:
    keys: list[Token]
    directives: list[RawDirective] = field(default_factory=list)


def replace_env(s: str, environ: Mapping[str, str]) -> str:
    """``{%VAR%}`` then ``{$VAR}``, as caddyfile ``replaceEnvVars`` does (unset = "")."""
    s = _replace_refs(s, "{%", "%}", environ)
    return _replace_refs(s, "{$", "}", environ)


def _replace_refs(s: str, start: str, end: str, environ: Mapping[str, str]) -> str:
    index = s.find(start)
    while index != -1:
        end_index = s.find(end, index)
        if end_index == -1:
            break
        if end_index > index + len(start):
            ref = s[index:end_index + len(end)]
            s = s.replace(ref, environ.get(ref[len(start):-len(end)], ""))
        else:
            return s
        index = s.find(start)
    return s


def is_new_line(prev: Token, cur: Token) -> bool:
    """caddyfile ``isNewLine``: another file, or a later line than prev ends on."""
    return prev.file != cur.file or prev.end_line < cur.line


class BlockParser(TokenCursor):
    """Cursor over a token list that grows in place as imports are spliced in."""

    def __init__(self, tokens: list[Token], environ: Mapping[str, str] | None = None) -> None:
        self.tokens = tokens
        self.cursor = -1
        self.environ = os.environ if environ is None else environ
        self.snippets: dict[str, list[Token]] = {}
        self.snippet_expansions = 0
        self.file_expansions = 0

    # -- cursor helpers (caddyfile Dispenser) --
    @property
    def tok(self) -> Token:
        return self.tokens[self.cursor]

    def val(self) -> str:
        if 0 <= self.cursor < len(self.tokens):
            return self.tokens[self.cursor].text
        return ""

    def new_line(self) -> bool:
        if self.cursor < 1:
            return True
        if self.cursor > len(self.tokens) - 1:
            return False
        return is_new_line(self.tokens[self.cursor - 1], self.tokens[self.cursor])

    def next_arg(self) -> bool:
        if self.cursor < 0:
            self.cursor += 1
            return True
        return super().next_arg()

    def err(self, reason: str, tok: Token | None = None) -> CorefileError:
        t = tok or self._last_token()
        return CorefileError(t.file, t.line, reason)

    def _last_token(self) -> Token:
        if 0 <= self.cursor < len(self.tokens):
            return self.tokens[self.cursor]
        return self.tokens[-1]

    def env(self, s: str) -> str:
        return replace_env(s, self.environ)

    # -- the grammar --
    def parse_all(self) -> list[RawBlock]:
        blocks: list[RawBlock] = []
        while self.next():
            block = self._parse_one()
            if block is not None and block.keys:
                blocks.append(block)
        return blocks

    def _parse_one(self) -> RawBlock | None:
        block = RawBlock(keys=[])
        eof = self._addresses(block)
        if eof:
            return block
        if len(block.keys) == 1 and block.keys[0].text.startswith("(") \
                and block.keys[0].text.endswith(")"):
            self._snippet(block.keys[0])
            return None
        self._block_contents(block)
        return block

    def _addresses(self, block: RawBlock) -> bool:
        """Read block keys; True when the file ended on the key line."""
        expecting_another = False
        while True:
            tkn = self.env(self.val())
            if tkn == "import" and self.new_line():
                self._do_import()
                if not self.next():
                    return True
                continue
            if tkn == "}":
                raise self.err("unexpected '}' outside of any block")
            if tkn == "{":
                if not block.keys:
                    raise self.err("a server block needs at least one key (zone) before '{'")
                if expecting_another:
                    raise self.err("expected another address but had '{' - check for extra comma")
                break
            if tkn:
                if tkn.endswith(","):
                    tkn = tkn[:-1]
                    expecting_another = True
                else:
                    expecting_another = False
                if tkn:
                    block.keys.append(self.tok.with_text(tkn))
            if not self.next():
                if expecting_another:
                    raise self.err("unexpected end of file after ',': expected another address")
                return True
            if not expecting_another and self.new_line():
                break
        return False

    def _snippet(self, key: Token) -> None:
        name = key.text[1:-1]
        if name in self.snippets:
            raise self.err(f"redeclaration of previously declared snippet {name}", key)
        if self.val() != "{":
            raise self.err(f"snippet ({name}) needs a '{{ ... }}' body", self._last_token())
        depth = 1
        body: list[Token] = []
        while self.next():
            if self.val() == "}":
                depth -= 1
                if depth == 0:
                    break
            if self.val() == "{":
                depth += 1
            body.append(self.tok)
        if depth != 0:
            raise self.err(f"unexpected end of file in snippet ({name}): missing '}}'", key)
        for i in range(len(body) - 1):
            t = body[i]
            at_line_start = i == 0 or is_new_line(body[i - 1], t)
            if t.text == "import" and at_line_start and self.env(body[i + 1].text) == name:
                raise self.err(f"snippet ({name}) imports itself", t)
        self.snippets[name] = body

    def _block_contents(self, block: RawBlock) -> None:
        braced = self.val() == "{"
        open_tok = self.tok
        if not braced:
            # A lone server block needs no braces (parse.go blockContents).
            self.cursor -= 1
        closed = self._directives(block)
        if braced and not closed:
            raise self.err("unexpected end of file: missing '}' to close the block "
                           f"opened on line {open_tok.line}", open_tok)

    def _directives(self, block: RawBlock) -> bool:
        """Read directives until the block's '}' (True) or end of input (False)."""
        while self.next():
            if self.val() == "}":
                return True
            if self.val() == "import":
                self._do_import()
                continue
            self._directive(block)
        return False

    def _directive(self, block: RawBlock) -> None:
        name = self.tok.with_text(self.env(self.val()))
        toks = [name]
        nesting = 0
        open_toks: list[Token] = []
        while self.next():
            v = self.val()
            if v == "{":
                nesting += 1
                open_toks.append(self.tok)
            elif self.new_line() and nesting == 0:
                self.cursor -= 1
                break
            elif v == "}" and nesting > 0:
                nesting -= 1
                open_toks.pop()
            elif v == "}" and nesting == 0:
                raise self.err("unexpected '}' because no matching opening brace")
            elif v == "import" and self.new_line():
                self._do_import()
                continue
            toks.append(self.tok.with_text(self.env(v)))
        if nesting > 0:
            raise self.err("unexpected end of file: missing '}' to close the '{' "
                           f"opened on line {open_toks[-1].line}", open_toks[-1])
        block.directives.append(RawDirective(name, toks))

    def _do_import(self) -> None:
        """Replace ``import ARG`` (cursor on ``import``) by the tokens it names.

        Afterwards the cursor sits on the token before where ``import`` was,
        so ``next()`` lands on the first imported token (parse.go doImport).
        """
        imp = self.tok
        if not self.next_arg():
            raise self.err("import needs one argument: a snippet name, a file or a glob", imp)
        pattern = self.env(self.val())
        if pattern == "":
            raise self.err("import requires a non-empty filepath", imp)
        if self.next_arg():
            raise self.err("import takes only one argument (glob pattern or file)")
        before = self.tokens[: self.cursor - 1]
        after = self.tokens[self.cursor + 1:]
        if pattern in self.snippets:
            if self.snippet_expansions >= MAX_EXPANSIONS:
                raise self.err(f"maximum snippet import depth ({MAX_EXPANSIONS}) exceeded", imp)
            self.snippet_expansions += 1
            imported = list(self.snippets[pattern])
        else:
            if self.file_expansions >= MAX_EXPANSIONS:
                raise self.err(f"maximum file import depth ({MAX_EXPANSIONS}) exceeded", imp)
            self.file_expansions += 1
            imported = self._import_files(imp, pattern)
        self.tokens[:] = before + imported + after
        self.cursor = len(before) - 1

    def _import_files(self, imp: Token, pattern: str) -> list[Token]:
        # Relative to the file holding the import, not the working directory
        # (caddy issue #867).
        if "\0" in pattern:  # glob and open raise ValueError on it
            raise self.err("import path contains a NUL byte", imp)
        if not os.path.isabs(pattern):
            pattern = os.path.normpath(os.path.join(os.path.dirname(imp.file) or ".", pattern))
        if pattern.count("*") > 1 or pattern.count("?") > 1 or ("[" in pattern and "]" in pattern):
            # caddy issue #2096: many wildcards can make the glob hang.
            raise self.err(f"glob pattern may only contain one wildcard (*), "
                           f"but has others: {pattern}", imp)
        matches = sorted(glob.glob(pattern))
        if not matches and not any(c in pattern for c in "*?[]"):
            raise self.err(f"file to import not found: {pattern}", imp)
        out: list[Token] = []
        for path in matches:
            if os.path.isdir(path):
                raise self.err(f"could not import {path}: is a directory", imp)
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError) as e:
                raise self.err(f"could not import {path}: {e}", imp) from None
            out.extend(tokenize(text, path))
        return out


def parse_blocks(text: str, filename: str,
                 environ: Mapping[str, str] | None = None) -> list[RawBlock]:
    """Tokens of ``text`` grouped into server blocks (syntax only)."""
    return BlockParser(tokenize(text, filename), environ).parse_all()
