"""Wire core speed: the Cython batch path, the Python twin, and dnspython as the yardstick.

Run: python3 -m pytest bench/test_bench_wire.py --benchmark-enable -q

Issue 2 promises the Cython batch path at <= 300 ns per typical A query
(parse + key + lookup + assemble) and >= 30x dnspython's
``from_wire -> make_response -> to_wire`` measured in the same run. The
batch benchmark's per-query figure is its median / BATCH, which
``extra_info["ns_per_query"]`` records.
"""

from array import array

import dns.message
import pytest

from fastdns import wire as py_wire
from tests.wire_cases import cluster_image, opt, query, wire_name

BATCH = 64
IMAGE = cluster_image(extra_names=2000)  # a cluster of ~2000 services
NAMES = [f"svc{i * 31 % 2000}.ns{i * 31 % 2000 % 50}.svc.cluster.local" for i in range(BATCH)]
# what `dig` or a resolver with EDNS sends: RD, one question, an OPT for 1232 octets
QUERIES = [query(wire_name(n), 1, qid=i + 1, edns=opt(1232)) for i, n in enumerate(NAMES)]


def _c_wire():
    try:
        from fastdns import _wire
    except ImportError:  # pragma: no cover - a pure-Python run
        pytest.skip("the Cython core is not built")
    return _wire


def test_bench_c_answer_batch(benchmark):
    wire = _c_wire()
    inbuf = bytearray(BATCH * wire.SLOT)
    inlens = array("H", [0] * BATCH)
    for i, q in enumerate(QUERIES):
        inbuf[i * wire.SLOT : i * wire.SLOT + len(q)] = q
        inlens[i] = len(q)
    outbuf = bytearray(BATCH * wire.SLOT)
    outlens = array("H", [0] * BATCH)
    benchmark.group = "wire: one A query"
    slow = benchmark(wire.answer_batch, IMAGE, inbuf, inlens, outbuf, outlens, 0)
    assert slow == 0
    for i, q in enumerate(QUERIES):  # the batch answered every query, byte-exactly
        got = bytes(outbuf[i * wire.SLOT : i * wire.SLOT + outlens[i]])
        assert got == py_wire.answer(IMAGE, q, i)[1]
    if benchmark.stats:
        benchmark.extra_info["ns_per_query"] = benchmark.stats.stats.median / BATCH * 1e9


def test_bench_c_answer_single(benchmark):
    wire = _c_wire()
    benchmark.group = "wire: one A query"
    status, resp, _ = benchmark(wire.answer, IMAGE, QUERIES[0], 0)
    assert status == wire.ST_ANSWER and resp


def test_bench_py_answer(benchmark):
    benchmark.group = "wire: one A query"
    status, resp, _ = benchmark(py_wire.answer, IMAGE, QUERIES[0], 0)
    assert status == py_wire.ST_ANSWER and resp


def test_bench_dnspython_reference(benchmark):
    def reference(data):
        m = dns.message.from_wire(data)
        return dns.message.make_response(m).to_wire()

    benchmark.group = "wire: one A query"
    assert benchmark(reference, QUERIES[0])
