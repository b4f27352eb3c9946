"""What `prometheus` + `log` cost on the data plane: fastdns against fastdns.

    python3 bench/bench_metrics_cost.py            # ~2 minutes
    python3 bench/bench_metrics_cost.py --quick    # ~40 s

Same load as ``bench/peers.py`` (its synthetic cluster, query mix, dnsperf
pinned to CPU 0, one fastdns worker pinned to CPU 1, CPU per answered query
from the server's whole process tree in /proc) against two Corefiles that
differ only in the observability plugins:

- ``off``: ``bind`` + ``kubernetes``;
- ``metrics``: the same plus ``errors`` and ``prometheus`` (scraped over
  HTTP every ``--scrape`` seconds during the load, so the exporter's own
  cost counts);
- ``metrics+log``: and ``log . { class denial }`` (every NXDOMAIN/NODATA
  of the mix is a log line, written to the server's log file).

Runs alternate between the two servers so a burst of other load on the
machine hits both. Issue 6's target: ``metrics`` costs at most 3 % more CPU per
query. The workers' counters are always on (they are the metrics' source);
what ``prometheus`` adds is the exporter, and ``log`` the lines.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peers  # noqa: E402
import querymix as qm  # noqa: E402

CONFIGS = {  # name -> (label, metrics on, log on)
    "off": ("kubernetes only", False, False),
    "metrics": ("+ errors, prometheus (scraped)", True, False),
    "metrics+log": ("+ errors, prometheus (scraped), log class denial", True, True),
}


def corefile(port: int, mport: int | None, log: bool) -> str:
    extra = ""
    if mport is not None:
        extra = f"    errors\n    prometheus 127.0.0.1:{mport}\n"
    if log:
        extra += "    log . {\n        class denial\n    }\n"
    return (f".:{port} {{\n    bind 127.0.0.1\n"
            f"    kubernetes {qm.ZONE} in-addr.arpa ip6.arpa\n{extra}}}\n")


class Scraper:
    """GET /metrics every ``period`` s while a load runs (what Prometheus does)."""

    def __init__(self, mport: int, period: float) -> None:
        self.url = f"http://127.0.0.1:{mport}/metrics"
        self.period = period
        self.count = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                urllib.request.urlopen(self.url, timeout=2).read()
                self.count += 1
            except OSError:
                self.failures += 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--services", type=int, default=None)
    p.add_argument("--endpoints", type=int, default=3)
    p.add_argument("--headless-share", type=float, default=0.1)
    p.add_argument("--dualstack-share", type=float, default=0.2)
    p.add_argument("--state", default=None)
    p.add_argument("--queries", type=int, default=None)
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--runs", type=int, default=None, help="saturated runs per server")
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--outstanding", type=int, default=100)
    p.add_argument("--scrape", type=float, default=1.0,
                   help="seconds between scrapes (Prometheus: 15-30; 1 overstates the cost)")
    p.add_argument("--start-timeout", type=float, default=60.0)
    args = p.parse_args(argv)
    args.services = args.services or (2000 if args.quick else 10000)
    args.queries = args.queries or (20000 if args.quick else 100000)
    args.seconds = args.seconds or (4.0 if args.quick else 8.0)
    args.runs = args.runs or (2 if args.quick else 4)
    if not shutil.which("dnsperf"):
        print(f"dnsperf not found: {peers.INSTALL_HINT}", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        peers.SERVER_CPU = 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="fastdns-metrics-cost-"))
    started: dict[str, tuple[peers.Started, int, int | None]] = {}
    try:
        state = peers.make_state(work, args)
        rec = qm.build_records(qm.load_objects(state))
        mix = qm.build_mix(rec, args.queries)
        queries = work / "queries.txt"
        qm.write_dnsperf(mix, queries)
        probes = peers.make_probes(rec)
        for name, (_label, metrics_on, log_on) in CONFIGS.items():
            d = work / name
            d.mkdir()
            port = peers.free_port()
            mport = peers.free_port() if metrics_on else None
            (d / "Corefile").write_text(corefile(port, mport, log_on))
            argv = [sys.executable, "-m", "fastdns", "serve", "--state", str(state),
                    "--corefile", str(d / "Corefile"), "--workers", "1"]
            srv = peers.Started(argv, d, peers.SERVER_CPU)
            if not peers.wait_answering(srv, port, probes[0], args.start_timeout):
                print(f"[{name}] did not start:\n{srv.log_tail()}", flush=True)
                return 1
            bad, _warn = peers.check_probes(port, probes)
            if bad:
                print(f"[{name}] wrong answers: {bad}", flush=True)
                return 1
            started[name] = (srv, port, mport)
            print(f"[{name}] answering on 127.0.0.1:{port}", flush=True)
        runs: dict[str, list[peers.Run]] = {name: [] for name in CONFIGS}
        scrapes = 0
        for i in range(args.runs):
            order = list(CONFIGS) if i % 2 == 0 else list(reversed(CONFIGS))
            for name in order:
                srv, port, mport = started[name]
                extra = ["-c", str(args.clients), "-q", str(args.outstanding)]
                if mport is not None:
                    with Scraper(mport, args.scrape) as sc:
                        r = peers.dnsperf(port, queries, args.seconds, srv.pid, extra)
                    scrapes += sc.count
                else:
                    r = peers.dnsperf(port, queries, args.seconds, srv.pid, extra)
                runs[name].append(r)
                print(f"[{name}] run {i + 1}: {r.qps:,.0f} QPS, {r.cpu_us_per_q:.3f} us "
                      f"CPU/query, server busy {r.cpu_share:.0%}, lost {r.lost}/{r.sent}, "
                      f"rcodes {r.rcodes}", flush=True)
        log_lines = sum(1 for line in (work / "metrics+log" / "server.log").read_text(
            errors="replace").splitlines() if '"' in line and line.startswith("[INFO] 127."))
        body = table(runs, args, len(mix), log_lines, scrapes)
        print("\n" + body)
        return 0
    finally:
        for srv, _p, _m in started.values():
            srv.stop()
        shutil.rmtree(work, ignore_errors=True)


def table(runs: dict[str, list[peers.Run]], args: argparse.Namespace, nmix: int,
          log_lines: int, scrapes: int) -> str:
    def med(name: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs[name])

    off_cpu = med("off", "cpu_us_per_q")
    rows = ["| Corefile | QPS (median) | CPU µs/query (median) | vs off | runs (CPU µs/query) |",
            "|---|---:|---:|---:|---|"]
    for name, (label, _m, _l) in CONFIGS.items():
        cpu = med(name, "cpu_us_per_q")
        rows.append(f"| {label} | {med(name, 'qps'):,.0f} | {cpu:.3f} | "
                    f"{100 * (cpu / off_cpu - 1):+.1f} % | "
                    + ", ".join(f"{r.cpu_us_per_q:.3f}" for r in runs[name]) + " |")
    denial = sum(r.rcodes.get("NXDOMAIN", 0) for r in runs["metrics+log"])
    answered = sum(r.completed for r in runs["metrics+log"])
    on_cpu = med("metrics", "cpu_us_per_q")
    lines = [
        f"{args.services} services, mix of {nmix} queries; {args.runs} saturated runs of "
        f"{args.seconds:g} s each (dnsperf -c {args.clients} -q {args.outstanding}, "
        f"CPU {peers.CLIENT_CPU}; one worker on CPU {peers.SERVER_CPU}).",
        "", *rows, "",
        f"CPU per query, metrics on vs off: {100 * (on_cpu / off_cpu - 1):+.1f} % "
        "(target: at most +3 %).",
        f"With log: {log_lines} log lines written for {answered} answers "
        f"({denial} NXDOMAIN; NODATA is a denial too), {scrapes} scrapes of /metrics "
        "in all runs.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
