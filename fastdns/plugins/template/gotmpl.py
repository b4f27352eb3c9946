"""The part of Go's ``text/template`` that CoreDNS's template plugin examples use.

CoreDNS builds each ``answer``/``additional``/``authority`` RR with
``text/template`` (``plugin/template/template.go`` ``newTemplate``: the
default functions plus ``parseInt`` = ``strconv.ParseUint``). fastdns
implements the subset its README and tests use, and refuses the rest when
the Corefile is read (``TemplateSyntaxError``), so nothing it accepts is
executed differently:

- text and ``{{ PIPELINE }}`` actions, with the ``{{-``/``-}}`` trim markers
  and ``{{/* comments */}}``;
- operands: a field chain on the data (``.Name``, ``.Group.b``,
  ``.Question.Name``), string literals ("..." with Go escapes, and raw
  backquoted), integers, ``true``/``false``;
- commands: an operand alone, ``index X K...``, ``len X``, ``print ARGS``,
  ``parseInt S BASE BITS``, the ``.Meta "name"`` method; a pipeline ``A | B``
  passes A's value as B's last argument.

``if``/``range``/``with``/variables/``define``/the other built-in functions
are refused. As in Go, a field the data lacks (``.Grup``) is an execution
error, not a parse error, and a missing map key prints ``<no value>``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: Go's built-in template functions fastdns does not run; naming one is refused
#: as not implemented (any other unknown name is Go's "function not defined").
GO_BUILTINS = frozenset({"and", "call", "html", "js", "not", "or", "printf", "println",
                         "slice", "urlquery", "eq", "ne", "lt", "le", "gt", "ge"})
KEYWORDS = frozenset({"if", "else", "end", "range", "with", "define", "template", "block",
                      "break", "continue", "nil"})
FUNCTIONS = frozenset({"index", "len", "print", "parseInt"})
NO_VALUE = "<no value>"


class TemplateSyntaxError(ValueError):
    """The template text does not parse, or uses what fastdns does not implement."""


class ExecError(Exception):
    """Executing the template failed (Go's ``template: NAME:...: executing``)."""


# -- the parsed tree ----------------------------------------------------------


@dataclass(frozen=True)
class Field:
    chain: tuple[str, ...]  # () is the dot itself


@dataclass(frozen=True)
class Literal:
    value: object


@dataclass(frozen=True)
class Call:
    """A command: a function (``name``) or a field/method (``target``) with arguments."""
    name: str | None
    target: Field | Literal | None
    args: tuple[Any, ...]


Pipeline = tuple[Call, ...]
Node = str | Pipeline


_TOKEN = re.compile(r"""\s+|(?P<str>"(?:[^"\\\n]|\\.)*")|(?P<raw>`[^`]*`)|(?P<pipe>\|)
                    |(?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
                    |(?P<num>[+-]?(?:0[xX][0-9a-fA-F_]+|0[oO]?[0-7_]*|[1-9][0-9_]*))(?![\w.])
                    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<paren>[()])|(?P<other>.)""",
                    re.VERBOSE | re.DOTALL)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "a": "\a", "b": "\b",
            "f": "\f", "v": "\v", "'": "'"}


def _go_string(tok: str) -> str:
    """A Go interpreted string literal (``strconv.Unquote``), the escapes that matter."""
    out, i, body = [], 0, tok[1:-1]
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = body[i + 1]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
        elif e == "x":
            out.append(chr(int(body[i + 2:i + 4], 16)))
            i += 4
        elif e in "uU":
            n = 4 if e == "u" else 8
            out.append(chr(int(body[i + 2:i + 2 + n], 16)))
            i += 2 + n
        elif e in "01234567":
            out.append(chr(int(body[i + 1:i + 4], 8)))
            i += 4
        else:
            raise TemplateSyntaxError(f"invalid syntax in string {tok}")
    return "".join(out)


def _lex_action(text: str, where: str) -> list[tuple[str, str]]:
    toks: list[tuple[str, str]] = []
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind is None:
            continue
        if kind == "other" or kind == "paren":
            raise TemplateSyntaxError(f"{where}: unexpected {m.group()!r} in command"
                                      if kind == "other" else
                                      f"{where}: parenthesized pipelines are not implemented "
                                      "by fastdns")
        toks.append((kind, m.group()))
    return toks


def _operand(kind: str, tok: str, where: str) -> Field | Literal:
    if kind == "field":
        return Field(tuple(tok.split(".")[1:]) if tok != "." else ())
    if kind == "str":
        return Literal(_go_string(tok))
    if kind == "raw":
        return Literal(tok[1:-1])
    if kind == "num":
        return Literal(int(tok.replace("_", ""), 0) if not re.fullmatch(r"[+-]?0[0-7_]+", tok)
                       else int(tok.replace("_", ""), 8))
    if tok in ("true", "false"):
        return Literal(tok == "true")
    raise TemplateSyntaxError(f"{where}: unexpected {tok} in operand")


def _command(toks: list[tuple[str, str]], where: str) -> Call:
    if not toks:
        raise TemplateSyntaxError(f"{where}: missing value for command")
    (kind, tok), rest = toks[0], toks[1:]
    if kind == "ident" and tok not in ("true", "false"):
        if tok in KEYWORDS:
            raise TemplateSyntaxError(f"{where}: {{{{{tok}}}}} is not implemented by fastdns")
        if tok in GO_BUILTINS:
            raise TemplateSyntaxError(f"{where}: function {tok!r} is not implemented by fastdns")
        if tok not in FUNCTIONS:
            raise TemplateSyntaxError(f'{where}: function "{tok}" not defined')
        return Call(tok, None, tuple(_operand(k, t, where) for k, t in rest))
    target = _operand(kind, tok, where)
    if rest and not (isinstance(target, Field) and target.chain):
        raise TemplateSyntaxError(f"{where}: can't give argument to non-function {tok}")
    return Call(None, target, tuple(_operand(k, t, where) for k, t in rest))


def _pipeline(text: str, where: str) -> Pipeline:
    toks = _lex_action(text, where)
    if toks and toks[0][0] == "ident" and toks[0][1] in KEYWORDS:
        raise TemplateSyntaxError(f"{where}: {{{{{toks[0][1]}}}}} is not implemented by fastdns")
    if any(k == "other" for k, _ in toks) or any(t.startswith("$") for _, t in toks):
        raise TemplateSyntaxError(f"{where}: template variables are not implemented by fastdns")
    cmds: list[list[tuple[str, str]]] = [[]]
    for k, t in toks:
        if k == "pipe":
            cmds.append([])
        else:
            cmds[-1].append((k, t))
    out = tuple(_command(c, where) for c in cmds)
    for c in out[1:]:
        if c.name is None and not c.args and not (isinstance(c.target, Field) and c.target.chain):
            raise TemplateSyntaxError(f"{where}: non executable command in pipeline stage 2")
    return out


def parse(name: str, text: str) -> tuple[Node, ...]:
    """The template ``text`` as text pieces and pipelines; ``TemplateSyntaxError``
    (``template: NAME:LINE: reason``, as Go words it) when it does not parse or
    uses what fastdns does not implement."""
    nodes: list[Node] = []
    pos = 0
    while True:
        start = text.find("{{", pos)
        if start < 0:
            nodes.append(text[pos:])
            break
        piece = text[pos:start]
        line = text.count("\n", 0, start) + 1
        where = f"template: {name}:{line}"
        inner_start = start + 2
        if text.startswith("- ", inner_start) or text.startswith("-\t", inner_start):
            piece = piece.rstrip(" \t\r\n")
            inner_start += 1
        end = text.find("}}", inner_start)
        if end < 0:
            raise TemplateSyntaxError(f"{where}: unclosed action")
        inner, after = text[inner_start:end], end + 2
        if inner.endswith(" -") or inner.endswith("\t-"):
            inner = inner[:-1]
            trim_after = True
        else:
            trim_after = False
        nodes.append(piece)
        body = inner.strip()
        if body.startswith("/*"):
            if not body.endswith("*/"):
                raise TemplateSyntaxError(f"{where}: unclosed comment")
        elif "$" in body:
            raise TemplateSyntaxError(f"{where}: template variables are not implemented "
                                      "by fastdns")
        else:
            if not body:
                raise TemplateSyntaxError(f"{where}: missing value for command")
            nodes.append(_pipeline(body, where))
        pos = after
        if trim_after:
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
    return tuple(n for n in nodes if n != "")


# -- execution ----------------------------------------------------------------


class Data:
    """The values a template sees (``templateData`` in template.go)."""

    __slots__ = ("fields", "meta")

    def __init__(self, fields: dict[str, Any], meta: Callable[[str], str] | None = None) -> None:
        self.fields = fields
        self.meta = meta


class _Missing:
    """Go's invalid reflect.Value: what a map lookup of a missing key yields."""


MISSING = _Missing()


def _go_text(v: Any) -> str:
    """fmt.Sprint of a value, as the template prints it."""
    if v is MISSING:
        return NO_VALUE
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(_go_text(x) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{_go_text(x)}" for k, x in sorted(v.items())) + "]"
    return str(v)


def _field(data: Data, value: Any, name: str, args: Sequence[Any]) -> Any:
    if isinstance(value, Data):
        if name == "Meta":
            if len(args) != 1 or not isinstance(args[0], str):
                raise ExecError(f"wrong number of args for Meta: want 1 got {len(args)}")
            return data.meta(args[0]) if data.meta is not None else ""
        if name not in value.fields:
            raise ExecError(f"can't evaluate field {name} in type *template.templateData")
        got = value.fields[name]
    elif isinstance(value, dict):
        got = value.get(name, MISSING)
    else:
        raise ExecError(f"can't evaluate field {name} in type {type(value).__name__}")
    if args:
        raise ExecError(f"{name} has arguments but cannot be invoked as function")
    return got


def _eval(data: Data, arg: Field | Literal, extra: Sequence[Any] = ()) -> Any:
    if isinstance(arg, Literal):
        return arg.value
    value: Any = data
    for i, name in enumerate(arg.chain):
        value = _field(data, value, name, extra if i == len(arg.chain) - 1 else ())
    return value


def _index(item: Any, keys: Sequence[Any]) -> Any:
    for k in keys:
        if isinstance(item, (list, tuple)):
            if isinstance(k, bool) or not isinstance(k, int):
                raise ExecError("error calling index: cannot index slice/array with type "
                                f"{type(k).__name__}")
            if not 0 <= k < len(item):
                raise ExecError(f"error calling index: index out of range: {k}")
            item = item[k]
        elif isinstance(item, dict):
            if not isinstance(k, str):
                raise ExecError("error calling index: value has type int; should be string")
            item = item.get(k, "")
        else:
            raise ExecError(f"error calling index: can't index item of type "
                            f"{type(item).__name__}")
    return item


def parse_uint(s: Any, base: Any, bits: Any) -> int:
    """``strconv.ParseUint(s, base, bitSize)`` (what ``parseInt`` is)."""
    if not isinstance(s, str) or isinstance(base, bool) or not isinstance(base, int) \
            or isinstance(bits, bool) or not isinstance(bits, int):
        raise ExecError("error calling parseInt: wrong type for value")
    err = f'error calling parseInt: strconv.ParseUint: parsing "{s}": '
    if base == 0:
        body = s
        base = 10
        if len(s) > 1 and s[0] == "0":
            pfx = s[1].lower()
            base, body = {"x": (16, s[2:]), "o": (8, s[2:]), "b": (2, s[2:])}.get(pfx,
                                                                               (8, s[1:]))
        body = body.replace("_", "")
    elif 2 <= base <= 36:
        body = s
    else:
        raise ExecError(f"{err}invalid base {base}")
    if bits == 0:
        bits = 64
    elif not 0 < bits <= 64:
        raise ExecError(f"{err}invalid bit size {bits}")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"[:base]
    if not body or any(c not in digits for c in body.lower()):
        raise ExecError(f"{err}invalid syntax")
    n = int(body, base)
    if n >= 1 << bits:
        raise ExecError(f"{err}value out of range")
    return n


def _call(data: Data, cmd: Call, piped: list[Any]) -> Any:
    if cmd.name is None:
        assert cmd.target is not None
        args = [_eval(data, a) for a in cmd.args] + piped
        if isinstance(cmd.target, Literal):
            if args:
                raise ExecError("can't give argument to non-function")
            return cmd.target.value
        return _eval(data, cmd.target, args)
    args = [_eval(data, a) for a in cmd.args] + piped
    if cmd.name == "index":
        if not args:
            raise ExecError("wrong number of args for index: want at least 1 got 0")
        return _index(args[0], args[1:])
    if cmd.name == "len":
        if len(args) != 1:
            raise ExecError(f"wrong number of args for len: want 1 got {len(args)}")
        if not isinstance(args[0], (str, list, tuple, dict)):
            raise ExecError("error calling len: len of type")
        return len(args[0])
    if cmd.name == "print":
        # fmt.Sprint: a space between operands when neither is a string
        out = ""
        for i, a in enumerate(args):
            if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
                out += " "
            out += _go_text(a)
        return out
    if len(args) != 3:
        raise ExecError(f"wrong number of args for parseInt: want 3 got {len(args)}")
    return parse_uint(*args)


def execute(nodes: Sequence[Node], data: Data) -> str:
    """The template's text for ``data``; ``ExecError`` where Go's Execute fails."""
    out: list[str] = []
    for n in nodes:
        if isinstance(n, str):
            out.append(n)
            continue
        piped: list[Any] = []
        value: Any = None
        for cmd in n:
            value = _call(data, cmd, piped)
            piped = [value]
        out.append(_go_text(value))
    return "".join(out)


def is_static(nodes: Sequence[Node]) -> bool:
    """No actions: the text is the same for every query."""
    return all(isinstance(n, str) for n in nodes)
