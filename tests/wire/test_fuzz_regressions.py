"""What the atheris fuzzers (fuzz/) found, replayed without atheris.

Each finding is its input, minimised where that kept the cause, and the
answer or typed error the code must give. A finding not fixed yet is
``xfail(strict=True)`` with its cause: once fixed the test passes, fails
as XPASS, and its mark and its entry in fuzz/known.py go together. The
committed seed corpus is replayed through every target's own property too,
so a change that breaks a target (or the code under it) shows up here.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from fastdns import errors
from fastdns.corefile.config import parse_corefile
from fastdns.corefile.errors import CorefileError
from fastdns.forward import message
from fastdns.forward.cache import ResponseCache
from fastdns.zone.objects import StateError
from fuzz import TARGETS, corefile, query, response, statefile
from fuzz.known import KNOWN
from tests.helpers import ROOT, run_serve

MODULES = {"query": query, "response": response, "corefile": corefile, "statefile": statefile}


@pytest.fixture(scope="module")
def targets():
    for m in MODULES.values():
        m.setup()
    yield MODULES
    for m in MODULES.values():
        getattr(m, "teardown", lambda: None)()


@pytest.mark.parametrize("name", TARGETS)
def test_seed_corpus_holds(targets, name):
    """Every committed seed satisfies its target's property (no known bug among them)."""
    seeds = sorted((ROOT / "fuzz" / "corpus" / name).iterdir())
    assert 10 <= len(seeds) <= 60
    assert sum(f.stat().st_size for f in seeds) < 256 * 1024
    for f in seeds:
        targets[name].check(f.read_bytes())


def test_every_known_bug_has_its_test():
    here = Path(__file__).read_text()
    for name, cause in KNOWN.items():
        test = cause.rsplit("(", 1)[1].rstrip(")")
        assert f"def {test}(" in here, f"{name}: no {test} in {__file__}"


# -- response: what an upstream may send the forwarder --------------------------


def _client_query(resp) -> bytes:
    """The query a client sent for ``resp``'s question (RD, no EDNS)."""
    return (struct.pack(">HHHHHH", resp.id, 0x0100, 1, 0, 0, 0) + resp.qname
            + struct.pack(">HH", resp.qtype, resp.qclass))


def _is_answer_to(out: bytes, query: bytes, q, wire) -> None:
    assert out[:2] == query[:2] and out[2] & 0x80
    assert out[12:q.question_end] == query[12:q.question_end]
    r = wire.parse_response(out)
    assert (r.key, r.qtype, r.qclass) == (q.key, q.qtype, q.qclass)


def _forwarded(wire, data: bytes) -> None:
    """``data`` from an upstream is refused as malformed, or every way the
    forwarder and the cache pass it on gives the client a well-formed answer."""
    try:
        resp = wire.parse_response(data)
    except errors.FormError:
        return
    query = _client_query(resp)
    q = wire.parse_query(query)
    assert message.matches(resp, resp.id, q)
    _is_answer_to(message.adapt(data, query, q), query, q, wire)
    _is_answer_to(message.fit(message.reopt(data, query, q), query, q, False), query, q, wire)
    from fastdns.corefile.model import CacheConfig

    cache = ResponseCache(CacheConfig(zones=(".",)), clock=lambda: 100.0)
    if cache.put(data, q, 100.0, resp):
        for later in (100.0, 101.5):  # fresh, then with the TTLs aged
            _is_answer_to(cache.get(query, q, later), query, q, wire)


@pytest.mark.xfail(strict=True, raises=(errors.WireError, AssertionError),
                   reason=KNOWN["response-question-pointer"])
@pytest.mark.parametrize("hexdata", [
    # ". NS" answered with its question written as a pointer to offset 4 (QDCOUNT's
    # 0x00 octet: the root name), found first by reading parse_response
    "7a13 8100 0001 0000 0000 0000  c004 0002 0001",
    # the fuzzer's: "\x03O\x00\x01" then a pointer into the header
    "1d82 8100 0001 0001 0000 0001 034f 0001 c000 0000 01c0 0000 2920 0000 0000 0000"
    "04c1 0002 0100 0029 2000 0008 0000 0000",
], ids=["root-via-qdcount", "fuzzer"])
def test_response_question_pointer(wire, hexdata):
    _forwarded(wire, bytes.fromhex(hexdata))


@pytest.mark.xfail(strict=True, raises=(errors.WireError, AssertionError),
                   reason=KNOWN["response-name-in-rewritten-octets"])
@pytest.mark.parametrize("hexdata", [
    # an A answer whose owner is a pointer to offset 0: its labels are the
    # header (ID, flags) and run on; the client's flags change the name
    "1d82 8100 0001 0001 0000 0001 034f 5247 0000 0100 01c0 0000 2920 0000 0000 0000"
    "04c1 0002 0100 0029 2000 0000 0000 0000",
    # an SRV answer whose second target label runs over the next RR's TTL,
    # and an owner pointing at that target: aging the TTL rewrites the name
    "368d 8580 0001 0002 0000 0002 0377 6562 0473 686f 7003 7376 6307 636c 7573 7465"
    "7205 6c6f 6361 6c00 0021 0001 c00c 0021 0001 0000 001e 0028 0000 0032 1fd8 0577"
    "6562 2d30 0377 6562 0473 686f 7003 7376 6307 636c 7573 7465 7205 6c6f 6361 6c00"
    "c00c 0021 0001 0000 001e 0028 0000 0032 1f90 0577 6562 2d31 0377 6562 0473 686f"
    "7003 7376 6327 636c 7573 7465 7205 6c6f 6361 6c00 c03e 0001 0001 0000 001e 0004"
    "0af4 0214 c072 0001 0001 0000 1e00 0004 0af4 0215",
], ids=["owner-in-header", "owner-through-ttl"])
def test_response_name_through_ttl_octets(wire, hexdata):
    _forwarded(wire, bytes.fromhex(hexdata))


# -- corefile -----------------------------------------------------------------------

NUL_IMPORT = ".:53 {\n    whoami\n}\nimport /etc/core\0dns/*.server\n"


def test_corefile_import_with_a_nul_byte():
    with pytest.raises(CorefileError) as e:
        parse_corefile(NUL_IMPORT, "Corefile")
    assert e.value.line == 4


@pytest.mark.slow
def test_corefile_import_with_a_nul_byte_is_one_line_from_serve(tmp_path):
    (tmp_path / "Corefile").write_text(NUL_IMPORT)
    got = run_serve(["--corefile", str(tmp_path / "Corefile"), "--demo"])
    assert got.returncode == 1 and "Traceback" not in got.stderr, got.stderr
    check = subprocess.run([sys.executable, "-m", "fastdns", "check-corefile",
                            str(tmp_path / "Corefile")], capture_output=True, text=True,
                           cwd=ROOT, timeout=30)
    assert check.returncode == 2 and "Traceback" not in check.stderr, check.stderr


# -- state files ------------------------------------------------------------------


def _state(tmp_path, slice_extra: str = "", service: str = "db", namespace: str = "default",
           port: int = 5432, hostname: str = "db-0") -> Path:
    p = tmp_path / "state.yaml"
    p.write_text(f"""\
apiVersion: v1
kind: List
items:
- {{kind: Namespace, metadata: {{name: "{namespace}"}}}}
- kind: Service
  metadata: {{name: "{service}", namespace: "{namespace}"}}
  spec: {{clusterIP: None, ports: [{{name: pg, port: {port}}}]}}
- kind: EndpointSlice
  metadata:
    name: db-abc
    namespace: "{namespace}"
    labels: {{kubernetes.io/service-name: "{service}"}}
  addressType: IPv4
  endpoints:
  - {{addresses: [10.244.0.5], hostname: {hostname}}}
  ports: [{{name: pg, port: {port}}}]
{slice_extra}""")
    return p


def _refused_or_served(targets, path: Path) -> None:
    """A state file the API server could never have produced: StateError at load
    (naming the object), or compiled into an image every client can read."""
    from fastdns.zone.state import load_state_checked

    try:
        load_state_checked(path)
    except StateError as e:
        assert str(path) in str(e)
        return
    statefile.served(load_state_checked(path)[0])


@pytest.mark.parametrize("edit", ["label", "hostname"])
def test_state_field_of_the_wrong_type(targets, tmp_path, edit):
    # the fuzzer's: the demo cluster with `kubernetes.io/service-name: true`
    path = _state(tmp_path, hostname="5") if edit == "hostname" else _state(tmp_path)
    if edit == "label":
        path.write_text(path.read_text().replace('service-name: "db"', "service-name: true"))
    _refused_or_served(targets, path)


def test_state_port_out_of_range(targets, tmp_path):
    _refused_or_served(targets, _state(tmp_path, port=99999999))


@pytest.mark.parametrize("kw", [{"hostname": "x" * 70}, {"service": "s" * 64},
                                {"namespace": "n" * 64}, {"service": ""}],
                         ids=["hostname-70", "service-64", "namespace-64", "service-empty"])
def test_state_hostname_longer_than_a_label(targets, tmp_path, kw):
    path = _state(tmp_path, **kw)
    if kw.get("service") == "":  # a ClusterIP, so that its PTR names the Service
        path.write_text(path.read_text().replace("clusterIP: None", "clusterIP: 10.96.5.5"))
    _refused_or_served(targets, path)
