"""The servers of bench/bench_forward.py: configs for dnsdist, unbound and fastdns, and knot.

Each ``*_argv(d, port, backend)`` writes its config into the directory ``d``
and returns the command line of a server that listens on 127.0.0.1:``port``
in the foreground and forwards to knot at 127.0.0.1:``backend``; nothing
here reaches past loopback. ``knot_backend`` is bench/peers.py's knot with
the peer benchmark's zones.
"""

from __future__ import annotations

import sys
from pathlib import Path

from peers import knot_argv

# The NodeLocal DNSCache Corefile as the tests keep it (the kubernetes addon's
# ConfigMap with its placeholders filled in).
NODELOCAL = Path(__file__).resolve().parent.parent / "tests" / "corefiles" / "nodelocaldns.Corefile"


def knot_backend(d: Path, port: int, zones: dict[str, Path]) -> list[str]:
    return knot_argv(d, port, zones)


def dnsdist_argv(d: Path, port: int, backend: int, *, cache: bool = False,
                 tcp_only: bool = False) -> list[str]:
    """dnsdist with one UDP/TCP listener and knot as its one backend.

    No packet cache unless ``cache`` (then one large enough for the mix, TTLs
    as given). ``tcp_only``: every query goes to knot over TCP (dnsdist
    keeps and reuses those connections). The health check asks the zone's
    SOA, which knot answers. No console, no carbon, no web server.
    """
    opts = [f'address="127.0.0.1:{backend}"', 'name="knot"', 'checkName="cluster.local."',
            'checkType="SOA"']
    if tcp_only:
        opts.append("tcpOnly=true")
    # no security polling: it would ask the system resolver, off the machine
    lines = ['setSecurityPollSuffix("")', f'setLocal("127.0.0.1:{port}")',
             f"newServer{{{', '.join(opts)}}}",
             "setServerPolicy(firstAvailable)"]
    if cache:
        lines += ["pc = newPacketCache(200000, {maxTTL=86400, minTTL=0})",
                  'getPool(""):setCache(pc)']
    (d / "dnsdist.conf").write_text("\n".join(lines) + "\n")
    return ["dnsdist", "--supervised", "--disable-syslog", "-C", str(d / "dnsdist.conf")]


# What unbound keeps even so: its infrastructure cache (the backend's RTT),
# and, since it keeps TTLs in whole seconds, an answer capped to TTL 0 may
# still be served for the rest of the second it arrived in (not verified
# here: knot's query count is not read).
UNBOUND_CACHE_LEFT = ("unbound as a forwarder, `cache-max-ttl: 0`, `cache-max-negative-ttl: 0`, "
                      "smallest caches: its cache cannot be switched off, and an answer stored "
                      "with TTL 0 may still serve the rest of that second")


def unbound_argv(d: Path, port: int, backend: int) -> list[str]:
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
    do-not-query-localhost: no
    qname-minimisation: no
    prefetch: no
    serve-expired: no
    cache-max-ttl: 0
    cache-max-negative-ttl: 0
    msg-cache-size: 0
    rrset-cache-size: 0
    key-cache-size: 0
    neg-cache-size: 0
    unblock-lan-zones: yes
    insecure-lan-zones: yes
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@{backend}
""")
    return ["unbound", "-d", "-c", str(d / "unbound.conf")]


def fastdns_argv(d: Path, port: int, backend: int, *, cache: bool = False,
                 force_tcp: bool = False, workers: int = 1) -> list[str]:
    """fastdns forwarding everything to knot: ``forward . knot``, optionally ``cache 30``."""
    fwd = f"forward . 127.0.0.1:{backend}" + (" {\n        force_tcp\n    }" if force_tcp else "")
    (d / "Corefile").write_text(f".:{port} {{\n    bind 127.0.0.1\n    {fwd}\n"
                                + ("    cache 30\n" if cache else "") + "}\n")
    return fastdns_serve(d, workers)


def fastdns_serve(d: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "fastdns", "serve", "--corefile", str(d / "Corefile"),
            "--workers", str(workers)]


def nodelocal_argv(d: Path, port: int, backend: int, extra_ports: tuple[int, int]) -> list[str]:
    """NodeLocal DNSCache's Corefile, unchanged but for the addresses.

    The listen port and ``bind`` become this run's loopback port, every
    ``forward`` goes to knot (the ``.`` block's ``/etc/resolv.conf`` too: a
    benchmark never leaves the machine), ``prometheus`` and ``health`` get
    free loopback ports.
    """
    metrics, health = extra_ports
    text = NODELOCAL.read_text()
    text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("#")) + "\n"
    text = text.replace(":53 {", f":{port} {{")
    text = text.replace("bind 169.254.20.10 10.96.0.10", "bind 127.0.0.1")
    text = text.replace("forward . 10.96.0.11", f"forward . 127.0.0.1:{backend}")
    text = text.replace("forward . /etc/resolv.conf", f"forward . 127.0.0.1:{backend}")
    text = text.replace("prometheus :9253", f"prometheus 127.0.0.1:{metrics}")
    text = text.replace("health 169.254.20.10:8080", f"health 127.0.0.1:{health}")
    if "169.254" in text or "resolv.conf" in text or "10.96" in text:
        raise RuntimeError("the NodeLocal Corefile changed shape: an address was not replaced")
    (d / "Corefile").write_text(text)
    return fastdns_serve(d, 1)
