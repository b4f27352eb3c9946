"""Helpers shared by the tests that drive real sockets and `fastdns serve`
subprocesses: free ports, a server process with its log, dnspython queries,
polling. Imported by the test modules (not fixtures: most tests start their
own server with their own Corefile)."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from fastdns.ipc import layout, shm

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "fastdns" / "demo" / "cluster.yaml"
KUBERNETES = "kubernetes.default.svc.cluster.local."
START_TIMEOUT = 30.0


def _has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_IPV6 = _has_ipv6()


def _ephemeral_low() -> int:
    """The first port the kernel hands out to connect() and bind(0)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_HANDED_OUT: set[int] = set()
_PORTS = random.Random(os.getpid() ^ time.monotonic_ns())


def _bindable(port: int, v6: bool) -> bool:
    """Whether UDP and TCP bind to ``port`` on loopback and on the wildcard."""
    addrs = [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET, "0.0.0.0")]
    if v6:
        addrs += [(socket.AF_INET6, "::1"), (socket.AF_INET6, "::")]
    for fam, addr in addrs:
        for typ in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(fam, typ) as s:
                if fam == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    s.bind((addr, port))
                except OSError:
                    return False
    return True


def free_port(v6: bool = HAS_IPV6) -> int:
    """A port free for UDP and TCP on loopback and the wildcard (and ::1, ::).

    Chosen below the kernel's ephemeral range, never from it: a port that
    bind(0) returned is in that range, and between this check and the
    server's own bind any outgoing connection (the upstream stub, the API
    client, pip) may take it as its local port, and then a wildcard bind
    fails with "address already in use" (a CI failure on stop 22). Ports
    handed out once in this process are not handed out again, as a server
    may not have bound its port yet."""
    high = min(_ephemeral_low(), 65536) - 1
    low = 10000 if high > 12000 else 1024
    for _ in range(500):
        port = _PORTS.randint(low, high)
        if port in _HANDED_OUT or not _bindable(port, v6):
            continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free port")


def wait_for(pred, timeout: float = 15.0, step: float = 0.05):
    """Poll ``pred`` until it is truthy or ``timeout`` passed; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(step)
    return pred()


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """(status, body); an HTTP error is its status, no connection is (0, "")."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def corefile_for(port: int, v6: bool = HAS_IPV6, extra: str = "", bind: bool = True) -> str:
    binds = "127.0.0.1 ::1" if v6 else "127.0.0.1"
    return (f"cluster.local:{port} in-addr.arpa:{port} ip6.arpa:{port} {{\n"
            + (f"    bind {binds}\n" if bind else "")
            + f"    kubernetes cluster.local in-addr.arpa ip6.arpa {{\n"
            f"        ttl 30\n"
            f"    }}\n"
            f"{extra}"
            f"}}\n")


def ask(name: str, rdtype: str = "A", *, port: int, where: str = "127.0.0.1",
        tcp: bool = False, timeout: float = 1.0, **kw) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)
    if tcp:
        return dns.query.tcp(q, where, port=port, timeout=timeout)
    # ignore_unexpected: a reused ephemeral port may still get a late answer
    # meant for an earlier, timed-out client socket
    return dns.query.udp(q, where, port=port, timeout=timeout, ignore_unexpected=True)


def a_records(resp: dns.message.Message) -> set[str]:
    return {rr.address for rrset in resp.answer if rrset.rdtype == dns.rdatatype.A
            for rr in rrset}


def _serve_env() -> dict[str, str]:
    """This tree first on PYTHONPATH, so the subprocess runs the code under test."""
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_serve(args: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    """`fastdns serve` run to its exit (startup errors), output captured."""
    return subprocess.run([sys.executable, "-m", "fastdns", "serve", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=_serve_env())


class Server:
    """A `python3 -m fastdns serve` subprocess, its log in a file."""

    def __init__(self, tmp: Path, args: list[str], port: int) -> None:
        self.tmp = tmp
        self.port = port
        self.log_path = tmp / "serve.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "fastdns", "serve", *args],
                                     cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=_serve_env())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def instance(self) -> str:
        m = re.search(r"shm instance (\w+)", self.log())
        assert m, self.log()
        return m.group(1)

    def pids(self, name: str) -> list[int]:
        """Every pid the supervisor logged for `name` ("control", "worker 0"), in order."""
        return [int(p) for p in re.findall(rf"\] supervisor: {name} started \(pid (\d+)\)",
                                           self.log())]

    def wait_answering(self, timeout: float = START_TIMEOUT, where: str = "127.0.0.1",
                       name: str = KUBERNETES) -> None:
        """Until ``name`` has A records and the supervisor logged that it serves."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log()}")
            try:
                r = ask(name, port=self.port, where=where, timeout=0.3)
                if r.rcode() == dns.rcode.NOERROR and a_records(r) \
                        and "] supervisor: serving " in self.log():
                    return
            except (dns.exception.Timeout, OSError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not answering after {timeout}s:\n{self.log()}")

    def worker_queries(self) -> list[int]:
        """Queries each worker counted, from the counters in shared memory."""
        with shm.ControlSegment.attach(self.instance) as ctl:
            out = []
            for i in range(ctl.nworkers):
                block = ctl.counters(i)
                w = block[: layout.W_END * 8].cast("Q")
                out.append(sum(w[layout.W_QUERIES:layout.W_QUERIES + layout.N_Q]))
                w.release()
            return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def stop_and_sweep(self, sig: int = signal.SIGTERM) -> int:
        """``stop``, then remove the shared memory a killed server leaves in /dev/shm."""
        inst = re.search(r"shm instance (\w+)", self.log())
        returncode = self.stop(sig)
        if inst:
            shm.sweep(inst.group(1))
        return returncode


def service_answered_after(api, port: int, name: str = "made-later", ip: str = "10.96.99.9",
                           where: str = "127.0.0.1", timeout: float = 3.0) -> float:
    """Create Service default/``name`` (ClusterIP ``ip``) in the fake API ``api``; the
    seconds until the server on ``where:port`` answers its A record (``timeout`` if never).

    The name must be NXDOMAIN first, so the figure is the watch-to-answer time."""
    qname = f"{name}.default.svc.cluster.local."
    assert ask(qname, port=port, where=where).rcode() == dns.rcode.NXDOMAIN
    api.create("Service", {
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "clusterIPs": [ip],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and not a_records(ask(qname, port=port, where=where)):
        time.sleep(0.01)
    return time.monotonic() - t0


@contextmanager
def serving_corefile(tmp: Path, corefile: str, port: int, workers: int = 1) -> Iterator[Server]:
    """`fastdns serve` of ``corefile`` (written to ``tmp``) on the demo state,
    answering on ``port``; stopped and swept on the way out."""
    (tmp / "Corefile").write_text(corefile)
    srv = Server(tmp, ["--corefile", str(tmp / "Corefile"), "--state", str(DEMO),
                       "--workers", str(workers)], port)
    try:
        srv.wait_answering()
        yield srv
    finally:
        srv.stop_and_sweep(signal.SIGTERM)


def scrape_metrics(mport: int) -> dict[tuple[str, frozenset], float]:
    """The /metrics of 127.0.0.1:``mport``: {(name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=2) as r:
        text = r.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}

