"""acl (``plugin/acl``): allow, block, filter or drop queries by source address and type.

As plugin/acl/acl.go decides, per query of a block that has the plugin:
the rules (one per ``acl`` directive, several may share a block) in
Corefile order; a rule applies when the query's name is under one of its
zones (its arguments, or the block's zones); its policies in order, the
first whose types and networks hold the query's type and the client's
source address gives the action. ``allow`` stops the walk and lets the
query on; ``block`` answers REFUSED and ``filter`` an empty NOERROR, both
with an OPT of size 4096, DO set, and an Extended DNS Error (RFC 8914) of
15 "Blocked" or 17 "Filtered" (``SetRcode``/``SetEdns0(4096, true)``);
``drop`` answers nothing. A query no policy matched goes on. A source
address that does not parse is blocked (``matchWithPolicies``).

Where it runs: the C pre-lookup hook (fastdns/plugins/_acl.pyx) decides UDP
queries on the fast path; ``before`` below decides TCP, the pure-Python
path and what another hook handed on. Both read the tables ``flat`` builds
from one parse, so they cannot disagree.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any, ClassVar

from fastdns.codec import wire
from fastdns.corefile.args import zones_arg
from fastdns.corefile.dispenser import Dispenser
from fastdns.corefile.model import Config, PluginConfig, ServerBlock
from fastdns.mnemonics import TYPES
from fastdns.names import zone_key
from fastdns.plugins import counting
from fastdns.plugins.spec import DROP, Plugin

TYPE_OF = {v: k for k, v in TYPES.items()}  # miekg StringToType
ACTIONS = ("allow", "block", "filter", "drop")
#: the metric families (plugin/acl/metrics.go), by action
COUNTED = {"block": "coredns_acl_blocked_requests_total",
           "filter": "coredns_acl_filtered_requests_total",
           "drop": "coredns_acl_dropped_requests_total"}
ALLOWED = "coredns_acl_allowed_requests_total"
ALLOW, BLOCK, FILTER, DROP_ACTION = 1, 2, 3, 4  # the C hook's codes (_acl.pyx)
REFUSED, NOERROR = 5, 0
EDE_BLOCKED, EDE_FILTERED = 15, 17  # RFC 8914 info codes (miekg ExtendedErrorCode*)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Policy:
    action: str
    #: None: every type (no ``type`` section, or ``type *``)
    qtypes: frozenset[int] | None = None
    #: None: every source (no ``net`` section, or ``net *``)
    nets: tuple[Network, ...] | None = None

    def matches(self, qtype: int, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if self.qtypes is not None and qtype not in self.qtypes:
            return False
        return self.nets is None or any(ip in n for n in self.nets if n.version == ip.version)


@dataclass(frozen=True)
class Rule:
    zones: tuple[str, ...]
    policies: tuple[Policy, ...]


@dataclass(frozen=True)
class AclConfig(PluginConfig):
    name: ClassVar[str] = "acl"
    rules: tuple[Rule, ...] = ()


def _normalize(raw: str) -> str:
    """setup.go normalize: a bare address is a /32 or /128."""
    if "/" in raw:
        return raw
    return raw + ("/128" if ":" in raw else "/32")


def _policy(d: Dispenser) -> Policy:
    action = d.val().lower()
    if action not in ACTIONS:
        raise d.err(f"unexpected token {d.val()!r}; expect 'allow', 'block', 'filter' or 'drop'")
    toks = d.remaining_args()
    qtypes: set[int] | None = None
    nets: list[Network] | None = None
    every_type = every_net = False
    while toks:
        section = toks[0].text.lower()
        if section not in ("type", "net"):
            raise d.err(f"unexpected token {toks[0].text!r}; expect 'type | net'", toks[0])
        i = 1
        while i < len(toks) and toks[i].text.lower() not in ("type", "net"):
            i += 1
        values, toks = toks[1:i], toks[i:]
        if not values:
            raise d.err(f"no token specified in {section!r} section")
        for t in values:
            if section == "type":
                qtypes = qtypes if qtypes is not None else set()
                if t.text == "*":
                    every_type = True
                elif t.text in TYPE_OF:
                    qtypes.add(TYPE_OF[t.text])
                else:
                    raise d.err(f"unexpected token {t.text!r}; expect legal QTYPE", t)
            else:
                nets = nets if nets is not None else []
                if t.text == "*":
                    every_net = True
                    continue
                try:
                    nets.append(ipaddress.ip_network(_normalize(t.text), strict=False))
                except ValueError:
                    raise d.err(f"illegal CIDR notation {_normalize(t.text)!r}", t) from None
    return Policy(action,
                  None if qtypes is None or every_type else frozenset(qtypes),
                  None if nets is None or every_net else tuple(nets))


def parse_acl(d: Dispenser, zones: tuple[str, ...]) -> AclConfig:
    """acl [ZONES...] { ACTION [type QTYPE...] [net SOURCE...] ... } (setup.go parse)."""
    args = d.remaining_args()
    rzones = zones_arg(d, args) if args else zones
    policies: list[Policy] = []
    while d.next_block():
        policies.append(_policy(d))
    return AclConfig((Rule(rzones, tuple(policies)),))


def merge_acl(old: PluginConfig, new: PluginConfig) -> PluginConfig:
    """Several ``acl`` directives in one block: their rules, in Corefile order."""
    assert isinstance(old, AclConfig) and isinstance(new, AclConfig)
    return AclConfig(old.rules + new.rules, source=old.source)


def _under(key: bytes, zone: bytes) -> bool:
    if zone == b"\x00":
        return True
    if not key.endswith(zone):
        return False
    # a label boundary: walk the labels of key
    pos, cut = 0, len(key) - len(zone)
    while pos < cut:
        pos += key[pos] + 1
    return pos == cut


def _source(addr: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(str(addr[0]).split("%", 1)[0])
    except (ValueError, IndexError, TypeError):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # Go's net.IP: the IPv4 address of a mapped one
    return ip


def decide(conf: AclConfig, key: bytes, qtype: int, addr: Any) -> str | None:
    """The action for one query (``key``: its lowercase wire name), None: it goes on."""
    return decide_zone(conf, key, qtype, addr)[0]


def decide_zone(conf: AclConfig, key: bytes, qtype: int,
                addr: Any) -> tuple[str | None, str | None]:
    """``decide``, and the rule zone that decided it (the metrics' ``zone``)."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    for rule in conf.rules:
        zone = next((z for z in rule.zones if _under(key, zone_key(z))), None)
        if zone is None:
            continue
        if ip is None:
            ip = _source(addr)
            if ip is None:
                return "block", zone  # acl.go: "Unable to parse source address"
        for p in rule.policies:
            if p.matches(qtype, ip):
                if p.action == "allow":
                    return None, None
                return p.action, zone
    return None, None


_OPT = struct.Struct(">BHHIHHHH")  # root, OPT, 4096, DO, rdlen, EDE, 2, info


def refusal(data: bytes, q: wire.Query, rcode: int, info: int) -> bytes:
    """acl's answer: ``SetRcode(r, rcode)`` (ID, opcode, RD and CD of the query,
    its question) with ``SetEdns0(4096, true)`` and an EDE option of ``info``."""
    flags = 0x8000 | (q.flags & 0x7800) | rcode
    if q.opcode == 0:
        flags |= q.flags & 0x0110  # RD, CD
    head = struct.pack(">HHHHHH", q.id, flags, 1, 0, 0, 1)
    return head + bytes(data[12:q.question_end]) + _OPT.pack(0, 41, 4096, 0x8000, 6, 15, 2, info)


def before(data: bytes, q: wire.Query, addr: tuple[str, int], tcp: bool,
           block: ServerBlock) -> bytes | None:
    conf = block.plugins.get("acl")
    if not isinstance(conf, AclConfig):
        return None
    action, zone = decide_zone(conf, q.key, q.qtype, addr)
    server = counting.server_of(block)
    if action is None:
        counting.add((ALLOWED, server, ""))
        return None
    counting.add((COUNTED[action], server, zone or "", ""))
    if action == "drop":
        return DROP
    if action == "block":
        return refusal(data, q, REFUSED, EDE_BLOCKED)
    return refusal(data, q, NOERROR, EDE_FILTERED)


def flat(config: Config) -> tuple[list[tuple[int, bytes, int]], list[Any]]:
    """The C hook's tables: (port, wire zone, acl index or -1) per zone of every
    block, and per block with acl its rules as (wire zones, policies), each
    policy (action code, qtypes or (), nets or None)."""
    blocks: list[tuple[int, bytes, int]] = []
    acls: list[Any] = []
    for b in config.servers:
        conf = b.plugins.get("acl")
        idx = -1
        if isinstance(conf, AclConfig):
            idx = len(acls)
            acls.append([
                ([zone_key(z) for z in r.zones],
                 [(ACTIONS.index(p.action) + 1, sorted(p.qtypes or ()),
                   None if p.nets is None else
                   [(n.version, n.prefixlen, n.network_address.packed) for n in p.nets])
                  for p in r.policies])
                for r in conf.rules])
        for z in b.zones:
            blocks.append((b.port, zone_key(z), idx))
    return blocks, acls


def series(config: Config) -> list[counting.Series]:
    """acl's metric series (plugin/acl/metrics.go): per block with acl, each
    rule zone's blocked, filtered and dropped counts {server, zone, view}, and
    the allowed count {server, view}."""
    out: list[counting.Series] = []
    for b in config.servers:
        conf = b.plugins.get("acl")
        if not isinstance(conf, AclConfig):
            continue
        server = counting.server_of(b)
        for r in conf.rules:
            for z in r.zones:
                out.extend((COUNTED[a], server, z, "") for a in ("block", "filter", "drop"))
        out.append((ALLOWED, server, ""))
    return out


def c_counts(capsule: object, config: Config) -> dict[counting.Series, int]:
    """What the C hook counted, by series: its acls and rules are flat's order."""
    from fastdns.plugins import _acl

    allowed, rules = _acl.counts(capsule)
    out: dict[counting.Series, int] = {}

    def add(s: counting.Series, n: int) -> None:
        if n:
            out[s] = out.get(s, 0) + n

    acl_blocks = [b for b in config.servers if isinstance(b.plugins.get("acl"), AclConfig)]
    flat_rules: list[tuple[ServerBlock, Rule]] = []
    for b in acl_blocks:
        conf = b.plugins["acl"]
        assert isinstance(conf, AclConfig)
        flat_rules.extend((b, r) for r in conf.rules)
    for i, n in enumerate(allowed):
        if i < len(acl_blocks):
            add((ALLOWED, counting.server_of(acl_blocks[i]), ""), n)
    for r, z, blocked, filtered, dropped in rules:
        if r >= len(flat_rules):
            continue
        b, rule = flat_rules[r]
        server, zone = counting.server_of(b), rule.zones[z]
        for action, n in (("block", blocked), ("filter", filtered), ("drop", dropped)):
            add((COUNTED[action], server, zone, ""), n)
    return out


def prelookup(config: Config) -> Any:
    """The C hook for ``config``; None (each UDP query to Python) without the
    build, or for an acl larger than the hook's tables."""
    try:
        from fastdns.plugins import _acl
    except ImportError:
        return None
    blocks, acls = flat(config)
    try:
        return _acl.hook(blocks, acls)
    except ValueError:
        return None


PLUGIN = Plugin("acl", "full", config=AclConfig, parse=parse_acl, merge=merge_acl,
                stages=("fast_path", "slow_path"), before=before, prelookup=prelookup,
                metrics=("coredns_acl_*",), series=series, c_counts=c_counts)
