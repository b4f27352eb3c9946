"""The plugins' own metric series (coredns_acl_*, coredns_template_matches_total,
coredns_autopath_success_total, coredns_dns64_requests_translated_total), counted in the workers.

The contract between a worker and the control process: ``series.plugin_table(config)``
is the list of series the Corefile gives, each a family name and its label
values; word k of a worker's plugin region (ipc/layout.py ``W_PLUGIN_ROWS``)
counts series k, and ``W_PLUGIN_TABLE`` holds ``plugin_hash`` of the table
those words describe. Both sides derive the table from the same Corefile,
in the registry's order, each plugin's ``series`` hook giving its share. A
series beyond ``layout.PLUGIN_ROWS`` is not counted.

In the worker, Python hooks count through ``add`` into the table in force
(``use``, set with each Corefile), the C hooks count in their own context
and the plugin's ``c_counts`` reads them; ``export`` writes both on the
worker's 0.5 s timer, on top of what the region held when the Corefile was
taken in (the forward and cache regions' reload rule), so a reload with the
same series keeps counting up.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from typing import Any

from fastdns.ipc import tables

Series = tuple[str, ...]  # (family, label values ...)


def server_of(block: Any) -> str:
    """The ``server`` label of a block's series: its first listen address, as
    the cache rows report a block bound to several."""
    hosts = tuple(getattr(block, "listen_hosts", ()) or ()) or ("",)
    return tables.server_label(int(block.port or 53), hosts[0],
                               getattr(block, "transport", "dns") or "dns")


def plugin_hash(table: tuple[Series, ...]) -> int:
    """A nonzero 64-bit tag of the table (0 means "no table")."""
    if not table:
        return 0
    raw = "\n".join("\t".join(s) for s in table).encode()
    return (zlib.crc32(raw) << 32 | zlib.adler32(raw)) or 1


class Counts:
    """The Python counts of one worker for one table."""

    def __init__(self, table: tuple[Series, ...] = ()) -> None:
        self.table = table
        self.index = {s: i for i, s in enumerate(table)}
        self.n = [0] * len(table)
        self.base: list[int] | None = None
        #: the C hooks' readers: () -> {series: count}, each a hook in force
        self.c_readers: list[Callable[[], dict[Series, int]]] = []

    def add(self, series: Series, k: int = 1) -> None:
        i = self.index.get(series)
        if i is not None:
            self.n[i] += k

    def totals(self) -> list[int]:
        out = list(self.n)
        for read in self.c_readers:
            for s, k in read().items():
                i = self.index.get(s)
                if i is not None:
                    out[i] += k
        return out

    def export(self, region: Any) -> None:
        """Write the counts into a worker's plugin region ([hash, words ...])."""
        if region is None:
            return
        thash = plugin_hash(self.table)
        if self.base is None:
            if region[0] == thash and thash:
                self.base = list(region[1:])
            else:
                region[0] = 0  # readers ignore the region from here ...
                region[1:] = memoryview(bytes(8 * (len(region) - 1))).cast("Q")
                region[0] = thash  # ... to here
                self.base = [0] * (len(region) - 1)
        if not thash:
            return
        for i, n in enumerate(self.totals()):
            region[1 + i] = self.base[i] + n


#: the worker's counts in force (WorkerPlugins sets it with each Corefile)
COUNTS = Counts()


def use(counts: Counts) -> None:
    global COUNTS
    COUNTS = counts


def add(series: Series, k: int = 1) -> None:
    """Count one event of ``series`` in the worker's table in force."""
    COUNTS.add(series, k)


def decode(words: Iterable[tuple[int, int]], table: tuple[Series, ...]) -> dict[Series, int]:
    """A (summed) plugin region's words by series."""
    counts = [n for _i, n in words]
    return {s: counts[i] for i, s in enumerate(table) if i < len(counts)}
