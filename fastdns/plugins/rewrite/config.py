"""rewrite's Corefile syntax, as plugin/rewrite/setup.go and rewrite.go ``newRule`` read it.

One ``rewrite`` directive is one rule: its arguments, or when it has fewer
than two, every token of its ``{ ... }`` block in order (``rewriteParse``),
so ``rewrite stop { name regex A B \\n answer name C D }`` reads as one
line. ``[continue|stop] FIELD ...`` with FIELD ``name``, ``type``,
``class``, ``ttl`` or ``rcode``; ``edns0`` and ``cname`` are refused as not
implemented. Names are normalized as ``plugin.Name.Normalize`` does
(lowercase, a trailing dot), regex patterns are Go's (template's goregex).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from fastdns.corefile.dispenser import Dispenser
from fastdns.corefile.errors import Unsupported
from fastdns.corefile.model import PluginConfig
from fastdns.mnemonics import CLASSES, TYPES
from fastdns.names import RCODES
from fastdns.plugins.template.goregex import GoRegexError, compile_go

TYPE_OF = {v: k for k, v in TYPES.items()}
CLASS_OF = {v: k for k, v in CLASSES.items()}
RCODE_OF = {v: k for k, v in RCODES.items()}
KINDS = ("exact", "prefix", "suffix", "substring", "regex")
MAX_REGEX = 10000  # name.go maxRegexpLen


class RuleError(ValueError):
    """A rule CoreDNS's ``newRule`` refuses (the text is its error)."""


def normalize(name: str) -> str:
    """plugin.Name(name).Normalize(): lowercase, fully qualified."""
    name = name.lower()
    return name if name.endswith(".") else name + "."


@dataclass(frozen=True)
class Matcher:
    """A name match: ``exact`` / ``prefix`` / ``suffix`` / ``substring`` on
    the normalized ``pattern``, or ``regex`` (a Go regexp, searched)."""

    kind: str
    pattern: str

    def compiled(self) -> re.Pattern[str]:
        return go_regex(self.pattern)

    def match(self, name: str) -> re.Match[str] | bool:
        if self.kind == "exact":
            return name == self.pattern
        if self.kind == "prefix":
            return name.startswith(self.pattern)
        if self.kind == "suffix":
            return name.endswith(self.pattern)
        if self.kind == "substring":
            return self.pattern in name
        return self.compiled().search(name) or False


_COMPILED: dict[str, re.Pattern[str]] = {}


def go_regex(pattern: str) -> re.Pattern[str]:
    got = _COMPILED.get(pattern)
    if got is None:
        got = _COMPILED[pattern] = compile_go(pattern)
    return got


@dataclass(frozen=True)
class AnswerRule:
    """``answer name FROM TO`` (owner names) or ``answer value FROM TO`` (the
    name in a CNAME, SRV, MX, NS, PTR, DNAME or SOA record): a regex whose
    match replaces the whole name with TO, ``{N}`` its groups."""

    field: str
    pattern: str
    to: str


@dataclass(frozen=True)
class Rule:
    mode: str  # "stop" or "continue"
    field: str  # name, type, class, ttl, rcode
    match: Matcher | None = None  # name, ttl and rcode rules
    to: str = ""  # name rules: the replacement
    auto: bool = False  # name rules: ``answer auto`` (always for exact)
    answers: tuple[AnswerRule, ...] = ()
    old: int = 0  # type / class / rcode rules: from
    new: int = 0  # ... and to
    ttl_min: int = 0
    ttl_max: int = 0


@dataclass(frozen=True)
class RewriteConfig(PluginConfig):
    name: ClassVar[str] = "rewrite"
    rules: tuple[Rule, ...] = ()


def _check_regex(pattern: str, to: str, what: str = "") -> None:
    """name.go isValidRegexPattern."""
    if len(pattern) > MAX_REGEX:
        raise RuleError(f"regex pattern too long: {len(pattern)} > {MAX_REGEX}")
    try:
        compiled = go_regex(pattern)
    except GoRegexError:
        raise RuleError(f"{what}invalid regex matching pattern: {pattern}") from None
    used = sum(1 for i in range(101) if "{" + str(i) + "}" in to)
    if used > compiled.groups:
        raise RuleError(f"{what}the rewrite regex pattern ({to}) uses more subexpressions than "
                        f"its corresponding matching regex pattern ({pattern})")


def _answers(kind: str, args: list[str]) -> tuple[bool, tuple[AnswerRule, ...]]:
    """name.go parseAnswerRules."""
    if len(args) < 2:
        raise RuleError(f"invalid arguments for {kind} rule")
    auto, rules, names, last, i = False, [], 0, "", 0
    while i < len(args):
        if last == "" and args[i] != "answer":
            raise RuleError("exceeded the number of arguments for a non-answer rule argument "
                            f"for {kind} rule")
        if args[i] == "answer":
            i += 1
        if i == len(args):
            raise RuleError(f"type missing for answer rule for {kind} rule")
        last = args[i]
        i += 1
        if last == "auto":
            auto = True
            continue
        if last not in ("name", "value"):
            raise RuleError(f"invalid type {last!r} for answer rule for {kind} rule")
        if len(args) - i < 2:
            raise RuleError(f"{last} answer rule for {kind} rule: 2 arguments required")
        _check_regex(args[i], args[i + 1], f"{last} answer rule for {kind} rule: ")
        rules.append(AnswerRule(last, args[i], normalize(args[i + 1])))
        names += last == "name"
        i += 2
    if auto and names:
        raise RuleError("auto name answer rule cannot be combined with explicit name anwer rules")
    return auto, tuple(rules)


def _name_rule(mode: str, args: list[str]) -> Rule:
    """name.go newNameRule."""
    if len(args) < 2:
        raise RuleError("too few arguments for a name rule")
    if len(args) == 2:
        kind, frm, to = "exact", normalize(args[0]), normalize(args[1])
    else:
        kind = args[0].lower()
        if kind == "regex":
            frm, to = args[1], args[2]
        else:
            frm, to = normalize(args[1]), normalize(args[2])
    auto, answers = _answers(kind, args[3:]) if len(args) > 3 else (False, ())
    if kind == "exact":
        _check_regex(to, frm)
        return Rule(mode, "name", Matcher("exact", frm), to, True, answers)
    if kind in ("prefix", "suffix", "substring"):
        return Rule(mode, "name", Matcher(kind, frm), to, auto, answers)
    if kind == "regex":
        _check_regex(frm, to)
        return Rule(mode, "name", Matcher("regex", frm), normalize(args[2]), auto, answers)
    raise RuleError("name rule supports only exact, prefix, suffix, substring, and regex name "
                    f"matching, received: {kind}")


def _uint32(s: str) -> int | None:
    """Go strconv.ParseUint(s, 10, 32)."""
    return int(s) if s.isascii() and s.isdigit() and int(s) < 1 << 32 else None


def _ttl(v: str) -> tuple[int, int] | None:
    """ttl.go isValidTTL: SECONDS, MIN-MAX, -MAX or MIN-."""
    parts = v.split("-")
    if len(parts) == 1:
        n = _uint32(parts[0])
        return None if n is None else (n, n)
    if len(parts) != 2 or parts == ["", ""]:
        return None
    lo = 0 if parts[0] == "" else _uint32(parts[0])
    hi = 2147483647 if parts[1] == "" else _uint32(parts[1])
    if lo is None or hi is None or lo > hi:
        return None
    return lo, hi


def _rcode(v: str) -> int | None:
    """rcode.go isValidRCode: 0..23 or a mnemonic."""
    n = _uint32(v)
    if n is not None:
        return n if n <= 23 else None
    return RCODE_OF.get(v.upper())


def _matched(field: str, args: list[str], values: int) -> tuple[Matcher, list[str]]:
    """ttl/rcode rules: ``[KIND] NAME VALUE...``; exact without KIND."""
    if len(args) == values + 1:
        return Matcher("exact", normalize(args[0])), args[1:]
    kind = args[0].lower()
    if kind not in KINDS:
        raise RuleError(f"{field} rule supports only exact, prefix, suffix, substring, and "
                        "regex name matching")
    if kind == "regex":
        if len(args[1]) > MAX_REGEX:
            raise RuleError(f"regex pattern too long in a {field} rule: {len(args[1])} > "
                            f"{MAX_REGEX}")
        try:
            go_regex(args[1])
        except GoRegexError:
            raise RuleError(f"invalid regex pattern in a {field} rule: {args[1]}") from None
        return Matcher("regex", args[1]), args[2:]
    return Matcher(kind, normalize(args[1])), args[2:]


def new_rule(args: list[str]) -> Rule:
    """rewrite.go newRule."""
    if not args:
        raise RuleError("no rule type specified for rewrite")
    mode, rest = "stop", args
    if args[0].lower() in ("continue", "stop"):
        if len(args) < 2:
            raise RuleError(f"{args[0].lower()} rule must begin with a rule type")
        mode, rest = args[0].lower(), args[1:]
    field, rest = rest[0].lower(), rest[1:]
    if field == "answer":
        raise RuleError("response rewrites must begin with a name rule")
    if field == "name":
        return _name_rule(mode, rest)
    if field in ("type", "class"):
        if len(rest) != 2:
            raise RuleError(f"{field} rules must have exactly two arguments")
        table = TYPE_OF if field == "type" else CLASS_OF
        codes = [table.get(a.upper()) for a in rest]
        for a, c in zip(rest, codes, strict=True):
            if c is None:
                raise RuleError(f"invalid {field} {a.upper()!r}")
        return Rule(mode, field, old=codes[0] or 0, new=codes[1] or 0)
    if field == "ttl":
        if len(rest) < 2:
            raise RuleError(f"too few ({len(rest)}) arguments for a ttl rule")
        if len(rest) > 3:
            raise RuleError("many few arguments for a ttl rule")
        value = rest[-1]
        ttl = _ttl(value)
        if ttl is None:
            raise RuleError(f"invalid TTL '{value}' for a ttl rule")
        m, _ = _matched("ttl", rest, 1)
        return Rule(mode, "ttl", m, ttl_min=ttl[0], ttl_max=ttl[1])
    if field == "rcode":
        if len(rest) < 3:
            raise RuleError(f"too few ({len(rest)}) arguments for a rcode rule")
        if len(rest) > 4:
            raise RuleError("many few arguments for a rcode rule")
        old, new = _rcode(rest[-2]), _rcode(rest[-1])
        if old is None:
            raise RuleError(f"invalid matching RCODE '{rest[-2]}' for a rcode rule")
        if new is None:
            raise RuleError(f"invalid replacement RCODE '{rest[-1]}' for a rcode rule")
        m, _ = _matched("rcode", rest, 2)
        return Rule(mode, "rcode", m, old=old, new=new)
    raise RuleError(f"invalid rule type {args[0]!r}")


UNSUPPORTED_FIELDS = ("edns0", "cname")


def parse_rewrite(d: Dispenser, zones: tuple[str, ...]) -> RewriteConfig:
    """One ``rewrite`` directive (setup.go rewriteParse, one ``c.Next`` round)."""
    toks = d.remaining_args()
    if len(toks) < 2:
        while d.next_block():
            toks.append(d.tok)
    args = [t.text for t in toks]
    at = toks[0] if toks else d.tok
    field = (args[1] if len(args) > 1 and args[0].lower() in ("stop", "continue")
             else args[0] if args else "").lower()
    if field in UNSUPPORTED_FIELDS:
        raise Unsupported(at.file, at.line,
                          f"rewrite {field} rules are not implemented by fastdns", "rewrite")
    try:
        return RewriteConfig((new_rule(args),))
    except RuleError as e:
        raise d.err(str(e), at) from None


def merge_rewrite(old: PluginConfig, new: PluginConfig) -> PluginConfig:
    """Several ``rewrite`` directives in one block: their rules, in Corefile order."""
    assert isinstance(old, RewriteConfig) and isinstance(new, RewriteConfig)
    return RewriteConfig(old.rules + new.rules, source=old.source)
