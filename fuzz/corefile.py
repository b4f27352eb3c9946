"""Fuzz target ``corefile``: the Corefile as ``fastdns serve`` and ``check-corefile`` read it.

A Corefile comes from a ConfigMap anyone with edit rights can change, and
a reload applies it to a running server. Property, for any octets as the
Corefile (written to a file beside two importable files, so ``import``
globs, snippets and cycles resolve):

- ``load_corefile`` (read, UTF-8, lex, blocks, imports, ``{$ENV}``, every
  plugin's parser: ``parse_corefile``, which raises ``analyse``'s first
  error) raises only ``CorefileError``.
- ``check-corefile`` (``analyse``, one line per finding) prints its verdict
  and exits 0, 1 or 2, never a traceback; 2 (syntax) only for a Corefile
  that does not load.
- A Config that parses goes through serve's own startup steps without any
  other exception: the plugin verdict (``verdict.problems``/``warnings``),
  listen addresses, and the zone compiler (``build_compiler``: only
  ``FatalConfig``, the error serve reports in one line).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from typing import Any

from fuzz.known import KNOWN, KnownBug

ENV = {"ZONE": "cluster.local", "PORT": "1053", "EMPTY": ""}
SIDE_FILES = {
    "extra.server": "example.net:1053 {\n    whoami\n}\n",
    "custom.override": "errors\nloadbalance\n",
}

corefile: Any = None
config_mod: Any = None
verdict: Any = None
check_mod: Any = None
process: Any = None
listen_addresses: Any = None
PATH = ""


def setup() -> None:
    global corefile, config_mod, verdict, check_mod, process, listen_addresses, PATH
    from fastdns.control import process as proc
    from fastdns.corefile import check, config, errors
    from fastdns.corefile import verdict as vd
    from fastdns.corefile.listen import listen_addresses as la

    corefile, config_mod, verdict, check_mod, process, listen_addresses = (
        errors, config, vd, check, proc, la)
    d = tempfile.mkdtemp(prefix="fastdns-fuzz-corefile-")
    for name, text in SIDE_FILES.items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    PATH = os.path.join(d, "Corefile")
    os.environ.update(ENV)  # what {$ZONE} and {%PORT%} expand to, for both readers


def known_cause(data: bytes, e: BaseException) -> str | None:
    """Which listed bug (fuzz/known.py) this failure is, if any."""
    if isinstance(e, ValueError) and "null byte" in str(e) and b"\0" in data:
        return "corefile-import-nul"
    return None


def teardown() -> None:
    """Remove the scratch directory ``setup`` made (the runner never returns to do it)."""
    shutil.rmtree(os.path.dirname(PATH), ignore_errors=True)


def check(data: bytes) -> None:
    try:
        readers(data)
    except Exception as e:
        cause = known_cause(data, e)
        if cause in KNOWN:  # a fixed bug left in known_cause counts as a new crash
            raise KnownBug(cause, e) from e
        raise


def readers(data: bytes) -> None:
    """``data`` as the Corefile of serve, check-corefile and the compiler."""
    with open(PATH, "wb") as f:
        f.write(data)
    try:
        cfg = config_mod.load_corefile(PATH)  # serve's read, and parse_corefile
    except corefile.CorefileError:
        cfg = None
    out = io.StringIO()
    status = check_mod.main(PATH, out)  # check-corefile: analyse, line by line
    assert status in (0, 1, 2), status
    assert cfg is None or status != 2, "check-corefile calls a Corefile that parses a syntax error"
    if cfg is None:
        return
    verdict.problems(cfg)
    verdict.warnings(cfg)
    for _host, port in listen_addresses(cfg):
        assert 0 <= port <= 65535, f"listen port {port}"
    try:
        process.build_compiler(cfg)
    except process.FatalConfig:
        pass
