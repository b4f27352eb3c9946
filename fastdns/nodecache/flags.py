"""node-cache's flags (kubernetes/dns cmd/node-cache/main.go ``parseAndValidateFlags``).

They are Go ``flag`` flags as CoreDNS's are (fastdns/coredns_cli.py): one or
two dashes, ``-name value`` or ``-name=value``, booleans as ``-name`` or
``-name=false``. ``split`` takes node-cache's out of a ``serve`` command line
and leaves the rest (CoreDNS's ``-conf``, ``-dns.port``, ``-pidfile`` among
them) for coredns_cli. ``--corefile`` with two dashes stays serve's option
(the image's entrypoint passes it), and ``-corefile`` alone does not make a
command line node-cache's. node-cache's defaults are its own: the interface and
the rules on, the Corefile written to /etc/Corefile from
/etc/coredns/Corefile.base, the upstream Service ``kube-dns``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from fastdns.coredns_cli import FlagError

_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False"}

#: node-cache flag -> (attribute, kind): "str", "bool" or "duration"
FLAGS: dict[str, tuple[str, str]] = {
    "localip": ("localip", "str"),
    "setupinterface": ("setup_interface", "bool"),
    "interfacename": ("interface_name", "str"),
    "syncinterval": ("sync_interval", "duration"),
    "metrics-listen-address": ("metrics_listen_address", "str"),
    "setupiptables": ("setup_iptables", "bool"),
    "basecorefile": ("base_corefile", "str"),
    "corefile": ("corefile", "str"),
    "kubednscm": ("kubedns_cm", "str"),
    "upstreamsvc": ("upstream_svc", "str"),
    "health-port": ("health_port", "str"),
    "skipteardown": ("skip_teardown", "bool"),
    "reloadwithsignal": ("reload_with_signal", "bool"),
}


@dataclass
class NodeCacheParams:
    localip: str = ""
    setup_interface: bool = True
    interface_name: str = "nodelocaldns"
    sync_interval: float = 60.0
    metrics_listen_address: str = "0.0.0.0:9353"
    setup_iptables: bool = True
    base_corefile: str = "/etc/coredns/Corefile.base"
    corefile: str = "/etc/Corefile"
    kubedns_cm: str = ""
    upstream_svc: str = "kube-dns"
    health_port: str = "8080"
    skip_teardown: bool = False
    reload_with_signal: bool = False
    local_ips: list[str] = field(default_factory=list)
    dns_port: str = "53"  # CoreDNS's -dns.port, which the stub blocks listen on

    @property
    def listen(self) -> str:
        """__PILLAR__LOCAL__DNS__: the local IPs, space-separated."""
        return self.localip.replace(",", " ")


def _duration(text: str, name: str) -> float:
    """Go's flag.Duration: ``60s``, ``1m``, ``500ms``; a bare number is nanoseconds."""
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit) and text[:-len(unit)].replace(".", "", 1).isdigit():
            return float(text[:-len(unit)]) * units[unit]
    if text.isdigit():
        return int(text) * 1e-9
    raise FlagError(f'invalid value "{text}" for flag -{name}: parse error')


def split(argv: list[str]) -> tuple[NodeCacheParams | None, list[str]]:
    """(node-cache's params, the rest); None when no node-cache flag is given."""
    p = NodeCacheParams()
    rest: list[str] = []
    seen = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            rest.extend(argv[i - 1:])
            break
        name, eq, value = arg.lstrip("-").partition("=")
        dashes = len(arg) - len(arg.lstrip("-"))
        if dashes not in (1, 2) or name not in FLAGS or (name == "corefile" and dashes == 2):
            # ``--corefile`` is serve's own option (the image's entrypoint passes it);
            # node-cache's is written ``-corefile``
            rest.append(arg)
            if dashes in (1, 2) and name == "dns.port":  # CoreDNS's, kept for coredns_cli too
                p.dns_port = value if eq else (argv[i] if i < len(argv) else "")
            continue
        seen = seen or name != "corefile"  # node-cache's own flags say it is node-cache
        attr, kind = FLAGS[name]
        if kind == "bool":
            if eq and value not in _TRUE | _FALSE:
                raise FlagError(f'invalid boolean value "{value}" for -{name}: parse error')
            setattr(p, attr, not eq or value in _TRUE)
            continue
        if not eq:
            if i >= len(argv):
                raise FlagError(f"flag needs an argument: -{name}")
            value = argv[i]
            i += 1
        setattr(p, attr, _duration(value, name) if kind == "duration" else value)
    if not seen:
        return None, argv
    validate(p)
    return p, rest


def validate(p: NodeCacheParams) -> None:
    """main.go's checks: every local IP parses, all of one family; the health port a number."""
    ips = []
    for text in p.localip.split(","):
        try:
            ips.append(ipaddress.ip_address(text))
        except ValueError:
            raise FlagError(f'invalid localip specified - "{text}"') from None
    for ip in ips:
        if ip.version != ips[0].version:
            raise FlagError(f'unexpected IP Family for localIP - "{ip}", '
                            f"want IPv6={'true' if ips[0].version == 6 else 'false'}")
    if not p.health_port.isdigit():
        raise FlagError(f'invalid healthcheck port specified - "{p.health_port}"')
    p.local_ips = [str(ip) for ip in ips]
