"""What the per-query plugins cost: template, rewrite, acl and autopath against kubeadm's Corefile.

    python3 bench/bench_plugins.py             # ~3 minutes, writes bench/RESULTS.md
    python3 bench/bench_plugins.py --seconds 2 --rounds 1 --no-write

Why it is built this way (issue 15, "Done when": CPU per query on a
Corefile that uses each, against the plain kubeadm Corefile, in one run):
- One `fastdns serve` per Corefile, all started at once, each one worker
  pinned to CPU 1 (dnsperf on CPU 0, as bench/peers.py pins them). Rounds
  go through the Corefiles in turn, so each sees the same machine state;
  ratios are taken per round against the kubeadm server's round right
  before, and the table gives medians.
- Every Corefile is kubeadm's (tests/corefiles/kubeadm.Corefile, ports and
  the upstream rewritten) plus the plugin lines an operator adds:
  AKS's two templates, a `rewrite name exact` of a custom domain onto a
  Service, an `acl` that allows the node's networks and blocks the rest, and
  `autopath @kubernetes` with `pods verified`.
- Two mixes per plugin: the kubeadm mix (cluster names; what every pod
  asks: does the plugin tax the names it does not touch?) and the plugin's
  own names (the AKS template's NXDOMAINs, the rewritten name, autopath's
  first search-path expansion from a pod's address: dnsperf's 127.0.0.1 is
  a Pod of namespace `default` in the state file).
- The worker's slow-path counter is read around each round: a row whose
  answers went through Python says so (the fast path's C hooks should take
  them all).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import yaml  # noqa: E402
from bench_cache import instance_of, wait_answering, write_results  # noqa: E402
from peers import CLIENT_CPU, SERVER_CPU, Started, dnsperf, free_port  # noqa: E402

from fastdns.ipc import readout, shm  # noqa: E402

SECTION = "## Plugin cost benchmark (bench/bench_plugins.py)"
DEMO = ROOT / "fastdns" / "demo" / "cluster.yaml"
KUBEADM = ROOT / "tests" / "corefiles" / "kubeadm.Corefile"
CLUSTER_NAMES = [
    "kubernetes.default.svc.cluster.local", "nginx.default.svc.cluster.local",
    "nginx1.default.svc.cluster.local", "kube-dns.kube-system.svc.cluster.local",
]


@dataclass(frozen=True)
class Variant:
    name: str
    lines: str  # added to kubeadm's block, before `kubernetes`
    names: tuple[str, ...]  # the plugin's own mix ("" : none)
    pods_verified: bool = False


VARIANTS = (
    Variant("kubeadm", "", ()),
    Variant("template (AKS)",
            "    template ANY ANY internal.cloudapp.net {\n"
            '        match "^(?:[^.]+\\.){4,}internal\\.cloudapp\\.net\\.$"\n'
            "        rcode NXDOMAIN\n        fallthrough\n    }\n"
            "    template ANY ANY reddog.microsoft.com {\n        rcode NXDOMAIN\n    }\n",
            ("a.b.c.d.internal.cloudapp.net", "x.reddog.microsoft.com")),
    Variant("rewrite (name exact)",
            "    rewrite name exact api.corp.test kubernetes.default.svc.cluster.local\n",
            ("api.corp.test",)),
    Variant("acl",
            "    acl {\n        block type MX net 127.0.0.0/8\n"
            "        allow net 127.0.0.0/8 10.0.0.0/8\n        block\n    }\n",
            ("kubernetes.default.svc.cluster.local MX",)),
    Variant("autopath",
            "    autopath @kubernetes\n",
            tuple(f"{n}.default.svc.cluster.local" for n in CLUSTER_NAMES[:3]),
            pods_verified=True),
)


def corefile(v: Variant, port: int, upstream_port: int) -> str:
    text = KUBEADM.read_text()
    for old, new in ((".:53 {", f".:{port} {{\n    bind 127.0.0.1"),
                     ("    health {\n       lameduck 5s\n    }\n", ""),
                     ("    ready\n", ""),
                     ("    prometheus :9153\n", ""),
                     ("/etc/resolv.conf", f"127.0.0.1:{upstream_port}"),
                     ("    loop\n", ""),
                     ("    kubernetes cluster.local", v.lines + "    kubernetes cluster.local")):
        assert old in text, old
        text = text.replace(old, new)
    if v.pods_verified:
        text = text.replace("pods insecure", "pods verified")
    return text


def state_with_client_pod(work: Path) -> Path:
    """The demo cluster plus a Pod at 127.0.0.1 in `default` (dnsperf's address)."""
    doc = yaml.safe_load(DEMO.read_text())
    doc["items"].append({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "bench-client", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "c"}]},
        "status": {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}})
    path = work / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def slow_count(instance: str) -> int:
    with shm.ControlSegment.attach(instance) as ctl:
        return readout.read_counters(ctl.counters(0))["slow"]["total"]


def refused(corefile_path: Path) -> str | None:
    """check-corefile's verdict on a variant: None when fastdns runs it."""
    r = subprocess.run([sys.executable, "-m", "fastdns", "check-corefile", str(corefile_path)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    if r.returncode == 0:
        return None
    bad = [x for x in r.stdout.splitlines() if "UNSUPPORTED" in x or "ERROR" in x]
    return bad[0].split(": ", 2)[-1] if bad else r.stdout[-200:]


def run(args: argparse.Namespace) -> str:
    work = Path(tempfile.mkdtemp(prefix="bench-plugins-"))
    state = state_with_client_pod(work)
    mixes = {"cluster": "".join(f"{n} A\n" for n in CLUSTER_NAMES)}
    (work / "cluster.txt").write_text(mixes["cluster"])
    servers: dict[str, tuple[Started, int, str]] = {}
    skipped: dict[str, str] = {}
    try:
        for i, v in enumerate(VARIANTS):
            d = work / f"v{i}"
            d.mkdir()
            port = free_port()
            (d / "Corefile").write_text(corefile(v, port, free_port()))
            why = refused(d / "Corefile")
            if why is not None:
                skipped[v.name] = why
                continue
            if v.names:
                (d / "own.txt").write_text("".join(n + ("\n" if " " in n else " A\n")
                                                   for n in v.names))
            srv = Started([sys.executable, "-m", "fastdns", "serve", "--state", str(state),
                           "--corefile", str(d / "Corefile"), "--workers", "1"], d, SERVER_CPU)
            servers[v.name] = (srv, port, "")
        for name, (srv, port, _) in servers.items():
            wait_answering(port)
            servers[name] = (srv, port, instance_of(srv.logpath))
        rows: dict[tuple[str, str], list] = {}
        slow: dict[tuple[str, str], int] = {}
        for _ in range(args.rounds):
            for i, v in enumerate(VARIANTS):
                if v.name not in servers:
                    continue
                srv, port, inst = servers[v.name]
                mixes_here = [("cluster", work / "cluster.txt")]
                if v.names:
                    mixes_here.append(("own", work / f"v{i}" / "own.txt"))
                for mix, path in mixes_here:
                    s0 = slow_count(inst)
                    r = dnsperf(port, path, args.seconds, srv.pid, [])
                    slow[(v.name, mix)] = slow.get((v.name, mix), 0) + slow_count(inst) - s0
                    rows.setdefault((v.name, mix), []).append(r)
    finally:
        for srv, _port, _inst in servers.values():
            srv.stop()
    return report(args, rows, slow, skipped)


def report(args, rows, slow, skipped) -> str:
    base = rows.get(("kubeadm", "cluster"), [])
    lines = [
        f"One worker per Corefile (CPU {SERVER_CPU}), dnsperf on CPU {CLIENT_CPU}, "
        f"{args.rounds} rounds of {args.seconds:g} s through every Corefile in turn, medians. "
        "Ratio: server CPU per query against the kubeadm Corefile's cluster-name round "
        "of the same pass (median of the per-pass ratios).",
        "",
        "| Corefile | queries | QPS | server CPU µs/query | × kubeadm | answers via Python "
        "| lost |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for (name, mix), runs in rows.items():
        cpu = statistics.median(r.cpu_us_per_q for r in runs)
        ratios = [r.cpu_us_per_q / b.cpu_us_per_q for r, b in zip(runs, base, strict=False)]
        label = "cluster names" if mix == "cluster" else "the plugin's own names"
        done = sum(r.completed for r in runs)
        lines.append(
            f"| {name} | {label} | {statistics.median(r.qps for r in runs):,.0f} | {cpu:.2f} | "
            f"{statistics.median(ratios):.2f}× | {slow[(name, mix)]:,} of {done:,} | "
            f"{sum(r.lost for r in runs)} |")
    for name, why in skipped.items():
        lines.append(f"| {name} | not run: {why} | | | | | |")
    lines += ["", "The own-names mixes: AKS's template NXDOMAINs (`a.b.c.d.internal.cloudapp.net`, "
              "`x.reddog.microsoft.com`); `api.corp.test` rewritten onto "
              "`kubernetes.default.svc.cluster.local` (renamed and reverted by the C hook: "
              "`name exact` with `stop`); MX queries from 127.0.0.1 that the acl "
              "blocks (REFUSED + EDE, answered by the C hook); autopath's first search-path "
              "expansion "
              "(`NAME.default.svc.cluster.local.default.svc.cluster.local` as glibc sends it "
              "from a pod of `default`, answered with the CNAME to the found name)."]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    args = p.parse_args()
    body = run(args)
    print(body)
    if not args.no_write:
        cmd = "python3 bench/bench_plugins.py " + " ".join(sys.argv[1:])
        write_results(Path(args.results), body, cmd.strip(), SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
