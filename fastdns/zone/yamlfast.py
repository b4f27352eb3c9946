"""A fast reader for the block YAML that kubectl, go-yaml and yaml.dump write.

A state file of 10k Services and 150k Pods is ~74 MB of YAML: PyYAML reads it
at ~1 MB/s even through libyaml, so a first load took 100 s. This reader
takes the plain block style those tools write, line by line (~10x faster;
its Cython twin, fastdns/zone/_yamlfast.pyx, another ~5x),
and gives each scalar to PyYAML's own resolver and constructor, so ``yes``,
``0x1F`` or ``~`` mean what they mean to PyYAML. Anything else (flow
collections, anchors, tags, multi-line scalars, tabs) raises NotPlain and
the caller loads the whole file through PyYAML's C loader instead.
"""

from __future__ import annotations

import os
import re
from typing import Any

import yaml

# YAML the item-by-item parse could read differently from the whole-file
# parse: anchors, aliases, tags, directives and document markers (any of
# these, even inside a quoted string, just means "load it whole").
_YAML_NODE_PROPS = re.compile(r"(?:^|[\s\[{,])[&*!]", re.M)


def yaml_unsafe(text: str) -> bool:
    """Whether ``text`` may hold anchors, aliases, tags, directives or markers."""
    if ("&" in text or "*" in text or "!" in text) and _YAML_NODE_PROPS.search(text):
        return True
    return text.startswith(("---", "...", "%")) or "\n---" in text or "\n..." in text \
        or "\n%" in text


class NotPlain(Exception):
    """The fast reader met YAML it does not read: PyYAML reads the file."""


_PLAIN_TEXT = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")  # tabs, CR, control characters
_KEY = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_./-]*):(?: |$)")
_STR_TAG = "tag:yaml.org,2002:str"


class _BlockReader:
    """Block YAML as kubectl, go-yaml and yaml.dump write it, read line by line.

    PyYAML, even over libyaml, builds each scalar through Python-level nodes,
    resolvers and constructors: ~1 MB/s, 100 s for a 10k-Service dump. This
    reads the common subset ~10x faster and raises NotPlain on anything
    else (anchors, tags, multi-line flow or plain scalars, complex keys,
    indentation it cannot place, tabs, non-ASCII), for PyYAML to read the
    whole file. Scalars are resolved by PyYAML's own implicit resolvers and
    built by its SafeConstructor, so `yes`, `0x1F`, `~` or a timestamp mean
    what they mean there; single-line flow collections and escaped quoted
    scalars are handed to PyYAML one by one.
    """

    def __init__(self, text: str, skip: frozenset[str] = frozenset()) -> None:
        self.lines = text.split("\n")
        self.skip = {f"kind: {k}" for k in skip}  # items of these kinds go unread
        self.i = 0
        self.resolvers = yaml.resolver.Resolver.yaml_implicit_resolvers
        self.constructor = yaml.constructor.SafeConstructor()
        self.cache: dict[str, Any] = {}
        self.loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    def document(self) -> Any:
        lines = self.lines
        self._skip()
        if self.i < len(lines) and lines[self.i] == "---":
            self.i += 1
            self._skip()
        if self.i >= len(lines):
            return None
        line = lines[self.i]
        if line[:1] == " ":
            raise NotPlain("an indented document")
        value = self._block(0)
        self._skip()
        if self.i < len(lines):
            raise NotPlain(f"line {self.i + 1}: more than one document, or odd indentation")
        return value

    def _skip(self) -> None:
        """Past blank and comment lines."""
        lines, i, n = self.lines, self.i, len(self.lines)
        while i < n:
            t = lines[i].lstrip(" ")
            if t and t[0] != "#":
                break
            i += 1
        self.i = i

    def _block(self, indent: int) -> Any:
        """The mapping or sequence whose lines start at ``indent``."""
        line = self.lines[self.i]
        if line.startswith("-", indent) and (len(line) == indent + 1
                                             or line[indent + 1] == " "):
            return self._sequence(indent)
        return self._mapping(indent, line[indent:])

    def _mapping(self, indent: int, first: str) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        lines = self.lines
        nlines = len(lines)
        cache = self.cache
        content = first  # the first entry may sit after a sequence's "- "
        while True:
            m = _KEY.match(content)
            if m is None:
                raise NotPlain(f"line {self.i + 1}: not a plain key")
            k = m.group(1)
            key = cache.get(k, cache)
            if key is cache:
                key = self._plain(k)
            if key == "<<":
                raise NotPlain("a merge key")
            rest = content[m.end():].lstrip(" ")
            self.i += 1
            if rest:
                got = cache.get(rest, cache)  # a plain scalar seen before
                out[key] = got if got is not cache else self._scalar(rest, indent)
            else:
                out[key] = self._nested(indent, allow_seq_at=indent)
            if self.i >= nlines:
                return out
            line = lines[self.i]
            stripped = line.lstrip(" ")
            if not stripped or stripped[0] == "#":
                self._skip()
                if self.i >= nlines:
                    return out
                line = lines[self.i]
                stripped = line.lstrip(" ")
            n = len(line) - len(stripped)
            if n < indent:
                return out
            if n > indent:
                raise NotPlain(f"line {self.i + 1}: indented further than its mapping")
            if line.startswith("- ", n) or line[n:] == "-":
                return out  # the sequence this mapping is the value of goes on
            content = line[n:]

    def _nested(self, indent: int, allow_seq_at: int) -> Any:
        """The value of a key (or "-") with nothing after it: a block below, or null."""
        self._skip()
        if self.i >= len(self.lines):
            return self._plain("")
        line = self.lines[self.i]
        n = len(line) - len(line.lstrip(" "))
        if n > indent:
            return self._block(n)
        if n == allow_seq_at and (line.startswith("- ", n) or line[n:] == "-"):
            return self._sequence(n)
        return self._plain("")

    def _sequence(self, indent: int) -> list[Any]:
        out: list[Any] = []
        lines = self.lines
        while True:
            line = lines[self.i]
            if indent == 0 and self.skip:
                kind = self._skipped(line)
                if kind is not None:
                    out.append({"kind": kind})
                    self._skip()
                    if self.i >= len(lines) or not (lines[self.i].startswith("- ")
                                                    or lines[self.i] == "-"):
                        return out  # the sequence ends (the next top-level key)
                    continue
            rest = line[indent + 1:]
            body = rest.lstrip(" ")
            if not body:
                self.i += 1
                out.append(self._nested(indent, allow_seq_at=-1))
            else:
                at = len(line) - len(body)
                if body.startswith("- ") or body == "-":
                    raise NotPlain(f"line {self.i + 1}: a sequence in a sequence's line")
                if _KEY.match(body):
                    out.append(self._mapping(at, body))
                else:
                    self.i += 1
                    out.append(self._scalar(body, indent))
            self._skip()
            if self.i >= len(lines):
                return out
            line = lines[self.i]
            n = len(line) - len(line.lstrip(" "))
            if n != indent or not (line.startswith("- ", n) or line[n:] == "-"):
                if n > indent:
                    raise NotPlain(f"line {self.i + 1}: indented further than its sequence")
                return out

    def _skipped(self, first: str) -> str | None:
        """A top-level item of a kind in ``skip``: its kind, with the reader past
        its lines; None (reader unmoved) for any other item. Its own keys are the
        lines indented by exactly two (``- kind: Pod`` on the first): a block
        scalar's lines or a nested key sit deeper, so ``  kind: Pod`` can only
        be the item's. The item is not read further: a kind the caller drops
        (Pods where ``pods verified`` is off) costs a scan, not a parse."""
        lines, i, n = self.lines, self.i + 1, len(self.lines)
        kind = first[2:] if first[2:] in self.skip else None
        while i < n:
            line = lines[i]
            if line[:1] != " " and line.lstrip(" ")[:1] not in ("", "#"):
                break  # the next item, or the next top-level key
            if kind is None and line[:2] == "  " and line[2:] in self.skip:
                kind = line[2:]
            i += 1
        if kind is None:
            return None
        self.i = i
        return kind[len("kind: "):]

    def _scalar(self, text: str, indent: int) -> Any:
        """The one-line scalar ``text`` (a block scalar: the lines below it too)."""
        text = text.rstrip(" ")
        c = text[0]
        if c == "'":
            inner = text[1:-1]
            if len(text) < 2 or text[-1] != "'" or "'" in inner.replace("''", ""):
                raise NotPlain(f"line {self.i}: a quoted scalar that goes on")
            return inner.replace("''", "'")
        if c == '"':
            inner = text[1:-1]
            if len(text) < 2 or text[-1] != '"' or '"' in inner:
                raise NotPlain(f"line {self.i}: a quoted scalar that goes on")
            if "\\" in inner:
                return self._pyyaml(text)
            return inner
        if c in "[{":
            if text in ("[]", "{}"):
                return [] if c == "[" else {}
            return self._pyyaml(text)
        if c in "|>":
            return self._block_scalar(text, indent)
        if c in "-?:" and (len(text) == 1 or text[1] == " "):
            raise NotPlain(f"line {self.i}: an indicator")
        if c in ",#&*!%@`]}" or " #" in text or ": " in text or text.endswith(":"):
            raise NotPlain(f"line {self.i}: not a plain scalar")
        return self._plain(text)

    def _plain(self, text: str) -> Any:
        got = self.cache.get(text, self)
        if got is not self:
            return got
        tag = _STR_TAG
        for t, regexp in self.resolvers.get(text[:1], ()):
            if regexp.match(text):
                tag = t
                break
        if tag == _STR_TAG:
            value: Any = text
        elif tag not in self.constructor.yaml_constructors:
            raise NotPlain(f"a scalar tagged {tag}")  # '<<', '='
        else:
            node = yaml.ScalarNode(tag, text)
            value = self.constructor.yaml_constructors[tag](self.constructor, node)
            if isinstance(value, (list, dict, set)):
                raise NotPlain("a collection from a scalar")
        if len(self.cache) < 100_000:
            self.cache[text] = value
        return value

    def _pyyaml(self, text: str) -> Any:
        try:
            return yaml.load("x: " + text + "\n", Loader=self.loader)["x"]
        except yaml.YAMLError:
            raise NotPlain(f"line {self.i}: PyYAML's to read") from None

    def _block_scalar(self, header: str, indent: int) -> Any:
        if any(ch.isdigit() for ch in header) or "+" in header or " #" in header:
            raise NotPlain(f"line {self.i}: a block scalar with an indicator")
        lines = self.lines
        start = self.i
        while self.i < len(lines):
            line = lines[self.i]
            if line.strip(" ") and len(line) - len(line.lstrip(" ")) <= indent:
                break
            self.i += 1
        body = lines[start:self.i]
        while body and not body[-1].strip(" "):  # trailing blank lines: chomping's
            body.pop()
            self.i -= 1
        return self._pyyaml(header + "\n" + "\n".join(body))


def fast_yaml(text: str, skip: frozenset[str] = frozenset()) -> Any:
    """The document ``_BlockReader`` reads, or raise NotPlain. The top-level
    items of a kind in ``skip`` are read as ``{"kind": KIND}`` alone."""
    if Reader is None:
        return fast_yaml_py(text, skip)
    if not text.isascii():
        raise NotPlain("characters PyYAML must read")
    reader = Reader(text.encode("ascii"), skip, NotPlain)
    if reader.unsafe:  # its scan of the octets: what the Python checks below find
        raise NotPlain("characters or structures PyYAML must read")
    return reader.document()


def fast_yaml_py(text: str, skip: frozenset[str] = frozenset()) -> Any:
    """``fast_yaml`` through the Python reader alone (the reference the tests hold the C one to)."""
    if not text.isascii() or unreadable(text):
        raise NotPlain("characters or structures PyYAML must read")
    return _BlockReader(text, skip).document()


def unreadable(text: str) -> bool:
    """Control characters, anchors, aliases, tags, directives or markers past
    the first: what neither reader reads (the C one finds the same in its scan)."""
    body = text[4:] if text.startswith("---\n") else text  # one leading marker is fine
    return bool(_PLAIN_TEXT.search(text)) or yaml_unsafe(body)


Reader: Any = None
if os.environ.get("FASTDNS_NO_EXTENSIONS", "") in ("", "0"):
    try:  # the Cython twin of _BlockReader (fastdns/zone/_yamlfast.pyx)
        from fastdns.zone._yamlfast import Reader
    except ImportError:  # not built: the Python reader
        Reader = None
