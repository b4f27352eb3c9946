"""One verdict on a parsed Corefile, for ``check-corefile`` and ``serve`` alike.

Parsing (``config.analyse``) says whether CoreDNS would accept a Corefile;
this module says whether ``fastdns serve`` runs it. Both commands ask here,
so a Corefile that ``check-corefile`` calls runnable is one ``serve``
starts, and a refusal reads the same in both (``file:line: ...``).

The rules beyond each plugin's row in the registry
(fastdns/plugins/registry.py: ``support``, ``reason``, ``answers``):
- every server block needs a plugin that answers queries, or it would
  answer REFUSED to everything (CoreDNS would run it; it is still a
  configuration nobody means, and fastdns has no such empty chain);
- one ``kubernetes`` plugin per Corefile (one compiled cluster image);
- one ``timeouts`` setting per Corefile (one TCP listener per worker serves
  every port: plugins/timeouts.py).
"""

from __future__ import annotations

from fastdns.corefile.errors import CorefileError, Unsupported
from fastdns.corefile.model import Config, ServerBlock
from fastdns.plugins import registry

# The plugins that answer queries themselves, in answering-chain order: a
# block needs one of them.
_ANSWERING = [p.name for p in registry.by_rank() if p.answers]
_NOTHING_ANSWERS = (f"no {', '.join(_ANSWERING[:-1])} or {_ANSWERING[-1]} plugin: "
                    "nothing would answer its queries")


def not_running(block: ServerBlock) -> list[tuple[str, str]]:
    """(plugin, reason) for each plugin of ``block`` that fastdns does not run yet."""
    return [(name, registry.reason(name)) for name in block.plugins
            if not registry.accepted(name)]


def is_runnable(block: ServerBlock) -> bool:
    return not not_running(block)


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
            if not registry.accepted(name):
                file, line = _where(getattr(conf, "source", block.source))
                out.append(Unsupported(file, line, registry.reason(name), name))
        if not any(name in block.plugins for name in _ANSWERING):
            file, line = _where(block.source)
            out.append(Unsupported(
                file, line, f"server block {' '.join(block.zones)}: {_NOTHING_ANSWERS}"))
        if "kubernetes" in block.plugins:
            kubernetes.append(block.plugins["kubernetes"])
    timeouts = list(dict.fromkeys(
        b.plugins["timeouts"] for b in config.servers if "timeouts" in b.plugins))
    if len(timeouts) > 1:
        file, line = _where(getattr(timeouts[1], "source", None))
        first = _where(getattr(timeouts[0], "source", None))
        out.append(Unsupported(file, line, "differs from the timeouts at "
                               f"{first[0]}:{first[1]}: fastdns applies one timeouts setting "
                               "to every TCP listener", "timeouts"))
    if len(kubernetes) > 1:
        file, line = _where(getattr(kubernetes[1], "source", None))
        out.append(Unsupported(file, line, "a second kubernetes plugin: fastdns serves "
                               "one kubernetes plugin per Corefile", "kubernetes"))
    return out


def warnings(config: Config) -> list[str]:
    """Plugins accepted but not run by ``serve``, one line each: those that
    change nothing about answers (``ignored``, with why) and a "full" row
    that names no stage."""
    out = []
    for block in config.servers:
        for name, conf in block.plugins.items():
            row = registry.get(name)
            if row is not None and row.support == "ignored":
                file, line = _where(getattr(conf, "source", block.source))
                out.append(f"{file}:{line}: plugin {name}: accepted, not run: {row.reason}")
            elif row is not None and row.runs and not row.stages:
                file, line = _where(getattr(conf, "source", block.source))
                out.append(f"{file}:{line}: plugin {name}: accepted, but `fastdns serve` "
                           "does not run it yet")
    return list(dict.fromkeys(out))
