"""The peer benchmark's own parts: zone rendering, query mix, the C floor, the report.

A benchmark that renders the peers' zones wrongly, or a floor that answers
wrongly, would report numbers for different work; these tests pin what
bench/peers.py relies on. The floor test compiles floor.c and queries it
over a real socket with dnspython.
"""

import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.zone
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import peers  # noqa: E402
import querymix as qm  # noqa: E402

from fastdns.zone.objects import strip  # noqa: E402


def _svc(ns, name, ips, ports, headless=False, ext=None):
    spec = {"type": "ExternalName" if ext else "ClusterIP", "ports": ports}
    if ext:
        spec["externalName"] = ext
    elif headless:
        spec["clusterIP"] = "None"
    else:
        spec["clusterIPs"] = ips
    return strip("Service", {"metadata": {"namespace": ns, "name": name}, "spec": spec})


def _slice(ns, svc, atype, eps, ports):
    return strip("EndpointSlice", {
        "metadata": {"namespace": ns, "name": f"{svc}-{atype}",
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": atype, "ports": ports,
        "endpoints": [{"addresses": [a], "conditions": {"ready": r},
                       **({"hostname": h} if h else {})} for a, r, h in eps]})


HTTP = {"name": "http", "protocol": "TCP", "port": 80}
DNS = {"name": "dns", "protocol": "UDP", "port": 53}
UNNAMED = {"protocol": "TCP", "port": 8080}


@pytest.fixture(scope="module")
def records():
    objs = [
        strip("Namespace", {"metadata": {"name": "app"}}),
        _svc("app", "web", ["10.96.0.5", "fd00:10:96::0:5"], [HTTP, DNS]),
        _slice("app", "web", "IPv4", [("10.244.0.1", True, None)], [HTTP]),
        _svc("app", "db", [], [HTTP, UNNAMED], headless=True),
        _slice("app", "db", "IPv4", [("10.244.1.1", True, "db-0"), ("10.244.1.2", True, None),
                                     ("10.244.1.3", False, None)], [HTTP, UNNAMED]),
        _svc("app", "ext", [], [], ext="example.com"),
        _svc("app", "lonely", ["10.96.0.9"], [UNNAMED]),
    ]
    return qm.build_records(objs)


def test_cluster_ip_service_records(records):
    rr = records.rrsets
    web = "web.app.svc.cluster.local."
    assert rr[(web, "A")] == ["10.96.0.5"]
    assert rr[(web, "AAAA")] == ["fd00:10:96::5"]  # RFC 5952 form of "fd00:10:96::0:5"
    # dual stack: two candidates per port, deduplicated to one record (weight 100 // 2)
    assert rr[("_http._tcp." + web, "SRV")] == [f"0 50 80 {web}"]
    assert rr[("_dns._udp." + web, "SRV")] == [f"0 50 53 {web}"]
    assert sorted(rr[(web, "SRV")]) == [f"0 25 53 {web}", f"0 25 80 {web}"]
    # endpoint names exist for ClusterIP services too (CoreDNS findServices)
    assert rr[("10-244-0-1." + web, "A")] == ["10.244.0.1"]
    assert records.ptr["5.0.96.10.in-addr.arpa."] == [web]
    # an unnamed port gives no _port._proto name, but still a bare SRV
    lonely = "lonely.app.svc.cluster.local."
    assert not [k for k in rr if k[0].startswith("_") and k[0].endswith(lonely)]
    assert rr[(lonely, "SRV")] == [f"0 100 8080 {lonely}"]


def test_headless_service_records(records):
    rr = records.rrsets
    db = "db.app.svc.cluster.local."
    assert sorted(rr[(db, "A")]) == ["10.244.1.1", "10.244.1.2"]  # the unready one is not served
    assert rr[("db-0." + db, "A")] == ["10.244.1.1"]  # hostname wins over the address
    assert ("10-244-1-3." + db, "A") not in rr
    assert sorted(rr[("_http._tcp." + db, "SRV")]) == [
        f"0 50 80 10-244-1-2.{db}", f"0 50 80 db-0.{db}"]
    assert records.ptr["1.1.244.10.in-addr.arpa."] == ["db-0." + db]
    assert rr[("ext.app.svc.cluster.local.", "CNAME")] == ["example.com."]


def test_zone_files_parse(records, tmp_path):
    paths = qm.write_zones(records, tmp_path)
    zone = dns.zone.from_file(str(paths[qm.ZONE]), origin=qm.ZONE, relativize=False)
    web = zone.find_rdataset("web.app.svc.cluster.local.", "AAAA")
    assert [r.to_text() for r in web] == ["fd00:10:96::5"]
    assert zone.get_soa().minimum == qm.TTL
    rev = dns.zone.from_file(str(paths["in-addr.arpa"]), origin="in-addr.arpa",
                             relativize=False)
    assert rev.find_rdataset("5.0.96.10.in-addr.arpa.", "PTR")


def test_query_mix_proportions_and_names(records):
    mix = qm.build_mix(records, 1000, seed=3)
    kinds = Counter(q.kind for q in mix)
    assert kinds == {"A": 700, "SRV": 100, "AAAA-NODATA": 100, "NXDOMAIN": 100}
    existing = {owner for owner, _ in records.rrsets}
    for q in mix:
        if q.kind == "NXDOMAIN":
            assert q.name.endswith(".cluster.local.")
            assert q.name not in existing
            assert not any(o.endswith("." + q.name) for o in existing)
        elif q.kind == "AAAA-NODATA":
            assert (q.name, "A") in records.rrsets and (q.name, "AAAA") not in records.rrsets
        else:
            assert (q.name, q.qtype) in records.rrsets
    assert qm.build_mix(records, 1000, seed=3) == mix  # deterministic


def test_results_section_replaced_and_others_kept(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# results\n\n## Wire\n\nwire table\n")
    peers.write_results(path, "table one\n", "cmd")
    peers.write_results(path, "table two\n", "cmd")
    text = path.read_text()
    assert "## Wire\n\nwire table" in text
    assert text.count(peers.SECTION) == 1
    assert "table two" in text and "table one" not in text


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("gcc"), reason="no gcc")
def test_floor_answers_from_its_table(tmp_path):
    binary = tmp_path / "floor"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(binary),
                    str(BENCH / "floor" / "floor.c")], check=True)
    # a reference answer for one name, as peers.write_floor stores it
    q = dns.message.make_query("web.app.svc.cluster.local.", "A")
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(q.question[0].name, 5, "IN", "A", "10.96.0.5"))
    uniq = [("web.app.svc.cluster.local.", "A", "A")]
    peers.write_floor(uniq, {0: r.to_wire()}, tmp_path / "answers.bin")
    port = peers.free_port()
    proc = subprocess.Popen([str(binary), str(port), str(tmp_path / "answers.bin")],
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                got = dns.query.udp(dns.message.make_query("WEB.app.svc.cluster.local.", "A"),
                                    "127.0.0.1", port=port, timeout=0.5)
                break
            except dns.exception.Timeout:
                assert time.monotonic() < deadline
        assert [rd.to_text() for rs in got.answer for rd in rs] == ["10.96.0.5"]
        miss = dns.query.udp(dns.message.make_query("other.app.svc.cluster.local.", "A"),
                             "127.0.0.1", port=port, timeout=1)
        assert miss.rcode() == dns.rcode.REFUSED
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # garbage is dropped
            for junk in (b"", b"\x00" * 5, b"\xff" * 40, q.to_wire()[:20]):
                s.sendto(junk, ("127.0.0.1", port))
        again = dns.query.udp(q, "127.0.0.1", port=port, timeout=1)
        assert again.id == q.id and again.answer
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def _answer(name, rcode=0, addrs=(), serial=1, glue=()):
    q = dns.message.make_query(name, "A")
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    r.flags |= dns.flags.AA
    if addrs:
        r.answer.append(dns.rrset.from_text(name, 5, "IN", "A", *addrs))
    else:
        r.authority.append(dns.rrset.from_text(
            "cluster.local.", 5, "IN", "SOA",
            f"ns.dns.cluster.local. hostmaster.cluster.local. {serial} 7200 1800 86400 5"))
    if glue:
        r.additional.append(dns.rrset.from_text("ns.dns.cluster.local.", 5, "IN", "A", *glue))
    return r.to_wire()


def test_answer_comparison_ignores_order_case_and_serial_only():
    uniq = [("a.ns.svc.cluster.local.", "A", "A"), ("b.ns.svc.cluster.local.", "A", "NXDOMAIN"),
            ("c.ns.svc.cluster.local.", "A", "A"), ("d.ns.svc.cluster.local.", "A", "A")]
    ref = {0: _answer("a.ns.svc.cluster.local.", addrs=("10.0.0.1", "10.0.0.2")),
           1: _answer("b.ns.svc.cluster.local.", rcode=3, serial=1),
           2: _answer("c.ns.svc.cluster.local.", addrs=("10.0.0.3",)),
           3: _answer("d.ns.svc.cluster.local.", addrs=("10.0.0.4",))}
    got = {0: _answer("A.ns.svc.cluster.local.", addrs=("10.0.0.2", "10.0.0.1")),
           1: _answer("b.ns.svc.cluster.local.", rcode=3, serial=99),
           2: _answer("c.ns.svc.cluster.local.", addrs=("10.0.0.3",), glue=("10.96.0.10",))}
    differ, extra, examples = peers.compare_all(uniq, ref, got)
    assert (differ, extra) == (1, 1)  # d: no answer; c: only the additional section differs
    assert "d.ns.svc.cluster.local." in examples[0]
    got[1] = _answer("b.ns.svc.cluster.local.", rcode=0, serial=1)  # NODATA for NXDOMAIN
    got[3] = _answer("d.ns.svc.cluster.local.", addrs=("10.0.0.5",))
    assert peers.compare_all(uniq, ref, got)[0] == 2
