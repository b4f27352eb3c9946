#!/usr/bin/env python3
"""Memory and compile cost by cluster size: the figures behind the sizing formula.

    python3 bench/bench_sizing.py                       # 1k, 2.5k, 5k, 10k and 50k Services
    python3 bench/bench_sizing.py --services 1000 2000 --no-write   # a quick look

Each size is one `bench/bench_kube.py` run (the same cluster generator: 15
endpoints per Service, 20 % headless, 10 % dual stack; the fake API server
in its own process; `fastdns serve --workers 2` watching it over the real
client) inside a cgroup v1 memory group without a limit, as a pod counts
memory: the whole process tree plus the /dev/shm pages it writes. Per size:
first answer, working-set peak through startup and over the run (50
changes/s for ``--duration`` s and a forced relist), working set steady
afterwards, the image's size, the full compile (first sync) and the median
compile and publish per change, all read from the server's own log lines.

Then a least-squares line through the steady and peak working sets against
endpoints + Services (the objects DNS is made of here; CoreDNS's own formula,
coredns/deployment `Scaling_CoreDNS.md`, counts Pods + Services), and the
growth per 10k Services (150k endpoints) of memory, compile and publish
time. Prints a markdown table and writes it under its own heading in
``bench/RESULTS.md`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_kube  # noqa: E402

SECTION = "## Sizing: memory and compile cost by cluster size (bench/bench_sizing.py)"
PUBLISHED = re.compile(r"published generation \d+ \((\d+) octets; compiled in ([\d.]+) ms, "
                       r"published in ([\d.]+) ms")


def log_figures(text: str) -> dict[str, float]:
    """Image octets, the first (full) compile and the median per-change compile/publish."""
    rows = [(int(a), float(b), float(c)) for a, b, c in PUBLISHED.findall(text)]
    if not rows:
        return {}
    changes = rows[1:] or rows
    return {"image_mb": rows[-1][0] / 1e6, "full_ms": rows[0][1],
            "compile_ms": statistics.median(r[1] for r in changes),
            "publish_ms": statistics.median(r[2] for r in changes)}


def one(services: int, per_service: int, duration: float, workers: int) -> dict:
    args = argparse.Namespace(
        services=services, endpoints_per_service=per_service, rate=50.0, duration=duration,
        max_changes=5000, poll=0.002, settle=5.0, startup_limit=300.0, relist_limit=120.0,
        workers=workers, memory_limit=0.0)
    with tempfile.TemporaryDirectory(prefix="bench_sizing-") as tmp:
        res = bench_kube.run(args, Path(tmp))
        res.update(log_figures((Path(tmp) / "serve.log").read_text(errors="replace")))
    m = re.search(r"(\d+) endpoints", res["cluster"])
    res["services"], res["endpoints"] = services, int(m.group(1)) if m else 0
    return res


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b x."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - b * mx, b


def table(rows: list[dict], workers: int, duration: float) -> str:
    lines = [f"Machine: {bench_kube.machine()}", "",
             f"Each size: `fastdns serve --workers {workers}` watching the fake API server "
             f"over the real client, in a cgroup v1 memory group without a limit (the process "
             f"tree plus its /dev/shm pages, as a pod counts them); 50 changes/s for "
             f"{duration:g} s, then a forced relist. Working set = usage - inactive_file.", "",
             "| Services | endpoints | first answer | WS peak startup | WS peak run | "
             "WS steady | image | full compile | compile / publish per change |",
             "|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        cg = r.get("memcg", {})
        lines.append(
            f"| {r['services']} | {r['endpoints']} | "
            + ("n/a" if r.get("startup") is None else f"{r['startup']:.1f} s") + " | "
            f"{r.get('mem_startup_peak', 0):.0f} MiB | {cg.get('ws_peak_mib', 0):.0f} MiB | "
            f"{r.get('mem_steady', 0):.0f} MiB | {r.get('image_mb', 0):.1f} MB | "
            f"{r.get('full_ms', 0) / 1e3:.2f} s | "
            f"{r.get('compile_ms', 0):.0f} / {r.get('publish_ms', 0):.0f} ms |")
    ok = [r for r in rows if r.get("mem_steady") and r.get("memcg")]
    if len(ok) >= 2:
        xs = [float(r["endpoints"] + r["services"]) for r in ok]
        a_s, b_s = fit(xs, [r["mem_steady"] for r in ok])
        a_p, b_p = fit(xs, [r["memcg"]["ws_peak_mib"] for r in ok])
        per = 160000.0  # 10k Services with 15 endpoints each: ~150k endpoints + 10k Services
        lines += [
            "", "Least squares over these sizes, objects = endpoints + Services:",
            f"- steady working set = {a_s:.0f} MiB + {b_s * 1e3:.3f} MiB per 1000 objects",
            f"- peak working set = {a_p:.0f} MiB + {b_p * 1e3:.3f} MiB per 1000 objects",
            f"- per 10k Services with 150k endpoints: steady +{b_s * per:.0f} MiB, "
            f"peak +{b_p * per:.0f} MiB"]
        for key, what in (("image_mb", "image"), ("full_ms", "full compile"),
                          ("compile_ms", "compile per change"),
                          ("publish_ms", "publish per change")):
            a, b = fit(xs, [float(r.get(key, 0.0)) for r in ok])
            unit = "MB" if key == "image_mb" else "ms"
            lines.append(f"- {what}: {a:.1f} {unit} + {b * per:.1f} {unit} per 10k Services")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--services", type=int, nargs="+", default=[1000, 2500, 5000, 10000, 50000])
    p.add_argument("--endpoints-per-service", type=int, default=15)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of changes per size")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    problem = bench_kube.memcg.available()
    if problem:
        p.error(problem)
    rows = []
    for n in args.services:
        print(f"== {n} Services", flush=True)
        rows.append(one(n, args.endpoints_per_service, args.duration, args.workers))
    body = table(rows, args.workers, args.duration)
    print()
    print(body)
    if not args.no_write:
        command = " ".join(["python3 bench/bench_sizing.py", *(argv or sys.argv[1:])])
        bench_kube.write_results(Path(args.results), body, command, SECTION)
        print(f"\nwritten to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
