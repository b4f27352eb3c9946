"""Coverage-guided fuzz targets (atheris) for the parsers that take outside input.

One module per target; each has ``setup()`` (imports the code under test,
so that the runner can instrument it) and ``check(data)`` (the property: it
raises only for a bug). ``python3 -m fuzz TARGET`` runs one under atheris
(see fuzz/README.md); tests/wire/test_fuzz_regressions.py replays the seed
corpus and every crash found through ``check`` without atheris.
"""

TARGETS = ("query", "response", "corefile", "statefile")


def c_core():
    """``fastdns._wire``, or the twin itself under FASTDNS_NO_EXTENSIONS=1 (the
    regression tests then run the pure-Python suite's way; fuzzing wants the C)."""
    from fastdns.codec import wire

    return wire
