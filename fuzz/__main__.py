"""Run one fuzz target under atheris: ``python3 -m fuzz TARGET [libFuzzer flags]``.

The committed seeds (fuzz/corpus/TARGET) are read, never written: libFuzzer
adds what it finds to the first corpus directory it is given, here
build/fuzz/TARGET/corpus, and writes crashing inputs (``crash-SHA1``) to
build/fuzz/TARGET/. ``-max_total_time`` defaults to FUZZ_SECONDS (60).
``fuzz/TARGET.dict``, when present, is passed as ``-dict``.

Instrumentation: ``atheris.instrument_imports`` covers fastdns's Python
modules, which is what guides the search. The Cython modules (fastdns._wire,
the zone index, the UDP path) carry no coverage counters: they are
exercised, and compared with their Python twins, but do not steer.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Inputs past these sizes only make the text parsers slower, not deeper.
MAX_LEN = {"corefile": 2048, "statefile": 10000}


def main(argv: list[str]) -> int:
    from fuzz import TARGETS
    from fuzz.known import KNOWN, KnownBug

    if not argv or argv[0] not in TARGETS:
        print(f"usage: python3 -m fuzz {{{','.join(TARGETS)}}} [libFuzzer flags]",
              file=sys.stderr)
        return 2
    name, flags = argv[0], argv[1:]
    try:
        import atheris
    except ImportError:
        print("fuzz: atheris is not installed (pip install atheris)", file=sys.stderr)
        return 2
    out = ROOT / "build" / "fuzz" / name
    scratch = out / "corpus"
    scratch.mkdir(parents=True, exist_ok=True)
    seeds = HERE / "corpus" / name
    if not any(f.startswith("-max_total_time=") or f.startswith("-runs=") for f in flags):
        flags.append(f"-max_total_time={int(os.environ.get('FUZZ_SECONDS', '60'))}")
    if not any(f.startswith("-artifact_prefix=") for f in flags):
        flags.append(f"-artifact_prefix={out}/")
    if name in MAX_LEN and not any(f.startswith("-max_len=") for f in flags):
        flags.append(f"-max_len={MAX_LEN[name]}")
    dictionary = HERE / f"{name}.dict"
    if dictionary.exists() and not any(f.startswith("-dict=") for f in flags):
        flags.append(f"-dict={dictionary}")
    paths = [f for f in flags if not f.startswith("-")]
    if not paths:  # no corpus or inputs named: the scratch corpus, then the seeds
        flags += [str(scratch), str(seeds)]

    target = importlib.import_module(f"fuzz.{name}")
    said = io.StringIO()  # one "INFO: Instrumenting MODULE" line per module: counted instead
    with contextlib.redirect_stderr(said), atheris.instrument_imports(include=["fastdns"]):
        target.setup()
    lines = said.getvalue().splitlines()
    n = sum(1 for line in lines if line.startswith("INFO: Instrumenting"))
    print(f"fuzz: {name}: {n} fastdns modules instrumented (Cython modules are not)",
          file=sys.stderr)
    for line in lines:
        if not line.startswith("INFO: Instrumenting"):
            print(line, file=sys.stderr)
    from fastdns.codec import NO_EXTENSIONS  # imported (and instrumented) by setup()

    if NO_EXTENSIONS:  # the C core is half of what the targets compare
        print("fuzz: the Cython extensions are not loaded (FASTDNS_NO_EXTENSIONS, or not "
              "built: pip install -e .)", file=sys.stderr)
        return 2

    strict = os.environ.get("FUZZ_KNOWN", "") == "fail"
    seen: dict[str, int] = {}

    def one(data: bytes) -> None:
        try:
            target.check(data)
        except KnownBug as e:
            if strict:
                raise
            n = seen[e.name] = seen.get(e.name, 0) + 1
            if n == 1:
                print(f"fuzz: known bug {e.name} ({KNOWN[e.name]}), input {data.hex()}",
                      file=sys.stderr, flush=True)
            elif str(n).strip("0") == "1":  # 10, 100, 1000 ...: libFuzzer exits without atexit
                print(f"fuzz: known bug {e.name} hit by {n} inputs", file=sys.stderr, flush=True)

    atheris.Setup([sys.argv[0], *flags], one)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
