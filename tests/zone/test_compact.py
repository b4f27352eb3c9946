"""The compact forms behind the cluster state and the PTR table (issue 14).

``objects.Endpoints`` stores a slice's endpoints by column and must read,
compare, hash and pickle exactly like the tuple of Endpoint it replaces;
``ptrs.PtrTable`` keeps each Service's claims packed and must give what a
plain address -> claims table gives, incrementally as after a bulk fill.
"""

import dataclasses
import pickle
import socket
import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastdns.zone.naming import ip_text
from fastdns.zone.objects import Endpoint, Endpoints, EndpointSlice, ServicePort, strip
from fastdns.zone.ptrs import PTR_BUCKETS, PtrTable
from fastdns.zone.records import PtrClaims

TEXT = st.sampled_from(["", "a", "web-0", "web-1", "x\x00y", "10.1.0.1", "fd00::1"])
OPT = st.none() | TEXT
# all-IPv4 slices keep their addresses packed: only when the text is the canonical one
ADDR = st.sampled_from(["10.1.0.1", "10.1.0.2", "10.1.0.01", "010.1.0.3", "10.1.0.1\x00"]) | TEXT
ENDPOINT = st.builds(Endpoint, st.lists(ADDR, max_size=3).map(tuple), st.booleans(), OPT, OPT,
                     OPT)


def _same_host_and_pod(ep: Endpoint) -> Endpoint:
    return dataclasses.replace(ep, hostname=ep.target_pod)


ENDPOINTS = st.lists(ENDPOINT | ENDPOINT.map(_same_host_and_pod), max_size=6)


@settings(max_examples=300, deadline=None)
@given(a=ENDPOINTS, b=ENDPOINTS)
def test_endpoints_read_compare_and_hash_like_their_tuple(a, b):
    ea, eb = Endpoints(a), Endpoints(b)
    assert tuple(ea) == tuple(a) and len(ea) == len(a) and ea == tuple(a)
    assert list(ea[1:]) == a[1:] and (not a or ea[0] == a[0] and ea[-1] == a[-1])
    assert (ea == eb) == (tuple(a) == tuple(b))
    if ea == eb:
        assert hash(ea) == hash(eb)
    assert Endpoints(ea) == ea  # Endpoint objects in, as rows
    assert Endpoints((e.addresses, e.ready, e.hostname, e.target_pod, e.node_name)
                     for e in a) == ea
    assert pickle.loads(pickle.dumps(ea)) == ea
    assert Endpoints(ea.rows()) == ea and [Endpoint(*r) for r in ea.rows()] == a
    assert ea.address_count() == sum(len(e.addresses) for e in a)
    assert ea.ready_rows() == [(list(e.addresses), e.hostname, e.target_pod) for e in a
                               if e.ready]
    packed = [([ip_text(x) if isinstance(x, bytes) else x for x in addrs], h, t)
              for addrs, h, t in ea.ready_rows(packed=True)]
    assert packed == ea.ready_rows()


def test_endpoint_slice_keeps_its_endpoints_compact_whatever_it_was_given():
    eps = (Endpoint(("10.0.0.1",), True, "web-0", "web-0", "node-1"),
           Endpoint(("10.0.0.2", "10.0.0.3"), False, None, "web-1", None))
    ports = (ServicePort("http", "TCP", 80),)
    sl = EndpointSlice("ns", "web-x", "web", "IPv4", eps, ports)
    assert isinstance(sl.endpoints, Endpoints) and sl.endpoints == eps
    assert sl == EndpointSlice("ns", "web-x", "web", "IPv4", list(eps), ports)
    assert hash(sl) == hash(EndpointSlice("ns", "web-x", "web", "IPv4", Endpoints(eps), ports))
    moved = dataclasses.replace(sl, endpoints=sl.endpoints[1:])
    assert isinstance(moved.endpoints, Endpoints) and tuple(moved.endpoints) == eps[1:]
    assert moved != sl
    assert pickle.loads(pickle.dumps(sl)) == sl


def test_stripped_slices_share_port_lists_and_the_service_name():
    def raw(name):
        return {"metadata": {"name": name, "namespace": "ns",
                             "labels": {"kubernetes.io/service-name": "we" + "b"}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
                "endpoints": [{"addresses": ["10.1.0.1"], "hostname": "web-0",
                               "targetRef": {"kind": "Pod", "name": "web-0"}}]}

    a, b = strip("EndpointSlice", raw("web-1")), strip("EndpointSlice", raw("web-2"))
    assert a.ports is b.ports and a.service is b.service
    svc = strip("Service", {"metadata": {"name": "".join("web"), "namespace": "ns"},
                            "spec": {"clusterIP": "10.0.0.1"}})
    assert svc.name is a.service
    assert a.endpoints == (Endpoint(("10.1.0.1",), True, "web-0", "web-0", None),)
    assert a.endpoints.ready_rows(packed=True) == [([b"\x0a\x01\x00\x01"], "web-0", "web-0")]


# -- PtrTable -------------------------------------------------------------------

ZONES = [b"\x07in-addr\x04arpa\x00", b"\x03ip6\x04arpa\x00"]
ADDRS = [socket.inet_pton(socket.AF_INET, f"10.0.0.{i}") for i in range(1, 9)] + [
    socket.inet_pton(socket.AF_INET6, f"fd00::{i}") for i in range(1, 4)]
LABELS = [b"", b"", b"\x05web-0", b"\x05WEB-0", b"\x05web-1", b"\x3f" + b"x" * 63]
KEYS = [("ns", "a"), ("ns", "b"), ("other", "a")]
CLAIMS = st.lists(st.tuples(st.sampled_from(ADDRS), st.sampled_from(LABELS)), max_size=6)
STEPS = st.lists(st.tuples(st.sampled_from(KEYS), CLAIMS), min_size=1, max_size=12)


def _base(key):
    ns, name = key
    # long bases push some targets past 255 octets: those PTRs cannot be written
    pad = b"\x3f" + b"p" * 63 if name == "b" else b""
    return (pad * 3 + bytes((len(name),)) + name.encode() + bytes((len(ns),)) + ns.encode()
            + b"\x03svc\x07cluster\x05local\x00")


def _reference(claims):
    """address -> [(target, from a ClusterIP)], Services in key order: a plain table."""
    out = {}
    for key in sorted(claims):
        for packed, hl in claims[key]:
            out.setdefault(packed, []).append((hl + _base(key), not hl))
    return out


def _bucket(packed):
    return zlib.crc32(packed) & (PTR_BUCKETS - 1)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS)
def test_ptr_table_incremental_equals_bulk_and_a_plain_table(steps):
    inc = PtrTable(ZONES, 30)
    claims: dict = {}
    frags = {}
    for key, items in steps:
        before = list(claims.get(key, []))
        changed = inc.set_service(key, PtrClaims(_base(key), list(items)), False)
        assert changed == (before != items)
        if items:
            claims[key] = list(items)
        else:
            claims.pop(key, None)
        dirty = inc.take_dirty()
        touched = {_bucket(p) for p, _hl in before + items}
        assert set(dirty) == (touched if changed else set())
        for b in dirty:
            frags[b] = inc.fragment(b)
        ref = _reference(claims)
        assert len(inc.claims) == len(ref)
        assert bool(inc.by_service) == bool(claims)
        for b in {_bucket(p) for p in ADDRS}:
            want = sorted((p, t) for p, t in ref.items() if _bucket(p) == b)
            assert inc._rows(b) == want
        # a fresh table filled in bulk gives the same fragments
        bulk = PtrTable(ZONES, 30)
        for k in sorted(claims):
            bulk.set_service(k, PtrClaims(_base(k), list(claims[k])), True)
        bulk.index_all()
        assert set(bulk.take_dirty()) == {_bucket(p) for p in ref}
        for b, frag in frags.items():
            assert bulk.fragment(b) == frag


def test_ptr_table_without_reverse_zones_tracks_nothing():
    t = PtrTable([], 30)
    assert not t.set_service(KEYS[0], PtrClaims(_base(KEYS[0]), [(ADDRS[0], b"")]), False)
    assert not t.by_service and len(t.claims) == 0 and t.take_dirty() == []


def test_ptr_table_service_with_over_a_mebibyte_of_claims():
    """The record index switches to 64-bit entries past 1 MiB of records."""
    items = [((10 << 24 | i).to_bytes(4, "big"), b"\x10pod-%012d" % i) for i in range(60000)]
    t = PtrTable(ZONES, 30)
    key = ("ns", "big")
    assert t.set_service(key, PtrClaims(_base(key), items), True)
    assert t.by_service[key][2].itemsize == 8
    t.index_all()
    assert len(t.claims) == len(items)
    want = {}
    for p, hl in items:
        want.setdefault(_bucket(p), []).append((p, [(hl + _base(key), False)]))
    for b in sorted(want)[:50]:
        assert t._rows(b) == sorted(want[b])
    assert t.set_service(key, PtrClaims(_base(key), items[:10]), False)
    assert len(t.claims) == 10 and t.by_service[key][2].itemsize == 4
