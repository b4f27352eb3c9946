"""Bugs the fuzzers found that are not fixed yet, so a run can look past them.

When a target's property fails, the target asks whether the input has the
precise property of a listed bug (its own ``known_cause``); only then is
the failure turned into ``KnownBug``, which the runner counts and reports
instead of stopping (``FUZZ_KNOWN=fail`` makes it stop as for any crash),
so a run goes on to find the next bug. Each entry names its regression
test (xfail, strict) in tests/test_fuzz_regressions.py: when the fix lands
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
    "state-field-type": (
        "objects.strip keeps raw YAML values where the compiler needs strings (the "
        "kubernetes.io/service-name label, an endpoint's hostname or targetRef name): "
        "`service-name: true` or `hostname: 5` loads, then the compile raises TypeError/"
        "AttributeError (test_state_field_of_the_wrong_type)"),
    "state-port-range": (
        "objects._ports takes any integer: a port outside 0..65535 loads, then the compile "
        "raises struct.error (test_state_port_out_of_range)"),
    "state-bad-label": (
        "a name part that is no DNS label (empty, or over 63 octets: a hostname, Service, "
        "namespace or port name) loads, and records.label() writes its length as is: the "
        "image holds a malformed name and clients get answers they cannot read "
        "(test_state_hostname_longer_than_a_label)"),
    "corefile-import-nul": (
        "blocks._import_files hands the import pattern to glob unchecked: a NUL byte in a "
        "directory part raises ValueError (embedded null byte), not CorefileError, so serve "
        "and a reload print a traceback (test_corefile_import_with_a_nul_byte)"),
}


class KnownBug(Exception):
    """An input hit a bug listed in KNOWN."""

    def __init__(self, name: str, cause: BaseException) -> None:
        super().__init__(f"{name}: {type(cause).__name__}: {cause}")
        self.name = name


