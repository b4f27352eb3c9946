"""Units behind log, errors, hosts, loop and reload (no processes); whoami's are in
tests/plugins/test_whoami.py."""

from __future__ import annotations

import logging

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from fastdns import names
from fastdns.codec import wire
from fastdns.control import loopdetect, reload
from fastdns.corefile.config import parse_corefile
from fastdns.corefile.model import COMMON_LOG_FORMAT
from fastdns.ipc import image as img
from fastdns.server import querylog as ql
from fastdns.server.worker_plugins import ErrorLog, WorkerPlugins
from fastdns.zone import hosts

# -- log -------------------------------------------------------------------------


def _msgs(name="svc.ns.svc.cluster.local.", rcode=dns.rcode.NXDOMAIN, answer=False,
          soa=False, **kw):
    q = dns.message.make_query(name, "AAAA", **kw)
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    if answer:
        r.answer.append(dns.rrset.from_text(name, 5, "IN", "AAAA", "2001:db8::1"))
    if soa:
        r.authority.append(dns.rrset.from_text(
            "cluster.local.", 5, "IN", "SOA", "ns.dns.cluster.local. h.cluster.local. 1 2 3 4 5"))
    return q, r


@pytest.mark.parametrize(("rcode", "answer", "soa", "want"), [
    (dns.rcode.NOERROR, True, False, ql.LOG_SUCCESS),
    (dns.rcode.NOERROR, False, True, ql.LOG_DENIAL),  # NODATA
    (dns.rcode.NOERROR, False, False, ql.LOG_SUCCESS),  # typify: NoError
    (dns.rcode.NXDOMAIN, False, True, ql.LOG_DENIAL),
    (dns.rcode.SERVFAIL, False, False, ql.LOG_ERROR),
    (dns.rcode.REFUSED, False, False, ql.LOG_ERROR),
    (dns.rcode.BADVERS, False, False, ql.LOG_ERROR),
])
def test_classify_is_coredns_typify(rcode, answer, soa, want):
    _q, r = _msgs(rcode=rcode, answer=answer, soa=soa, use_edns=0)
    assert ql.classify(r.to_wire()) == want


def test_common_format_fast_path_equals_general_renderer():
    for kw in ({}, {"use_edns": 0, "payload": 1232, "want_dnssec": True}):
        q, r = _msgs(name="Web-1.x_y.Example.", rcode=dns.rcode.NXDOMAIN, **kw)
        qq = wire.parse_query(q.to_wire())
        name = names.to_text(qq.qname)
        fast = ql.QueryLog.render(ql.Format(COMMON_LOG_FORMAT), qq, name, ("::1", 5353),
                                  r.to_wire(), "udp", 40, 0.00025)
        general = ql.Format(COMMON_LOG_FORMAT + " ")  # not the common one: the general path
        assert not general.common
        slow = ql.QueryLog.render(general, qq, name, ("::1", 5353), r.to_wire(), "udp", 40,
                                  0.00025)
        assert slow == fast + " "
        do = "true" if kw else "false"
        size = "1232" if kw else "512"
        assert fast == (f'[::1]:5353 - {q.id} "AAAA IN Web-1.x_y.Example. udp 40 {do} {size}" '
                        f"NXDOMAIN qr,rd 40 0.00025s".replace(" 40 0.", f" {len(r.to_wire())} 0."))


def test_name_escaping_and_unknown_placeholder():
    assert names.to_text(b"\x03a.b\x01\x80\x00") == "a\\.b.\\128."
    assert names.to_text(b"\x00") == "."
    f = ql.Format("{name} {nope} {{x}}")
    assert f.keys == ["name"]
    assert f.template.format("n.") == "n. {nope} {{x}}"


def test_rule_choice_first_matching_scope_then_classes():
    cfg = parse_corefile(".:53 {\n kubernetes cluster.local\n log example.org. {\n"
                         " class error\n }\n log . {\n class denial\n }\n}\n", "C")
    out: list[str] = []
    log = ql.QueryLog(cfg, write=out.append)
    qx, rx = _msgs(name="a.example.org.", rcode=dns.rcode.NXDOMAIN)
    # example.org. is the first rule covering the name, and it wants errors only
    assert log.line(qx.to_wire(), ("1.2.3.4", 1), rx.to_wire(), "udp", 53, 0.001) is None
    qy, ry = _msgs(name="a.other.", rcode=dns.rcode.NXDOMAIN)
    line = log.line(qy.to_wire(), ("1.2.3.4", 1), ry.to_wire(), "tcp", 53, 0.001)
    assert line.startswith("[INFO] 1.2.3.4:1 - ") and " tcp " in line and "NXDOMAIN" in line


# -- errors -------------------------------------------------------------------------


def test_errors_consolidate(caplog):
    cfg = parse_corefile('.:53 {\n kubernetes cluster.local\n errors {\n'
                         '  consolidate 5m ".* i/o timeout$" warning\n }\n}\n', "C")
    elog = ErrorLog(cfg.servers[0].plugins["errors"])
    with caplog.at_level(logging.INFO, logger="plugin/errors"):
        for _ in range(3):
            elog.report(2, "a.example.", "A", "read udp 1.2.3.4:5->5.6.7.8:53: i/o timeout")
        elog.report(2, "b.example.", "AAAA", "plugin/forward: no upstream answered")
        assert [r.getMessage() for r in caplog.records] == [
            "2 b.example. AAAA: plugin/forward: no upstream answered"]
        elog.flush(now=elog.since[0] + 299)
        assert len(caplog.records) == 1
        # just past the period: (since + 300) - since can round below 300 for a
        # large monotonic clock value, which made this test flaky
        elog.flush(now=elog.since[0] + 300.001)
    assert caplog.records[-1].getMessage() == \
        "3 errors like '.* i/o timeout$' occurred in last 5m0s"
    assert caplog.records[-1].levelno == logging.WARNING


def test_errors_hook_reports_servfail_of_its_block(caplog):
    cfg = parse_corefile(".:53 {\n errors\n kubernetes cluster.local\n}\n"
                         "example.org:53 {\n kubernetes cluster.local\n}\n", "C")
    plugins = WorkerPlugins(cfg)
    q, r = _msgs(name="x.cluster.local.", rcode=dns.rcode.SERVFAIL)
    q2, r2 = _msgs(name="x.example.org.", rcode=dns.rcode.SERVFAIL)
    with caplog.at_level(logging.INFO, logger="plugin/errors"):
        plugins.answered(q.to_wire(), r.to_wire(), 53)
        plugins.answered(q2.to_wire(), r2.to_wire(), 53)  # a block without errors
        plugins.answered(q.to_wire(), _msgs()[1].to_wire(), 53)  # not a SERVFAIL
    assert [m.getMessage() for m in caplog.records] == [
        "2 x.cluster.local. AAAA: plugin/kubernetes: SERVFAIL"]


# -- hosts ---------------------------------------------------------------------------


def test_hosts_table_keeps_names_in_zones_only():
    t = hosts.parse_hosts_text("10.0.0.1 a.example.org A.EXAMPLE.org b.other # c.example.org\n"
                               "::1 a.example.org\nbogus x.example.org\n", ["example.org."])
    assert t.names == {"a.example.org.": ["10.0.0.1", "::1"]}
    assert t.addrs == {"10.0.0.1": ["a.example.org."], "::1": ["a.example.org."]}


def test_hosts_image_answers(tmp_path):
    f = tmp_path / "hosts"
    f.write_text("192.0.2.1 h.example.org\n192.0.2.2 h.example.org\n")
    cfg = parse_corefile(f".:53 {{\n hosts {f} example.org {{\n  ttl 9\n  no_reverse\n }}\n"
                         " loadbalance\n}\n", "C")
    from fastdns.zone.compiler import Compiler
    from fastdns.zone.state import ClusterState

    comp = Compiler(None, (), [hosts.HostsContributor.for_config(cfg)])
    image = comp.full(ClusterState())
    firsts = set()
    for i in range(4):
        q = dns.message.make_query("h.example.org.", "A")
        st, resp, _z = wire.answer(image, q.to_wire(), i)
        r = dns.message.from_wire(resp)
        assert {rr.address for rr in r.answer[0]} == {"192.0.2.1", "192.0.2.2"}
        assert r.answer[0].ttl == 9
        firsts.add(r.answer[0][0].address)
    assert len(firsts) == 2  # loadbalance: precompiled rotations
    miss = dns.message.make_query("nope.example.org.", "A").to_wire()
    assert dns.message.from_wire(wire.answer(image, miss)[1]).rcode() == dns.rcode.SERVFAIL
    ptr = dns.message.make_query("1.2.0.192.in-addr.arpa.", "PTR").to_wire()
    assert wire.answer(image, ptr)[0] == wire.ST_SLOW  # no_reverse
    name, _fl, _neg, ttl, _blk, kind = img.zone_entry(image, 0)
    assert kind == img.ZK_HOSTS and ttl == 9
    # the file changes: refresh notices, and the next image serves it
    f.write_text("192.0.2.3 h.example.org\n")
    assert comp.refresh() and not comp.refresh()
    q = dns.message.make_query("h.example.org.", "A").to_wire()
    r = dns.message.from_wire(wire.answer(comp.assemble(), q)[1])
    assert [rr.address for rr in r.answer[0]] == ["192.0.2.3"]


# -- loop -----------------------------------------------------------------------------


def test_loop_probe_names_follow_coredns():
    cfg = parse_corefile(".:1053 {\n forward . 127.0.0.1:53\n loop\n}\n"
                         "example.org:1054 {\n bind 127.0.0.2\n forward . 127.0.0.1\n loop\n}\n",
                         "C")
    probes = loopdetect.plan_probes(cfg)
    assert [p.zone for p in probes] == [".", "example.org."]
    assert [p.listen for p in probes] == [":1053", "127.0.0.2:1054"]
    assert probes[0].target == ("127.0.0.1", 1053)
    a, b, *rest = probes[1].qname.split(".")
    assert a.isdigit() and b.isdigit() and rest == ["example", "org", ""]


# -- reload ---------------------------------------------------------------------------


def test_reloader_counts_a_broken_file_once(tmp_path):
    f = tmp_path / "Corefile"
    good = ".:53 {\n kubernetes cluster.local\n reload 2s 1s\n}\n"
    f.write_text(good)
    now = [0.0]
    applied, failed = [], []

    def validate(text):
        cfg = parse_corefile(text, str(f))
        return cfg, text

    r = reload.Reloader(str(f), good, parse_corefile(good, str(f)), validate,
                        lambda text, plan: applied.append(plan), lambda: failed.append(1),
                        clock=lambda: now[0])
    assert 1.0 <= r.next_at <= 3.0
    assert not r.check() and not applied  # unchanged
    f.write_text(good.replace("kubernetes", "kubernetez"))
    assert not r.check() and not r.check()
    assert len(failed) == 1 and not applied
    f.write_text(good.replace("2s 1s", "4s 1s"))
    assert r.check() and len(applied) == 1
    assert 3.0 <= r.next_at - now[0] <= 5.0
