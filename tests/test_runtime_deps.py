"""Runtime code imports only what a plain ``pip install fastdns`` brings.

The suite always runs with the test extras, so a runtime import of one of
them (``fastdns/server/querylog.py`` once imported dnspython) passes every
other test and breaks the image: ``errors`` printed ``ModuleNotFoundError``
and ``log`` nothing. Three guards, from cheapest to closest to the image:

- an import contract over the source: every module under ``fastdns/``
  except ``fastdns/testing/`` (test support, which may use test extras)
  imports only the standard library, fastdns, and distributions declared in
  pyproject's ``[project].dependencies``; a dependency of a dependency
  (urllib3 below kubernetes) counts only when declared itself;
- the ``log``/``errors`` formatting in a subprocess where dnspython cannot be
  imported;
- miekg/dns's type table (``fastdns/mnemonics.py``, what CoreDNS prints)
  compared with dnspython's over all 65536 values, so the copy cannot drift.

``.ci/wheel-smoke`` does the rest in CI: the built wheel in a fresh venv
without extras, served and queried.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from fastdns import mnemonics, names

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fastdns"
TEST_SUPPORT = PACKAGE / "testing"

# -- the import contract --------------------------------------------------------------


def _canonical(dist: str) -> str:
    """PEP 503 name normalisation: PyYAML, pyyaml and py_yaml are one distribution."""
    return re.sub(r"[-_.]+", "-", dist).lower()


def declared_distributions(pyproject: Path = ROOT / "pyproject.toml") -> set[str]:
    with pyproject.open("rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    return {_canonical(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", d).group(0)) for d in deps}


def import_names(dists: set[str]) -> dict[str, str]:
    """Top-level import name -> the declared distribution that provides it."""
    out = {}
    for top, owners in importlib.metadata.packages_distributions().items():
        for owner in owners:
            if _canonical(owner) in dists:
                out[top] = _canonical(owner)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """Absolute imports anywhere in a module (also inside functions), as (line, module).

    ``if TYPE_CHECKING:`` bodies never run, so they are left out; a literal
    ``importlib.import_module("x")`` / ``__import__("x")`` counts as an import.
    """

    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for stmt in node.orelse:
                self.visit(stmt)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.extend((node.lineno, a.name) for a in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self.found.append((node.lineno, node.module))

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
        if (called in ("import_module", "__import__") and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and not node.args[0].value.startswith(".")):
            self.found.append((node.lineno, node.args[0].value))
        self.generic_visit(node)


# Cython source is not Python syntax: its Python-level imports are found by line
# (``cimport`` is compile time and is not looked at).
_CY_IMPORT = re.compile(r"^\s*import\s+([\w.]+(?:\s*,\s*[\w.]+)*)")
_CY_FROM = re.compile(r"^\s*from\s+([\w.]+)\s+import\b")


def imports_of(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        v = _Imports()
        v.visit(ast.parse(text, filename=str(path)))
        return v.found
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0]
        m = _CY_FROM.match(line)
        if m and not m.group(1).startswith("."):
            found.append((lineno, m.group(1)))
            continue
        m = _CY_IMPORT.match(line)
        if m:
            found.extend((lineno, n.strip()) for n in m.group(1).split(","))
    return found


def runtime_sources(package: Path = PACKAGE, support: Path = TEST_SUPPORT) -> list[Path]:
    return sorted(p for p in package.rglob("*")
                  if p.suffix in (".py", ".pyx", ".pxi") and support not in p.parents)


def undeclared_imports(sources: list[Path], provided: dict[str, str],
                       root: Path = ROOT) -> list[str]:
    """One line per import that a plain install of the declared dependencies lacks."""
    installed = importlib.metadata.packages_distributions()
    bad = []
    for path in sources:
        for lineno, module in imports_of(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top == "fastdns" or top in provided:
                continue
            if top == "cython" and path.suffix in (".pyx", ".pxi"):
                continue  # Cython's compile-time module
            owners = installed.get(top)
            why = (f"provided by {', '.join(owners)}, which is not in [project].dependencies"
                   f" (here only as a dependency of a dependency, or an extra)" if owners
                   else "provided by no installed distribution")
            bad.append(f"{path.relative_to(root)}:{lineno}: import {module}: {why}")
    return bad


def test_every_declared_dependency_is_installed_here():
    """Else the mapping below would be incomplete and the contract would be unsound."""
    missing = []
    for dist in sorted(declared_distributions()):
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
    assert not missing, f"declared runtime dependencies not installed: {missing}"


def test_runtime_code_imports_only_stdlib_fastdns_and_declared_dependencies():
    sources = runtime_sources()
    assert PACKAGE / "server" / "querylog.py" in sources
    assert not any(TEST_SUPPORT in p.parents for p in sources)
    provided = import_names(declared_distributions())
    bad = undeclared_imports(sources, provided)
    assert not bad, ("runtime code imports what a plain install lacks; declare the "
                     "distribution in pyproject.toml [project].dependencies, or keep the "
                     "import in tests/ or fastdns/testing/:\n  " + "\n  ".join(bad))


def test_the_contract_sees_imports_in_functions_and_cython(tmp_path):
    """The checker itself: it reports what the querylog bug looked like."""
    pkg = tmp_path / "fastdns"
    (pkg / "testing").mkdir(parents=True)
    (pkg / "querylog.py").write_text(textwrap.dedent("""\
        from typing import TYPE_CHECKING
        import struct
        from fastdns.codec import wire
        from . import errors
        if TYPE_CHECKING:
            import dns.name
        def type_text(qtype):
            import dns.rdatatype
            return dns.rdatatype.to_text(qtype)
        def later():
            import importlib
            return importlib.import_module("yaml.constructor")
        """))
    (pkg / "_core.pyx").write_text("cimport cython\nfrom libc.string cimport memcpy\n"
                                   "import cython\nimport os, urllib3.util\n"
                                   "from dns import name\n")
    (pkg / "testing" / "helper.py").write_text("import dns.message\n")
    sources = runtime_sources(pkg, pkg / "testing")
    assert [p.name for p in sources] == ["_core.pyx", "querylog.py"]
    bad = undeclared_imports(sources, {"yaml": "pyyaml"}, root=tmp_path)
    assert [b.split(": provided")[0] for b in bad] == [
        "fastdns/_core.pyx:4: import urllib3.util",
        "fastdns/_core.pyx:5: import dns",
        "fastdns/querylog.py:8: import dns.rdatatype",
    ], bad
    assert "provided by dnspython, which is not in [project].dependencies" in bad[-1]


def test_urllib3_counts_only_because_it_is_declared():
    """kubernetes requires urllib3, but fastdns imports it itself: it must be declared."""
    provided = import_names(declared_distributions())
    assert provided.get("urllib3") == "urllib3"
    assert provided.get("yaml") == "pyyaml"
    without = {k: v for k, v in provided.items() if v != "urllib3"}
    bad = undeclared_imports([PACKAGE / "control" / "kube.py"], without)
    assert bad and all("import urllib3" in b for b in bad), bad


# -- log and errors without dnspython ---------------------------------------------------

# Messages built by hand (RFC 1035 §4.1): the subprocess cannot use dnspython.
_MESSAGES = textwrap.dedent('''
    import struct

    def query(qid, name, qtype, qclass=1):
        out = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
        for label in name.rstrip(".").split("."):
            out += bytes([len(label)]) + label.encode()
        return out + b"\\0" + struct.pack(">HH", qtype, qclass)

    def response(q, flags, rcode, answer=b""):
        head = struct.pack(">HHHHHH", struct.unpack_from(">H", q)[0],
                           0x8000 | 0x0100 | flags | rcode, 1, 1 if answer else 0, 0, 0)
        return head + q[12:] + answer

    A_RR = b"\\xc0\\x0c" + struct.pack(">HHIH", 1, 1, 3600, 4) + bytes([192, 0, 2, 1])
''')

_NO_DNSPYTHON = textwrap.dedent('''
    import importlib.abc, sys, time

    class NoDnspython(importlib.abc.MetaPathFinder):
        """dnspython as absent as in the image: any import of dns or dns.* fails."""
        def find_spec(self, name, path=None, target=None):
            if name == "dns" or name.startswith("dns."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoDnspython())
    try:
        import dns.rdatatype
    except ModuleNotFoundError:
        print("dnspython: hidden", flush=True)

    from fastdns.corefile.config import parse_corefile
    from fastdns.supervisor.children import setup_logging
    from fastdns.server.worker_plugins import WorkerPlugins

    COREFILE = """
    example.org:53 {
        errors
        log
        hosts {
            192.0.2.1 www.example.org
        }
    }
    custom.test:53 {
        log . "{type} {class} {name} {rcode} {>rflags}"
        hosts {
            192.0.2.2 x.custom.test
        }
    }
    .:53 {
        errors
        log
        forward . 127.0.0.1:9
    }
    """

''')

_EXCHANGES = textwrap.dedent('''
    setup_logging("info")
    plugins = WorkerPlugins(parse_corefile(COREFILE, "Corefile"))
    exchanges = [
        (query(0x1234, "www.example.org.", 1), 0x0400, 0, A_RR),
        (query(0x4321, "nothere.example.net.", 28), 0, 2, b""),
        (query(0x0042, "x.custom.test.", 65280, 255), 0x0400, 5, b""),
    ]
    for q, flags, rcode, answer in exchanges:
        r = response(q, flags, rcode, answer)
        print(f"exchange {len(q)} {len(r)}", flush=True)
        plugins.finished(q, ("127.0.0.1", 40000), r, False, 53, time.perf_counter())
''')


def test_log_and_errors_lines_without_dnspython():
    script = _NO_DNSPYTHON + _MESSAGES + _EXCHANGES
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, out + err
    assert "Traceback" not in out + err and "ModuleNotFoundError" not in out + err, out + err
    lines = out.splitlines()
    assert lines[0] == "dnspython: hidden"  # the finder really hides it
    sizes = [tuple(map(int, ln.split()[1:])) for ln in lines if ln.startswith("exchange ")]
    assert len(sizes) == 3
    logs = [ln for ln in lines if ln.startswith("[INFO] ")]
    # plugin/log/log.go common format: remote:port - id "type class name proto size do
    # bufsize" rcode rflags rsize duration
    (q1, r1), (q2, r2), _ = sizes
    assert len(logs) == 3, out
    assert re.fullmatch(rf'\[INFO\] 127\.0\.0\.1:40000 - 4660 "A IN www\.example\.org\. udp '
                        rf'{q1} false 512" NOERROR qr,aa,rd {r1} \d+(\.\d+)?s', logs[0]), logs
    assert re.fullmatch(rf'\[INFO\] 127\.0\.0\.1:40000 - 17185 "AAAA IN nothere\.example\.net\. '
                        rf'udp {q2} false 512" SERVFAIL qr,rd {r2} \d+(\.\d+)?s', logs[1]), logs
    # miekg/dns: an unknown type is TYPE<n>; class 255 is CLASS255 (ANY is also a type)
    assert logs[2] == "[INFO] TYPE65280 CLASS255 x.custom.test. REFUSED qr,aa,rd", logs
    assert re.search(r"^\[ERROR\] plugin/errors: 2 nothere\.example\.net\. AAAA: \S",
                     err, re.M), err
    assert "www.example.org" not in err  # errors reports SERVFAILs only


# -- the type table -----------------------------------------------------------------------

# Where miekg/dns v1.1.72 (ztypes.go TypeToString) and dnspython disagree.
MIEKG_ONLY = {0: "None", 31: "EID", 32: "NIMLOC", 34: "ATMA", 57: "RKEY", 58: "TALINK",
              100: "UINFO", 101: "UID", 102: "GID", 65535: "Reserved"}
# WKS, NSAP, A6, DSYNC, HHIT, BRID, WALLET: dnspython names them, miekg prints TYPE<n>.
DNSPYTHON_ONLY = {11, 22, 38, 66, 67, 68, 262}
# Both name these, but dnspython only from 2.7 on (the test extra allows 2.6).
DNSPYTHON_2_7 = {128: "NXNAME", 261: "RESINFO"}


def test_type_table_is_miekg_and_agrees_with_dnspython():
    wrong = []
    for value in range(65536):
        theirs = dns.rdatatype.to_text(value)
        if value in MIEKG_ONLY:
            want = MIEKG_ONLY[value]
        elif value in DNSPYTHON_ONLY:
            want = f"TYPE{value}"
        elif value in DNSPYTHON_2_7 and theirs == f"TYPE{value}":
            want = DNSPYTHON_2_7[value]
        else:
            want = theirs
        if mnemonics.type_text(value) != want:
            wrong.append(f"{value}: ours {mnemonics.type_text(value)!r}, want {want!r} "
                         f"(dnspython {theirs!r})")
    assert not wrong, ("fastdns/mnemonics.py TYPES differs (a new dnspython type that "
                       "miekg/dns lacks belongs in DNSPYTHON_ONLY):\n" + "\n".join(wrong))
    assert len(mnemonics.TYPES) == 88  # TypeToString's entries in miekg/dns v1.1.72


def test_class_text_is_miekg_class_string():
    """defaults.go Class.String: mnemonic unless it also names a type, else CLASS<n>."""
    for value in (1, 3, 4, 254):  # IN CH HS NONE: the same in dnspython
        assert mnemonics.class_text(value) == dns.rdataclass.to_text(value)
    assert mnemonics.class_text(2) == "CS"  # ClassCSNET: miekg only
    assert mnemonics.class_text(255) == "CLASS255"  # "ANY" is TypeANY's too
    assert dns.rdataclass.to_text(255) == "ANY"
    assert [mnemonics.class_text(v) for v in (0, 5, 65535)] == ["CLASS0", "CLASS5",
                                                                "CLASS65535"]


@pytest.mark.parametrize("value", sorted(set(range(24)) - {16}))
def test_rcode_text_agrees_with_dnspython(value):
    """msg.go RcodeToString; a number it lacks is printed bare (replacer.go)."""
    theirs = dns.rcode.to_text(value)
    want = str(value) if theirs == str(value) or theirs.startswith("RCODE") else theirs
    assert names.rcode_text(value) == want


def test_rcode_16_is_badsig_as_miekg_prints_it():
    # RcodeBadSig and RcodeBadVers are both 16; the map keeps "BADSIG", and so do
    # CoreDNS's log lines and metric labels (tests/control/test_metrics.py).
    assert dns.rcode.to_text(16) == "BADVERS"
    assert names.rcode_text(16) == "BADSIG"
    assert names.rcode_text(4095) == "4095"


def test_the_hand_built_messages_are_well_formed():
    """What the subprocess feeds the plugins is real DNS (dnspython reads it back)."""
    ns: dict = {}
    exec(compile(_MESSAGES, "<messages>", "exec"), ns)
    q = ns["query"](0x1234, "www.example.org.", 1)
    m = dns.message.from_wire(ns["response"](q, 0x0400, 0, ns["A_RR"]))
    assert m.id == 0x1234 and m.rcode() == dns.rcode.NOERROR and m.flags & dns.flags.AA
    assert [rr.to_text() for rrset in m.answer for rr in rrset] == ["192.0.2.1"]
    assert dns.message.from_wire(q).question[0].to_text() == "www.example.org. IN A"
    unknown = dns.message.from_wire(ns["query"](0x42, "x.custom.test.", 65280, 255))
    assert unknown.question[0].rdtype == 65280 and unknown.question[0].rdclass == 255
