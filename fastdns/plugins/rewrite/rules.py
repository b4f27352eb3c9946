"""rewrite's rules applied to one query, and the response rules they leave behind.

rewrite.go ServeDNS: the rules in order, each on the question as the rules
before it left it (its name lowercased, ``state.Name()``); a rule that
rewrote something adds its response rules, and a ``stop`` rule ends the
walk. The answer is reverted (reverter.py) when a ``stop`` rule rewrote or
any response rule was collected; then the question is always restored.

Name rules (name.go): ``exact`` replaces the whole name; ``prefix`` and
``suffix`` the matched end; ``substring`` every occurrence; ``regex`` the
whole name with the replacement, ``{N}`` filled from the groups. Response
rules: ``answer auto`` (always, for ``exact``) maps the rewritten name back
to the asked one, in owner names and record values, and for a subdomain of
it (``remapStringRewriter``); for ``suffix`` it swaps the suffixes back
(``suffixStringRewriter``); ``answer name|value FROM TO`` are regexes.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastdns.plugins.rewrite.config import AnswerRule, Rule, go_regex


@dataclass(frozen=True)
class Remap:
    orig: str
    repl: str

    def __call__(self, src: str) -> str:
        if src == self.orig:
            return self.repl
        i = len(src) - len(self.orig)
        if i > 0 and src[i - 1] == "." and src[i:] == self.orig:
            return src[:i] + self.repl
        return src


@dataclass(frozen=True)
class SuffixSwap:
    suffix: str
    repl: str

    def __call__(self, src: str) -> str:
        if src.endswith(self.suffix):
            return src[:len(src) - len(self.suffix)] + self.repl
        return src


@dataclass(frozen=True)
class RegexSwap:
    pattern: str
    to: str

    def __call__(self, src: str) -> str:
        m = go_regex(self.pattern).search(src)
        return src if m is None else fill(self.to, m)


@dataclass(frozen=True)
class Response:
    """One response rule: ``name`` / ``value`` with a rewriter, ``ttl`` (lo, hi)
    or ``rcode`` (old, new)."""

    kind: str
    rewriter: Remap | SuffixSwap | RegexSwap | None = None
    a: int = 0
    b: int = 0


@dataclass(frozen=True)
class Outcome:
    name: str
    qtype: int
    qclass: int
    responses: tuple[Response, ...]
    restore: bool


def fill(to: str, m) -> str:
    """The replacement with ``{0}``, ``{1}``... set from the match, in that order."""
    s = to
    for i in range(m.re.groups + 1):
        s = s.replace("{" + str(i) + "}", m.group(i) or "")
    return s


def _static(answers: tuple[AnswerRule, ...]) -> list[Response]:
    return [Response(a.field, RegexSwap(a.pattern, a.to)) for a in answers]


def _name(rule: Rule, name: str) -> tuple[str, list[Response]] | None:
    assert rule.match is not None
    kind, p, to = rule.match.kind, rule.match.pattern, rule.to
    if kind == "exact":
        new = to if name == p else None
    elif kind == "prefix":
        new = to + name[len(p):] if name.startswith(p) else None
    elif kind == "suffix":
        new = name[:len(name) - len(p)] + to if name.endswith(p) else None
    elif kind == "substring":
        new = name.replace(p, to) if p in name else None
    else:
        m = rule.match.compiled().search(name)
        new = fill(to, m) if m is not None else None
    if new is None:
        return None
    if kind == "suffix":  # newSuffixNameRule: auto is a suffix swap, fixed at setup
        auto = [Response("name", SuffixSwap(to, p)),
                Response("value", SuffixSwap(to, p))] if rule.auto else []
        return new, auto + _static(rule.answers)
    if not rule.auto:
        return new, _static(rule.answers)
    back = Remap(new, name)
    return new, [Response("name", back), Response("value", back)] + _static(rule.answers)


def apply(rules: tuple[Rule, ...], name: str, qtype: int, qclass: int) -> Outcome | None:
    """What the rules do to a query asking ``name`` (lowercase text, trailing
    dot); None when none of them rewrote anything."""
    responses: list[Response] = []
    done = False
    for rule in rules:
        if rule.field == "name":
            got = _name(rule, name)
            if got is None:
                continue
            name = got[0]
            responses += got[1]
        elif rule.field == "type":
            if not (rule.old and rule.new and qtype == rule.old):
                continue
            qtype = rule.new
        elif rule.field == "class":
            if not (rule.old and rule.new and qclass == rule.old):
                continue
            qclass = rule.new
        else:
            assert rule.match is not None
            if not rule.match.match(name):
                continue
            if rule.field == "ttl":
                responses.append(Response("ttl", None, rule.ttl_min, rule.ttl_max))
            else:
                responses.append(Response("rcode", None, rule.old, rule.new))
        done = True
        if rule.mode == "stop":
            return Outcome(name, qtype, qclass, tuple(responses), True)
    if not done:
        return None
    return Outcome(name, qtype, qclass, tuple(responses), bool(responses))
