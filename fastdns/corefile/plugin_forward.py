"""The ``forward`` plugin's grammar (plugin/forward/setup.go, pkg/parse/host.go)."""

from __future__ import annotations

import os

from fastdns.corefile.args import (
    duration_arg,
    go_split_host_port,
    int_arg,
    is_ip,
    zones_arg,
)
from fastdns.corefile.dispenser import Dispenser
from fastdns.corefile.errors import Unsupported
from fastdns.corefile.lexer import Token
from fastdns.corefile.model import (
    ForwardConfig,
    Upstream,
)
from fastdns.corefile.zones import (
    DEFAULT_PORTS,
    go_atoi,
    is_domain_name,
    normalize_name,
    split_transport,
)

# miekg/dns StringToRcode (msg.go RcodeToString reversed, plus NOTIMPL).
RCODES = {
    "NOERROR": 0, "FORMERR": 1, "SERVFAIL": 2, "NXDOMAIN": 3, "NOTIMP": 4, "NOTIMPL": 4,
    "REFUSED": 5, "YXDOMAIN": 6, "YXRRSET": 7, "NXRRSET": 8, "NOTAUTH": 9, "NOTZONE": 10,
    "BADSIG": 16, "BADVERS": 16, "BADKEY": 17, "BADTIME": 18, "BADMODE": 19, "BADNAME": 20,
    "BADALG": 21, "BADTRUNC": 22, "BADCOOKIE": 23,
}
MAX_UPSTREAMS = 15  # plugin/forward/setup.go max


def read_resolv_conf(path: str) -> list[str]:
    """Nameserver addresses of a resolv.conf (miekg/dns ClientConfigFromFile)."""
    servers = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 2 and fields[0] == "nameserver":
                servers.append(fields[1])
    return servers


def _upstreams(d: Dispenser, toks: list[Token]) -> tuple[list[Upstream], list[str]]:
    """parse.HostPortOrFile: IP, IP:PORT, [scheme://]..., or a resolv.conf file."""
    out: list[Upstream] = []
    files: list[str] = []
    for t in toks:
        trans, host = split_transport(t.text)
        if trans not in ("dns", "tls"):
            raise Unsupported(t.file, t.line, f"'{trans}' is not supported as a destination "
                              f"protocol in forward: {t.text}", d.plugin)
        server_name = None
        port_s: str | None
        if trans == "tls" and "%" in host:
            # tls://9.9.9.9%dns.quad9.net[:853]: per-upstream TLS server name.
            host, _, sn = host.rpartition("%")
            if ":" in sn:
                sn, _, port_s = sn.rpartition(":")
                host = f"{host}:{port_s}"
            server_name = sn
        try:
            ip, port_s = go_split_host_port(host)
        except ValueError:
            ip, port_s = host, None
        if is_ip(ip):
            port = DEFAULT_PORTS[trans] if port_s is None else go_atoi(port_s)
            if port is None or not 0 < port < 65536:
                raise d.err(f"not an IP address or file: {t.text!r}", t)
            out.append(Upstream(trans, ip, port, server_name))
            continue
        path = host
        if not os.path.isfile(path):
            raise d.err(f"not an IP address or file: {host!r}", t)
        try:
            servers = read_resolv_conf(path)
        except OSError as e:
            raise d.err(f"cannot read {path}: {e.strerror}", t) from None
        if not servers:
            raise d.err(f"no nameserver found in {path}", t)
        for s in servers:
            if not is_ip(s):
                raise d.err(f"{path}: nameserver {s!r} is not an IP address", t)
            out.append(Upstream("dns", s, 53))
        files.append(path)
    return out, files


def parse_forward(d: Dispenser, zones: tuple[str, ...]) -> ForwardConfig:
    """forward FROM TO... { ... } (plugin/forward/setup.go parseStanza)."""
    args = d.remaining_args()
    if len(args) < 2:
        raise d.err("forward needs FROM and at least one TO", args[0] if args else d.tok)
    from_zone = zones_arg(d, [args[0]])[0]
    to, files = _upstreams(d, args[1:])
    if len(to) > MAX_UPSTREAMS:
        raise d.err(f"more than {MAX_UPSTREAMS} TOs configured: {len(to)}", args[1])
    o: dict[str, object] = {}
    while d.next_block():
        sub = d.tok
        key = d.val()
        if key == "except":
            a = d.remaining_args()
            if not a:
                raise d.arg_err()
            o["except_zones"] = tuple(o.get("except_zones", ())) + zones_arg(d, a)  # type: ignore[arg-type]
        elif key in ("force_tcp", "prefer_udp", "failfast_all_unhealthy_upstreams"):
            d.no_args()
            o[key] = True
        elif key in ("max_fails", "max_connect_attempts", "max_concurrent", "max_idle_conns"):
            arg = d.one_arg()
            n = int_arg(d, arg, key)
            if n < 0:
                raise d.err(f"{key} can't be negative: {n}", arg)
            o[key] = n
        elif key in ("expire", "health_check", "max_age", "read_timeout"):
            a = d.remaining_args()
            if not a or (key != "health_check" and len(a) != 1):
                raise d.arg_err()
            dur = duration_arg(d, a[0], key)
            if key == "read_timeout" and dur <= 0:
                raise d.err(f"read_timeout must be positive: {a[0].text}", a[0])
            if dur < 0:
                raise d.err(f"{key} can't be negative: {a[0].text}", a[0])
            o[key] = dur
            if key == "health_check":
                rest = a[1:]
                while rest:
                    opt = rest.pop(0)
                    if opt.text == "no_rec":
                        o["health_check_no_rec"] = True
                    elif opt.text == "domain":
                        if not rest:
                            raise d.err("health_check: domain needs a name", opt)
                        dom = rest.pop(0)
                        if not is_domain_name(dom.text):
                            raise d.err(f"health_check: invalid domain name {dom.text}", dom)
                        o["health_check_domain"] = normalize_name(dom.text)
                    else:
                        raise d.err(f"health_check: unknown option {opt.text}", opt)
        elif key == "tls":
            a = d.remaining_args()
            if len(a) > 3:
                raise d.err("tls takes at most CERT KEY CA", a[3])
            for t in a:
                if not os.path.isfile(t.text):
                    raise d.err(f"tls: no such file: {t.text}", t)
            o["tls"] = tuple(t.text for t in a)
        elif key == "source_address":
            arg = d.one_arg()
            if not is_ip(arg.text) or "%" in arg.text:
                raise d.err(f"invalid IP address: {arg.text}", arg)
            o["source_address"] = arg.text
        elif key == "tls_servername":
            arg = d.one_arg()
            o["tls_servername"] = arg.text
        elif key == "policy":
            arg = d.one_arg()
            if arg.text not in ("random", "round_robin", "sequential"):
                raise d.err(f"unknown policy '{arg.text}'", arg)
            o["policy"] = arg.text
        elif key in ("next", "failover"):
            a = d.remaining_args()
            if not a:
                raise d.arg_err()
            codes = []
            for t in a:
                rc = RCODES.get(t.text.upper())
                if rc is None:
                    raise d.err(f"{t.text} is not a valid rcode", t)
                if key == "failover" and rc == 0:
                    raise d.err("NoError cannot be used in failover", t)
                codes.append(rc)
            o["next_rcodes" if key == "next" else "failover_rcodes"] = tuple(codes)
        else:
            raise Unsupported(sub.file, sub.line, f"unknown property '{key}'", d.plugin) \
                if key in ("doh_method", "resolver", "next_on_nodata") else d.unknown_property()
    sn = o.get("tls_servername")
    if sn and any(u.tls_servername for u in to):
        raise d.err("both forward and proxy level TLS servernames are set", args[1])
    return ForwardConfig(from_zone, tuple(to), tuple(files), **o)  # type: ignore[arg-type]
