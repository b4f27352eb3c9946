"""Incremental reloads of a state file: only the items that changed are read again.

Used by ``control/statefile.py`` for a changed single-List file; the comment
below the imports says how the items are indexed and compared.
"""

from __future__ import annotations

import json
import json.decoder
import re
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import yaml

from fastdns.zone.objects import KINDS, Namespace, Obj, StateError, strip
from fastdns.zone.state import (
    StateShape,
    is_list_doc,
    parse_documents,
    state_shape,
    strip_all,
)
from fastdns.zone.yamlfast import NotPlain, fast_yaml, yaml_unsafe

# -- incremental reloads ------------------------------------------------------------
#
# A changed state file is mostly the same bytes: an operator's tool rewrites a
# 70 MB dump to move one endpoint. Parsing it all again (JSON ~2 s, YAML through
# libyaml ~100 s at 10k Services) is what made a change slow, so a single-List
# file is indexed when it loads: where each item lies, and a checksum of every
# BLOCK-sized block counted from the start and from the end. A new version is
# compared block by block; only the items overlapping what differs are parsed
# and stripped again, and the rest keep their objects. Anything the index
# cannot vouch for (other structures, a change outside the items, a region
# that does not parse as whole items) raises Unpatchable, and the caller loads
# the whole file, which is also what reports a bad one.

BLOCK = 16384
_WS = re.compile(r"[ \t\n\r]*")
_YAML_ITEM = re.compile(r"^-(?: |$)", re.M)
_YAML_COL0 = re.compile(r"^[^ \n#]", re.M)


def _skip(text: str, pos: int) -> int:
    """Past the JSON whitespace at ``pos``."""
    m = _WS.match(text, pos)
    return m.end() if m is not None else pos


class Unpatchable(Exception):
    """The new version cannot be read item by item against the index: load it whole."""


@dataclass(slots=True)
class ItemIndex:
    """Where the items of a one-List, ASCII state file lie (byte offsets), and its
    block checksums. ``which[i]``: the position among the loaded objects of item
    i's object, -1 for an item of a kind not kept (a whole load's only: empty
    in the index a patch returns, whose caller keeps the objects per item)."""

    fmt: str  # "json" or "yaml"
    size: int
    item_kind: str | None  # a typed List's ("ServiceList": "Service")
    starts: array
    ends: array
    which: array
    head: bytes  # the file before the first item
    tail: bytes  # after the last
    fwd: list[int]  # checksums of data[k*BLOCK:(k+1)*BLOCK]
    back: list[int]  # of data[size-(k+1)*BLOCK:size-k*BLOCK]
    shape: StateShape


def _checksums(data: bytes) -> tuple[list[int], list[int]]:
    """crc32 and adler32 of each whole block, from the start and from the end."""
    mv = memoryview(data)
    n = len(data) // BLOCK
    crc, adler = zlib.crc32, zlib.adler32
    fwd = []
    for k in range(n):
        b = mv[k * BLOCK:(k + 1) * BLOCK]
        fwd.append(crc(b) | adler(b) << 32)
    back = []
    size = len(data)
    for k in range(n):
        b = mv[size - (k + 1) * BLOCK:size - k * BLOCK]
        back.append(crc(b) | adler(b) << 32)
    return fwd, back


def _json_items(text: str, pos: int, end: int) -> tuple[list[Any], list[tuple[int, int]]]:
    """The JSON values ``value (, value)*`` of text[pos:end], exactly, and their spans."""
    dec = _DECODER
    items, spans = [], []
    while True:
        obj, stop = dec.raw_decode(text, pos)
        if stop > end:
            raise ValueError("an item runs past its place")
        items.append(obj)
        spans.append((pos, stop))
        pos = _skip(text, stop)
        if pos >= end:
            if pos > end:
                raise ValueError("separator past the region")
            return items, spans
        if text[pos] != ",":
            raise ValueError("items not separated by commas")
        pos = _skip(text, pos + 1)


_DECODER = json.JSONDecoder()


def _json_list(text: str, keep: bool = True
               ) -> tuple[dict[str, Any], list[tuple[int, int]]] | None:
    """A top-level JSON object parsed member by member, as json.loads would, with
    the spans of its ``items`` array's elements; None when it is anything else,
    or not valid (the caller then parses it with json.loads, which says why)."""
    try:
        return _walk_json_list(text, keep)
    except ValueError:
        return None


def _walk_json_list(text: str, keep: bool) -> tuple[dict[str, Any], list[tuple[int, int]]] | None:
    """(``keep`` False: the items are parsed and dropped, only their spans kept.)"""
    scanstring = json.decoder.scanstring  # type: ignore[attr-defined]  # (untyped, stdlib)

    pos = _skip(text, 0)
    if text[pos:pos + 1] != "{":
        return None
    doc: dict[str, Any] = {}
    spans: list[tuple[int, int]] | None = None
    pos = _skip(text, pos + 1)
    if text[pos:pos + 1] == "}":
        return None
    while True:
        if text[pos:pos + 1] != '"':
            return None
        key, pos = scanstring(text, pos + 1)
        pos = _skip(text, pos)
        if text[pos:pos + 1] != ":":
            return None
        pos = _skip(text, pos + 1)
        if key == "items" and text[pos:pos + 1] == "[":
            if spans is not None:
                return None  # twice: the last would win; not worth indexing
            start = _skip(text, pos + 1)
            if text[start:start + 1] == "]":
                doc[key], spans, pos = [], [], start + 1
            else:
                close = start
                value, spans = [], []
                while True:
                    obj, stop = _DECODER.raw_decode(text, close)
                    if keep:
                        value.append(obj)
                    spans.append((close, stop))
                    close = _skip(text, stop)
                    c = text[close:close + 1]
                    if c == "]":
                        break
                    if c != ",":
                        return None
                    close = _skip(text, close + 1)
                doc[key], pos = value, close + 1
        else:
            if key == "items":
                spans = None
            doc[key], pos = _DECODER.raw_decode(text, pos)
        pos = _skip(text, pos)
        c = text[pos:pos + 1]
        if c == "}":
            break
        if c != ",":
            return None
        pos = _skip(text, pos + 1)
    if _skip(text, pos + 1) != len(text) or spans is None:
        return None
    return doc, spans


def _yaml_spans(text: str, count: int) -> list[tuple[int, int]] | None:
    """Spans (line start to the next item's) of the ``count`` items of the one
    top-level ``items:`` block sequence, written at column 0 as kubectl and
    yaml.dump write it; None when the text is not plainly that."""
    if yaml_unsafe(text):
        return None
    keys = [m.start() for m in re.finditer(r"^items:[ \t]*(?:#.*)?$", text, re.M)]
    if len(keys) != 1:
        return None
    begin = text.find("\n", keys[0]) + 1
    if begin == 0:
        return None
    starts = []
    stop = len(text)
    for m in _YAML_COL0.finditer(text, begin):
        if text.startswith(("- ", "-\n"), m.start()) or text[m.start():] == "-":
            starts.append(m.start())
        else:
            stop = m.start()  # the next top-level key
            break
    if len(starts) != count or not starts or starts[0] != begin:
        return None
    return [(s, e) for s, e in zip(starts, [*starts[1:], stop], strict=True)]


def _item_kind(list_kind: str) -> str | None:
    return list_kind[: -len("List")] if list_kind != "List" else None


def _item_kinds(docs: list[Any], kinds: Collection[str]) -> tuple[str | None, array] | None:
    """A one-List file's item kind and ``which`` (ItemIndex); None for other files."""
    if len(docs) != 1 or not is_list_doc(docs[0]):
        return None
    doc = docs[0]
    items = doc.get("items")
    if not isinstance(items, list) or not items:
        return None
    item_kind = _item_kind(doc["kind"])
    which = array("i")
    n = 0
    for item in items:
        k = item.get("kind") or item_kind
        if not isinstance(k, str) or k.endswith("List") and "items" in item:
            return None  # a List in the List: the objects are not one per item
        if k in kinds:
            which.append(n)
            n += 1
        else:
            which.append(-1)
    return item_kind, which


def _index(data: bytes, text: str, is_json: bool, item_kind: str | None, which: array,
           shape: StateShape) -> ItemIndex | None:
    """The ItemIndex of a loaded one-List file (None: not ASCII, or not plainly so)."""
    if not data.isascii():
        return None
    if is_json:
        walked = _json_list(text, keep=False)  # the spans; the items were had already
        spans = None if walked is None else walked[1]
    else:
        spans = _yaml_spans(text, len(which))
    if spans is None or len(spans) != len(which):
        return None
    fwd, back = _checksums(data)
    starts = array("q", (s for s, _ in spans))
    ends = array("q", (e for _, e in spans))
    return ItemIndex("json" if is_json else "yaml", len(data), item_kind, starts, ends, which,
                     data[:starts[0]], data[ends[-1]:], fwd, back, shape)


def load_file_indexed(path: str, kinds: Collection[str] = KINDS, data: bytes | None = None
                      ) -> tuple[list[Obj], StateShape, ItemIndex | None]:
    """``load_file`` (of ``data``, when given, as read from ``path``), and the
    file's ItemIndex for ``patch_file`` where it has one."""
    objs, shape, later = load_file_phased(path, kinds, data)
    return objs, shape, later()


def load_file_phased(path: str, kinds: Collection[str] = KINDS, data: bytes | None = None
                     ) -> tuple[list[Obj], StateShape, Callable[[], ItemIndex | None]]:
    """``load_file``, and a function that then builds the ItemIndex: a JSON
    file's spans need a second, member by member parse, which the isolated
    loader runs after it has handed the objects over (fastdns/zone/isolated.py)."""
    try:
        if data is None:
            with open(path, "rb") as f:
                data = f.read()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(f"{path}: cannot read: {exc}") from None
    docs, is_json = parse_documents(text, path, kinds)
    objs = strip_all(docs, path, kinds)
    shape = state_shape(docs, is_json)
    per_item = _item_kinds(docs, kinds)
    # the index needs only the text: the parse tree and the bytes go first
    del docs, data

    def index() -> ItemIndex | None:
        if per_item is None or not text.isascii():
            return None
        return _index(text.encode("ascii"), text, is_json, per_item[0], per_item[1], shape)

    return objs, shape, index


def patch_file(index: ItemIndex, objs: list[Obj | None], data: bytes,
               kinds: Collection[str] = KINDS) -> tuple[list[Obj | None], ItemIndex, int]:
    """The objects of ``data``, a new version of the file ``index`` describes.

    ``objs`` is one entry per item (None for kinds not kept). Returns the new
    per-item objects, the new index and how many items were parsed again
    (0: the bytes are the same). Unpatchable when it cannot be done safely.
    """
    if not data.isascii():
        raise Unpatchable("not ASCII")
    fwd, back = _checksums(data)
    size, old = len(data), index.size
    k = 0
    for a, b in zip(fwd, index.fwd, strict=False):
        if a != b:
            break
        k += 1
    j = 0
    for a, b in zip(back, index.back, strict=False):
        if a != b:
            break
        j += 1
    lo = k * BLOCK
    same_end = min(j * BLOCK, old - lo, size - lo)
    hi_old = old - same_end
    delta = size - old
    starts, ends = index.starts, index.ends
    n = len(starts)
    if size == old and lo >= hi_old:  # every byte vouched for by a checksum
        return objs, _replace(index, fwd, back, data, starts, ends, index.which), 0
    a = min(max(bisect_right(ends, lo) - 1, 0), n - 1)
    b = max(min(bisect_left(starts, hi_old), n - 1), a)
    r_start, r_end_old = starts[a], ends[b]
    r_end = r_end_old + delta
    if r_start > lo and data[:r_start] != index.head:
        raise Unpatchable("the file's head changed")
    if r_end_old < hi_old and data[r_end:] != index.tail:  # (b is the last item then)
        raise Unpatchable("the file's tail changed")
    if r_end <= r_start:
        raise Unpatchable("the changed items vanished")
    if r_end - r_start > max(4 * BLOCK, size // 4):
        # most of it: parsed here it would cost as much as the whole load, and
        # its garbage would stay in this process (fastdns/zone/isolated.py)
        raise Unpatchable("most of the file changed")
    text = data[r_start:r_end].decode("ascii")
    try:
        if index.fmt == "json":
            items, spans = _json_items(text, 0, len(text))
        else:
            items, spans = _yaml_region(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise Unpatchable(f"the changed items do not parse alone: {exc}") from None
    # a re-read item that did not change keeps its object: the one in force
    was = {(type(o), _key(o)): o for o in objs[a:b + 1] if o is not None}
    new_objs: list[Obj | None] = []
    for item in items:
        if not isinstance(item, dict):
            raise Unpatchable("an item is not a mapping")
        kind = item.get("kind") or index.item_kind
        if not isinstance(kind, str) or (kind.endswith("List") and "items" in item):
            raise Unpatchable("an item without kind, or a List")
        if kind not in kinds:
            new_objs.append(None)
            continue
        try:
            obj = strip(kind, item)
        except StateError as exc:
            raise Unpatchable(str(exc)) from None
        prev = was.get((type(obj), _key(obj)))
        new_objs.append(prev if prev is not None and prev == obj else obj)
    out = [*objs[:a], *new_objs, *objs[b + 1:]]
    new_starts = starts[:a]
    new_starts.extend(s + r_start for s, _ in spans)
    new_ends = ends[:a]
    new_ends.extend(e + r_start for _, e in spans)
    if delta:
        new_starts.extend(s + delta for s in starts[b + 1:])
        new_ends.extend(e + delta for e in ends[b + 1:])
    else:
        new_starts.extend(starts[b + 1:])
        new_ends.extend(ends[b + 1:])
    # (``which`` maps a whole load's objects to items; a patch keeps them per item)
    return out, _replace(index, fwd, back, data, new_starts, new_ends, array("i")), len(items)


def _key(obj: Any) -> Any:
    return obj.name if isinstance(obj, Namespace) else obj.key


def _replace(index: ItemIndex, fwd: list[int], back: list[int], data: bytes, starts: array,
             ends: array, which: array) -> ItemIndex:
    return ItemIndex(index.fmt, len(data), index.item_kind, starts, ends, which,
                     data[:starts[0]], data[ends[-1]:], fwd, back, index.shape)


def _yaml_region(text: str) -> tuple[list[Any], list[tuple[int, int]]]:
    """The items of a region cut from a YAML List's column-0 block sequence."""
    if yaml_unsafe(text) or not text.endswith("\n"):
        raise ValueError("not plain block YAML")
    starts = []
    for m in _YAML_COL0.finditer(text):
        if not text.startswith(("- ", "-\n"), m.start()):
            raise ValueError("a line at column 0 that starts no item")
        starts.append(m.start())
    if not starts or starts[0] != 0:
        raise ValueError("the region does not start an item")
    try:
        items = fast_yaml(text)
    except NotPlain:
        items = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if not isinstance(items, list) or len(items) != len(starts):
        raise ValueError("the region is not its items")
    return items, list(zip(starts, [*starts[1:], len(text)], strict=True))
