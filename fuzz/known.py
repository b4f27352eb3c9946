"""Bugs the fuzzers found that are not fixed yet, so a run can look past them.

When a target's property fails, the target asks whether the input has the
precise property of a listed bug (its own ``known_cause``); only then is
the failure turned into ``KnownBug``, which the runner counts and reports
instead of stopping (``FUZZ_KNOWN=fail`` makes it stop as for any crash),
so a run goes on to find the next bug. Each entry names its regression
test (xfail, strict) in tests/wire/test_fuzz_regressions.py: when the fix lands
that test passes, fails as XPASS, and the entry goes.
"""

from __future__ import annotations

# name -> one-line cause and its regression test
KNOWN: dict[str, str] = {
    "response-question-pointer": (
        "parse_response accepts a compression pointer in the question (into the header, "
        "the only place before it), but adapt/strip_opt/the cache take the question to end "
        "at 12 + len(qname) + 4: the client gets a misaligned, malformed answer "
        "(test_response_question_pointer)"),
    "response-name-in-rewritten-octets": (
        "parse_response accepts an owner name that is read, through a pointer, from octets "
        "the forwarder and the cache rewrite (a TTL field, the header): once the TTL is "
        "aged the name reads differently and the cached answer is malformed "
        "(test_response_name_through_ttl_octets)"),
}


class KnownBug(Exception):
    """An input hit a bug listed in KNOWN."""

    def __init__(self, name: str, cause: BaseException) -> None:
        super().__init__(f"{name}: {type(cause).__name__}: {cause}")
        self.name = name


