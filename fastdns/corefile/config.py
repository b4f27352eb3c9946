"""Corefile text -> ``Config``: keys normalised, plugins parsed, overlaps refused.

``analyse`` keeps going after an error so that ``check-corefile`` can report
every line; ``parse_corefile`` raises the first error, in file order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from fastdns.corefile.blocks import RawBlock, parse_blocks
from fastdns.corefile.errors import CorefileError, Unsupported
from fastdns.corefile.lexer import Token
from fastdns.corefile.model import Config, PluginConfig, ServerBlock
from fastdns.corefile.parsers import parse_directive
from fastdns.corefile.zones import ZoneError, parse_key
from fastdns.plugins import registry

# The built-in demo: one port, no HTTP side ports, so `fastdns serve --demo`
# needs nothing but 1053 free on loopback.
DEFAULT_DEMO_COREFILE = """\
.:1053 {
    bind 127.0.0.1
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
}
"""


@dataclass
class Finding:
    """One checked item: a block key or a directive, and its error if any."""

    file: str
    line: int
    kind: str  # "key", "plugin" or "block"
    name: str
    error: CorefileError | None = None


@dataclass
class Analysis:
    config: Config | None
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[CorefileError]:
        return [f.error for f in self.findings if f.error is not None]


def _unknown_plugin(tok: Token) -> CorefileError:
    row = registry.get(tok.text)
    if row is not None:
        return Unsupported(tok.file, tok.line, row.reason, tok.text)
    return CorefileError(tok.file, tok.line, "unknown plugin", tok.text)


KeyTokens = dict[str, Token]


def _block(raw: RawBlock, findings: list[Finding]) -> list[tuple[ServerBlock, KeyTokens]]:
    # Keys -> (transport, port) groups of zones, in order.
    groups: dict[tuple[str, int], list[tuple[str, Token]]] = {}
    for key in raw.keys:
        f = Finding(key.file, key.line, "key", key.text)
        findings.append(f)
        try:
            transport, zones, port = parse_key(key.text)
        except ZoneError as e:
            f.error = CorefileError(key.file, key.line, f"server block key '{key.text}': {e}")
            continue
        if transport != "dns":
            f.error = Unsupported(key.file, key.line,
                                  f"server block key '{key.text}': {transport}:// servers are "
                                  "not supported by fastdns (plain DNS over UDP and TCP only)")
            continue
        groups.setdefault((transport, port), []).extend((z, key) for z in zones)
    block_zones = tuple(dict.fromkeys(z for g in groups.values() for z, _ in g))

    plugins: dict[str, PluginConfig] = {}
    for d in raw.directives:
        name = d.name
        f = Finding(name.file, name.line, "plugin", name.text)
        findings.append(f)
        row = registry.get(name.text)
        if row is None or row.parse is None:
            f.error = _unknown_plugin(name)
            continue
        try:
            cfg = parse_directive(row.parse, d.tokens, block_zones or (".",))
            if name.text in plugins:
                if row.merge is None:
                    raise CorefileError(name.file, name.line,
                                        "this plugin can only be used once per server block",
                                        name.text)
                cfg = row.merge(plugins[name.text], cfg)
            plugins[name.text] = cfg
        except CorefileError as e:
            f.error = e

    out = []
    for (transport, port), keyed in groups.items():
        first = keyed[0][1]
        key_of: KeyTokens = {}  # which key produced each zone, for overlap messages
        for z, tok in keyed:
            key_of.setdefault(z, tok)
        out.append((ServerBlock(tuple(key_of), port, plugins, (first.file, first.line),
                                transport), key_of))
    return out


def _za(transport: str, zone: str, port: int, addr: str) -> str:
    s = f"{transport}://{zone}:{port}"
    return f"{s} on {addr}" if addr else s


def _check_overlaps(servers: list[tuple[ServerBlock, KeyTokens]],
                    findings: list[Finding]) -> None:
    """core/dnsserver/address.go registerAndCheck: a zone is served once per
    listener, and an unbound block overlaps every bound one on its port."""
    registered: set[tuple[str, str, int, str]] = set()
    unbound: dict[tuple[str, str, int], tuple[str, str, int, str]] = {}
    for s, tokens in servers:
        for zone in s.zones:
            for host in s.listen_hosts:
                z = (s.transport, zone, s.port, host)
                uz = (s.transport, zone, s.port)
                reason = None
                if z in registered:
                    reason = f"cannot serve {_za(*uz, host)} - it is already defined"
                elif uz in unbound:
                    already = unbound[uz]
                    if host == "":
                        reason = (f"cannot serve {_za(*uz, host)} - zone overlap listener "
                                  f"capacity with {_za(*already)}")
                    elif (*uz, "") in registered:
                        reason = (f"cannot serve {_za(*uz, host)} - zone overlap listener "
                                  f"capacity with {_za(*uz, '')}")
                if reason:
                    tok = tokens.get(zone)
                    file, line = (tok.file, tok.line) if tok else s.source
                    findings.append(Finding(file, line, "block", zone,
                                            CorefileError(file, line, reason)))
                    continue
                registered.add(z)
                unbound[uz] = z


def analyse(text: str, filename: str = "Corefile",
            environ: Mapping[str, str] | None = None) -> Analysis:
    """Parse everything that can be parsed; raises CorefileError only on syntax."""
    raws = parse_blocks(text, filename, environ)
    findings: list[Finding] = []
    servers: list[tuple[ServerBlock, KeyTokens]] = []
    for raw in raws:
        servers.extend(_block(raw, findings))
    _check_overlaps(servers, findings)
    analysis = Analysis(None, findings)
    if not analysis.errors:
        analysis.config = Config([s for s, _ in servers])
    return analysis


def parse_corefile(text: str, filename: str = "Corefile",
                   environ: Mapping[str, str] | None = None) -> Config:
    """The typed configuration of Corefile ``text``; CorefileError on any problem."""
    analysis = analyse(text, filename, environ)
    if analysis.errors:
        raise analysis.errors[0]
    assert analysis.config is not None
    return analysis.config


def read_corefile(path: str | os.PathLike[str]) -> tuple[str, str]:
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(), path
    except OSError as e:
        raise CorefileError(path, 0, f"cannot read Corefile: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise CorefileError(path, 0, f"not UTF-8 text: {e.reason}") from None


def load_corefile(path: str | os.PathLike[str],
                  environ: Mapping[str, str] | None = None) -> Config:
    """Read and parse the Corefile at ``path`` (imports resolve beside it)."""
    text, name = read_corefile(path)
    return parse_corefile(text, name, environ)
