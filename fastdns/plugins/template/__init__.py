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

from fastdns.codec import wire
from fastdns.corefile.model import ServerBlock
from fastdns.plugins.spec import Plugin
from fastdns.plugins.template.answer import serve
from fastdns.plugins.template.config import TemplateConfig, merge_template, parse_template
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
    return serve(conf, data, q, str(addr[0]).split("%")[0]).answer


PLUGIN = Plugin(
    "template", "full", config=TemplateConfig, parse=parse_template, merge=merge_template,
    stages=("fast_path", "slow_path"), answers=True, label_rank=6, before=before,
    prelookup=prelookup,
    metrics=("coredns_template_matches_total", "coredns_template_template_failures_total",
             "coredns_template_rr_failures_total"),
)
