"""Go regexp (RE2) patterns run by Python's ``re``, and the shapes the C hook matches itself.

The template plugin's ``match`` patterns are Go regexps (``regexp.Compile``
in ``plugin/template/setup.go``), matched with ``MatchString`` and
``FindStringSubmatch`` against the lowercased query name with its trailing
dot. Python's ``re`` has the same leftmost-first semantics for the syntax
both share; ``translate`` accepts only that syntax (plus Go's ``(?<name>``
and ``\\z``, rewritten), refuses what Go refuses and Python would accept
(lookaround, back references, possessive repeats, ``\\Z``), and refuses as
not implemented what Go accepts but Python reads differently (POSIX
classes, ``\\p``, ``\\Q``, the ``U`` flag). Classes like ``\\d`` and ``\\w``
are ASCII in Go, so patterns compile with ``re.ASCII``.

``shape`` recognises the patterns the C pre-lookup hook matches on label
boundaries without a regex engine (fastdns/plugins/template/_template.pyx):
everything (``.*``), ``^(?:[^.]+\\.){N,M}SUFFIX$`` (AKS's), ``^NAME$`` and
``SUFFIX$`` with a literal name. Any other pattern makes the template a
Python one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_LEN = 10000  # setup.go maxRegexpLen
_GO_FLAGS = set("ims-")


class GoRegexError(ValueError):
    """Go's regexp.Compile fails, or fastdns does not implement the construct."""


_NOT_IMPL = "is not implemented by fastdns"


def translate(pattern: str) -> str:
    """The Python ``re`` pattern that matches what the Go pattern matches."""
    out: list[str] = []
    i, n, in_class = 0, len(pattern), False
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                raise GoRegexError("trailing backslash at end of expression")
            e = pattern[i + 1]
            if e == "z":
                out.append(r"\Z")
            elif e in "pPQEC":
                raise GoRegexError(f"escape \\{e} {_NOT_IMPL}")
            elif e in "123456789":
                raise GoRegexError(f"invalid escape sequence: `\\{e}`")
            elif e == "x":
                if pattern[i + 2:i + 3] == "{":
                    raise GoRegexError(f"escape \\x{{...}} {_NOT_IMPL}")
                if not re.fullmatch(r"[0-9a-fA-F]{2}", pattern[i + 2:i + 4]):
                    raise GoRegexError("invalid escape sequence: `\\x`")
                out.append(pattern[i:i + 4])
                i += 4
                continue
            elif e.isalpha() and e not in "aftnrvdDsSwWbBA" or (e in "bB" and in_class) \
                    or (e == "A" and in_class):
                raise GoRegexError(f"invalid escape sequence: `\\{e}`")
            elif e == "0":
                out.append(r"\0")
            elif ord(e) > 0x7F:
                raise GoRegexError(f"invalid escape sequence: `\\{e}`")
            else:
                out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            if c == "[" and pattern[i + 1:i + 2] == ":":
                raise GoRegexError(f"POSIX character classes {_NOT_IMPL}")
            if c == "]":
                in_class = False
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            j = i + 1
            if pattern[j:j + 1] == "^":
                j += 1
            if pattern[j:j + 1] == "]":  # a leading ] is literal, in Go and Python
                j += 1
            if pattern[j:j + 2] == "[:":
                raise GoRegexError(f"POSIX character classes {_NOT_IMPL}")
            out.append(pattern[i:j])
            i = j
            continue
        if c == "(" and pattern[i + 1:i + 2] == "?":
            rest = pattern[i + 2:]
            m = re.match(r"P?<([A-Za-z0-9_]+)>", rest)
            if rest.startswith(":"):
                out.append("(?:")
                i += 3
                continue
            if m:
                out.append(f"(?P<{m.group(1)}>")
                i += 2 + m.end()
                continue
            m = re.match(r"([a-zA-Z-]*)([:)])", rest)
            if not m or not m.group(1) or set(m.group(1)) - _GO_FLAGS:
                if m and "U" in m.group(1):
                    raise GoRegexError(f"the U flag {_NOT_IMPL}")
                raise GoRegexError(f"invalid or unsupported Perl syntax: `(?{rest[:1]}`")
            flags = m.group(1)
            if m.group(2) == ")":
                if out or "-" in flags:
                    raise GoRegexError(f"flags other than at the pattern's start {_NOT_IMPL}")
                out.append(f"(?{flags})")
            else:
                out.append(f"(?{flags}:")
            i += 2 + m.end()
            continue
        if c in "*+?}" and pattern[i + 1:i + 2] == "+":
            raise GoRegexError(f"invalid nested repetition operator: `{c}+`")
        if c == "{":
            m = re.match(r"\{([0-9]+)(,([0-9]*))?\}", pattern[i:])
            if m and (int(m.group(1)) > 1000 or (m.group(3) and int(m.group(3)) > 1000)):
                raise GoRegexError(f"invalid repeat count: `{m.group()}`")
        out.append(c)
        i += 1
    return "".join(out)


def compile_go(pattern: str) -> re.Pattern[str]:
    """The compiled pattern; ``GoRegexError`` as setup.go's ``could not parse regex``."""
    if len(pattern) > MAX_LEN:
        raise GoRegexError(f"regex pattern too long: {len(pattern)} > {MAX_LEN}")
    py = translate(pattern)
    try:
        return re.compile(py, re.ASCII)
    except re.error as e:
        raise GoRegexError(str(e)) from None


# -- shapes the C hook matches -------------------------------------------------

#: a literal name piece: lowercase letters, digits, - and _, dots as \. or [.]
_LIT = r"(?:[a-z0-9_-]|\\\.|\[\.\]|\\-)+"
_LABELS = re.compile(r"\^\(\?:\[\^\.\]\+(?:\\\.|\[\.\])\)\{([0-9]+),([0-9]*)\}(" + _LIT
                     + r")\$\Z")
_EXACT = re.compile(r"\^(" + _LIT + r")\$\Z")
_SUFFIX = re.compile(r"(" + _LIT + r")\$\Z")

ALL, LABELS, EXACT, SUFFIX = 0, 1, 2, 3


@dataclass(frozen=True)
class Shape:
    """A pattern the C hook matches: ``kind`` and, for LABELS, the label counts
    (``hi`` -1: no upper bound) before ``text``, the literal (presentation)."""
    kind: int
    text: str = ""
    lo: int = 0
    hi: int = -1


def _literal(s: str) -> str:
    return s.replace("\\.", ".").replace("[.]", ".").replace("\\-", "-")


def shape(pattern: str) -> Shape | None:
    """The C-matchable form of ``pattern``; None for any other pattern."""
    if pattern in (".*", "^.*$", "^.*", ".*$", ""):
        return Shape(ALL)
    m = _LABELS.match(pattern)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2)) if m.group(2) else -1
        text = _literal(m.group(3))
        if not text.endswith(".") or hi != -1 and hi < lo or ".." in text:
            return None
        return Shape(LABELS, text, lo, hi)
    m = _EXACT.match(pattern)
    if m:
        return Shape(EXACT, _literal(m.group(1)))
    m = _SUFFIX.match(pattern)
    if m and not pattern.startswith("^"):
        return Shape(SUFFIX, _literal(m.group(1)))
    return None
