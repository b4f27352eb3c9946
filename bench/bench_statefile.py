#!/usr/bin/env python3
"""State-file benchmark: launch -> first answer, and file written -> changed answer.

    python3 bench/bench_statefile.py                  # 10k services / 150k endpoints, JSON and YAML
    python3 bench/bench_statefile.py --services 1000 --formats json --no-write   # a quick look

What one run does (issue 14), everything on loopback and bounded:

1. ``bench/gen_cluster.py`` builds the cluster (``--services`` x
   ``--endpoints-per-service``, 20 % headless, 10 % dual stack, with Pods as
   ``kubectl get ns,svc,endpointslices,pods -A`` prints them unless
   ``--no-pods``), written once as JSON and once as YAML (``yaml.dump``
   with ``CSafeDumper`` where PyYAML has it, without anchors, as kubectl).
2. For each format: ``python3 -m fastdns serve --state FILE --corefile C
   --workers 2``; startup = launch -> first answer of a headless Service
   holding its known endpoint (UDP, polled every ``--poll`` s).
3. ``--changes`` times, each way the file can be rewritten (``rename``: a
   temporary file then ``os.replace``, as an operator's tool or a ConfigMap
   volume does; ``in-place``: truncate and write the same file): one
   endpoint of a headless Service moves to a fresh IP, the text is edited
   (not re-dumped, so the benchmark's own serialization is not timed), and
   the time from the write's end to the first answer holding the new IP is
   taken. Median and max are reported.
4. The control process's log lines for the loads (how it loaded, and how
   long each step took) are kept with ``--keep DIR``.

Prints a markdown table and writes it under its own heading in
``bench/RESULTS.md`` (other sections kept) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import dns.message  # noqa: E402
import dns.rdatatype  # noqa: E402
from bench_kube import free_port, machine, stop, write_results  # noqa: E402
from gen_cluster import generate  # noqa: E402

SECTION = "## State file (bench/bench_statefile.py)"
TARGET_START = 5.0
TARGET_CHANGE = 1.0


def corefile(port: int) -> str:
    return (f"cluster.local:{port} in-addr.arpa:{port} ip6.arpa:{port} {{\n"
            f"    bind 127.0.0.1\n"
            f"    kubernetes cluster.local in-addr.arpa ip6.arpa {{\n"
            f"        ttl 30\n"
            f"    }}\n"
            f"}}\n")


def answers(sock: socket.socket, port: int, name: str, timeout: float) -> set[str]:
    """The A addresses one query for ``name`` gets (empty: no answer in ``timeout``)."""
    q = dns.message.make_query(name, "A")
    sock.sendto(q.to_wire(), ("127.0.0.1", port))
    sock.settimeout(timeout)
    deadline = time.perf_counter() + timeout
    while True:
        try:
            data = sock.recv(65535)
        except (TimeoutError, BlockingIOError, ConnectionRefusedError):
            return set()
        try:
            msg = dns.message.from_wire(data)
        except Exception:  # noqa: BLE001 - not ours, or cut: ask again
            msg = None
        if msg is not None and msg.id == q.id:
            return {rr.address for rrset in msg.answer if rrset.rdtype == dns.rdatatype.A
                    for rr in rrset}
        left = deadline - time.perf_counter()
        if left <= 0:
            return set()
        sock.settimeout(left)


def wait_for(port: int, name: str, ip: str, limit: float, poll: float,
             alive: subprocess.Popen) -> float | None:
    """Seconds until ``name`` A holds ``ip``, polling every ``poll`` s (None: not
    within ``limit``, or the server exited)."""
    t0 = time.perf_counter()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(int(limit / poll) + 1):
            if ip in answers(sock, port, name, poll):
                return time.perf_counter() - t0
            if alive.poll() is not None or time.perf_counter() - t0 > limit:
                return None
            left = poll - (time.perf_counter() - t0) % poll
            time.sleep(min(left, poll))
    return None


class Edits:
    """Moves the first endpoint of headless Services' first IPv4 slices, in the text."""

    def __init__(self, doc: dict, fmt: str, zone: str = "cluster.local") -> None:
        headless = {(s["metadata"]["namespace"], s["metadata"]["name"])
                    for s in doc["items"] if s["kind"] == "Service"
                    and s["spec"].get("clusterIP") == "None"}
        self.targets: list[tuple[str, str]] = []  # (name, current IP)
        for it in doc["items"]:
            if it["kind"] != "EndpointSlice" or it.get("addressType") != "IPv4":
                continue
            meta = it["metadata"]
            svc = meta["labels"]["kubernetes.io/service-name"]
            eps = it.get("endpoints") or []
            if (meta["namespace"], svc) in headless and meta["name"].endswith("-0") and eps \
                    and eps[0]["conditions"]["ready"]:
                self.targets.append((f"{svc}.{meta['namespace']}.svc.{zone}.",
                                     eps[0]["addresses"][0]))
            if len(self.targets) >= 50:
                break
        if not self.targets:
            raise SystemExit("the cluster has no headless Service to change")
        self.fmt = fmt
        self.n = 0

    def pattern(self, ip: str) -> re.Pattern[str]:
        if self.fmt == "json":
            return re.compile(r'("addresses":\[")' + re.escape(ip) + r'("\])')
        return re.compile(r"(addresses:\n\s*- )" + re.escape(ip) + r"(\n)")

    def apply(self, text: str) -> tuple[str, str, str]:
        """(new text, name, new IP)."""
        i = self.n % len(self.targets)
        name, old = self.targets[i]
        self.n += 1
        new = f"10.250.{self.n >> 8 & 255}.{self.n & 255}"
        text, count = self.pattern(old).subn(lambda m: m.group(1) + new + m.group(2), text,
                                              count=1)
        if count != 1:
            raise SystemExit(f"{name}: endpoint {old} not found in the {self.fmt} text")
        self.targets[i] = (name, new)
        return text, name, new


def write_file(path: Path, text: str, how: str) -> None:
    if how == "rename":
        tmp = path.with_name("." + path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def control_log(log: str) -> list[str]:
    """The control process's lines about state loads."""
    return [ln for ln in log.splitlines()
            if re.search(r"reloaded|initial load|services|control/statefile", ln)]


def run_format(fmt: str, text: str, doc: dict, args: argparse.Namespace, work: Path) -> dict:
    res: dict = {"format": fmt, "size": len(text.encode())}
    state = work / f"cluster.{fmt}"
    state.write_text(text, encoding="utf-8")
    edits = Edits(doc, fmt)
    port = free_port()
    (work / "Corefile").write_text(corefile(port))
    log_path = work / f"serve-{fmt}.log"
    cmd = [sys.executable, "-m", "fastdns", "serve", "--state", str(state),
           "--corefile", str(work / "Corefile"), "--workers", str(args.workers)]
    with open(log_path, "wb") as log:
        t_launch = time.perf_counter()
        serve = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            name0, ip0 = edits.targets[0]
            took = wait_for(port, name0, ip0, args.startup_limit, args.poll, serve)
            if took is None:
                res["startup"] = None
                res["log_tail"] = log_path.read_text(errors="replace")[-2000:]
                return res
            res["startup"] = time.perf_counter() - t_launch
            print(f"{fmt}: serving after {res['startup']:.1f}s", flush=True)
            time.sleep(1.0)  # the first image settles (retired, GC frozen)
            for how in args.ways:
                lat: list[float | None] = []
                for _ in range(args.changes):
                    text, name, ip = edits.apply(text)
                    write_file(state, text, how)
                    t = wait_for(port, name, ip, args.change_limit, args.poll, serve)
                    lat.append(t)
                    print(f"{fmt} {how}: {name} -> {ip}: "
                          f"{'not seen' if t is None else f'{t:.2f}s'}", flush=True)
                    if t is None and serve.poll() is not None:
                        break
                    time.sleep(args.gap)
                res[how] = lat
        finally:
            stop(serve)
    res["log"] = control_log(log_path.read_text(errors="replace"))
    return res


def run(args: argparse.Namespace, work: Path) -> dict:
    t = time.perf_counter()
    doc = generate(args.services, args.endpoints_per_service, 0.2, 0.1, seed=1,
                   pods=not args.no_pods)
    nendpoints = sum(len(i.get("endpoints") or ()) for i in doc["items"]
                     if i["kind"] == "EndpointSlice")
    npods = sum(1 for i in doc["items"] if i["kind"] == "Pod")
    out: dict = {"cluster": f"{args.services} services, {nendpoints} endpoints, {npods} Pods "
                            f"({len(doc['items'])} objects)", "runs": []}
    print(f"cluster: {out['cluster']} ({time.perf_counter() - t:.1f}s)", flush=True)
    for fmt in args.formats:
        if fmt == "json":
            text = json.dumps(doc, separators=(",", ":"))
        else:
            import yaml

            base = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

            class Dumper(base):  # type: ignore[misc, valid-type]
                def ignore_aliases(self, data: object) -> bool:
                    return True  # as kubectl: no anchors (the generator shares dicts)

            text = yaml.dump(doc, Dumper=Dumper, sort_keys=False)
        out["runs"].append(run_format(fmt, text, doc, args, work))
        del text
    return out


def table(res: dict, args: argparse.Namespace) -> str:
    def s(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f} s"

    def ok(good: bool) -> str:
        return "yes" if good else "**no**"

    lines = [f"Machine: {machine()}", "",
             f"Cluster: {res['cluster']} (bench/gen_cluster.py, 20 % headless, 10 % dual "
             f"stack); `fastdns serve --state FILE --workers {args.workers}`; a headless "
             f"Service's A record queried over UDP every {args.poll * 1e3:g} ms. A change "
             "moves one endpoint to a new IP; its time counts from the end of the write "
             "(rename: a temporary file, then os.replace; in-place: the same file truncated "
             f"and rewritten) to the first answer holding the new IP; {args.changes} changes "
             "each way.", "",
             "| format | file | measure | value | target | met |",
             "|---|--:|---|--:|--:|:-:|"]
    for r in res["runs"]:
        size = f"{r['size'] / 1e6:.0f} MB"
        st = r.get("startup")
        lines.append(f"| {r['format']} | {size} | launch -> first answer | {s(st)} | "
                     f"<= {TARGET_START:g} s | {ok(st is not None and st <= TARGET_START)} |")
        for how in args.ways:
            lat = r.get(how)
            if lat is None:
                continue
            seen = [x for x in lat if x is not None]
            med = statistics.median(seen) if seen else None
            mx = max(seen) if seen else None
            good = bool(seen) and len(seen) == len(lat) and mx is not None \
                and mx <= TARGET_CHANGE
            lines.append(f"| {r['format']} | {size} | {how} write -> changed answer, median / "
                         f"max ({len(seen)}/{len(lat)} seen) | {s(med)} / {s(mx)} | "
                         f"<= {TARGET_CHANGE:g} s | {ok(good)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--services", type=int, default=10000)
    p.add_argument("--endpoints-per-service", type=int, default=15)
    p.add_argument("--no-pods", action="store_true", help="leave Pod objects out of the file")
    p.add_argument("--formats", nargs="+", choices=("json", "yaml"), default=["json", "yaml"])
    p.add_argument("--ways", nargs="+", choices=("rename", "in-place"),
                   default=["rename", "in-place"])
    p.add_argument("--changes", type=int, default=5, help="changes each way")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--poll", type=float, default=0.02, help="query interval, s")
    p.add_argument("--gap", type=float, default=0.5, help="pause between changes, s")
    p.add_argument("--startup-limit", type=float, default=300.0)
    p.add_argument("--change-limit", type=float, default=300.0)
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep the files and logs")
    args = p.parse_args(argv)
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        res = run(args, Path(args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="bench_statefile-") as tmp:
            res = run(args, Path(tmp))
    body = table(res, args)
    print()
    for r in res["runs"]:
        if r.get("startup") is None:
            print(f"{r['format']}: no first answer; the server's log ends:\n"
                  f"{r.get('log_tail', '')}")
        for ln in r.get("log", [])[-12:]:
            print(f"  {r['format']} log: {ln}")
    print()
    print(body)
    if not args.no_write:
        argv = list(argv or sys.argv[1:])
        if "--keep" in argv:
            i = argv.index("--keep")
            del argv[i:i + 2]
        command = " ".join(["python3 bench/bench_statefile.py", *argv])
        write_results(Path(args.results), body, command, SECTION)
        print(f"\nwritten to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
