"""whoami, the plugin of one module (fastdns/plugins/whoami.py): parse, answer, dispatch.

As CoreDNS's ``plugin/whoami/whoami_test.go`` does, the answer is checked
record by record for an IPv4 and an IPv6 client over UDP and TCP; the
dispatch tests go through the worker's generic slow-path hook
(``WorkerPlugins.answer``) with a Corefile, as the worker does.
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rdatatype
import pytest

from fastdns.codec import wire
from fastdns.corefile.config import parse_corefile
from fastdns.corefile.errors import CorefileError
from fastdns.plugins import registry
from fastdns.plugins.whoami import WhoamiConfig, whoami_template
from fastdns.server.worker_plugins import WorkerPlugins


def test_registered_and_parsed():
    row = registry.get("whoami")
    assert row is not None and row.runs and row.answers and row.answer is not None
    cfg = parse_corefile("example.org:53 {\n  whoami\n}\n", "C")
    assert cfg.servers[0].plugins == {"whoami": WhoamiConfig()}
    with pytest.raises(CorefileError, match=r"^C:2: plugin whoami: unexpected argument"):
        parse_corefile("example.org:53 {\n  whoami x\n}\n", "C")


@pytest.mark.parametrize(("addr", "proto", "rtype"), [
    (("10.1.2.3", 4242), "udp", dns.rdatatype.A),
    (("2001:db8::7", 53), "tcp", dns.rdatatype.AAAA),
])
def test_whoami_answer(addr, proto, rtype):
    q = dns.message.make_query("Example.ORG.", "A", use_edns=0)
    data = q.to_wire()
    resp = dns.message.from_wire(wire.respond(data, wire.parse_query(data),
                                              whoami_template(addr, proto, False)))
    assert resp.id == q.id and resp.flags & dns.flags.AA and resp.edns == 0
    ip = next(rr for rr in resp.additional if rr.rdtype == rtype)
    assert str(ip.name) == "Example.ORG." and ip[0].address == addr[0] and ip.ttl == 0
    srv = next(rr for rr in resp.additional if rr.rdtype == dns.rdatatype.SRV)
    assert str(srv.name) == f"_{proto}.Example.ORG." and srv[0].port == addr[1]
    root = dns.message.make_query(".", "A")
    rw = root.to_wire()
    r2 = dns.message.from_wire(wire.respond(rw, wire.parse_query(rw),
                                            whoami_template(addr, proto, True)))
    assert str(next(rr for rr in r2.additional if rr.rdtype == 33).name) == f"_{proto}."


def test_dispatched_by_the_worker():
    cfg = parse_corefile("example.org:53 {\n  whoami\n}\n"
                         "fwd.test:53 {\n  whoami\n  forward . 192.0.2.1\n}\n", "C")
    plugins = WorkerPlugins(cfg)
    assert plugins.intercepts and plugins.wants_peer
    q = dns.message.make_query("a.example.org.", "A")
    data = q.to_wire()
    got = plugins.intercept(data, ("10.1.2.3", 4242), False, 53)
    assert got == wire.respond(data, wire.parse_query(data),
                               whoami_template(("10.1.2.3", 4242), "udp", False))
    # forward comes first in plugin.cfg: whoami never sees that block's queries
    fq = dns.message.make_query("a.fwd.test.", "A").to_wire()
    assert plugins.answer(fq, ("10.1.2.3", 4242), False, 53) is None
    assert plugins.answer(data, None, False, 53) is None  # no client address: no answer
    assert not WorkerPlugins(parse_corefile("a.test:53 {\n  hosts\n}\n", "C")).intercepts


@pytest.mark.parametrize(("addr", "proto", "root", "golden"), [
    # head (flags an ns ar nreloc) | A owner type class ttl rdlen rdata | SRV ...
    (("10.1.2.3", 4242), "udp", False,
     "8400 0000 0000 0002 0000"
     "c00c 0001 0001 00000000 0004 0a010203"
     "045f756470 c00c 0021 0001 00000000 0007 0000 0000 1092 00"),
    (("2001:db8::7", 53), "tcp", True,
     "8400 0000 0000 0002 0000"
     "c00c 001c 0001 00000000 0010 20010db8000000000000000000000007"
     "045f746370 00 0021 0001 00000000 0007 0000 0000 0035 00"),
])
def test_template_golden(addr, proto, root, golden):
    """Byte for byte the template fastdns answered with before whoami became a module."""
    assert whoami_template(addr, proto, root) == bytes.fromhex(golden.replace(" ", ""))
