#!/usr/bin/env python3
"""Control-plane benchmark: API event -> changed DNS answer, at cluster scale.

    python3 bench/bench_kube.py                 # 10k services / 100k endpoints, 50/s for 30 s
    python3 bench/bench_kube.py --services 1000 --duration 5 --no-write   # a quick look

What one run does (issue 5 item 6), everything on loopback and bounded:

1. ``bench/gen_cluster.py`` builds the cluster (``--services`` x
   ``--endpoints-per-service``, 20 % headless, 10 % dual stack, no Pods);
   the fake API server serves it in its own process
   (``python3 -m fastdns.testing.fakeapi --port 0 --state FILE``).
2. ``python3 -m fastdns serve --kubeconfig K --corefile C --workers 1`` lists
   and watches it; startup = launch -> first answer from the synced image.
3. ``--rate`` endpoint changes per second for ``--duration`` seconds (at
   most ``--max-changes``): each one PUTs an EndpointSlice of a headless
   Service with one endpoint moved to a fresh IP, then queries that
   Service's A record over UDP (every ``--poll`` s while unchanged) until
   the new IP is in the answer. Latency = PUT sent -> first answer holding
   the new IP, so it includes the API server, the watch, coalescing,
   compile, publish and the worker's remap. Changes are issued on schedule
   whether or not earlier ones were seen yet.
4. Control process (found in the serve log) CPU seconds over the run and
   peak RSS (``VmHWM``), both from ``/proc``; the programming-latency
   histogram the process exports (``/metrics``) as a cross-check.
5. Forced relist: open watches are hung (``/_fake/hang``), one slice is
   changed (so the relist has something to publish), the event history is
   dropped (``/_fake/compact``) and every connection reset
   (``/_fake/down?seconds=0.05``): the client must relist everything (410).
   Time = reset -> DNS answer holding the change; the client's retry delay
   before it reconnects (read from its log) is reported beside it.

Prints a markdown table and writes it under its own heading in
``bench/RESULTS.md`` (other sections kept) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import dns.message  # noqa: E402
import dns.rdatatype  # noqa: E402
import memcg  # noqa: E402
from gen_cluster import generate  # noqa: E402

SECTION = "## Kubernetes control plane (bench/bench_kube.py)"
SECTION_MEMCG = ("## Memory under a pod's limit (bench/bench_kube.py --memory-limit {limit} "
                 "--services {services})")
TARGET_P99 = 0.050  # issue 14 (issue 5's was 100 ms)
TARGET_RELIST = 3.0
TARGET_RSS_MB = 400.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_QPS = 2000.0


# -- processes ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", port))
        return port


def start_api(state: Path, log: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastdns.testing.fakeapi", "--port", "0",
         "--state", str(state), "--history", "200000"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True)  # noqa: SIM115
    line = proc.stdout.readline() if proc.stdout else ""
    m = re.search(r"listening on (http://\S+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"fake API server did not start: {line!r} {log.read_text()[-500:]}")
    return proc, m.group(1)


def corefile(port: int, metrics_port: int) -> str:
    return (f"cluster.local:{port} in-addr.arpa:{port} ip6.arpa:{port} {{\n"
            f"    bind 127.0.0.1\n"
            f"    kubernetes cluster.local in-addr.arpa ip6.arpa {{\n"
            f"        ttl 30\n"
            f"        startup_timeout 60s\n"
            f"    }}\n"
            f"    prometheus 127.0.0.1:{metrics_port}\n"
            f"}}\n")


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def proc_cpu(pid: int) -> float:
    """utime + stime of one process, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> float:
    """CPU seconds the whole machine has spent not idle (all CPUs, /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / CLK_TCK


def proc_mem(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) in MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0]) / 1024
    return out


def tree_mem(root: int) -> tuple[float, float, str]:
    """RSS and PSS (MiB) summed over ``root`` and its descendants, and who holds what.

    PSS splits shared pages (the image, mapped by the worker and written by
    the control process) between the processes that map them, so the sum is
    what the server costs the node.
    """
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    todo, rss, pss, parts = [root], 0.0, 0.0, []
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        try:
            vals = {}
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if k in ("Rss", "Pss"):
                        vals[k] = int(v.split()[0]) / 1024
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        rss += vals.get("Rss", 0.0)
        pss += vals.get("Pss", 0.0)
        who = "supervisor" if pid == root else (
            "resource tracker" if "resource_tracker" in cmd else "child")
        parts.append(f"{who} {vals.get('Rss', 0.0):.0f}/{vals.get('Pss', 0.0):.0f}")
    return rss, pss, ", ".join(parts)


# -- DNS polling ------------------------------------------------------------------


def ip_bytes(ip: str) -> bytes:
    return socket.inet_aton(ip)


class Prober:
    """One UDP socket; queries each pending name every ``poll`` s (at most
    MAX_QPS in all) until its answer holds the expected address (a substring
    check on the wire, confirmed by a parse once it matches)."""

    def __init__(self, port: int, poll: float) -> None:
        self.addr = ("127.0.0.1", port)
        self.poll = poll
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.pending: dict[int, dict] = {}  # query id -> change
        self.queries = 0

    def add(self, qid: int, name: str, ip: str, t0: float) -> None:
        q = dns.message.make_query(name, "A")
        q.id = qid
        self.pending[qid] = {"wire": q.to_wire(), "ip": ip, "needle": ip_bytes(ip), "t0": t0,
                             "sent": 0.0, "name": name}

    def step(self, until: float) -> list[tuple[dict, float]]:
        """Send what is due, read answers until ``until``; the changes seen."""
        done = []
        now = time.perf_counter()
        # at most MAX_QPS queries a second in all: when changes pile up, the
        # prober must not take the CPU the server needs to catch up
        every = max(self.poll, len(self.pending) / MAX_QPS)
        for ch in self.pending.values():
            if now - ch["sent"] >= every:
                self.sock.sendto(ch["wire"], self.addr)
                ch["sent"] = now
                self.queries += 1
        while True:
            left = until - time.perf_counter()
            r, _, _ = select.select([self.sock], [], [], max(0.0, left))
            if not r:
                break
            while True:
                try:
                    data = self.sock.recv(4096)
                except BlockingIOError:
                    break
                t = time.perf_counter()
                if len(data) < 12:
                    continue
                qid = int.from_bytes(data[:2], "big")
                ch = self.pending.get(qid)
                if ch is None or ch["needle"] not in data[12:]:
                    continue
                msg = dns.message.from_wire(data)
                got = {rr.address for rrset in msg.answer if rrset.rdtype == dns.rdatatype.A
                       for rr in rrset}
                if ch["ip"] in got:
                    del self.pending[qid]
                    done.append((ch, t))
            if time.perf_counter() >= until:
                break
        return done


# -- the API side -------------------------------------------------------------------


class Api:
    """Keep-alive HTTP to the fake API server (writes and /_fake/ controls)."""

    def __init__(self, url: str) -> None:
        self.url = url
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=10)

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else b""
        self.conn.request(method, path, body=data,
                          headers={"Content-Type": "application/json"} if body else {})
        resp = self.conn.getresponse()
        out = resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status} {out[:200]!r}")
        return json.loads(out) if out else {}

    def put_slice(self, sl: dict) -> None:
        meta = sl["metadata"]
        self.request("PUT", f"/apis/discovery.k8s.io/v1/namespaces/{meta['namespace']}"
                            f"/endpointslices/{meta['name']}", sl)

    def control(self, verb: str) -> None:
        # a fresh connection: `down` resets every open one, ours included
        req = urllib.request.Request(self.url + "/_fake/" + verb, method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()


class Changer:
    """Headless Services' IPv4 slices, each change moving one endpoint to a new IP."""

    def __init__(self, doc: dict, zone: str = "cluster.local") -> None:
        headless = {(s["metadata"]["namespace"], s["metadata"]["name"])
                    for s in doc["items"] if s["kind"] == "Service"
                    and s["spec"].get("clusterIP") == "None"}
        self.slices = []
        for it in doc["items"]:
            if it["kind"] != "EndpointSlice" or it.get("addressType") != "IPv4":
                continue
            meta = it["metadata"]
            svc = meta["labels"]["kubernetes.io/service-name"]
            if (meta["namespace"], svc) in headless and it.get("endpoints") \
                    and meta["name"].endswith("-0"):
                body = {k: v for k, v in it.items() if k not in ("kind", "apiVersion")}
                self.slices.append((f"{svc}.{meta['namespace']}.svc.{zone}.", body))
        if not self.slices:
            raise SystemExit("the cluster has no headless Service to change")
        self.n = 0

    def next(self) -> tuple[str, str, dict]:
        name, sl = self.slices[self.n % len(self.slices)]
        self.n += 1
        ip = f"10.250.{self.n >> 8 & 255}.{self.n & 255}" if self.n < 65536 else \
            f"10.251.{self.n >> 8 & 255}.{self.n & 255}"
        ep = dict(sl["endpoints"][0])
        ep["addresses"] = [ip]
        ep["conditions"] = {"ready": True, "serving": True, "terminating": False}
        sl["endpoints"] = [ep, *sl["endpoints"][1:]]
        return name, ip, sl


# -- the run ------------------------------------------------------------------------


def scrape_programming(metrics_port: int) -> dict[str, tuple[float, float]]:
    """service_kind -> (count, sum) of coredns_kubernetes_dns_programming_duration_seconds."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, list[float]] = {}
    for m in re.finditer(r'^coredns_kubernetes_dns_programming_duration_seconds_(count|sum)'
                         r'\{service_kind="(\w+)"\} (\S+)$', text, re.M):
        out.setdefault(m.group(2), [0.0, 0.0])[m.group(1) == "sum"] = float(m.group(3))
    return {k: (v[0], v[1]) for k, v in out.items()}


def wait_answer(port: int, name: str, ip: str, timeout: float) -> float | None:
    """Seconds until ``name`` A holds ``ip`` (None on timeout)."""
    pr = Prober(port, 0.002)
    t0 = time.perf_counter()
    pr.add(1, name, ip, t0)
    while time.perf_counter() - t0 < timeout:
        for _ch, t in pr.step(time.perf_counter() + 0.005):
            return t - t0
    return None


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs) + 0.5) - 1))]


def run(args: argparse.Namespace, work: Path) -> dict:
    res: dict = {}
    t = time.perf_counter()
    doc = generate(args.services, args.endpoints_per_service, 0.2, 0.1, seed=1, pods=False)
    state = work / "cluster.json"
    state.write_text(json.dumps(doc, separators=(",", ":")))
    nendpoints = sum(len(i.get("endpoints") or ()) for i in doc["items"]
                     if i["kind"] == "EndpointSlice")
    nslices = sum(1 for i in doc["items"] if i["kind"] == "EndpointSlice")
    res["cluster"] = (f"{args.services} services, {nendpoints} endpoints in {nslices} "
                      f"EndpointSlices ({state.stat().st_size / 1e6:.0f} MB of JSON)")
    changer = Changer(doc)
    del doc
    print(f"cluster: {res['cluster']} ({time.perf_counter() - t:.1f}s)", flush=True)

    api_proc, url = start_api(state, work / "api.log")
    serve = None
    mg: memcg.MemoryGroup | None = None
    try:
        api = Api(url)
        kubeconfig = work / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}))
        port, mport = free_port(), free_port()
        (work / "Corefile").write_text(corefile(port, mport))
        log_path = work / "serve.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed below
        cmd = [sys.executable, "-m", "fastdns", "serve", "--kubeconfig", str(kubeconfig),
               "--corefile", str(work / "Corefile"), "--workers", str(args.workers)]
        if args.memory_limit is not None:  # the whole tree and its /dev/shm, as a pod
            mg = memcg.MemoryGroup(args.memory_limit or None)
            cmd = mg.argv(cmd)
            mg.sample()
        t_launch = time.perf_counter()
        serve = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        # first answer: a headless Service's current first address
        name0, sl0 = changer.slices[0]
        ready_ip = next(e["addresses"][0] for e in sl0["endpoints"]
                        if (e.get("conditions") or {}).get("ready", True))
        took = wait_answer(port, name0, ready_ip, args.startup_limit)
        if mg is not None:
            res["mem_startup_peak"] = max((u for _t, u in mg.samples), default=0.0)
        if (took is None or serve.poll() is not None) and mg is not None:
            res["startup"] = None  # under the limit it may never answer: report why
            text = log_path.read_text(errors="replace")
            res["restarts"] = restarts(text, args.workers)
            res["deaths"] = len(re.findall(r"supervisor: \S+ \(pid \d+\) died", text))
            res["supervisor_exit"] = serve.poll()
            res["log_tail"] = text[-1500:]
            return res
        if took is None or serve.poll() is not None:
            raise SystemExit(f"server not answering:\n{log_path.read_text()[-3000:]}")
        res["startup"] = time.perf_counter() - t_launch
        m = re.findall(r"supervisor: control started \(pid (\d+)\)", log_path.read_text())
        cpid = int(m[-1])
        print(f"serving after {res['startup']:.1f}s; control pid {cpid}; "
              f"RSS {proc_mem(cpid)}", flush=True)
        time.sleep(1.0)  # let the startup settle (images retired, GC frozen)

        # -- steady changes -----------------------------------------------------
        prober = Prober(port, args.poll)
        lat: list[float] = []
        interval = 1.0 / args.rate
        n_total = min(args.max_changes, int(args.duration * args.rate))
        wpid = int(re.findall(r"supervisor: worker 0 started \(pid (\d+)\)",
                              log_path.read_text())[-1])
        ru = resource.getrusage(resource.RUSAGE_SELF)
        bench_cpu0 = ru.ru_utime + ru.ru_stime
        api_cpu0, worker_cpu0 = proc_cpu(api_proc.pid), proc_cpu(wpid)
        busy0, sup_cpu0 = machine_busy(), proc_cpu(serve.pid)
        cpu0, wall0 = proc_cpu(cpid), time.perf_counter()
        next_due = wall0
        issued = 0
        put_times: list[float] = []
        deadline = wall0 + args.duration + args.settle
        while time.perf_counter() < deadline and (issued < n_total or prober.pending):
            now = time.perf_counter()
            if issued < n_total and now >= next_due:
                name, ip, sl = changer.next()
                issued += 1
                t0 = time.perf_counter()
                api.put_slice(sl)
                put_times.append(time.perf_counter() - t0)
                prober.add(issued & 0xFFFF or 1, name, ip, t0)
                next_due += interval
                continue
            until = min(next_due, now + 0.002) if issued < n_total else now + 0.002
            for ch, t in prober.step(until):
                lat.append(t - ch["t0"])
        wall = time.perf_counter() - wall0
        cpu = proc_cpu(cpid) - cpu0
        ru = resource.getrusage(resource.RUSAGE_SELF)
        res["bench_cpu"] = ru.ru_utime + ru.ru_stime - bench_cpu0
        res["api_cpu"] = proc_cpu(api_proc.pid) - api_cpu0
        res["worker_cpu"] = proc_cpu(wpid) - worker_cpu0
        # CPU the rest of the machine used meanwhile (other jobs on a shared host)
        res["other"] = (machine_busy() - busy0 - cpu - res["bench_cpu"] - res["api_cpu"]
                        - res["worker_cpu"] - (proc_cpu(serve.pid) - sup_cpu0)) / wall
        mem = proc_mem(cpid)
        res["tree_rss"], res["tree_pss"], res["tree_parts"] = tree_mem(serve.pid)
        res.update(issued=issued, seen=len(lat), lost=len(prober.pending), wall=wall,
                   cpu=cpu, rss=mem["VmRSS"], hwm=mem["VmHWM"], queries=prober.queries,
                   put_p50=statistics.median(put_times) if put_times else 0.0)
        if lat:
            res.update(p50=percentile(lat, 50), p90=percentile(lat, 90),
                       p99=percentile(lat, 99), max=max(lat))
        res["programming"] = scrape_programming(mport)
        print(f"{issued} changes, {len(lat)} seen, {len(prober.pending)} not seen; "
              f"p50 {res.get('p50', 0) * 1e3:.1f} ms p99 {res.get('p99', 0) * 1e3:.1f} ms; "
              f"control CPU {cpu:.1f}s over {wall:.1f}s; RSS {mem}; CPU s of the bench "
              f"{res['bench_cpu']:.1f}, API {res['api_cpu']:.1f}, worker {res['worker_cpu']:.1f}; "
              f"tree RSS/PSS MiB: {res['tree_parts']}", flush=True)

        # -- forced relist ----------------------------------------------------------
        name, ip, sl = changer.next()
        before = log_path.read_text()
        api.control("hang")
        api.put_slice(sl)
        api.control("compact")
        cpu0 = proc_cpu(cpid)
        t0 = time.perf_counter()
        api.control("down?seconds=0.05")
        took = wait_answer(port, name, ip, args.relist_limit)
        res["relist"] = took
        res["relist_cpu"] = proc_cpu(cpid) - cpu0
        time.sleep(0.5)
        after = log_path.read_text()[len(before):]
        delays = [float(d) for d in re.findall(
            r"EndpointSlice watch failed \(.*?\); retrying in ([0-9.]+)s", after)]
        res["relist_backoff"] = delays[0] if delays else 0.0
        res["relist_seen"] = "EndpointSlice watch: " in after or "relisting" in after
        mem = proc_mem(cpid)
        res["hwm_after_relist"] = mem["VmHWM"]
        print(f"relist: answer after {took}s (client retry delay {res['relist_backoff']}s); "
              f"RSS {mem}", flush=True)
        res["log_tail"] = after[-1500:]
        if mg is not None:  # idle after the churn and the relist
            quiet = time.monotonic()
            time.sleep(3.0)
            res["mem_steady"] = mg.steady_mib(quiet)
        res["restarts"] = restarts(log_path.read_text(), args.workers)
        stop(serve)
        serve = None
        log.close()
    finally:
        if serve is not None:
            stop(serve)
        stop(api_proc)
        if mg is not None:
            res["memcg"] = mg.report()
            mg.close()
    return res


def restarts(log: str, workers: int) -> int:
    """Respawns the supervisor logged: control and worker starts beyond the first."""
    return (len(re.findall(r"supervisor: control started", log)) - 1
            + len(re.findall(r"supervisor: worker \d+ started", log)) - workers)


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
            f"Python {platform.python_version()}; "
            f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M')} UTC")


def memory_table(res: dict, args: argparse.Namespace) -> str:
    """The cgroup's figures: what an operator's pod would see under its limit."""
    cg = res.get("memcg", {})
    limit = f"{args.memory_limit:g} MiB" if args.memory_limit else "none"
    oom = cg.get("oom_kills", -1)
    rows = [
        ("limit (memory.limit_in_bytes)", limit),
        ("first answer (launch -> synced answer)",
         f"none within {args.startup_limit:g} s" if res.get("startup") is None
         else f"{res['startup']:.1f} s"),
        ("working set peak through startup (sampled every 50 ms)",
         f"{res.get('mem_startup_peak', 0):.0f} MiB"),
        ("working set peak over the run", f"{cg.get('ws_peak_mib', 0):.0f} MiB"),
        ("usage peak, page cache included (memory.max_usage_in_bytes)",
         f"{cg.get('peak_mib', 0):.0f} MiB"),
        ("working set steady, idle after churn and relist (median)",
         "n/a" if "mem_steady" not in res else f"{res['mem_steady']:.0f} MiB"),
        ("OOM kills (memory.oom_control oom_kill)", "not reported" if oom < 0 else str(oom)),
        ("limit hits (memory.failcnt)", str(cg.get("failcnt", 0))),
        ("restarts (control and worker respawns)", str(res.get("restarts", 0))),
    ]
    if res.get("startup") is None:
        code = res.get("supervisor_exit")
        rows += [("children the supervisor saw die", str(res.get("deaths", 0))),
                 ("supervisor at the end", "running" if code is None
                  else f"exited ({code}: {'killed' if code < 0 else 'exit code'})")]
    lines = [f"Machine: {machine()}", "",
             f"Cluster: {res['cluster']}; `fastdns serve --workers {args.workers}` in a cgroup "
             "v1 memory group (the process tree and the /dev/shm pages it writes, as a pod "
             "with a memory-backed emptyDir); the fake API server outside it.", "",
             "| measure | value |", "|---|--:|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def table(res: dict, args: argparse.Namespace) -> str:
    def ms(x: float | None) -> str:
        return "n/a" if x is None else f"{x * 1e3:.1f} ms"

    def ok(good: bool) -> str:
        return "yes" if good else "**no**"

    p99 = res.get("p99")
    relist = res.get("relist")
    hwm = max(res.get("hwm", 0.0), res.get("hwm_after_relist", 0.0))
    prog = res.get("programming") or {}
    prog_txt = ", ".join(f"{k}: {int(c)} events, mean {s / c * 1e3:.1f} ms"
                         for k, (c, s) in sorted(prog.items()) if c) or "none"
    rows = [
        ("changes issued / seen / not seen",
         f"{res['issued']} / {res['seen']} / {res['lost']} in {res['wall']:.1f} s", "", ""),
        ("event -> changed answer p50", ms(res.get("p50")), "", ""),
        ("event -> changed answer p90", ms(res.get("p90")), "", ""),
        ("event -> changed answer p99", ms(p99), f"<= {TARGET_P99 * 1e3:.0f} ms",
         ok(p99 is not None and p99 <= TARGET_P99 and res["lost"] == 0)),
        ("event -> changed answer max", ms(res.get("max")), "", ""),
        ("control CPU during the changes",
         f"{res['cpu']:.1f} s over {res['wall']:.1f} s ({res['cpu'] / res['wall']:.0%})", "", ""),
        ("CPU of the worker / fake API / this prober",
         f"{res['worker_cpu']:.1f} / {res['api_cpu']:.1f} / {res['bench_cpu']:.1f} s", "", ""),
        ("other load on the machine meanwhile", f"{res['other']:.2f} CPU s/s", "", ""),
        ("control RSS at the end / peak (VmHWM)",
         f"{res['rss']:.0f} / {hwm:.0f} MiB", f"< {TARGET_RSS_MB:.0f} MB",
         ok(hwm * 1.048576 < TARGET_RSS_MB)),
        ("whole server RSS / PSS at the end (supervisor + control + worker)",
         f"{res['tree_rss']:.0f} / {res['tree_pss']:.0f} MiB", "", ""),
        ("forced full relist -> changed answer",
         "n/a" if relist is None else f"{relist:.2f} s", f"<= {TARGET_RELIST:.0f} s",
         ok(relist is not None and relist - res.get("relist_backoff", 0.0) <= TARGET_RELIST)),
        ("  of which the client's retry delay", f"{res.get('relist_backoff', 0.0):.2f} s",
         "", ""),
        ("  control CPU for the relist", f"{res.get('relist_cpu', 0.0):.1f} s", "", ""),
        ("startup (launch -> first answer, full sync)", f"{res['startup']:.1f} s", "", ""),
        ("programming latency exported (/metrics)", prog_txt, "", ""),
    ]
    lines = [f"Machine: {machine()}", "",
             f"Cluster: {res['cluster']} (bench/gen_cluster.py, 20 % headless, 10 % dual "
             f"stack); `fastdns serve --workers {args.workers}`, the fake API server in its own "
             f"process; "
             f"{args.rate:g} changes/s for {args.duration:g} s (each moves one endpoint of a "
             f"headless Service to a new IP; PUT p50 {res['put_p50'] * 1e3:.1f} ms); each "
             f"change's name queried every {args.poll * 1e3:g} ms until its answer holds the "
             f"new IP ({res['queries']} queries). Latency counts from the PUT being sent.", "",
             "| measure | value | target | met |", "|---|--:|--:|:-:|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines += ["", "The relist: open watches hung, one slice changed, the event history "
              "compacted and every connection reset, so each watch gets 410 Expired and the "
              "client lists all Namespaces, Services and EndpointSlices again; the target "
              "is checked on the time less the client's retry delay (exponential backoff "
              "after a broken connection, `fastdns/control/backoff.py`)."]
    return "\n".join(lines)


def write_results(path: Path, body: str, command: str, heading: str = SECTION) -> None:
    """Replace this benchmark's section in RESULTS.md, keeping the other sections."""
    text = path.read_text() if path.exists() else "# fastdns benchmark results\n"
    section = f"{heading}\n\nCommand: `{command}`\n\n{body}\n"
    pat = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pat.search(text):
        text = pat.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--services", type=int, default=10000)
    p.add_argument("--endpoints-per-service", type=int, default=10)
    p.add_argument("--rate", type=float, default=50.0, help="changes per second")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of changes")
    p.add_argument("--max-changes", type=int, default=5000)
    p.add_argument("--poll", type=float, default=0.001, help="re-query interval per name, s")
    p.add_argument("--settle", type=float, default=5.0, help="wait for the last changes, s")
    p.add_argument("--startup-limit", type=float, default=180.0)
    p.add_argument("--relist-limit", type=float, default=60.0)
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep its logs")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--memory-limit", type=float, default=None, metavar="MIB",
                   help="run the server in a cgroup v1 memory group with this limit, as a "
                   "pod's limits.memory (0: a group without a limit, to measure)")
    args = p.parse_args(argv)
    if args.memory_limit is not None and memcg.available():
        p.error(f"--memory-limit: {memcg.available()}")
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        res = run(args, Path(args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="bench_kube-") as tmp:
            res = run(args, Path(tmp))
    body = table(res, args) if res.get("startup") is not None else ""
    if args.memory_limit is not None:
        body = memory_table(res, args) + ("\n\n" + body if body else "")
    print()
    print(body)
    if not args.no_write:
        argv = list(argv or sys.argv[1:])
        if "--keep" in argv:  # where the logs went is no part of the measurement
            i = argv.index("--keep")
            del argv[i:i + 2]
        command = " ".join(["python3 bench/bench_kube.py", *argv])
        write_results(Path(args.results), body, command,
                      SECTION if args.memory_limit is None
                      else SECTION_MEMCG.format(limit=f"{args.memory_limit:g}",
                                                services=args.services))
        print(f"\nwritten to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
