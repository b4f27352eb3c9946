"""Label and field selectors, parsed as apimachinery parses them.

Each parser returns a predicate on an API object (None: everything
matches), so a list and a watch filter with the same function, and a
watch can tell when an object enters or leaves its selection.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Predicate = Callable[[dict[str, Any]], bool]

_SET_RE = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(text: str) -> list[str]:
    """Split on commas outside parentheses (``a in (x,y),b`` has two terms)."""
    terms: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    terms.append("".join(cur))
    return [t.strip() for t in terms if t.strip()]


def _label_test(term: str) -> Callable[[dict[str, str]], bool]:
    """One term of a label selector as a test on an object's labels."""
    m = _SET_RE.match(term)
    if m:
        key, op, vals = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
        if op == "in":
            return lambda lb: lb.get(key) in vals
        return lambda lb: lb.get(key) not in vals
    if "!=" in term:
        k, v = (s.strip() for s in term.split("!=", 1))
        return lambda lb: lb.get(k) != v
    if "=" in term:
        k, v = (s.strip() for s in re.split(r"==?", term, maxsplit=1))
        return lambda lb: lb.get(k) == v
    if term.startswith("!"):
        absent = term[1:].strip()
        return lambda lb: absent not in lb
    return lambda lb: term in lb


def parse_label_selector(text: str | None) -> Predicate | None:
    """Label selector grammar of apimachinery ``labels.Parse`` (=, ==, !=, in,
    notin, exists, !exists); returns a predicate on an object, None = all."""
    if not text:
        return None
    tests = [_label_test(term) for term in _split_selector(text)]

    def match(obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(t(labels) for t in tests)

    return match


def _field(obj: dict[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    return "" if cur is None else str(cur)


def parse_field_selector(text: str | None) -> Predicate | None:
    """Field selectors (``status.phase!=Succeeded,metadata.name=x``): =, ==, !=
    on dotted paths; a missing field compares as the empty string."""
    if not text:
        return None
    tests: list[tuple[str, bool, str]] = []
    for term in _split_selector(text):
        if "!=" in term:
            path, value = term.split("!=", 1)
            tests.append((path.strip(), False, value.strip()))
        elif "=" in term:
            path, value = re.split(r"==?", term, maxsplit=1)
            tests.append((path.strip(), True, value.strip()))
        else:
            raise ValueError(f"invalid field selector term {term!r}")

    def match(obj: dict[str, Any]) -> bool:
        return all((_field(obj, p) == v) is eq for p, eq, v in tests)

    return match
