"""One verdict on a parsed Corefile, for ``check-corefile`` and ``serve`` alike.

Parsing (``config.analyse``) says whether CoreDNS would accept a Corefile;
this module says whether ``fastdns serve`` runs it. Both commands ask here,
so a Corefile that ``check-corefile`` calls runnable is one ``serve``
starts, and a refusal reads the same in both (``file:line: ...``).

The rules beyond the per-plugin registry (``support.SUPPORTED``):
- every server block needs a plugin that answers queries, or it would
  answer REFUSED to everything (CoreDNS would run it; it is still a
  configuration nobody means, and fastdns has no such empty chain);
- one ``kubernetes`` plugin per Corefile (one compiled cluster image).
"""

from __future__ import annotations

from fastdns.corefile.errors import CorefileError, Unsupported
from fastdns.corefile.model import Config
from fastdns.corefile.support import PARSED_REASON, SUPPORTED

# Plugins ``serve`` wires in itself; a "full" plugin outside this set runs
# with a warning until serve wires it too. QUIET_PLUGINS need nothing from
# the server (errors are logged anyway).
SERVE_PLUGINS = frozenset({"bind", "kubernetes", "health", "ready", "prometheus",
                           "reload", "loadbalance", "log", "hosts", "whoami", "loop",
                           "forward", "cache"})
# Plugins that answer queries themselves: a block needs one of them.
ANSWERING_PLUGINS = frozenset({"kubernetes", "hosts", "whoami", "forward"})
QUIET_PLUGINS = frozenset({"errors", "debug"})


def _where(source: object) -> tuple[str, int]:
    if isinstance(source, tuple) and len(source) == 2:
        return str(source[0] or "Corefile"), int(source[1] or 0)
    return "Corefile", 0


def problems(config: Config) -> list[CorefileError]:
    """Why ``serve`` cannot run ``config``, in file order; [] when it can."""
    out: list[CorefileError] = []
    seen_blocks: list[object] = []
    kubernetes: list[object] = []
    for block in config.servers:
        # a block with several ports is several ServerBlocks sharing one
        # plugins dict (corefile/model.py): judge it once
        if any(block.plugins is b for b in seen_blocks):
            continue
        seen_blocks.append(block.plugins)
        for name, conf in block.plugins.items():
            if SUPPORTED.get(name) != "full":
                file, line = _where(getattr(conf, "source", block.source))
                out.append(Unsupported(file, line, PARSED_REASON.get(
                    name, "not implemented by fastdns"), name))
        if not ANSWERING_PLUGINS.intersection(block.plugins):
            file, line = _where(block.source)
            out.append(Unsupported(
                file, line, f"server block {' '.join(block.zones)}: no kubernetes, hosts, "
                "whoami or forward plugin: nothing would answer its queries"))
        if "kubernetes" in block.plugins:
            kubernetes.append(block.plugins["kubernetes"])
    if len(kubernetes) > 1:
        file, line = _where(getattr(kubernetes[1], "source", None))
        out.append(Unsupported(file, line, "a second kubernetes plugin: fastdns serves "
                               "one kubernetes plugin per Corefile", "kubernetes"))
    return out


def warnings(config: Config) -> list[str]:
    """Plugins accepted but not run by ``serve`` yet, one line each."""
    out = []
    for block in config.servers:
        for name, conf in block.plugins.items():
            if (SUPPORTED.get(name) == "full" and name not in SERVE_PLUGINS
                    and name not in QUIET_PLUGINS):
                file, line = _where(getattr(conf, "source", block.source))
                out.append(f"{file}:{line}: plugin {name}: accepted, but `fastdns serve` "
                           "does not run it yet")
    return list(dict.fromkeys(out))
