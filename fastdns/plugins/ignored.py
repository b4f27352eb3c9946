"""pprof, trace, dnstap, metadata: they change nothing about answers, accepted with a warning.

A distribution's Corefile, or an operator's debugging edit, may carry them.
Refusing the whole Corefile for a profiling endpoint would cost a cluster
its DNS for nothing the pods see, so ``serve`` runs such a Corefile and says
in one warning line per plugin what it leaves out; ``check-corefile`` prints
the same line as WARN. The directives are still read as CoreDNS reads them
(plugin/pprof/setup.go: at most one address and a ``block [RATE]`` line;
plugin/trace/setup.go: an optional endpoint type and endpoint, then
options; plugin/dnstap/setup.go: a socket or ``tcp://`` address, then
``full``; plugin/metadata/setup.go: zones, no block), so a Corefile CoreDNS
would refuse is refused here too. ``metadata`` only lets other plugins
publish labels that later ones read (``log``'s ``{/label}``, ``view``);
no plugin fastdns runs publishes or reads them yet, so it changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fastdns.corefile.dispenser import Dispenser
from fastdns.corefile.model import PluginConfig
from fastdns.plugins.spec import Plugin


@dataclass(frozen=True)
class IgnoredConfig(PluginConfig):
    """The arguments as written (kept for the warning, never acted on)."""

    name: ClassVar[str] = ""
    args: tuple[str, ...] = ()


class PprofConfig(IgnoredConfig):
    name: ClassVar[str] = "pprof"


class TraceConfig(IgnoredConfig):
    name: ClassVar[str] = "trace"


class DnstapConfig(IgnoredConfig):
    name: ClassVar[str] = "dnstap"


class MetadataConfig(IgnoredConfig):
    name: ClassVar[str] = "metadata"


def _options(d: Dispenser) -> None:
    """Consume a ``{ ... }`` block of sub-directives, whatever they say."""
    while d.next_block():
        d.remaining_args()


def parse_pprof(d: Dispenser, zones: tuple[str, ...]) -> PprofConfig:
    args = d.remaining_args()
    if len(args) > 1:
        raise d.arg_err()
    while d.next_block():
        if d.val() != "block":
            raise d.unknown_property()
        if len(d.remaining_args()) > 1:
            raise d.arg_err()
    return PprofConfig(tuple(a.text for a in args))


def parse_trace(d: Dispenser, zones: tuple[str, ...]) -> TraceConfig:
    args = d.remaining_args()
    if len(args) > 2:
        raise d.arg_err()
    _options(d)
    return TraceConfig(tuple(a.text for a in args))


def parse_dnstap(d: Dispenser, zones: tuple[str, ...]) -> DnstapConfig:
    args = d.remaining_args()
    if not 1 <= len(args) <= 2 or (len(args) == 2 and args[1].text != "full"):
        raise d.arg_err()
    _options(d)
    return DnstapConfig(tuple(a.text for a in args))


def parse_metadata(d: Dispenser, zones: tuple[str, ...]) -> MetadataConfig:
    args = d.remaining_args()
    if d.next_block():
        raise d.arg_err()
    return MetadataConfig(tuple(a.text for a in args))


PPROF = Plugin("pprof", "ignored", config=PprofConfig, parse=parse_pprof, handler=False,
               reason="changes nothing about answers: fastdns serves no Go profiling "
                      "endpoint (py-spy profiles its processes)")
TRACE = Plugin("trace", "ignored", config=TraceConfig, parse=parse_trace, handler=False,
               reason="changes nothing about answers: fastdns sends no traces")
DNSTAP = Plugin("dnstap", "ignored", config=DnstapConfig, parse=parse_dnstap,
                handler=False,
                reason="changes nothing about answers: fastdns sends no dnstap messages "
                       "(use the log plugin)")
METADATA = Plugin("metadata", "ignored", config=MetadataConfig, parse=parse_metadata,
                  handler=False,
                  reason="changes nothing about answers: no plugin fastdns runs publishes or "
                         "reads metadata labels")
