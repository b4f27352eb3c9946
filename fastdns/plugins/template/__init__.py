"""template (``plugin/template``): answers built from Go templates, before any lookup.

The plugin is this package:

- ``config``: the Corefile syntax (``parse_template``, ``merge_template``),
  as ``plugin/template/setup.go``;
- ``gotmpl``, ``goregex``, ``rrtext``: the Go text/template subset, Go
  regexps run by ``re``, and ``dns.NewRR`` for the records;
- ``answer``: ``ServeDNS`` of ``plugin/template/template.go`` in Python, the
  ``before`` hook below;
- ``fast`` and ``_template.pyx``: the C pre-lookup hook that answers the
  common templates (AKS's among them) on the UDP fast path and hands the
  rest to ``before``.

template sits before hosts, kubernetes and forward in plugin.cfg, so it is a
``before`` hook: it runs ahead of the image lookup and answers names the
image or the forwarder would otherwise answer.
"""

from __future__ import annotations

from typing import Any

from fastdns.codec import wire
from fastdns.corefile.model import Config, ServerBlock
from fastdns.mnemonics import CLASSES, TYPES
from fastdns.plugins import counting
from fastdns.plugins.spec import Plugin
from fastdns.plugins.template.answer import serve
from fastdns.plugins.template.config import ANY, TemplateConfig, merge_template, parse_template
from fastdns.plugins.template.fast import prelookup


def before(data: bytes, q: wire.Query, addr: tuple[str, int], tcp: bool,
           block: ServerBlock) -> bytes | None:
    """The template plugin's answer for the block serving the name, or None (go on).

    Queries CoreDNS's server answers before any plugin (an EDNS version other
    than 0: BADVERS) and other opcodes than QUERY go on to the lookup, which
    answers them as it does without a template.
    """
    conf = block.plugins.get("template")
    if not isinstance(conf, TemplateConfig) or q.opcode != 0 or q.edns_version != 0:
        return None
    got = serve(conf, data, q, str(addr[0]).split("%")[0])
    if got.matched is not None and got.template is not None:
        t = got.template  # template.go: templateMatchesCount, before the rcode
        counting.add(match_series(block, got.matched, q.qclass if q.qclass != ANY else t.qclass,
                                  q.qtype if q.qtype != ANY else t.qtype))
    return got.answer


MATCHES = "coredns_template_matches_total"  # plugin/template/metrics.go
#: the types an ANY template's matches are reported for (the metric's ``type``
#: is the query's: a fixed table of series holds these; others go uncounted)
ANY_TYPES = ("A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "HTTPS")
CODES = {name: code for code, name in TYPES.items()}


def match_series(block: ServerBlock, zone: str, qclass: int, qtype: int) -> counting.Series:
    return (MATCHES, counting.server_of(block), zone, "", CLASSES.get(qclass, str(qclass)),
            TYPES.get(qtype, f"TYPE{qtype}"))


def _template_blocks(config: Config) -> list[ServerBlock]:
    """The blocks whose templates the C hook holds, in its order (fast.tables)."""
    seen: set[int] = set()
    out = []
    for b in config.servers:
        if isinstance(b.plugins.get("template"), TemplateConfig) and id(b.plugins) not in seen:
            seen.add(id(b.plugins))
            out.append(b)
    return out


def series(config: Config) -> list[counting.Series]:
    """coredns_template_matches_total{server, zone, view, class, type} per
    template and zone; an ANY class is reported as IN, an ANY type for ANY_TYPES."""
    out: list[counting.Series] = []
    for b in _template_blocks(config):
        conf = b.plugins["template"]
        assert isinstance(conf, TemplateConfig)
        for t in conf.templates:
            classes = [t.qclass] if t.qclass != ANY else [1]
            types = [t.qtype] if t.qtype != ANY else [CODES[n] for n in ANY_TYPES]
            out.extend(match_series(b, z, c, ty) for z in t.zones for c in classes
                       for ty in types)
    return out


def c_counts(capsule: object, config: Config) -> dict[counting.Series, int]:
    """What the C hook answered, by series (its templates are fast.tables' order)."""
    from fastdns.plugins.template import _template  # type: ignore[attr-defined]

    flat: list[tuple[ServerBlock, Any]] = []
    for b in _template_blocks(config):
        conf = b.plugins["template"]
        assert isinstance(conf, TemplateConfig)
        flat.extend((b, t) for t in conf.templates)
    out: dict[counting.Series, int] = {}
    for ti, zi, qclass, qtype, n in _template.counts(capsule):
        if ti >= len(flat) or not n:
            continue
        b, t = flat[ti]
        if not 0 <= zi < len(t.zones):
            continue
        s = match_series(b, t.zones[zi], qclass, qtype)
        out[s] = out.get(s, 0) + n
    return out


PLUGIN = Plugin(
    "template", "full", config=TemplateConfig, parse=parse_template, merge=merge_template,
    stages=("fast_path", "slow_path"), answers=True, label_rank=6, before=before,
    prelookup=prelookup,
    metrics=(MATCHES, "coredns_template_template_failures_total",
             "coredns_template_rr_failures_total"),
    series=series, c_counts=c_counts,
)
