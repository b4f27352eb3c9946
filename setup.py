"""Builds the Cython extensions of fastdns.

Every ``fastdns/**/*.pyx`` becomes an extension module of the same dotted
name, so a new accelerated module needs no edit here.

Switches (environment variables, as asyncpg does it):
  FASTDNS_DEBUG=1     bounds checks, assertions and line tracing on; -O0 -g;
                      defines FASTDNS_DEBUG for invariant checks in the C.
  FASTDNS_ANNOTATE=1  write Cython's HTML annotation next to each .pyx.
  FASTDNS_NO_EXTENSIONS=1  build nothing: the pure-Python twin is used.

Before cythonizing, the shared-memory layout declared in
``fastdns/ipc/layout.py`` is written out as ``fastdns/server/_layout.pxi``
(generated, not in git), which the UDP fast path includes.
"""

import importlib.util
import os
import pathlib
import sys

from setuptools import setup

HERE = pathlib.Path(__file__).parent
DEBUG = os.environ.get("FASTDNS_DEBUG") == "1"
ANNOTATE = os.environ.get("FASTDNS_ANNOTATE") == "1"
NO_EXT = os.environ.get("FASTDNS_NO_EXTENSIONS") == "1"


def write_layout_pxi():
    """Generate ``_layout.pxi`` from the layout declaration.

    The layout module is loaded by file path, not imported as
    ``fastdns.ipc.layout``: an isolated build environment cannot import the
    fastdns package (its extensions are what is being built), and the
    module needs nothing but the standard library. The file is rewritten
    only when its text changes, so an unchanged layout recompiles nothing.
    """
    spec = importlib.util.spec_from_file_location(
        "_fastdns_layout", HERE / "fastdns" / "ipc" / "layout.py")
    layout = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = layout  # dataclasses look their module up there
    try:
        spec.loader.exec_module(layout)
    finally:
        del sys.modules[spec.name]
    text = layout.pxi()
    out = HERE / "fastdns" / "server" / "_layout.pxi"
    if not out.exists() or out.read_text() != text:
        out.write_text(text)


def extensions():
    if NO_EXT:
        return []
    write_layout_pxi()
    from Cython.Build import cythonize
    from setuptools import Extension

    cflags = ["-Wall", "-Wno-unused-function", "-Wno-unreachable-code"]
    macros = []
    directives = {
        "language_level": "3",
        "boundscheck": DEBUG,
        "wraparound": False,
        "cdivision": True,
        "initializedcheck": DEBUG,
        "embedsignature": True,
    }
    if DEBUG:
        cflags += ["-O0", "-g3", "-UNDEBUG"]
        macros += [("FASTDNS_DEBUG", "1"), ("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
        directives["linetrace"] = True
    else:
        cflags += ["-O3"]
        macros += [("FASTDNS_DEBUG", "0")]
    exts = []
    for pyx in sorted(HERE.glob("fastdns/**/*.pyx")):
        rel = pyx.relative_to(HERE)
        name = ".".join(rel.with_suffix("").parts)
        exts.append(
            Extension(name, [str(rel)], extra_compile_args=cflags, define_macros=macros)
        )
    return cythonize(
        exts,
        compiler_directives=directives,
        annotate=ANNOTATE,
        compile_time_env={"FASTDNS_DEBUG": DEBUG},
        force=DEBUG or ANNOTATE,
    )


setup(ext_modules=extensions())
