"""One parser per small plugin, each following its CoreDNS ``setup.go``.

A parser receives a Dispenser on the directive name and the block's zones
(what CoreDNS calls ``c.ServerBlockKeys``, normalised), and returns the
plugin's frozen config. Errors name the offending token's line. Which
parser a directive gets is the plugin registry's business
(fastdns/plugins/registry.py); the big plugins' parsers are in
``plugin_*.py`` beside this one, whoami's in fastdns/plugins/whoami.py.
"""

from __future__ import annotations

import dataclasses
import fcntl
import ipaddress
import re
import socket
import struct
from collections.abc import Callable

from fastdns.corefile.args import (
    duration_arg,
    fallthrough_arg,
    is_ip,
    listen_addr_arg,
    zones_arg,
)
from fastdns.corefile.dispenser import Dispenser
from fastdns.corefile.errors import Unsupported
from fastdns.corefile.lexer import Token
from fastdns.corefile.model import (
    COMBINED_LOG_FORMAT,
    COMMON_LOG_FORMAT,
    DEFAULT_LOG_FORMAT,
    BindConfig,
    Consolidate,
    DebugConfig,
    ErrorsConfig,
    HealthConfig,
    HostsConfig,
    LoadbalanceConfig,
    LogConfig,
    LogRule,
    LoopConfig,
    PluginConfig,
    PrometheusConfig,
    ReadyConfig,
    ReloadConfig,
)
from fastdns.corefile.zones import go_atoi, normalize_name

# -- plugins -------------------------------------------------------------------


def parse_errors(d: Dispenser, zones: tuple[str, ...]) -> ErrorsConfig:
    """errors [stdout] { consolidate DURATION REGEXP [LEVEL]; stacktrace }"""
    args = d.remaining_args()
    if len(args) > 1:
        raise d.err("wrong argument count", args[1])
    if args and args[0].text != "stdout":
        raise d.err(f"invalid log file: {args[0].text}", args[0])
    consolidate: list[Consolidate] = []
    stacktrace = False
    while d.next_block():
        sub = d.tok
        if d.val() == "consolidate":
            a = d.remaining_args()
            if not 2 <= len(a) <= 3:
                raise d.err("consolidate needs DURATION REGEXP [LEVEL]", sub)
            period = duration_arg(d, a[0], "consolidate")
            try:
                re.compile(a[1].text)
            except re.error as e:
                raise d.err(f"consolidate: bad regexp '{a[1].text}': {e}", a[1]) from None
            level = "error"
            if len(a) == 3:
                level = a[2].text
                if level not in ("warning", "error", "info", "debug"):
                    raise d.err(f"unknown log level argument in consolidate: {level}", a[2])
            consolidate.append(Consolidate(period, a[1].text, level))
        elif d.val() in ("stacktrace", "panicRecoveryStacktrace"):
            d.no_args()
            stacktrace = True
        else:
            raise d.err(f"unknown field '{d.val()}'")
    return ErrorsConfig(tuple(consolidate), stacktrace)


def parse_health(d: Dispenser, zones: tuple[str, ...]) -> HealthConfig:
    """health [ADDRESS] { lameduck DURATION }"""
    args = d.remaining_args()
    if len(args) > 1:
        raise d.err("wrong argument count: health takes at most one ADDRESS", args[1])
    addr = listen_addr_arg(d, args[0]) if args else ":8080"
    lameduck = 0.0
    while d.next_block():
        if d.val() != "lameduck":
            raise d.unknown_property()
        arg = d.one_arg()
        lameduck = duration_arg(d, arg, "unable to parse lameduck duration value")
        if lameduck < 0:
            raise d.err("lameduck can't be negative", arg)
    return HealthConfig(addr, lameduck)


def parse_ready(d: Dispenser, zones: tuple[str, ...]) -> ReadyConfig:
    """ready [ADDRESS]"""
    args = d.remaining_args()
    if len(args) > 1:
        raise d.err("wrong argument count: ready takes at most one ADDRESS", args[1])
    return ReadyConfig(listen_addr_arg(d, args[0]) if args else ":8181")


def parse_prometheus(d: Dispenser, zones: tuple[str, ...]) -> PrometheusConfig:
    """prometheus [ADDRESS]"""
    args = d.remaining_args()
    if len(args) > 1:
        raise d.err("wrong argument count: prometheus takes at most one ADDRESS", args[1])
    return PrometheusConfig(listen_addr_arg(d, args[0]) if args else "localhost:9153")


def parse_loop(d: Dispenser, zones: tuple[str, ...]) -> LoopConfig:
    d.no_args()
    return LoopConfig(zones[0] if zones else ".")


def parse_reload(d: Dispenser, zones: tuple[str, ...]) -> ReloadConfig:
    """reload [INTERVAL] [JITTER]: interval >= 2s, jitter >= 1s, jitter <= interval/2."""
    args = d.remaining_args()
    if len(args) > 2:
        raise d.err("reload takes at most INTERVAL and JITTER", args[2])
    interval, jitter = 30.0, 15.0
    if args:
        interval = duration_arg(d, args[0], "reload interval")
        if interval < 2:
            raise d.err("interval value must be greater or equal to 2s", args[0])
    if len(args) > 1:
        jitter = duration_arg(d, args[1], "reload jitter")
        if jitter < 1:
            raise d.err("jitter value must be greater or equal to 1s", args[1])
    return ReloadConfig(interval, min(jitter, interval / 2))


def parse_loadbalance(d: Dispenser, zones: tuple[str, ...]) -> LoadbalanceConfig:
    """loadbalance [round_robin | weighted WEIGHTFILE]: fastdns rotates answers only."""
    args = d.remaining_args()
    if args:
        if args[0].text == "weighted":
            raise Unsupported(args[0].file, args[0].line,
                              "policy 'weighted' is not supported by fastdns "
                              "(answers are rotated round_robin only)", d.plugin)
        if args[0].text != "round_robin":
            raise d.err(f"unknown policy: {args[0].text}", args[0])
        if len(args) > 1:
            raise d.err("unknown property for round_robin", args[1])
    if d.next_block():
        raise Unsupported(d.tok.file, d.tok.line,
                          f"option '{d.val()}' is not supported by fastdns", d.plugin)
    return LoadbalanceConfig("round_robin")


_LOG_CLASSES = ("all", "success", "denial", "error")


def parse_log(d: Dispenser, zones: tuple[str, ...]) -> LogConfig:
    """log [NAMES...] [FORMAT] { class CLASSES... } (plugin/log/setup.go)."""
    args = [t.text for t in d.remaining_args()]
    fmt = DEFAULT_LOG_FORMAT
    if len(args) > 1 and "{" in args[-1]:
        fmt = {"{common}": COMMON_LOG_FORMAT, "{combined}": COMBINED_LOG_FORMAT}.get(
            args[-1], args[-1])
        args = args[:-1]
    names = [n if n.endswith(".") else n + "." for n in args] or ["."]
    classes: list[str] = []
    while d.next_block():
        if d.val() != "class":
            raise d.unknown_property()
        a = d.remaining_args()
        if not a:
            raise d.arg_err()
        for t in a:
            if t.text not in _LOG_CLASSES:
                raise d.err(f"invalid Class: {t.text!r}", t)
            classes.append(t.text)
    cls = tuple(dict.fromkeys(classes)) or ("all",)
    return LogConfig(tuple(LogRule(n, fmt, cls) for n in names))


def interface_addresses(name: str) -> list[str] | None:
    """IPs of network interface ``name`` (link-local excluded, as bind does); None if no such."""
    if name not in {n for _, n in socket.if_nameindex()}:
        return None
    out: list[str] = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            req = struct.pack("256s", name.encode()[:15])
            res = fcntl.ioctl(s.fileno(), 0x8915, req)  # SIOCGIFADDR
            out.append(socket.inet_ntoa(res[20:24]))
    except OSError:
        pass
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                fields = line.split()
                if len(fields) == 6 and fields[5] == name:
                    ip = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
                    if not ip.is_link_local:
                        out.append(str(ip))
    except OSError:
        pass
    return out


def parse_bind(d: Dispenser, zones: tuple[str, ...]) -> BindConfig:
    """bind ADDRESS|IFACE... { except ADDRESS|IFACE... } (plugin/bind/setup.go)."""
    args = d.remaining_args()
    if not args:
        raise d.err("at least one address or interface name is expected", d.tok)
    excepts: list[Token] = []
    while d.next_block():
        if d.val() != "except":
            raise d.err(f"invalid option '{d.val()}'")
        excepts = d.remaining_args()
        if not excepts:
            raise d.err("at least one address or interface name is expected", d.tok)

    def resolve(toks: list[Token]) -> list[str]:
        ips: list[str] = []
        for t in toks:
            if is_ip(t.text):
                ips.append(t.text)
                continue
            found = interface_addresses(t.text)
            if found is None:
                raise d.err(f"not a valid IP address or interface name: {t.text!r}", t)
            ips.extend(found)
        return ips

    drop = set(resolve(excepts))
    return BindConfig(tuple(dict.fromkeys(ip for ip in resolve(args) if ip not in drop)))


def parse_hosts(d: Dispenser, zones: tuple[str, ...]) -> HostsConfig:
    """hosts [FILE [ZONES...]] { [INLINE] ttl; no_reverse; reload; fallthrough }"""
    args = d.remaining_args()
    o: dict[str, object] = {}
    if args:
        o["path"] = args[0].text
        args = args[1:]
    hzones = zones_arg(d, args) if args else zones
    entries: list[tuple[str, tuple[str, ...]]] = []
    while d.next_block():
        sub = d.tok
        key = d.val()
        if key == "fallthrough":
            o["fallthrough"] = fallthrough_arg(d, d.remaining_args())
        elif key == "no_reverse":
            d.no_args()
            o["no_reverse"] = True
        elif key == "ttl":
            a = d.remaining_args()
            if len(a) != 1:
                raise d.err("ttl needs a time in second", sub)
            ttl = go_atoi(a[0].text)
            if ttl is None:
                raise d.err("ttl needs a number of second", a[0])
            if not 0 < ttl <= 65535:
                raise d.err("ttl provided is invalid", a[0])
            o["ttl"] = ttl
        elif key == "reload":
            a = d.remaining_args()
            if len(a) != 1:
                raise d.err("reload needs a duration (zero seconds to disable)", sub)
            r = duration_arg(d, a[0], "invalid duration for reload")
            if r < 0:
                raise d.err(f"invalid negative duration for reload '{a[0].text}'", a[0])
            o["reload"] = r
        elif not o.get("fallthrough"):
            # An inline hosts-file line: IP NAME... (hosts/setup.go).
            names = d.remaining_args()
            if not is_ip(key):
                raise d.err(f"inline entry: '{key}' is not an IP address", sub)
            if not names:
                raise d.err(f"inline entry for {key} has no names", sub)
            entries.append((key, tuple(normalize_name(t.text) for t in names)))
        else:
            raise d.unknown_property()
    return HostsConfig(hzones, entries=tuple(entries), **o)  # type: ignore[arg-type]


def parse_debug(d: Dispenser, zones: tuple[str, ...]) -> DebugConfig:
    d.no_args()
    return DebugConfig()


def parse_directive(parse: Callable[[Dispenser, tuple[str, ...]], PluginConfig],
                    tokens: list[Token], zones: tuple[str, ...]) -> PluginConfig:
    """Parse one directive occurrence (``tokens[0]`` is its name) with ``parse``."""
    name = tokens[0]
    d = Dispenser(tokens, name.text)
    cfg = parse(d, zones)
    d.finish()
    return _with_source(cfg, (name.file, name.line))


def _with_source(cfg: PluginConfig, source: tuple[str, int]) -> PluginConfig:
    return dataclasses.replace(cfg, source=source)


def merge_log(old: PluginConfig, new: PluginConfig) -> PluginConfig:
    """Repeated ``log`` directives of one block: their rules, in order."""
    assert isinstance(old, LogConfig) and isinstance(new, LogConfig)
    return _with_source(LogConfig(old.rules + new.rules), old.source)


def merge_bind(old: PluginConfig, new: PluginConfig) -> PluginConfig:
    """Repeated ``bind`` directives of one block: every address, once."""
    assert isinstance(old, BindConfig) and isinstance(new, BindConfig)
    return _with_source(BindConfig(tuple(dict.fromkeys(old.addresses + new.addresses))),
                        old.source)
