"""The dependency rules between fastdns's rooms, checked from the source.

The rooms match the processes (docs/internals.md, section 1): the
supervisor, the control process, the data plane (``fastdns.server``) and
the contracts they share (``fastdns.ipc``, the wire core, ``names``).  A
rule broken here is a contract with two owners again, so
tests/test_architecture.py runs :func:`violations` on the tree and on small
synthetic trees that break each rule once, which proves the checker can
fail.

Imports are read with :mod:`ast` for ``.py`` files, including imports
inside functions: a lazy import is still a dependency, and hiding a cycle
in a function is the workaround these rules exist to stop.  Cython sources
cannot be parsed by :mod:`ast`, so their ``import``/``cimport`` lines are
read with a regular expression.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

#: What the wire core (the Cython module, its pure-Python twin and the
#: octet readers the two share) may import from the package: errors and
#: constants, the name helpers and the image format.  Anything else would
#: make the parser depend on a room.
WIRE_CORE = ("fastdns.wire", "fastdns._wire", "fastdns.wirescan")
WIRE_ALLOWED = ("fastdns.errors", "fastdns.constants", "fastdns.names",
                "fastdns.ipc.image", *WIRE_CORE)

#: Only these modules start a supervisor.
SUPERVISOR_IMPORTERS = ("fastdns.cli", "fastdns.coredns_cli", "fastdns.__main__")

_CYTHON_IMPORT = re.compile(
    r"^\s*(?:from\s+([\w.]+)\s+c?import\s+([\w., ()]+)|c?import\s+([\w.]+))", re.M)


@dataclass(frozen=True)
class Import:
    """One import of a fastdns module by another, where it was written."""

    source: str  # importing module, dotted
    target: str  # imported module, dotted (a name imported from a package
    #              resolves to its submodule when one exists)
    line: int
    private: tuple[str, ...] = ()  # _names taken from the target


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(root: Path) -> dict[str, Path]:
    found = {}
    for path in sorted((root / "fastdns").rglob("*")):
        if path.suffix in (".py", ".pyx") and "__pycache__" not in path.parts:
            found[module_name(root, path)] = path
    return found


def _resolve(modules: dict[str, Path], base: str, names: list[str]) -> list[str]:
    """``from base import a, b``: each name that is a submodule, else base."""
    out = []
    for name in names:
        sub = f"{base}.{name}"
        out.append(sub if sub in modules else base)
    return out or [base]


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def imports(root: Path) -> list[Import]:
    """Every fastdns → fastdns import in the tree under *root*."""
    modules = _modules(root)
    found: list[Import] = []
    for source, path in modules.items():
        text = path.read_text()
        if path.suffix == ".pyx":
            for m in _CYTHON_IMPORT.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                if m.group(1):
                    names = [n.strip(" ()") for n in m.group(2).split(",")]
                    names = [n.split()[0] for n in names if n]
                    for target in _resolve(modules, m.group(1), names):
                        found.append(Import(source, target, line))
                else:
                    found.append(Import(source, m.group(3), line))
            continue
        tree = ast.parse(text, str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.append(Import(source, alias.name, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = _package_of(source, path).split(".")
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                names = [a.name for a in node.names]
                private = tuple(n for n in names if n.startswith("_")
                                and not n.startswith("__") and f"{base}.{n}" not in modules)
                for target in _resolve(modules, base, names):
                    found.append(Import(source, target, node.lineno, private))
    return [i for i in found if i.target.split(".")[0] == "fastdns"
            and i.target != i.source]


def private_attributes(root: Path) -> list[tuple[str, int, str]]:
    """``module._name`` where *module* is a fastdns module bound by import."""
    found = []
    for source, path in _modules(root).items():
        if path.suffix != ".py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        bound: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("fastdns") and a.asname:
                        bound[a.asname] = a.name
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fastdns"):
                for a in node.names:
                    bound[a.asname or a.name] = f"{node.module}.{a.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in bound and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                found.append((source, node.lineno, f"{node.value.id}.{node.attr}"))
    return found


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def cycles(edges: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the module count
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _package_edge(e: Import) -> bool:
    """An import of a package by its own submodule (``from fastdns.x import y``
    inside fastdns.x.z resolves to fastdns.x only when y is not a module)."""
    return _in(e.source, e.target)


def violations(root: Path) -> list[str]:
    """Each broken rule as one line naming the file, line and rule."""
    edges = imports(root)
    out = []
    for e in edges:
        where = f"{e.source}:{e.line}"
        if e.source in WIRE_CORE and not any(_in(e.target, a) for a in WIRE_ALLOWED):
            out.append(f"{where}: the wire core imports {e.target}")
        if _in(e.source, "fastdns.control") and (
                _in(e.target, "fastdns.server") or _in(e.target, "fastdns.supervisor")):
            out.append(f"{where}: control imports {e.target}")
        if (_in(e.target, "fastdns.supervisor") and not _in(e.source, "fastdns.supervisor")
                and e.source not in SUPERVISOR_IMPORTERS):
            out.append(f"{where}: only the CLI imports the supervisor, not {e.source}")
        for name in e.private:
            out.append(f"{where}: imports private {e.target}.{name}")
    for source, line, attr in private_attributes(root):
        out.append(f"{source}:{line}: reaches into private {attr}")
    for comp in cycles([e for e in edges if not _package_edge(e)]):
        out.append("import cycle: " + " -> ".join(comp))
    return out


if __name__ == "__main__":
    for v in violations(Path(__file__).resolve().parent.parent):
        print(v)
