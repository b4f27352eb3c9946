"""Cache hits beside cluster names, in the same run, on one fastdns worker.

    python3 bench/bench_cache.py             # ~1.5 minutes, writes bench/RESULTS.md
    python3 bench/bench_cache.py --seconds 3 --rounds 1 --no-write

Why it is built this way (issue 7, item 5):
- One `fastdns serve` (one worker, pinned to CPU 1 as bench/peers.py pins
  it; dnsperf on CPU 0) serves the demo cluster and forwards everything
  else to a loopback test upstream with `cache 30`. Cluster-name rounds and
  cache-hit rounds alternate, so both see the same machine state; the table
  gives medians.
- Cache-hit rounds ask names the upstream knows, warmed right before each
  round (the entries live 30 s); the C table's hit counter (shm word
  W_CC_HITS_SUCCESS) must account for every answer, or the round is flagged:
  a hit served by Python would not measure the fast path.
- The miss round asks names nobody asked before (each one a miss that goes
  upstream); its QPS is bounded by the Python test upstream, which shares
  the client's core, so it measures the slow path's plumbing, not a resolver.
- CPU per answered query is the server process tree's (utime + stime from
  /proc), as in bench/peers.py; knot/nsd/unbound play no part here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402
from peers import CLIENT_CPU, SERVER_CPU, Started, dnsperf, free_port  # noqa: E402

from fastdns.ipc import readout, shm  # noqa: E402
from fastdns.testing.upstream import TestUpstream  # noqa: E402

SECTION = "## Cache benchmark (bench/bench_cache.py)"
DEMO = ROOT / "fastdns" / "demo" / "cluster.yaml"
CLUSTER_NAMES = [
    "kubernetes.default.svc.cluster.local", "nginx.default.svc.cluster.local",
    "nginx1.default.svc.cluster.local", "kube-dns.kube-system.svc.cluster.local",
]
OUTSIDE = [f"www{i}.example.test" for i in range(len(CLUSTER_NAMES))]


class Upstream:
    """The test upstream on its own event loop thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        # one A record each, like the cluster names: answers of the same shape
        records = {f"{n}.": [("A", f"192.0.2.{i + 1}")] for i, n in enumerate(OUTSIDE)}
        self.up = TestUpstream(records, zone="example.test.")
        asyncio.run_coroutine_threadsafe(self.up.start(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.up.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def ask(port: int, name: str) -> dns.message.Message:
    q = dns.message.make_query(name, "A")
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=2.0)


def c_hits(instance: str) -> int:
    with shm.ControlSegment.attach(instance) as ctl:
        c = readout.read_counters(ctl.counters(0))
    return c["cache"]["c_hits"]["success"] + c["cache"]["c_hits"]["denial"]


def instance_of(log: Path) -> str:
    m = re.search(r"shm instance (\w+)", log.read_text(errors="replace"))
    if not m:
        raise RuntimeError(f"no shm instance in the server log:\n{log.read_text()[-2000:]}")
    return m.group(1)


def wait_answering(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if ask(port, CLUSTER_NAMES[0] + ".").rcode() == dns.rcode.NOERROR:
                return
        time.sleep(0.1)
    raise RuntimeError("fastdns did not answer")


def run(args: argparse.Namespace) -> str:
    work = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    up = Upstream()
    port = free_port()
    (work / "Corefile").write_text(f"""\
.:{port} {{
    bind 127.0.0.1
    kubernetes cluster.local in-addr.arpa ip6.arpa
    forward . {up.up.addr}
    cache 30
}}
""")
    files = {
        "cluster": "".join(f"{n} A\n" for n in CLUSTER_NAMES),
        "cache": "".join(f"{n} A\n" for n in OUTSIDE),
        "miss": "".join(f"m{i}.example.test A\n" for i in range(args.miss_names)),
    }
    for k, text in files.items():
        (work / f"{k}.txt").write_text(text)
    srv = Started([sys.executable, "-m", "fastdns", "serve", "--state", str(DEMO),
                   "--corefile", str(work / "Corefile"), "--workers", "1"], work, SERVER_CPU)
    rows: dict[str, list] = {"cluster": [], "cache": []}
    flags: list[str] = []
    try:
        wait_answering(port)
        inst = instance_of(work / "server.log")
        for _ in range(args.rounds):
            rows["cluster"].append(dnsperf(port, work / "cluster.txt", args.seconds, srv.pid, []))
            for n in OUTSIDE:  # warm (the entries live 30 s, a round is shorter)
                ask(port, n + ".")
            h0 = c_hits(inst)
            r = dnsperf(port, work / "cache.txt", args.seconds, srv.pid, [])
            hits = c_hits(inst) - h0
            if hits < r.completed:
                flags.append(f"cache round: {r.completed - hits} of {r.completed} answers "
                             "not from the C table")
            rows["cache"].append(r)
        miss = dnsperf(port, work / "miss.txt", min(args.seconds, 5.0), srv.pid,
                       ["-q", "200"])
    finally:
        srv.stop()
        up.close()

    def med(key: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in rows[key])

    cq, hq = med("cluster", "qps"), med("cache", "qps")
    lines = [
        f"One worker (CPU {SERVER_CPU}), dnsperf on CPU {CLIENT_CPU}, {args.rounds} alternating "
        f"rounds of {args.seconds:g} s, medians; {len(CLUSTER_NAMES)} names per mix.",
        "",
        "| queries | QPS | server CPU µs/query | server core busy | other load (cores) | lost |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, label in (("cluster", "cluster names (image)"), ("cache", "cache hits (C table)")):
        lines.append(f"| {label} | {med(key, 'qps'):,.0f} | {med(key, 'cpu_us_per_q'):.2f} | "
                     f"{med(key, 'cpu_share'):.0%} | {med(key, 'others'):.2f} | "
                     f"{sum(r.lost for r in rows[key])} |")
    lines.append(f"| misses → loopback upstream (≤ 200 in flight) | {miss.qps:,.0f} | "
                 f"{miss.cpu_us_per_q:.2f} | {miss.cpu_share:.0%} | {miss.others:.2f} | "
                 f"{miss.lost} |")
    # per adjacent pair of rounds, so a burst of other load hits both sides alike
    pairs = [h.qps / c.qps for c, h in zip(rows["cluster"], rows["cache"], strict=True)]
    cpu = med("cache", "cpu_us_per_q") / med("cluster", "cpu_us_per_q")
    cpu_pairs = [h.cpu_us_per_q / c.cpu_us_per_q
                 for c, h in zip(rows["cluster"], rows["cache"], strict=True)]
    lines += ["", f"Cache hits / cluster names, QPS: **{statistics.median(pairs):.2f}×** "
              f"(median of the {len(pairs)} round pairs: "
              f"{', '.join(f'{x:.2f}' for x in pairs)}; ratio of medians {hq / cq:.2f}×; "
              "target ≥ 0.9×). Server CPU per query, cache hit / cluster name: "
              f"**{statistics.median(cpu_pairs):.2f}×** (median of the round pairs: "
              f"{', '.join(f'{x:.2f}' for x in cpu_pairs)}; ratio of medians {cpu:.2f}×; "
              "target ≤ 1.05×)."]
    if flags:
        lines += [""] + [f"- warning: {f}" for f in flags]
    lines += ["", "Other load = CPU used by neither the server nor dnsperf (the test "
              "upstream in the miss row; other jobs on the machine otherwise): QPS is "
              "only comparable within one run.",
              "", "The miss row is bounded by the Python test upstream "
              "(fastdns/testing/upstream.py), which shares the client's core."]
    return "\n".join(lines) + "\n"


def write_results(path: Path, body: str, command: str, heading: str = SECTION) -> None:
    """Replace one benchmark's section (``heading``) in RESULTS.md, keeping the others."""
    text = path.read_text() if path.exists() else "# fastdns benchmark results\n"
    section = f"{heading}\n\nCommand: `{command}`\n\n{body}"
    pat = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pat.search(text):
        text = pat.sub(lambda _: section.rstrip("\n") + "\n\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--miss-names", type=int, default=200000)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    args = p.parse_args()
    body = run(args)
    print(body)
    if not args.no_write:
        cmd = "python3 bench/bench_cache.py " + " ".join(sys.argv[1:])
        write_results(Path(args.results), body, cmd.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
