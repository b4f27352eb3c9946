"""Conformance tables (tests/zonetests/*.zt) through the compiled image and both wire cores."""

import pytest

from tests.zonetests import check, compile_table, mixed_case, tables

TABLES = tables()
CASES = [(t, c) for t in TABLES for c in t.cases]
_IMAGES: dict[str, bytes] = {}


def _image(t):
    if t.file not in _IMAGES:
        _IMAGES[t.file] = compile_table(t)
    return _IMAGES[t.file]


@pytest.mark.parametrize(("table", "case"), CASES, ids=[c.id for _t, c in CASES])
def test_case(table, case, wire):
    check(case, wire, _image(table))


@pytest.mark.parametrize(("table", "case"), CASES, ids=[c.id for _t, c in CASES])
def test_case_mixed_case_query(table, case, wire):
    """Matching is case-insensitive; owners and negative SOA owners echo the query's case."""
    check(case, wire, _image(table), mixed_case(case.qname, case.line))


def test_tables_cover_every_file():
    assert len(TABLES) >= 4 and all(t.cases for t in TABLES)
