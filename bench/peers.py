"""fastdns against knot, nsd, unbound and a C floor, on loopback, in one run.

    python3 bench/peers.py            # ~5 minutes, writes bench/RESULTS.md
    python3 bench/peers.py --quick    # ~1 minute, smaller cluster, one run each

Why it is built this way (issue 4, item 5):
- Every server gets the same data: a synthetic cluster (``bench/gen_cluster.py``)
  that fastdns reads as a state file and the peers read as zone files rendered
  from it (``bench/querymix.py``). Each runs with one worker, pinned to CPU 1;
  dnsperf is pinned to CPU 0 and sends as fast as it can ("saturated"); the
  table says how busy that left the server's core, since on a small machine
  dnsperf may give out first.
- The C floor (``bench/floor/floor.c``) answers from a hash of the complete
  responses the first working peer (knot if present) gave to every distinct
  query in the mix; it shows what parse + hash + copy costs with no server
  around it.
- CPU per answered query comes from the server's own process tree
  (utime + stime in /proc before and after the load), not from dnsperf, so a
  server that answers fast by burning more of its core cannot hide it.
- A peer whose answers to a few probe queries are wrong is not measured: a
  misconfigured server that answers REFUSED quickly would look great.
- Nothing is installed; missing servers are skipped with the apt command. Every
  process started here is stopped by PID; all traffic is 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import dns.flags  # noqa: E402
import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402
import dns.rdatatype  # noqa: E402
import querymix as qm  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_CPU = 1
CLIENT_CPU = 0
INSTALL_HINT = "apt-get install knot nsd unbound dnsperf"
SECTION = "## Peer benchmark (bench/peers.py)"


# --------------------------------------------------------------------------
# processes


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime + stime in ticks) of one process, None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def tree(root: int) -> list[int]:
    """root and all its descendants (from /proc ppid links)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st:
                children.setdefault(st[0], []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def tree_cpu_ticks(root: int) -> int:
    return sum((_stat(p) or (0, 0))[1] for p in tree(root))


def tree_memory_kib(root: int) -> tuple[int, int]:
    """(sum of VmRSS, sum of Pss) over the process tree, in KiB."""
    pairs = [_memory_kib(p) for p in tree(root)]
    return sum(r for r, _ in pairs), sum(p for _, p in pairs)


def memory_breakdown(root: int) -> str:
    """'pid name RSS/PSS MiB' per process of the tree, for servers with several."""
    parts = []
    for p in tree(root):
        name = "?"
        with contextlib.suppress(OSError):
            name = Path(f"/proc/{p}/comm").read_text().strip()
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
            if name.startswith("python") and len(cmd) > 3:
                name = " ".join(c.decode(errors="replace") for c in cmd[1:4])[:40]
        rss, pss = _memory_kib(p)
        parts.append(f"{p} {name} {rss / 1024:.1f}/{pss / 1024:.1f}")
    return "; ".join(parts)


def _memory_kib(pid: int) -> tuple[int, int]:
    rss = pss = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if shutil.which("taskset") else argv


class Started:
    """A server process started by this script; stopped by PID, tree included."""

    def __init__(self, argv: list[str], workdir: Path, cpu: int):
        self.log = (workdir / "server.log").open("wb")
        # the tree itself, not an installed fastdns (the lead installs; helpers do not)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(pinned(cpu, argv), cwd=workdir, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self.logpath = workdir / "server.log"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def repin(self, cpu: int) -> int:
        """Pin every thread of the server's process tree to `cpu`; returns how many moved.

        `taskset` at exec sets only the starting affinity: knotd re-pins its
        UDP worker threads itself (seen in /proc/<pid>/task/*/status, on CPU 0
        where dnsperf runs), which makes server and client share one core and
        wrecks the comparison. So after startup every thread is put back.
        """
        moved = 0
        for pid in tree(self.pid):
            with contextlib.suppress(OSError):
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with contextlib.suppress(OSError):
                        if os.sched_getaffinity(int(tid)) != {cpu}:
                            os.sched_setaffinity(int(tid), {cpu})
                            moved += 1
        return moved

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 12) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.logpath.read_text(errors="replace").splitlines()[-n:])
        return ""

    def stop(self) -> None:
        pids = tree(self.pid) if self.alive() else []
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            print(f"  pid {self.pid} ignored SIGTERM for 10 s: SIGKILL", flush=True)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(timeout=5)
        deadline = time.monotonic() + 5
        for p in pids[1:]:  # children it did not reap (e.g. after a SIGKILL above)
            while _stat(p) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _stat(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
        self.log.close()


# --------------------------------------------------------------------------
# the servers


@dataclass
class Server:
    name: str
    binary: str | None
    version: str
    start: Callable[[Path, int, dict[str, Path]], list[str]]
    missing: str = ""  # why it cannot run here, with how to fix it


def _version(argv: list[str], pattern: str) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(1) if m else "?"


def zone_files(files: dict[str, Path]) -> list[tuple[str, Path]]:
    return [(z, files[z]) for z in (qm.ZONE, *qm.REVERSE_ZONES)]


def knot_argv(d: Path, port: int, zones: dict[str, Path]) -> list[str]:
    zone_lines = "".join(f'  - domain: {z}\n    file: "{p}"\n' for z, p in zone_files(zones))
    (d / "knot.conf").write_text(f"""\
server:
    rundir: "{d}"
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
control:
    listen: "{d}/knot.sock"
log:
  - target: stderr
    any: warning
database:
    storage: "{d}/db"
template:
  - id: default
    storage: "{d}"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
zone:
{zone_lines}""")
    return ["knotd", "-c", str(d / "knot.conf")]


def nsd_argv(d: Path, port: int, zones: dict[str, Path]) -> list[str]:
    zone_lines = "".join(f'zone:\n    name: "{z}"\n    zonefile: "{p}"\n'
                         for z, p in zone_files(zones))
    (d / "nsd.conf").write_text(f"""\
server:
    server-count: 1
    ip-address: 127.0.0.1@{port}
    port: {port}
    do-ip6: no
    username: ""
    chroot: ""
    zonesdir: "{d}"
    database: ""
    zonelistfile: "{d}/zone.list"
    xfrdfile: "{d}/xfrd.state"
    pidfile: "{d}/nsd.pid"
    logfile: "{d}/nsd.log"
    verbosity: 0
    # Debian's NSD has response rate limiting on (200 answers/s per /24), which
    # would drop most of a benchmark from 127.0.0.1.
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
    minimal-responses: yes
remote-control:
    control-enable: no
{zone_lines}""")
    return ["nsd", "-d", "-c", str(d / "nsd.conf")]


def unbound_argv(d: Path, port: int, zones: dict[str, Path]) -> list[str]:
    # auth-zone with for-downstream answers authoritatively from the file;
    # everything else is refused so nothing ever leaves the machine.
    local = "".join(f'    local-zone: "{z}." transparent\n' for z, _ in zone_files(zones))
    auth = "".join(f'auth-zone:\n    name: "{z}."\n    zonefile: "{p}"\n'
                   f"    for-downstream: yes\n    for-upstream: no\n"
                   f"    fallback-enabled: no\n" for z, p in zone_files(zones))
    (d / "unbound.conf").write_text(f"""\
server:
    interface: 127.0.0.1@{port}
    port: {port}
    num-threads: 1
    do-ip6: no
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{d}"
    pidfile: "{d}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 0
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
    unblock-lan-zones: yes
    insecure-lan-zones: yes
    local-zone: "." refuse
{local}remote-control:
    control-enable: no
{auth}""")
    return ["unbound", "-d", "-c", str(d / "unbound.conf")]


def floor_argv(d: Path, port: int, zones: dict[str, Path]) -> list[str]:
    return [str(zones["floor-binary"]), str(port), str(zones["floor-answers"])]


def fastdns_argv(d: Path, port: int, zones: dict[str, Path]) -> list[str]:
    # The kubeadm Corefile's shape, cut to what fastdns serves without an
    # upstream: the kubernetes plugin on cluster.local and the reverse zones.
    (d / "Corefile").write_text(f"""\
.:{port} {{
    bind 127.0.0.1
    kubernetes {qm.ZONE} in-addr.arpa ip6.arpa
}}
""")
    return [sys.executable, "-m", "fastdns", "serve", "--state", str(zones["state"]),
            "--corefile", str(d / "Corefile"), "--workers", "1"]


def discover() -> list[Server]:
    servers = []
    for name, binary, vargv, pat, fn in (
        ("knot", "knotd", ["knotd", "-V"], r"version ([\w.]+)", knot_argv),
        ("nsd", "nsd", ["nsd", "-v"], r"NSD version ([\w.]+)", nsd_argv),
        ("unbound", "unbound", ["unbound", "-V"], r"Version ([\w.]+)", unbound_argv),
    ):
        path = shutil.which(binary) or (f"/usr/sbin/{binary}"
                                        if Path(f"/usr/sbin/{binary}").exists() else None)
        if path:
            servers.append(Server(name, path, _version(vargv, pat), fn))
        else:
            servers.append(Server(name, None, "", fn,
                                  f"{binary} not found: {INSTALL_HINT}"))
    cc = shutil.which("gcc") or shutil.which("cc")
    servers.append(Server("C floor", cc, "recvmmsg/sendmmsg", floor_argv,
                          "" if cc else "no C compiler: apt-get install gcc"))
    missing = ""
    if importlib.util.find_spec("fastdns.supervisor") is None:
        missing = "fastdns.supervisor is not there yet (the data plane is unfinished)"
    servers.append(Server("fastdns", sys.executable, _fastdns_version(), fastdns_argv, missing))
    return servers


def _fastdns_version() -> str:
    try:
        import fastdns

        return getattr(fastdns, "__version__", "?")
    except ImportError:
        return "?"


# --------------------------------------------------------------------------
# correctness: probes before load, and the answers the floor replays


@dataclass
class Probe:
    qname: str
    qtype: str
    rcode: int
    answers: frozenset[str]  # rdata texts of the answer RRset of qtype
    critical: bool  # a wrong answer here means the server is misconfigured


def make_probes(rec: qm.Records) -> list[Probe]:
    rr = rec.rrsets
    out: list[Probe] = []

    def want(owner: str, rtype: str) -> frozenset[str]:
        return frozenset(x.lower() for x in rr.get((owner, rtype), ()))

    cip = next(s for s in rec.services if not s.headless and (s.fqdn, "A") in rr and s.srv_names)
    out.append(Probe(cip.fqdn, "A", 0, want(cip.fqdn, "A"), True))
    out.append(Probe(cip.srv_names[0], "SRV", 0, want(cip.srv_names[0], "SRV"), False))
    v4only = next((s for s in rec.services if s.has_a and not s.has_aaaa), None)
    if v4only:
        out.append(Probe(v4only.fqdn, "AAAA", 0, frozenset(), True))
    headless = next((s for s in rec.services if s.headless and (s.fqdn, "A") in rr), None)
    if headless:
        out.append(Probe(headless.fqdn, "A", 0, want(headless.fqdn, "A"), True))
    dual = next((s for s in rec.services if s.has_a and s.has_aaaa), None)
    if dual:
        out.append(Probe(dual.fqdn, "AAAA", 0, want(dual.fqdn, "AAAA"), True))
    out.append(Probe(f"{cip.fqdn.rstrip('.')}.{cip.namespace}.svc.{qm.ZONE}.", "A", 3,
                     frozenset(), True))
    out.append(Probe(f"no-such-service.{cip.namespace}.svc.{qm.ZONE}.", "A", 3,
                     frozenset(), True))
    ptr_owner = next(iter(rec.ptr), None)
    if ptr_owner:
        out.append(Probe(ptr_owner, "PTR", 0, frozenset(t.lower() for t in rec.ptr[ptr_owner]),
                         False))
    return out


def ask(port: int, qname: str, qtype: str, timeout: float = 1.0) -> dns.message.Message:
    q = dns.message.make_query(qname, qtype)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)


def check_probes(port: int, probes: list[Probe]) -> tuple[list[str], list[str]]:
    """(critical failures, other differences) of a server's answers to the probes."""
    bad, warn = [], []
    for p in probes:
        try:
            r = ask(port, p.qname, p.qtype)
        except Exception as exc:  # noqa: BLE001 - any failure to answer is a finding
            bad.append(f"{p.qname} {p.qtype}: {type(exc).__name__}")
            continue
        got = frozenset(rd.to_text().lower() for rrset in r.answer
                        if rrset.rdtype == dns.rdatatype.from_text(p.qtype) for rd in rrset)
        problems = []
        if r.rcode() != p.rcode:
            problems.append(f"rcode {dns.rcode.to_text(r.rcode())} != "
                            f"{dns.rcode.to_text(p.rcode)}")
        if got != p.answers:
            problems.append(f"answer {sorted(got)[:3]} != {sorted(p.answers)[:3]}")
        if not r.flags & dns.flags.AA:
            problems.append("AA not set")
        if p.rcode == 3 or (p.rcode == 0 and not p.answers):
            if not any(rs.rdtype == dns.rdatatype.SOA for rs in r.authority):
                problems.append("negative answer without SOA")
        if problems:
            (bad if p.critical else warn).append(f"{p.qname} {p.qtype}: " + "; ".join(problems))
    return bad, warn


def wait_answering(srv: Started, port: int, probe: Probe, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and srv.alive():
        with contextlib.suppress(Exception):
            ask(port, probe.qname, probe.qtype, timeout=0.3)
            return True
        time.sleep(0.2)
    return False


Distinct = list[tuple[str, str, str]]  # (name, qtype, kind) in a fixed order


def fetch_all(port: int, uniq: Distinct) -> dict[int, bytes]:
    """Ask every distinct query once and return the raw answers by index.

    Pipelined over one socket (a window of queries in flight) so 30k names take
    about a second; unanswered ones are retried twice.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(1.0)
    got: dict[int, bytes] = {}
    wires = []
    for i, (name, qtype, _) in enumerate(uniq):
        m = dns.message.make_query(name, qtype)
        m.id = i & 0xFFFF
        wires.append(m.to_wire())
    for _ in range(3):
        todo = [i for i in range(len(uniq)) if i not in got]
        for start in range(0, len(todo), 256):
            window = todo[start:start + 256]
            pending = {i & 0xFFFF: i for i in window}
            for i in window:
                sock.send(wires[i])
            while pending:
                try:
                    data = sock.recv(4096)
                except TimeoutError:
                    break
                i = pending.pop(int.from_bytes(data[:2], "big"), None)
                if i is not None and data[12:].startswith(wires[i][12:]):
                    got[i] = data
        if len(got) == len(uniq):
            break
    sock.close()
    return got


def write_floor(uniq: Distinct, got: dict[int, bytes], path: Path) -> tuple[int, list[str]]:
    """The floor's answer file from the reference's answers; check each against its kind."""
    import dns.name

    problems: list[str] = []
    truncated = 0
    with path.open("wb") as f:
        for i, (name, qtype, kind) in enumerate(uniq):
            data = got.get(i)
            if data is None:
                problems.append(f"{name} {qtype}: no answer")
                continue
            rcode = data[3] & 0xF
            ancount = int.from_bytes(data[6:8], "big")
            if data[2] & 0x02:  # TC: too big for 512 octets without EDNS (RFC 1035 §4.2.1)
                truncated += 1
            elif kind == "probe":
                pass
            elif (rcode == 3) != (kind == "NXDOMAIN") or \
                    (kind == "AAAA-NODATA") != (rcode == 0 and not ancount):
                problems.append(f"{name} {qtype} ({kind}): rcode {rcode} ancount {ancount}")
            key = dns.name.from_text(name).canonicalize().to_wire()
            qt = dns.rdatatype.from_text(qtype)
            resp = b"\0\0" + data[2:]
            f.write(len(key).to_bytes(2, "big") + key + qt.to_bytes(2, "big")
                    + len(resp).to_bytes(2, "big") + resp)
    return truncated, problems


def _digest(data: bytes) -> tuple[tuple[object, ...], frozenset[str]]:
    """(what must match, the additional section); order and case do not matter.

    In the authority section only the SOA's owner, TTL and timers count: the
    serial is each server's own (fastdns: time of the last change), and an NS
    RRset next to a positive answer is a server's policy (NSD adds it).
    """
    m = dns.message.from_wire(data)

    def rrs(section: list) -> frozenset[str]:
        return frozenset(f"{rs.name.to_text().lower()} {rs.ttl} {rs.rdtype} {rd.to_text().lower()}"
                         for rs in section for rd in rs)

    soa = frozenset(f"{rs.name.to_text().lower()} {rs.ttl} {rd.mname} {rd.rname} {rd.refresh} "
                    f"{rd.retry} {rd.expire} {rd.minimum}".lower()
                    for rs in m.authority if rs.rdtype == dns.rdatatype.SOA for rd in rs)
    return ((m.rcode(), bool(m.flags & dns.flags.AA), bool(m.flags & dns.flags.TC),
             rrs(m.answer), soa), rrs(m.additional))


def compare_all(uniq: Distinct, ref: dict[int, bytes],
                got: dict[int, bytes]) -> tuple[int, int, list[str]]:
    """(answers that differ from the reference's, additional sections that differ, examples)."""
    differ = extra = 0
    examples: list[str] = []
    for i, (name, qtype, _) in enumerate(uniq):
        if i not in ref:
            continue
        if i not in got:
            differ += 1
            examples.append(f"{name} {qtype}: no answer")
            continue
        (a, a_add), (b, b_add) = _digest(ref[i]), _digest(got[i])
        if a != b:
            differ += 1
            if len(examples) < 5:
                examples.append(f"{name} {qtype}: {b} != reference {a}")
        elif a_add != b_add:
            extra += 1
    return differ, extra, examples


# --------------------------------------------------------------------------
# load


@dataclass
class Run:
    sent: int = 0
    completed: int = 0
    lost: int = 0
    qps: float = 0.0
    latency_us: float = 0.0
    cpu_us_per_q: float = float("nan")
    cpu_share: float = 0.0  # server CPU seconds per wall second
    others: float = 0.0  # CPU seconds per second used by neither the server nor dnsperf
    rcodes: dict[str, int] = field(default_factory=dict)

    @property
    def loss(self) -> float:
        return self.lost / self.sent if self.sent else float("nan")


def _busy_ticks() -> int:
    """Non-idle jiffies of the whole machine (/proc/stat: all but idle and iowait)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(f[:8]) - f[3] - f[4]


def dnsperf(port: int, datafile: Path, seconds: float, server_pid: int, extra: list[str]) -> Run:
    """One bounded dnsperf load; the server tree's CPU is read around it."""
    argv = pinned(CLIENT_CPU, ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(datafile),
                               "-l", f"{seconds:g}", "-t", "2", *extra])
    with tempfile.TemporaryFile("w+") as out:
        t0, c0, b0 = time.monotonic(), tree_cpu_ticks(server_pid), _busy_ticks()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = t0 + seconds + 30
        while True:  # wait4 gives dnsperf's own CPU time, to tell other load apart
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        c1, b1, t1 = tree_cpu_ticks(server_pid), _busy_ticks(), time.monotonic()
        out.seek(0)
        text = out.read()
    if proc.returncode != 0 or "Queries sent" not in text:
        raise RuntimeError(f"dnsperf failed ({proc.returncode}): {text[-500:]}")

    def num(label: str) -> float:
        m = re.search(label + r":\s+([\d.]+)", text)
        return float(m.group(1)) if m else float("nan")

    r = Run(sent=int(num("Queries sent")), completed=int(num("Queries completed")),
            lost=int(num("Queries lost")), qps=num("Queries per second"),
            latency_us=num(r"Average Latency \(s\)") * 1e6)
    m = re.search(r"Response codes:\s+(.*)", text)
    if m:
        r.rcodes = {k: int(v) for k, v in re.findall(r"(\w+) (\d+)", m.group(1))}
    wall = t1 - t0
    cpu_s = (c1 - c0) / CLK_TCK
    r.cpu_share = cpu_s / wall
    client_s = usage.ru_utime + usage.ru_stime
    r.others = max(0.0, (b1 - b0) / CLK_TCK - cpu_s - client_s) / wall
    if r.completed:
        r.cpu_us_per_q = cpu_s * 1e6 / r.completed
    return r


@dataclass
class Result:
    name: str
    version: str
    status: str = "ok"  # or why it was not measured
    saturated: list[Run] = field(default_factory=list)
    fixed: Run | None = None
    matched: Run | None = None
    rss_kib: int = 0
    pss_kib: int = 0
    warnings: list[str] = field(default_factory=list)
    proc: Started | None = None
    port: int = 0
    differ: str = "–"  # answers that differ from the reference peer's, over the whole mix

    def med(self, attr: str) -> float:
        vals = [getattr(r, attr) for r in self.saturated]
        return statistics.median(vals) if vals else float("nan")


def start_checked(server: Server, work: Path, files: dict[str, Path], probes: list[Probe],
                  args: argparse.Namespace) -> Result:
    """Start one server and check its answers; a Result whose proc is None was not started."""
    res = Result(server.name, server.version)
    if server.missing:
        res.status = "skipped: " + server.missing
        print(f"[{server.name}] {res.status}", flush=True)
        return res
    d = work / server.name.replace(" ", "-")
    d.mkdir()
    port = free_port()
    argv = server.start(d, port, files)
    print(f"[{server.name}] starting on 127.0.0.1:{port} (CPU {SERVER_CPU}): {' '.join(argv)}",
          flush=True)
    srv = Started(argv, d, SERVER_CPU)
    t0 = time.monotonic()
    if not wait_answering(srv, port, probes[0], args.start_timeout):
        res.status = ("skipped: did not answer within "
                      f"{args.start_timeout:.0f} s" + ("" if srv.alive() else " (exited)"))
        print(f"[{server.name}] {res.status}\n{srv.log_tail()}", flush=True)
        srv.stop()
        return res
    bad, warn = check_probes(port, probes)
    res.warnings = warn
    for w in warn:
        print(f"[{server.name}] probe difference: {w}", flush=True)
    if bad:
        res.status = "skipped: wrong answers: " + " | ".join(bad)
        print(f"[{server.name}] {res.status}", flush=True)
        srv.stop()
        return res
    moved = srv.repin(SERVER_CPU)
    print(f"[{server.name}] answering after {time.monotonic() - t0:.1f} s; probes ok "
          f"({len(probes) - len(warn)}/{len(probes)} exact); "
          f"{moved} thread(s) re-pinned to CPU {SERVER_CPU}", flush=True)
    res.proc, res.port = srv, port
    return res


SATURATED, FIXED, MATCHED = "saturated", "fixed-rate", "matched-load"


def load_round(res: Result, files: dict[str, Path], args: argparse.Namespace,
               mode: str) -> None:
    """One run of `mode` against a started server; the result lands on `res`."""
    if res.proc is None or res.status != "ok":
        return
    name = res.name
    if time.monotonic() + args.seconds + 5 > args.deadline:
        print(f"[{name}] {mode} run skipped: time budget (--budget {args.budget:g} s) spent",
              flush=True)
        return
    try:
        if mode == SATURATED:
            r = dnsperf(res.port, files["queries"], args.seconds, res.proc.pid,
                        ["-c", str(args.clients), "-q", str(args.outstanding)])
            res.saturated.append(r)
            rss, pss = tree_memory_kib(res.proc.pid)
            res.rss_kib, res.pss_kib = max(res.rss_kib, rss), max(res.pss_kib, pss)
            if len(res.saturated) == 1:
                print(f"[{name}] memory by process: {memory_breakdown(res.proc.pid)}", flush=True)
            print(f"[{name}] saturated run {len(res.saturated)}: {r.qps:,.0f} QPS, "
                  f"{r.latency_us:.0f} us avg, lost {r.lost}/{r.sent}, "
                  f"{r.cpu_us_per_q:.2f} us CPU/query (server busy {r.cpu_share:.0%}, "
                  f"other load {r.others:.2f} CPU), rcodes {r.rcodes}", flush=True)
            return
        if mode == FIXED:
            rate, extra = args.rate, ["-c", "1", "-q", "100"]
        else:  # the saturated mode's clients, capped at a rate every server reached
            rate, extra = args.matched_rate, ["-c", str(args.clients), "-q", str(args.outstanding)]
        r = dnsperf(res.port, files["queries"], args.seconds, res.proc.pid,
                    [*extra, "-Q", str(rate)])
        setattr(res, "fixed" if mode == FIXED else "matched", r)
        print(f"[{name}] {mode} {rate}/s: {r.qps:,.0f} QPS, {r.latency_us:.0f} us avg, "
              f"lost {r.lost}/{r.sent}, {r.cpu_us_per_q:.2f} us CPU/query "
              f"(other load {r.others:.2f} CPU)", flush=True)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        res.status = f"failed: {exc}"
        print(f"[{name}] {res.status}", flush=True)
    if not res.proc.alive():
        res.status = "exited during the load"
        print(f"[{name}] {res.status}\n{res.proc.log_tail()}", flush=True)


def matched_rate(results: list[Result]) -> int:
    """80 % of the lowest median saturated QPS (rounded down to 1,000), at least 10,000.

    CPU per query falls as load rises (bigger batches, fewer wake-ups), and
    dnsperf does not push every server equally hard; at one rate all of them
    reach, the CPU comparison is like for like.
    """
    meds = [r.med("qps") for r in results if r.saturated]
    return max(10_000, int(min(meds) * 0.8) // 1000 * 1000) if meds else 10_000


# --------------------------------------------------------------------------
# report


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    dp = _version(["dnsperf", "-h"], r"Version ([\w.]+)")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{model}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
            f"Python {platform.python_version()}, dnsperf {dp}; {now}")


def _f(x: float, fmt: str) -> str:
    return "–" if x != x else format(x, fmt)  # NaN -> dash


def tables(results: list[Result], args: argparse.Namespace, meta: dict[str, str]) -> str:
    knot = next((r for r in results if r.name == "knot" and r.saturated), None)
    kq = knot.med("qps") if knot else float("nan")
    kc = knot.med("cpu_us_per_q") if knot else float("nan")
    lines = [
        f"Machine: {meta['machine']}",
        "",
        f"Cluster: {meta['cluster']}. Query mix ({meta['mix']}): service A 70 %, SRV 10 %, "
        "AAAA NODATA 10 %, ndots:5 NXDOMAIN expansions 10 %, lowercase, no EDNS (like glibc "
        f"and musl stub resolvers), so large answers are truncated: {meta['truncated']}.",
        "",
        f"Saturated: server (one worker) on CPU {SERVER_CPU}, `dnsperf -c {args.clients} "
        f"-q {args.outstanding} -l {args.seconds:g}` on CPU {CLIENT_CPU}; median of "
        f"{args.runs} run(s), the servers' runs interleaved. CPU/query = the server process "
        "tree's utime+stime over answered queries; server busy = that CPU time per second "
        "(below 100 % means dnsperf, not the server, was the limit); other load = CPU seconds "
        "per second used on the machine by neither the server nor dnsperf during the run. "
        "RSS/PSS: summed over the process tree, largest seen after a saturated run.",
        "",
        "| server | version | QPS | QPS ×knot | avg latency µs | loss | CPU µs/query "
        "| CPU ×knot | server busy | other load | RSS MiB | PSS MiB | answers ≠ ref |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        if not r.saturated:
            lines.append(f"| {r.name} | {r.version} | {r.status} |" + " |" * 10)
            continue
        q, c = r.med("qps"), r.med("cpu_us_per_q")
        loss = statistics.median(x.loss for x in r.saturated)
        lines.append(
            f"| {r.name} | {r.version} | {q:,.0f} | {_f(q / kq, '.2f')} | "
            f"{r.med('latency_us'):.0f} | {loss:.3%} | {c:.2f} | {_f(c / kc, '.2f')} | "
            f"{r.med('cpu_share'):.0%} | {r.med('others'):.2f} | {r.rss_kib / 1024:.1f} | "
            f"{r.pss_kib / 1024:.1f} | {r.differ} |")
    lines += ["", "Each saturated run (QPS, CPU µs/query, other load): " + "; ".join(
        f"{r.name} " + ", ".join(f"{x.qps / 1000:.0f}k/{x.cpu_us_per_q:.2f}/{x.others:.1f}"
                                 for x in r.saturated)
        for r in results if r.saturated) + "."]
    for attr, title in (
        ("matched", f"Matched load: `dnsperf -Q {args.matched_rate} -c {args.clients} "
                    f"-q {args.outstanding} -l {args.seconds:g}`, one run; the rate is 80 % of "
                    "the lowest median saturated QPS above, so every server gets the same load "
                    "and CPU/query compares like for like."),
        ("fixed", f"Fixed rate: `dnsperf -Q {args.rate} -c 1 -q 100 -l {args.seconds:g}`, "
                  "one run; at this rate wake-ups dominate the CPU per query."),
    ):
        ref = getattr(knot, attr, None) if knot else None
        lines += ["", title, "",
                  "| server | QPS | avg latency µs | loss | CPU µs/query | CPU ×knot | server busy "
                  "| other load |", "|---|--:|--:|--:|--:|--:|--:|--:|"]
        for r in results:
            f = getattr(r, attr)
            if f is None:
                continue
            ratio = f.cpu_us_per_q / ref.cpu_us_per_q if ref else float("nan")
            lines.append(f"| {r.name} | {f.qps:,.0f} | {f.latency_us:.0f} | {f.loss:.3%} | "
                         f"{f.cpu_us_per_q:.2f} | {_f(ratio, '.2f')} | {f.cpu_share:.0%} | "
                         f"{f.others:.2f} |")
    fd = next((r for r in results if r.name == "fastdns" and r.saturated), None)
    if fd and knot:
        q, c = fd.med("qps") / kq, fd.med("cpu_us_per_q") / kc
        lost = sum(x.lost for x in fd.saturated)
        ok = q >= 0.95 and c <= 0.90 and lost == 0
        lines += ["", f"Issue 4 target (saturated, same run: QPS ≥ 0.95× knot, CPU/query ≤ 0.90× "
                  f"knot, zero loss): {'met' if ok else 'not met'} (QPS {q:.2f}×, CPU {c:.2f}×, "
                  f"{lost} lost)."]
        if fd.matched and knot.matched:
            lines[-1] += (f" At the matched load: CPU/query "
                          f"{fd.matched.cpu_us_per_q / knot.matched.cpu_us_per_q:.2f}× knot, "
                          f"{fd.matched.lost} lost.")
    notes = [f"- {r.name}: probe difference (measured anyway): {w}"
             for r in results for w in r.warnings]
    notes += [f"- {r.name}: {r.status}" for r in results if r.status != "ok" and r.saturated]
    notes += [f"- {r.name}: {len(r.saturated)} of {args.runs} saturated runs (time budget)"
              for r in results if r.saturated and len(r.saturated) < args.runs]
    if notes:
        lines += ["", *notes]
    lines += ["", f"Correctness: every server first answered {meta['nprobes']} probe queries "
              "as the zone data says (else it is not measured), then every distinct query of "
              f"the mix once; \"answers ≠ ref\" counts answers whose rcode, AA, TC, answer "
              "section (as a set) or authority SOA (serial aside) differ from the reference "
              f"peer's ({meta['reference']})"
              "; \"addl.\" counts those equal but for the additional section.", "",
              "The C floor replays the complete answers the reference peer gave to each distinct "
              "query (hash of the lowercased qname + qtype, ID and RD/CD patched from the query; "
              "one thread, recvmmsg/sendmmsg batches of 64), so it does the per-packet work of a "
              "server and nothing else.", ""]
    return "\n".join(lines)


def write_results(path: Path, body: str, command: str) -> None:
    """Replace this benchmark's section in RESULTS.md, keeping the other sections."""
    text = path.read_text() if path.exists() else "# fastdns benchmark results\n"
    section = f"{SECTION}\n\nCommand: `{command}`\n\n{body}"
    pat = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pat.search(text):
        text = pat.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


# --------------------------------------------------------------------------
# main


def make_state(work: Path, args: argparse.Namespace) -> Path:
    if args.state:
        return Path(args.state)
    out = work / "state.json"
    gen = HERE / "gen_cluster.py"
    cmd = ["--services", str(args.services), "--endpoints-per-service", str(args.endpoints),
           "--headless-share", str(args.headless_share),
           "--dualstack-share", str(args.dualstack_share), "-o", str(out)]
    if gen.exists():
        proc = subprocess.run([sys.executable, str(gen), *cmd], capture_output=True, text=True,
                              timeout=120, cwd=ROOT)
        if proc.returncode == 0 and out.exists():
            print(f"cluster: bench/gen_cluster.py {' '.join(cmd)}", flush=True)
            return out
        print(f"bench/gen_cluster.py failed ({proc.returncode}): {proc.stderr[-300:]}; "
              "using bench/querymix.py's generator", flush=True)
    else:
        print("bench/gen_cluster.py not found; using bench/querymix.py's generator", flush=True)
    out.write_text(json.dumps(qm.generate_state(args.services, args.endpoints,
                                                args.headless_share, args.dualstack_share)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="~1 minute: 2000 services, 3 s loads, one saturated run each")
    p.add_argument("--services", type=int, default=None)
    p.add_argument("--endpoints", type=int, default=3, help="endpoints per service")
    p.add_argument("--headless-share", type=float, default=0.1)
    p.add_argument("--dualstack-share", type=float, default=0.2)
    p.add_argument("--state", help="use this state file instead of generating one")
    p.add_argument("--queries", type=int, default=None, help="lines in the dnsperf input")
    p.add_argument("--seconds", type=float, default=None, help="length of each load")
    p.add_argument("--runs", type=int, default=None, help="saturated runs per server")
    p.add_argument("--rate", type=int, default=10000, help="fixed-rate mode QPS")
    # -c 2 -q 100: the most load dnsperf gives here without knot dropping the burst
    # (-q 500 overflows knot's socket buffer: ~0.15 % loss for no more QPS).
    p.add_argument("--clients", type=int, default=2, help="dnsperf -c when saturated")
    p.add_argument("--outstanding", type=int, default=100, help="dnsperf -q when saturated")
    p.add_argument("--only", help="comma-separated subset: knot,nsd,unbound,floor,fastdns")
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run; loads that would overrun it are skipped "
                        "(default 360, --quick 90)")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    args.services = args.services or (2000 if args.quick else 10000)
    args.queries = args.queries or (20000 if args.quick else 100000)
    args.seconds = args.seconds or (3.0 if args.quick else 8.0)
    args.runs = args.runs or (1 if args.quick else 3)
    args.matched_rate = 10_000
    args.budget = args.budget or (90.0 if args.quick else 360.0)

    if not shutil.which("dnsperf"):
        print(f"dnsperf not found: {INSTALL_HINT}", file=sys.stderr)
        return 2
    global SERVER_CPU
    if (os.cpu_count() or 1) < 2:
        SERVER_CPU = 0
        print("warning: one CPU only; server and dnsperf share it", flush=True)

    t_start = time.monotonic()
    args.deadline = t_start + args.budget
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every server started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="fastdns-peers-"))
    try:
        state = make_state(work, args)
        objects = qm.load_objects(state)
        rec = qm.build_records(objects)
        zones = qm.write_zones(rec, work / "zones")
        mix = qm.build_mix(rec, args.queries)
        queries = work / "queries.txt"
        qm.write_dnsperf(mix, queries)
        probes = make_probes(rec)
        nsvc = len(rec.services)
        meta = {"cluster": f"{nsvc} services, {sum(len(v) for v in rec.rrsets.values())} "
                           f"records + {len(rec.ptr)} PTR names",
                "mix": f"{len(mix)} queries, {len(set(mix))} distinct",
                "machine": machine(), "reference": "none", "truncated": "not checked",
                "nprobes": str(len(probes))}
        print(f"{meta['cluster']}; {meta['mix']}; work dir {work}", flush=True)

        servers = discover()
        if args.only:
            keep = {s.strip().lower() for s in args.only.split(",")}
            servers = [s for s in servers if s.name.split()[-1].lower() in keep
                       or s.name.lower() in keep]
        files: dict[str, Path] = {**zones, "queries": queries, "state": state,
                                  "floor-answers": work / "floor-answers.bin",
                                  "floor-binary": work / "floor"}

        uniq: Distinct = list(dict.fromkeys(
            [(q.name, q.qtype, q.kind) for q in mix]
            + [(pr.qname, pr.qtype, "probe") for pr in probes]))
        reference: dict[int, bytes] = {}

        def check_all(res: Result) -> None:
            """The first peer that passes the probes is the reference; the rest are compared."""
            got = fetch_all(res.port, uniq)
            if not reference and res.name in ("knot", "nsd", "unbound"):
                reference.update(got)
                tc, problems = write_floor(uniq, got, files["floor-answers"])
                meta["reference"] = res.name
                meta["truncated"] = f"{tc} of {len(uniq)} distinct queries"
                print(f"[{res.name}] reference: {len(got)}/{len(uniq)} distinct answers recorded "
                      f"for the C floor ({tc} truncated at 512 octets); {len(problems)} not as "
                      "the mix expects", flush=True)
                for pr in problems[:10]:
                    print(f"    {pr}", flush=True)
                res.differ = f"ref ({len(problems)} ≠ mix)"
                return
            if not reference:
                return
            differ, extra, examples = compare_all(uniq, reference, got)
            res.differ = f"{differ}/{len(uniq)}" + (f" (+{extra} addl.)" if extra else "")
            print(f"[{res.name}] answers differing from {meta['reference']}: {differ} of "
                  f"{len(uniq)}; additional sections differing: {extra}", flush=True)
            for ex in examples:
                print(f"    {ex}", flush=True)
            if differ > len(uniq) // 100 and res.proc:  # misconfigured: do not report its speed
                res.status = f"skipped: {differ} of {len(uniq)} answers differ from the reference"
                print(f"[{res.name}] {res.status}", flush=True)
                res.proc.stop()
                res.proc = None

        # Start everything first (the reference peer before the floor, which replays
        # its answers), then interleave the runs: on a shared machine a burst of
        # other load then spreads over all servers instead of hitting one.
        results: list[Result] = []
        try:
            for s in servers:
                if s.name == "C floor" and not s.missing:
                    if not files["floor-answers"].exists():
                        s.missing = "no reference peer answered, nothing to replay"
                    else:
                        cc = subprocess.run(
                            [s.binary, "-O2", "-Wall", "-o", str(files["floor-binary"]),
                             str(HERE / "floor" / "floor.c")], capture_output=True, text=True)
                        if cc.returncode:
                            s.missing = f"gcc failed: {cc.stderr[-300:]}"
                res = start_checked(s, work, files, probes, args)
                results.append(res)
                if res.proc:
                    check_all(res)
            for _ in range(args.runs):
                for res in results:
                    load_round(res, files, args, SATURATED)
            args.matched_rate = matched_rate(results)
            for res in results:
                load_round(res, files, args, MATCHED)
            for res in results:
                load_round(res, files, args, FIXED)
        finally:
            for res in results:
                if res.proc:
                    res.proc.stop()
        body = tables(results, args, meta)
        print("\n" + body)
        cmd = "python3 bench/peers.py" + (" " + " ".join(argv if argv is not None
                                                          else sys.argv[1:])).rstrip()
        if not args.no_write:
            write_results(Path(args.results), body, cmd.strip())
            print(f"written to {args.results}")
        print(f"total {time.monotonic() - t_start:.0f} s")
        return 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
