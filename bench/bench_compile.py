#!/usr/bin/env python3
"""Compile benchmark: full compile, one-Service recompile + re-assembly, size, RSS.

    python3 bench/bench_compile.py                  # 1k x 10, 10k x 10, 10k / 150k
    python3 bench/bench_compile.py --scale 1000x10  # one scale

Prints a markdown table. Each scale runs in its own process (so peak RSS
is that scale's): the synthetic cluster (bench/gen_cluster.py, headless
share 0.2, dual-stack share 0.1) is built and stripped, then the peak-RSS
counter is reset (/proc/self/clear_refs, "5") so "peak RSS" is the process
during compilation, cluster state included. Options are the kubeadm
default block (cluster.local, in-addr.arpa, ip6.arpa, pods insecure,
reverse fallthrough, ttl 30, and the block's `loadbalance`: rotated
variants of multi-address answers). Times are wall clock and process CPU
(CPU is the fairer figure on a shared machine); the one-Service change
flips one endpoint's readiness in a random Service and is the median of
--changes runs of `ClusterState.apply` + `Compiler.update`.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

SCALES = ["1000x10", "10000x10", "10000x15"]
TARGETS = "targets at 10k / 150k: full <= 3 s, one-Service change <= 50 ms, image <= 64 MB"


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_scale(services: int, per_service: int, changes: int, repeat: int) -> dict:
    from gen_cluster import generate

    from fastdns.zone.compiler import Compiler
    from fastdns.zone.objects import strip
    from fastdns.zone.options import KubernetesOptions
    from fastdns.zone.state import ClusterState

    doc = generate(services, per_service, 0.2, 0.1, seed=1, pods=False)
    t = time.perf_counter()
    state = ClusterState(strip(o["kind"], o) for o in doc["items"])
    load_s = time.perf_counter() - t
    endpoints = sum(len(s.endpoints) for s in state.slices.values())
    del doc
    gc.collect()
    rss_state = _rss_kb("VmRSS")
    peak_ok = _reset_peak()
    opts = KubernetesOptions(zones=("cluster.local", "in-addr.arpa", "ip6.arpa"), pods="insecure",
                             fallthrough=("in-addr.arpa", "ip6.arpa"), ttl=30,
                             loadbalance=True)
    fulls = []
    c = Compiler(opts)
    for i in range(repeat):
        if i:
            c = Compiler(opts)  # a fresh compiler: nothing cached
            gc.collect()
        t, p = time.perf_counter(), time.process_time()
        image = c.full(state)
        fulls.append((time.perf_counter() - t, time.process_time() - p))
        del image
    rnd = random.Random(7)
    keys = sorted(k for k in state.services if state.slices_of(*k))
    upd = []
    for _ in range(changes):
        key = rnd.choice(keys)
        sl = state.slices_of(*key)[0]
        eps = list(sl.endpoints)
        eps[0] = dataclasses.replace(eps[0], ready=not eps[0].ready)
        t, p = time.perf_counter(), time.process_time()
        affected = state.apply("MODIFIED", dataclasses.replace(sl, endpoints=tuple(eps)))
        size = len(c.update(state, affected))
        upd.append((time.perf_counter() - t, time.process_time() - p))
    peak = _rss_kb("VmHWM")
    return {
        "services": services, "endpoints": endpoints, "entries": c.stats()["entries"],
        "load_s": load_s,
        "full_wall": min(w for w, _ in fulls), "full_cpu": min(p for _, p in fulls),
        "upd_wall": statistics.median(w for w, _ in upd),
        "upd_cpu": statistics.median(p for _, p in upd),
        "size": size, "rss_state_mb": rss_state / 1024,
        "peak_mb": peak / 1024 if peak_ok else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", action="append", help="SERVICESxENDPOINTS_PER_SERVICE")
    ap.add_argument("--changes", type=int, default=21)
    ap.add_argument("--repeat", type=int, default=2, help="full compiles per scale (best kept)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        s, m = (int(x) for x in a.child.split("x"))
        print(json.dumps(run_scale(s, m, a.changes, a.repeat)))
        return 0
    rows = []
    for scale in a.scale or SCALES:
        out = subprocess.run([sys.executable, __file__, "--child", scale, "--changes",
                              str(a.changes), "--repeat", str(a.repeat)],
                             check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    from fastdns.zone import fragments

    print(f"assembler: {'Cython' if fragments.assemble is fragments.assemble_c else 'Python'}; "
          f"{os.cpu_count()} CPUs; {TARGETS}\n")
    print("| services | endpoints | image entries | full compile (wall / CPU) "
          "| one-Service change (wall / CPU) | image size | RSS state / peak |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['services']:,} | {r['endpoints']:,} | {r['entries']:,} "
              f"| {r['full_wall']:.2f} s / {r['full_cpu']:.2f} s "
              f"| {r['upd_wall'] * 1e3:.1f} ms / {r['upd_cpu'] * 1e3:.1f} ms "
              f"| {r['size'] / 1e6:.1f} MB | {r['rss_state_mb']:.0f} / {r['peak_mb']:.0f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
