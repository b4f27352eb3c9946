"""minimal (``plugin/minimal``): NOERROR answers without their authority and additional sections.

As plugin/minimal/minimal.go: an answer ``response.Typify`` calls NoError
(NOERROR with records, or with no SOA and no NS in authority) is sent with
its header, question and answer section only, the OPT record dropped with
the additional section as minimal.go drops ``Extra``; denials, errors and
delegations pass as they are. The UDP fast path's C hook trims the image's
answers (fastdns/plugins/_shape.pyx); a forwarded answer is trimmed in
Python (``before``'s ``after``), the same rule (shapewire.minimal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fastdns.codec import wire
from fastdns.corefile.dispenser import Dispenser
from fastdns.corefile.model import PluginConfig, ServerBlock
from fastdns.plugins import shapewire, shaping
from fastdns.plugins.spec import Plugin, Rewritten


@dataclass(frozen=True)
class MinimalConfig(PluginConfig):
    name: ClassVar[str] = "minimal"


def parse_minimal(d: Dispenser, zones: tuple[str, ...]) -> MinimalConfig:
    """minimal (setup.go: no arguments)."""
    if d.next_arg():
        raise d.arg_err()
    if d.next_block():
        raise d.unknown_property()
    return MinimalConfig()


def _after(original: bytes, resp: bytes) -> bytes:
    return shapewire.minimal(resp)


def before(data: bytes, q: wire.Query, addr: tuple[str, int], tcp: bool,
           block: ServerBlock) -> Rewritten | None:
    return Rewritten(data, _after) if "minimal" in block.plugins else None


def _row(conf: PluginConfig) -> shaping.Row:
    return 0, 0, 0, 0, b""


PLUGIN = Plugin("minimal", "full", config=MinimalConfig, parse=parse_minimal,
                stages=("fast_path", "slow_path"), before=before,
                prelookup=shaping.prelookup(shaping.MINIMAL, "minimal", _row))
