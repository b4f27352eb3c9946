"""``fastdns check-corefile PATH``: which lines of a Corefile fastdns runs as-is.

One line per block key and per plugin directive, in file order:
``FILE:LINE: plugin NAME: OK``, ``... WARN: reason`` (runs, but this plugin
changes nothing about answers and is not run: plugins/ignored.py),
``... UNSUPPORTED: reason`` (valid for CoreDNS, not run by fastdns) or
``... ERROR: reason`` (CoreDNS would refuse it too). The last line is the
verdict, the one ``serve`` reaches: ok, ok with warnings, or refused.
Exit status: 0 when it runs (warnings or not), 1 otherwise, 2 on a syntax
error (or an unreadable file), since then no line can be judged.
"""

from __future__ import annotations

import sys
from typing import TextIO

from fastdns.corefile.config import Finding, analyse, read_corefile
from fastdns.corefile.errors import CorefileError, Unsupported
from fastdns.corefile.verdict import problems
from fastdns.plugins import registry


def _line(f: Finding) -> tuple[str, bool]:
    """(text, runs) for one finding."""
    where = f"{f.file}:{f.line}"
    what = f"plugin {f.name}" if f.kind == "plugin" else \
        (f"key {f.name}" if f.kind == "key" else f"zone {f.name}")
    e = f.error
    if e is not None:
        label = "UNSUPPORTED" if isinstance(e, Unsupported) else "ERROR"
        # The reason alone; the error's own location may be a sub-line.
        at = f" (line {e.line})" if (e.file, e.line) != (f.file, f.line) else ""
        return f"{where}: {what}: {label}: {e.reason}{at}", False
    if f.kind == "plugin" and registry.accepted(f.name) and not registry.runs(f.name):
        return f"{where}: {what}: WARN: accepted, not run: {registry.reason(f.name)}", True
    if f.kind == "plugin" and not registry.runs(f.name):
        return f"{where}: {what}: UNSUPPORTED: parsed, but {registry.reason(f.name)}", False
    return f"{where}: {what}: OK", True


def _reported(analysis) -> set[str]:
    return {f.name for f in analysis.findings
            if f.kind == "plugin" and not registry.accepted(f.name)}


def main(path: str, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        text, name = read_corefile(path)
        analysis = analyse(text, name)
    except CorefileError as e:
        print(f"{e}", file=out)
        print("SYNTAX ERROR: no line can be checked", file=out)
        return 2
    ok = True
    warned = False
    for f in analysis.findings:
        line, good = _line(f)
        ok = ok and good
        warned = warned or ": WARN: " in line
        print(line, file=out)
    if not analysis.findings:
        print(f"{name}: no server blocks", file=out)
        ok = False
    if analysis.config is not None:
        # The rules `serve` applies beyond each plugin's own line (the same
        # function decides there): per-plugin ones are printed above already.
        for p in problems(analysis.config):
            ok = False
            if p.plugin is None or p.plugin not in _reported(analysis):
                what = f"plugin {p.plugin}: " if p.plugin else ""
                print(f"{p.file}:{p.line}: {what}UNSUPPORTED: {p.reason}", file=out)
    if ok and warned:
        print("fastdns runs this Corefile as-is, with warnings", file=out)
    else:
        print("fastdns runs this Corefile as-is" if ok
              else "fastdns cannot run this Corefile as-is", file=out)
    return 0 if ok else 1
