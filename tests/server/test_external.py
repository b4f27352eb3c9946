"""external.py: the image's ExternalName CNAME + the target's records, merged on the wire."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rdatatype
import dns.rrset

from fastdns.codec import wire
from fastdns.server import external


def _base(edns: bool) -> tuple[bytes, object]:
    q = dns.message.make_query("Svc.NS.svc.cluster.local.", "A", use_edns=0 if edns else None)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.AA | 0x0040  # as the image marks it (TF_EXTERNAL)
    r.answer.append(dns.rrset.from_text("Svc.NS.svc.cluster.local.", 5, "IN", "CNAME",
                                        "www.example.com."))
    return r.to_wire(), wire.parse_query(q.to_wire())


def _upstream(tdata: bytes) -> tuple[bytes, object]:
    q = dns.message.from_wire(tdata)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "CNAME", "edge.cdn.test."))
    r.answer.append(dns.rrset.from_text("edge.cdn.test.", 60, "IN", "A", "192.0.2.5", "192.0.2.6"))
    return r.to_wire(), wire.parse_query(tdata)  # compressed: names point into the message


def test_merge_keeps_cname_first_and_decompresses_the_chain():
    for edns in (False, True):
        raw, q = _base(edns)
        base = external.unmarked(raw)
        assert not base[3] & 0x40
        target, end = external.cname_target(base, q)
        assert target == wire.encode_name("www.example.com.")
        tdata = external.target_query(target, 1)
        got, tq = _upstream(tdata)
        msg = dns.message.from_wire(external.merge(base, end, external.answer_rrs(got, tq)))
        assert [(str(rr.name), rr.rdtype) for rr in msg.answer] == [
            ("Svc.NS.svc.cluster.local.", dns.rdatatype.CNAME),
            ("www.example.com.", dns.rdatatype.CNAME),
            ("edge.cdn.test.", dns.rdatatype.A)]
        assert {a.address for a in msg.answer[2]} == {"192.0.2.5", "192.0.2.6"}
        assert (msg.opt is not None) == edns
        assert msg.flags & dns.flags.AA


def test_failed_lookup_adds_nothing():
    raw, q = _base(True)
    base = external.unmarked(raw)
    _t, end = external.cname_target(base, q)
    servfail = bytearray(raw)
    servfail[3] = (servfail[3] & 0xF0) | 2
    assert external.answer_rrs(bytes(servfail), q) == []
    assert external.merge(base, end, []) == base
