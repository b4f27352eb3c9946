"""Differential tests against dnspython, an independent DNS implementation.

Queries that dnspython builds must parse to the fields dnspython put in; every
answer the wire core builds must parse cleanly in dnspython with the expected
sections: 0x20 mixed-case echo, EDNS, TC truncation, FORMERR/NOTIMP/BADVERS,
and the relocated SOA of a zone-negative answer.
"""

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire_cases import IP1, IP2, IP3, cluster_image

IMAGE = cluster_image()
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

SERVED = ["web.default.svc.cluster.local", "multi.default.svc.cluster.local",
          "big.default.svc.cluster.local", "huge.default.svc.cluster.local"]
NEGATIVE = ["nope.default.svc.cluster.local", "a.b.c.cluster.local", "x.cluster.local"]


@st.composite
def mixed_case(draw, names):
    name = draw(st.sampled_from(names))
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(ch.upper() if f else ch for ch, f in zip(name, flips, strict=True))


def make_query(name, rdtype="A", *, edns=-1, payload=1232, do=False, qid=None):
    q = dns.message.make_query(name, rdtype, use_edns=edns, payload=payload, want_dnssec=do)
    if qid is not None:
        q.id = qid
    return q


def answer_msg(wire, q, counter=0):
    status, resp, _ = wire.answer(IMAGE, q.to_wire(), counter)
    assert status == wire.ST_ANSWER
    m = dns.message.from_wire(resp)  # raises on anything dnspython finds malformed
    assert q.is_response(m)  # ID, QR, opcode and question match (RFC 1035 §7.3)
    return m, resp


def same_case(a: dns.name.Name, b: dns.name.Name) -> bool:
    """dnspython compares names case-insensitively; the 0x20 echo needs exact octets."""
    return a.to_wire() == b.to_wire()


@SETTINGS
@given(name=st.one_of(mixed_case(SERVED + NEGATIVE),
                      st.from_regex(r"[a-zA-Z0-9]{1,20}(\.[a-zA-Z0-9-]{1,20}){0,4}",
                                    fullmatch=True)),
       rdtype=st.sampled_from(["A", "AAAA", "SRV", "TXT", "PTR", "ANY", "TYPE999"]),
       rdclass=st.sampled_from(["IN", "CH", "ANY"]),
       edns=st.sampled_from([-1, 0]), payload=st.integers(0, 65535), do=st.booleans(),
       qid=st.integers(0, 65535))
def test_dnspython_queries_parse_to_their_fields(wire, name, rdtype, rdclass, edns, payload, do,
                                                 qid):
    q = dns.message.make_query(name, rdtype, rdclass, use_edns=edns, payload=payload,
                               want_dnssec=do and edns >= 0)
    q.id = qid
    p = wire.parse_query(q.to_wire())
    assert (p.id, p.flags, p.opcode) == (qid, q.flags, 0)
    assert p.qname == q.question[0].name.to_wire()
    assert p.key == q.question[0].name.to_wire().lower()
    assert p.qtype == q.question[0].rdtype and p.qclass == q.question[0].rdclass
    assert p.edns == (q.edns >= 0)
    if p.edns:
        assert p.payload == max(512, q.payload) and p.edns_version == q.edns
        assert p.do == bool(q.ednsflags & dns.flags.DO)
    else:
        assert (p.payload, p.do) == (512, False)


@SETTINGS
@given(name=mixed_case(SERVED[:2]), edns=st.sampled_from([-1, 0]), do=st.booleans(),
       counter=st.integers(0, 10))
def test_answers_echo_case_and_edns(wire, name, edns, do, counter):
    q = make_query(name, edns=edns, do=do and edns == 0)
    m, _ = answer_msg(wire, q, counter)
    assert same_case(m.question[0].name, q.question[0].name)
    assert m.rcode() == dns.rcode.NOERROR and m.flags & dns.flags.AA
    assert m.flags & dns.flags.RD and not m.flags & dns.flags.TC
    (rrset,) = m.answer
    assert same_case(rrset.name, q.question[0].name)  # owners point at the question
    assert rrset.ttl == 30 and rrset.rdtype == dns.rdatatype.A
    ips = {r.address for r in rrset}
    assert ips <= {".".join(map(str, ip)) for ip in (IP1, IP2, IP3)} and ips
    assert m.edns == (0 if edns == 0 else -1)
    if edns == 0:
        assert m.payload == 1232 and bool(m.ednsflags & dns.flags.DO) == (do and edns == 0)
        assert not m.options


@SETTINGS
@given(name=mixed_case(NEGATIVE), rdtype=st.sampled_from(["A", "AAAA", "SRV", "MX"]),
       edns=st.sampled_from([-1, 0]))
def test_negative_answer_relocates_soa(wire, name, rdtype, edns):
    q = make_query(name, rdtype, edns=edns)
    m, _ = answer_msg(wire, q)
    assert m.rcode() == dns.rcode.NXDOMAIN and m.flags & dns.flags.AA
    assert not m.answer
    (soa,) = m.authority
    qname = q.question[0].name
    zone_in_query = dns.name.Name(qname.labels[-3:])  # cluster.local. in the query's case
    assert same_case(soa.name, zone_in_query)
    (rd,) = soa
    assert same_case(rd.mname, dns.name.Name((b"ns", b"dns") + zone_in_query.labels))
    assert same_case(rd.rname, dns.name.Name((b"hostmaster",) + zone_in_query.labels))
    assert (rd.serial, rd.refresh, rd.retry, rd.expire, rd.minimum) == (1, 7200, 1800, 86400, 30)


def test_nodata_answer(wire):
    q = make_query("Web.default.svc.cluster.local", "TXT")
    m, _ = answer_msg(wire, q)
    assert m.rcode() == dns.rcode.NOERROR and not m.answer
    assert m.authority[0].rdtype == dns.rdatatype.SOA
    assert m.authority[0].name.to_text() == "cluster.local."


@SETTINGS
@given(payload=st.sampled_from([0, 512, 600, 1232, 4096, 65535]), edns=st.sampled_from([-1, 0]),
       name=st.sampled_from(SERVED[2:]))
def test_truncation(wire, payload, edns, name):
    q = make_query(name, edns=edns, payload=payload)
    m, resp = answer_msg(wire, q)
    size = 12 + len(q.question[0].name.to_wire()) + 4 + (11 if edns == 0 else 0)
    records = 40 if name.startswith("big") else 300
    full = size + 16 * records
    limit = min(max(512, payload), 4096) if edns == 0 else 512
    if full <= limit:
        assert len(resp) == full and not m.flags & dns.flags.TC
        assert len(m.answer[0]) == records
    else:
        assert m.flags & dns.flags.TC and len(resp) == size
        assert not m.answer and not m.authority
    assert m.edns == (0 if edns == 0 else -1)


def test_tcp_size_is_never_truncated(wire):
    q = make_query("huge.default.svc.cluster.local", edns=-1)
    status, resp, _ = wire.answer(IMAGE, q.to_wire(), 0, 65535)
    m = dns.message.from_wire(resp)
    assert q.is_response(m) and len(m.answer[0]) == 300 and not m.flags & dns.flags.TC


def test_error_answers_parse(wire):
    q = make_query("web.default.svc.cluster.local")
    q.use_edns(edns=1, ednsflags=dns.flags.DO, payload=1232)  # RFC 6891 §6.1.3: we speak 0
    m = dns.message.from_wire(wire.answer(IMAGE, q.to_wire())[1])
    assert m.rcode() == dns.rcode.BADVERS and m.edns == 0 and m.ednsflags & dns.flags.DO
    assert q.is_response(m)

    q = make_query("web.default.svc.cluster.local")
    q.set_opcode(dns.opcode.NOTIFY)
    m = dns.message.from_wire(wire.answer(IMAGE, q.to_wire())[1])
    assert m.rcode() == dns.rcode.NOTIMP and m.opcode() == dns.opcode.NOTIFY
    assert q.is_response(m)

    bad = bytearray(make_query("web.default.svc.cluster.local").to_wire())
    bad[5] = 2  # two questions announced, one present
    m = dns.message.from_wire(wire.answer(IMAGE, bytes(bad))[1])
    assert m.rcode() == dns.rcode.FORMERR and not m.question


def test_parse_response_of_dnspython_messages(wire):
    q = make_query("www.Example.org", "A", edns=0)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("www.Example.org.", 60, "IN", "A", "192.0.2.1"))
    r.authority.append(dns.rrset.from_text("example.org.", 300, "IN", "SOA",
                                           "ns.example.org. h.example.org. 1 2 3 4 20"))
    r.set_rcode(dns.rcode.BADCOOKIE)  # 23: extended bits live in the OPT
    data = r.to_wire()
    p = wire.parse_response(data)
    assert (p.id, p.rcode, p.qname, p.key) == (q.id, 23, q.question[0].name.to_wire(),
                                               q.question[0].name.to_wire().lower())
    assert (p.ancount, p.nscount, p.arcount) == (1, 1, 1)
    assert p.min_ttl == 60 and p.soa_minimum == 20
    assert [int.from_bytes(data[o : o + 4], "big") for o in p.ttl_offsets] == [60, 300]

