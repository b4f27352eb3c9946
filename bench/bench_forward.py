"""fastdns's forwarder and cache against dnsdist and unbound, in one run, as ratios.

    python3 bench/bench_forward.py --quick          # ~1.5 minutes, prints the tables
    python3 bench/bench_forward.py                  # ~6 minutes, 3 rounds
    python3 bench/bench_forward.py --write          # also replaces its section of RESULTS.md

Why it is built this way (issue 13, "Benchmarks"):
- knot answers the peer benchmark's names (bench/peers.py's zones and knot
  config) as the backend of every forwarder. The server under test and knot
  share CPU 1; dnsperf runs on CPU 0 (peers.py's convention), so a
  forwarder's cost is its own CPU plus the backend work it causes. CPU per
  answered query is utime + stime of the server's process tree from /proc;
  knot's share is read the same way and reported beside it, and "with knot"
  is the sum (the issue's table).
- Cases: (a) forwarded misses, no cache; (b) cache hits, fastdns with 1 and
  2 workers against dnsdist's packet cache, and misses through both caches
  (stored on arrival: fastdns's C forwarder inserts into the shared table);
  (c) TCP to a TCP upstream, clients on UDP; (d) NodeLocal DNSCache's
  Corefile (force_tcp toward knot) through its cache, hits and misses,
  against dnsdist with a TCP-only backend and a packet cache. Within a
  case the servers run side by side and the rounds interleave (a burst of
  other load hits everybody a little); medians over the rounds are reported, ratios to dnsdist.
- Hit rows are warmed right before each round (one pass over the mix);
  miss rows ask names nobody asked before (a fresh file per round and
  server, NXDOMAIN names knot answers from cluster.local).
- Every load is bounded (dnsperf -l) and so is the whole run (--budget);
  every process is started here and stopped by PID; all traffic is loopback.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import dns.rcode  # noqa: E402
import fwdpeers as fp  # noqa: E402
import querymix as qm  # noqa: E402
from bench_cache import write_results  # noqa: E402
from peers import (  # noqa: E402
    CLIENT_CPU,
    CLK_TCK,
    SERVER_CPU,
    Run,
    Started,
    ask,
    dnsperf,
    free_port,
    machine,
    tree_cpu_ticks,
)

SECTION = "## Forwarding benchmark (bench/bench_forward.py)"
Argv = Callable[[Path, int, int], list[str]]
DD_NOCACHE, DD_CACHE = "dnsdist 1.7, no packet cache", "dnsdist 1.7, packet cache"
DD_TCP, DD_NL = "dnsdist 1.7, `tcpOnly` backend", "dnsdist 1.7, `tcpOnly` + packet cache"


@dataclass
class Row:
    label: str
    server: str  # key into the case's servers
    data: str  # "mix" (warmed when the row is a hit row) or "miss"
    ref: str | None  # the dnsdist row it is compared with; None: it is one
    warm: bool = False
    runs: list[tuple[Run, float]] = field(default_factory=list)  # (dnsperf, knot µs/query)

    def med(self, f: Callable[[Run, float], float]) -> float:
        vals = [f(r, k) for r, k in self.runs]
        return statistics.median(vals) if vals else float("nan")


def cases() -> dict[str, tuple[str, dict[str, Argv], list[Row]]]:
    def nl(d: Path, p: int, b: int) -> list[str]:
        return fp.nodelocal_argv(d, p, b, (free_port(), free_port()))
    return {
        "a": ("Forwarded misses, no cache (UDP to knot)", {
            "dd": fp.dnsdist_argv, "fd": fp.fastdns_argv, "ub": fp.unbound_argv}, [
            Row(DD_NOCACHE, "dd", "mix", None),
            Row("fastdns `forward . knot`", "fd", "mix", DD_NOCACHE),
            Row("unbound 1.17 forwarder (cache-max-ttl 0)", "ub", "mix", DD_NOCACHE)]),
        "b": ("Cache hits (warmed)", {
            "dd": lambda d, p, b: fp.dnsdist_argv(d, p, b, cache=True),
            "f1": lambda d, p, b: fp.fastdns_argv(d, p, b, cache=True),
            "f2": lambda d, p, b: fp.fastdns_argv(d, p, b, cache=True, workers=2)}, [
            Row(DD_CACHE, "dd", "mix", None, warm=True),
            Row("fastdns `cache 30`, 1 worker", "f1", "mix", DD_CACHE, warm=True),
            Row("fastdns `cache 30`, 2 workers", "f2", "mix", DD_CACHE, warm=True),
            Row(DD_CACHE + ", misses", "dd", "miss", None),
            Row("fastdns `cache 30`, 1 worker, misses", "f1", "miss", DD_CACHE + ", misses")]),
        "c": ("TCP to a TCP upstream (clients on UDP, no cache)", {
            "dd": lambda d, p, b: fp.dnsdist_argv(d, p, b, tcp_only=True),
            "fd": lambda d, p, b: fp.fastdns_argv(d, p, b, force_tcp=True)}, [
            Row(DD_TCP, "dd", "mix", None),
            Row("fastdns `forward . knot { force_tcp }`", "fd", "mix", DD_TCP)]),
        "d": ("NodeLocal DNSCache's Corefile (force_tcp to knot) through the cache", {
            "dd": lambda d, p, b: fp.dnsdist_argv(d, p, b, cache=True, tcp_only=True),
            "nl": nl}, [
            Row(DD_NL + ", hits", "dd", "mix", None, warm=True),
            Row("fastdns NodeLocal Corefile, hits", "nl", "mix", DD_NL + ", hits", warm=True),
            Row(DD_NL + ", misses", "dd", "miss", None),
            Row("fastdns NodeLocal Corefile, misses", "nl", "miss", DD_NL + ", misses")]),
    }


def wait_answering(srv: Started, port: int, name: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and srv.alive():
        try:
            r = ask(port, name, "A", timeout=0.5)
            if r.rcode() == dns.rcode.NOERROR and r.answer:
                srv.repin(SERVER_CPU)
                return True
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.1)
    return False


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.deadline = time.monotonic() + args.budget
        self.notes: list[str] = []
        self.miss_files = 0
        # Answers must outlive a round for the hit rows (the plugin's default TTL
        # of 5 s would expire them mid-round); the caches still cap them (30 s).
        qm.TTL = 300
        state = work / "state.json"
        state.write_text(json.dumps(qm.generate_state(args.services, 3, 0.1, 0.2)))
        rec = qm.build_records(qm.load_objects(state))
        self.zones = qm.write_zones(rec, work / "zones")
        self.mix = work / "mix.txt"
        qm.write_dnsperf(qm.build_mix(rec, args.queries), self.mix)
        self.probe = next(s.fqdn for s in rec.services if s.has_a and not s.headless)
        self.knot_port = free_port()
        (work / "knot").mkdir()
        self.knot = Started(fp.knot_backend(work / "knot", self.knot_port, self.zones),
                            work / "knot", SERVER_CPU)
        if not wait_answering(self.knot, self.knot_port, self.probe, 30):
            raise RuntimeError(f"knot did not answer:\n{self.knot.log_tail()}")

    def miss_file(self) -> Path:
        """A file of names nobody asked before: NXDOMAIN under cluster.local, from knot."""
        self.miss_files += 1
        path = self.work / f"miss{self.miss_files}.txt"
        path.write_text("".join(f"r{self.miss_files}-{i}.nx.svc.{qm.ZONE} A\n"
                                for i in range(self.args.miss_names)))
        return path

    def load(self, srv: Started, port: int, data: Path) -> tuple[Run, float]:
        k0 = tree_cpu_ticks(self.knot.pid)
        r = dnsperf(port, data, self.args.seconds, srv.pid,
                    ["-c", str(self.args.clients), "-q", str(self.args.outstanding)])
        knot_us = (tree_cpu_ticks(self.knot.pid) - k0) / CLK_TCK * 1e6 / max(r.completed, 1)
        return r, knot_us

    def run_case(self, key: str) -> str:
        title, argvs, rows = cases()[key]
        started: dict[str, tuple[Started, int]] = {}
        try:
            for name, argv in argvs.items():
                d = self.work / f"{key}-{name}"
                d.mkdir()
                port = free_port()
                srv = Started(argv(d, port, self.knot_port), d, SERVER_CPU)
                started[name] = (srv, port)
            for name, (srv, port) in list(started.items()):
                if not wait_answering(srv, port, self.probe, self.args.start_timeout):
                    self.notes.append(f"({key}) {name} did not answer: {srv.log_tail(3)}")
                    srv.stop()
                    del started[name]
            for rnd in range(self.args.rounds):
                for row in rows:
                    if row.server not in started:
                        continue
                    if time.monotonic() + self.args.seconds + 25 > self.deadline:
                        self.notes.append(f"({key}) {row.label}: round {rnd + 1} skipped "
                                          f"(--budget {self.args.budget:g} s spent)")
                        continue
                    srv, port = started[row.server]
                    if row.warm:  # one pass over the mix, not measured
                        dnsperf(port, self.mix, 20, srv.pid, ["-n", "1", "-c", "2", "-q", "100"])
                    data = self.mix if row.data == "mix" else self.miss_file()
                    try:
                        r, k = self.load(srv, port, data)
                    except RuntimeError as e:
                        self.notes.append(f"({key}) {row.label}: {e}")
                        continue
                    row.runs.append((r, k))
                    print(f"[{key}] {row.label}: {r.qps:,.0f} QPS, {r.cpu_us_per_q:.1f} + "
                          f"{k:.1f} (knot) µs/query, lost {r.lost}/{r.sent}, "
                          f"other load {r.others:.2f}", flush=True)
        finally:
            for srv, _port in started.values():
                srv.stop()
        return table(key, title, rows)


def table(key: str, title: str, rows: list[Row]) -> str:
    by = {r.label: r for r in rows}
    out = [f"### ({key}) {title}", "",
           "| server | QPS | CPU µs/query | knot µs/query | with knot's share | "
           "×dnsdist CPU (with knot) | ×dnsdist QPS | lost | other load |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        if not r.runs:
            out.append(f"| {r.label} | not measured | | | | | | | |")
            continue
        qps, cpu = r.med(lambda x, k: x.qps), r.med(lambda x, k: x.cpu_us_per_q)
        knot = r.med(lambda x, k: k)
        total = r.med(lambda x, k: x.cpu_us_per_q + k)
        ref = by.get(r.ref) if r.ref else None
        if ref is not None and ref.runs:
            rc = f"{total / ref.med(lambda x, k: x.cpu_us_per_q + k):.2f}×"
            rq = f"{qps / ref.med(lambda x, k: x.qps):.2f}×"
        else:
            rc = rq = "1.00×" if r.ref is None else "–"
        lost = sum(x.lost for x, _k in r.runs)
        out.append(f"| {r.label} | {qps:,.0f} | {cpu:.1f} | {knot:.1f} | {total:.1f} | "
                   f"{rc} | {rq} | {lost} | {r.med(lambda x, k: x.others):.2f} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="~1.5 minutes: 3 s loads, one round")
    p.add_argument("--cases", default="abcd", help="which cases, e.g. ac")
    p.add_argument("--services", type=int, default=None)
    p.add_argument("--queries", type=int, default=None, help="lines in the mix")
    p.add_argument("--miss-names", type=int, default=None, help="lines per miss file")
    p.add_argument("--seconds", type=float, default=None, help="length of each load")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--clients", type=int, default=2, help="dnsperf -c")
    p.add_argument("--outstanding", type=int, default=100, help="dnsperf -q")
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run (default 600, --quick 150)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help="replace this section of RESULTS.md")
    g.add_argument("--no-write", action="store_true", help="print only (the default)")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    # the hit rows' names must fit the smallest cache (NodeLocal's `success 9984`;
    # a 100000-query mix of 10000 services has more distinct names and measures
    # evictions, not hits), so the full run differs from --quick in rounds and length
    args.services = args.services or 2000
    args.queries = args.queries or 20000
    args.seconds = args.seconds or (3.0 if args.quick else 6.0)
    args.rounds = args.rounds or (1 if args.quick else 3)
    # more names than a round asks at the fastest server: every miss row query is a miss
    args.miss_names = args.miss_names or (400000 if args.quick else 800000)
    args.budget = args.budget or (150.0 if args.quick else 600.0)
    missing = [b for b in ("dnsperf", "knotd", "dnsdist", "unbound") if not shutil.which(b)]
    if missing:
        print(f"missing {', '.join(missing)}: apt-get install dnsperf knot dnsdist unbound",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="fastdns-fwd-"))
    bench = None
    try:
        bench = Bench(args, work)
        body = "".join(bench.run_case(k) + "\n" for k in args.cases if k in "abcd")
    finally:
        if bench is not None:
            bench.knot.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    head = (f"Server under test and knot (the backend) on CPU {SERVER_CPU}, dnsperf "
            f"(-c {args.clients} -q {args.outstanding} -l {args.seconds:g}) on CPU {CLIENT_CPU}; "
            f"{args.rounds} interleaved round(s), medians; {args.services} services, "
            f"{args.queries}-query peer mix. Machine: {machine()}.\n\n")
    tail = (f"\nunbound: {fp.UNBOUND_CACHE_LEFT}. Miss rows: NXDOMAIN names never asked "
            "before. Other load = CPU used by neither the server under test nor dnsperf "
            "(knot's share included; the rest is other jobs on the machine).\n")
    tail += "".join(f"\n- {n}" for n in bench.notes) + ("\n" if bench.notes else "")
    body = head + body + tail
    print("\n" + body)
    if args.write:
        cmd = "python3 bench/bench_forward.py " + " ".join(argv if argv is not None
                                                            else sys.argv[1:])
        write_results(Path(args.results), body, cmd.strip(), SECTION)
        print(f"written to {args.results}")
    print(f"total {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
