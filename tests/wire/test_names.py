"""fastdns.names: the one place names and addresses are spelled.

Each case is what CoreDNS (miekg/dns, Go's net package) writes, so a
change to the shared helper shows here before it shows in a label.
"""

from __future__ import annotations

import pytest

from fastdns import errors, names


@pytest.mark.parametrize(("host", "port", "text"), [
    ("10.96.0.10", 53, "10.96.0.10:53"),
    ("::1", 53, "[::1]:53"),
    ("fd00::a", "1053", "[fd00::a]:1053"),
    ("", 53, ":53"),  # CoreDNS's server label for a block without bind
    ("localhost", 8080, "localhost:8080"),
])
def test_host_port_is_go_join_host_port(host, port, text):
    assert names.host_port(host, port) == text


def test_bracket_host_only_brackets_ipv6():
    assert names.bracket_host("fe80::1") == "[fe80::1]"
    assert names.bracket_host("kube-dns.kube-system") == "kube-dns.kube-system"


@pytest.mark.parametrize("text", ["kubernetes.default.svc.cluster.local.", "a.b.", "."])
def test_text_wire_round_trip(text):
    assert names.to_text(names.to_wire(text)) == text


def test_to_wire_refuses_what_is_not_a_name():
    with pytest.raises(errors.LabelTooLong):
        names.to_wire("a" * 64 + ".org")
    with pytest.raises(errors.BadEncoding):
        names.to_wire("a..b")


@pytest.mark.parametrize(("name", "zone", "inside"), [
    ("svc.cluster.local.", "cluster.local.", True),
    ("cluster.local.", "cluster.local.", True),
    ("xcluster.local.", "cluster.local.", False),  # a suffix, not a label boundary
    ("example.org.", ".", True),
])
def test_is_subdomain_on_label_boundaries(name, zone, inside):
    assert names.is_subdomain(names.zone_key(name), names.zone_key(zone)) is inside


def test_rcode_texts_keep_each_callers_name_for_16():
    assert names.rcode_text(3) == "NXDOMAIN"
    assert names.rcode_text(16) == "BADSIG"
    assert names.forward_rcode_text(16) == "BADVERS"
    assert names.rcode_text(99) == "99"
