"""Go ``time.ParseDuration``, because CoreDNS durations are written in Go syntax."""

from __future__ import annotations

import re

_UNITS = {
    "ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6,
    "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}
_PART = re.compile(r"([0-9]*)(\.[0-9]*)?([a-z\u00b5\u03bc]+)")


def duration_from_arg(s: str) -> float:
    """plugin/pkg/durations NewDurationFromArg: Go's syntax, or a bare number
    of seconds (not Go's nanoseconds)."""
    if s.isdigit():
        return float(s)
    return parse_duration(s)


def parse_duration(s: str) -> float:
    """``"1m30s"`` -> 90.0 seconds; raises ValueError with Go's wording."""
    orig = s
    if not s:
        raise ValueError(f'time: invalid duration "{orig}"')
    neg = False
    if s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f'time: invalid duration "{orig}"')
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m:
            raise ValueError(f'time: invalid duration "{orig}"')
        whole, frac, unit = m.groups()
        if not whole and (not frac or frac == "."):
            raise ValueError(f'time: invalid duration "{orig}"')
        if unit not in _UNITS:
            if not m.group(0):
                raise ValueError(f'time: invalid duration "{orig}"')
            raise ValueError(f'time: unknown unit "{unit}" in duration "{orig}"')
        total += float((whole or "0") + (frac if frac and frac != "." else "")) * _UNITS[unit]
        pos = m.end()
    if not any(c.isalpha() or c in "\u00b5\u03bc" for c in s):
        raise ValueError(f'time: missing unit in duration "{orig}"')
    return -total if neg else total
