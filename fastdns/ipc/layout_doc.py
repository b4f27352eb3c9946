"""The layout tables of docs/internals.md §4, generated from ``fastdns.ipc.layout``.

``python3 -m fastdns.ipc.layout_doc`` prints them. Kept out of the
declaration, which setup.py loads by file path at build time: only the docs
need this.
"""

from __future__ import annotations

import sys

from fastdns.ipc import layout

# The sizes the tables of internals.md §4 list below the regions.
DOC_SCALARS = ("MAX_WORKERS", "NAME_MAX", "STATS_WORDS", "COUNTERS_SIZE", "W_END", "N_Q",
               "N_SIZE", "N_LAT", "FWD_SLOTS", "FWD_SLOT_WORDS", "FWD_HIST", "FWD_END", "ROWS",
               "ROW_WORDS", "ROWS_END", "CR_WORDS", "CACHE_ROWS", "CACHE_END", "MAX_PROBES",
               "LOOP_SIZE")


def markdown() -> str:
    """The layout tables of docs/internals.md §4 (between its layout markers)."""
    out = []
    for region in layout.REGIONS:  # the docs are Python-docstring text: ``x`` becomes `x`
        unit = "octet" if region.unit == "octet" else "word (u64)"
        out += [f"**{region.name}** ({region.doc.replace('``', '`')}):", "",
                f"| {unit} | size | name | meaning |", "|---:|---:|---|---|"]
        for f in region.fields:
            size = "rest" if f.size == 0 else str(f.size)
            out.append(f"| {f.offset} | {size} | `{f.name}` | {f.doc.replace('``', '`')} |")
        out.append("")
    g = vars(layout)
    out += ["**sizes**:", "", "| name | value |", "|---|---:|"]
    out += [f"| `{name}` | {g[name]} |" for name in DOC_SCALARS]
    out += ["", "**buckets** (word order): qtype " + ", ".join(layout.QTYPE_BUCKETS)
            + "; rcode " + ", ".join(layout.RCODE_NAMES) + "; proto " + ", ".join(layout.PROTOS)
            + "; family " + ", ".join(map(str, layout.FAMILIES)) + ".", ""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(markdown())
