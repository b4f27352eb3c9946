"""Builds the Cython extensions of fastdns.

Every ``fastdns/**/*.pyx`` becomes an extension module of the same dotted
name, so a new accelerated module needs no edit here.

Switches (environment variables, as asyncpg does it):
  FASTDNS_DEBUG=1     bounds checks, assertions and line tracing on; -O0 -g;
                      defines FASTDNS_DEBUG for invariant checks in the C.
  FASTDNS_ANNOTATE=1  write Cython's HTML annotation next to each .pyx.
  FASTDNS_NO_EXTENSIONS=1  build nothing: the pure-Python twin is used.
"""

import os
import pathlib

from setuptools import setup

HERE = pathlib.Path(__file__).parent
DEBUG = os.environ.get("FASTDNS_DEBUG") == "1"
ANNOTATE = os.environ.get("FASTDNS_ANNOTATE") == "1"
NO_EXT = os.environ.get("FASTDNS_NO_EXTENSIONS") == "1"


def extensions():
    if NO_EXT:
        return []
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
