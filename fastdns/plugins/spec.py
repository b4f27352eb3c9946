"""What a plugin declares: the fields of one row of the registry table.

One frozen ``Plugin`` per Corefile directive CoreDNS knows. The fields
replace the parallel tables fastdns used to keep per concern (which plugins
run, why not, which parse, which repeat, which answer, which label the
metrics); docs/plugins.md says where each stage's hook is called.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from fastdns.codec import wire
from fastdns.corefile.dispenser import Dispenser
from fastdns.corefile.model import Config, PluginConfig, ServerBlock
from fastdns.zone.contributor import ImageContributor

#: "full": fastdns does what CoreDNS does; "ignored": read and validated,
#: and it changes nothing about answers, so a Corefile with it runs with a
#: warning (``reason``) (plugins/ignored.py); "parsed": the configuration is
#: read and validated, the behaviour not wired in yet; "none": CoreDNS (or a
#: common external plugin) has it and fastdns refuses it at parse time.
Support = Literal["full", "ignored", "parsed", "none"]

#: Where a plugin runs (docs/plugins.md, "Stages"): ``setup`` when a process
#: starts or reloads; ``compile`` in the control process, into the snapshot
#: image (an ``ImageContributor``, fastdns/zone/contributor.py); ``fast_path``
#: in the worker's C loop; ``slow_path`` in the worker's Python handler;
#: ``observability`` the HTTP side ports, logs and metrics.
Stage = Literal["setup", "compile", "fast_path", "slow_path", "observability"]

#: A Corefile parser: the Dispenser on the directive name and the block's
#: zones -> the plugin's frozen config (corefile/parsers.py).
Parser = Callable[[Dispenser, tuple[str, ...]], PluginConfig]

#: A slow-path answer: (query bytes, parsed query, client address, over TCP,
#: the block serving the name) -> the answer, or None to let the query go on.
#: Only called for a block that has the plugin.
Answer = Callable[[bytes, wire.Query, tuple[str, int], bool, ServerBlock], bytes | None]

#: What a ``before`` hook may hand back instead of an answer: go on with
#: ``data`` (the next plugin's ``before``, then the image, the slow path,
#: the forwarder), and pass the answer that comes back, even one forwarded
#: later, through ``after(original_query, answer) -> answer`` (rewrite's
#: reverter, autopath's CNAME).
@dataclass(frozen=True)
class Rewritten:
    data: bytes
    after: Callable[[bytes, bytes], bytes | Pending] | None = None


#: A lookup from the top of the chain of the block a query came to, for
#: an ``after`` that needs another answer (dns64's A query): the query
#: bytes -> its final answer (None: none came).
Lookup = Callable[[bytes], Awaitable["bytes | None"]]


@dataclass(frozen=True)
class Pending:
    """What an ``after`` hands back when its answer needs another lookup first
    (dns64: the AAAA answer had no AAAA, so the A records are asked): the
    caller defers the query and sends ``await work(lookup)``, through the
    ``after`` hooks of the plugins above this one. ``answer`` is what stands
    meanwhile, sent where nothing can wait (a caller without ``send``)."""

    work: Callable[[Lookup], Awaitable[bytes]]
    answer: bytes


#: A ``before`` hook's "no answer at all" (acl's ``drop``).
DROP = b""

#: The pre-lookup stage in Python: (query bytes, parsed query, client
#: address, over TCP, the block serving the name) -> None (go on as it
#: is), an answer (``DROP``: none), or ``Rewritten``. Runs for TCP, the
#: pure-Python UDP path and every UDP query a C hook hands on
#: (server/beforechain.py), only in blocks that have the plugin.
Before = Callable[[bytes, wire.Query, tuple[str, int], bool, ServerBlock],
                  "bytes | Rewritten | None"]

NOT_IMPLEMENTED = "not implemented by fastdns"


@dataclass(frozen=True)
class Plugin:
    """One plugin: what the parser, the verdict, the worker and the metrics ask of it."""

    name: str
    support: Support = "none"
    #: why a "parsed" or "none" plugin does not run (check-corefile and serve print it)
    reason: str = NOT_IMPLEMENTED
    config: type[PluginConfig] | None = None
    parse: Parser | None = None
    stages: tuple[Stage, ...] = ()
    #: how two occurrences in one block consolidate (CoreDNS lets log and
    #: bind repeat); None: the directive may appear once per block
    merge: Callable[[PluginConfig, PluginConfig], PluginConfig] | None = None
    #: answers queries itself: a block needs one such plugin ("nothing would answer")
    answers: bool = False
    #: rank in fastdns's answering chain: the block's plugin of lowest rank
    #: names the ``plugin`` label of coredns_dns_responses_total (cache has
    #: one, though a block of cache alone answers nothing)
    label_rank: int | None = None
    #: sits in CoreDNS's handler chain, so coredns_plugin_enabled lists it
    #: (plugin/metrics/README.md "Bugs": bind and reload do not; health,
    #: ready and debug register no handler either)
    handler: bool = True
    #: the metric families (or ``prefix*``) this plugin owns
    metrics: tuple[str, ...] = ()
    #: the compile stage: the Corefile in force -> the plugin's share of the
    #: snapshot image (fastdns/zone/contributor.py), or None when no block
    #: has the plugin; the control process's ``build_compiler`` calls it
    contributor: Callable[[Config], ImageContributor | None] | None = None
    #: the worker's slow-path hook (fastdns/server/worker_plugins.py)
    answer: Answer | None = None
    #: decides per query before the image lookup, in Python (``Before``); a
    #: plugin with one should also give ``prelookup``, or every UDP query of a
    #: Corefile using it goes through Python
    before: Before | None = None
    #: the fast path's pre-lookup hook: the Corefile in force -> a PyCapsule
    #: named "fastdns.prelookup" (fastdns/server/_udp.pyx ``set_prelookup``;
    #: the hooks of several plugins chain in plugin.cfg order), or None when
    #: this Corefile needs none; the worker sets it on start and reload
    prelookup: Callable[[Config], object | None] | None = None
    #: the metric series this plugin counts for a Corefile (plugins/counting.py:
    #: (family, label values ...) each), in a fixed order; None: it counts none
    series: Callable[[Config], list[tuple[str, ...]]] | None = None
    #: what this plugin's C hook (``prelookup``'s capsule) counted so far, by
    #: series: (capsule, the Corefile in force) -> {series: count}
    c_counts: Callable[[object, Config], dict[tuple[str, ...], int]] | None = None
    #: not in CoreDNS's plugin.cfg: a common external plugin, known by name only
    external: bool = False

    @property
    def runs(self) -> bool:
        return self.support == "full"

    @property
    def accepted(self) -> bool:
        """Whether ``serve`` runs a Corefile that has it (perhaps with a warning)."""
        return self.support in ("full", "ignored")
