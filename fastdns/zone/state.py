"""The cluster as DNS sees it: stripped objects, indexed, and what a change touches.

Input is what `kubectl get ns,svc,endpointslices,pods -A -o yaml` (or
`-o json`) prints: a `List`, multi-document YAML, or a directory of such
files. Objects are stripped (`objects.strip`) as soon as they are parsed, as
CoreDNS's `plugin/kubernetes/object` package does, so nothing downstream
holds API dicts.

`ClusterState.apply` is the incremental half: it reports which Services'
DNS records an event can change, so the compiler recompiles only their
fragments (docs/internals.md §3).
"""

from __future__ import annotations

import json
import json.decoder
import os
import re
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from fastdns.zone.objects import (
    KINDS,
    EndpointSlice,
    Namespace,
    Obj,
    Pod,
    Service,
    StateError,
    strip,
)

STATE_SUFFIXES = (".yaml", ".yml", ".json")

_KIND_OF = {Namespace: "Namespace", Service: "Service", EndpointSlice: "EndpointSlice", Pod: "Pod"}

Key = tuple[str, str]


@dataclass(slots=True)
class Affected:
    """What an event (or a batch of them) changes for DNS.

    `services`: (namespace, name) of Services whose records may differ;
    `namespaces`: namespaces that appeared or vanished (their `ns.svc` /
    `ns.pod` names and every Service in them); `pod_namespaces`: namespaces
    whose pod set changed (only `pods verified` serves pod names from it).
    Merge with `|=` while debouncing.
    """

    services: set[Key] = field(default_factory=set)
    namespaces: set[str] = field(default_factory=set)
    pod_namespaces: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.services or self.namespaces or self.pod_namespaces)

    def __ior__(self, other: Affected) -> Affected:
        self.services |= other.services
        self.namespaces |= other.namespaces
        self.pod_namespaces |= other.pod_namespaces
        return self


class ClusterState:
    """Namespaces, Services, EndpointSlices and Pods keyed as the API keys them.

    Namespaces by name, the others by (namespace, name). EndpointSlices are
    also indexed by the Service their `kubernetes.io/service-name` label names,
    the way CoreDNS's endpoint index (`EpIndex`) groups them.
    """

    __slots__ = ("namespaces", "services", "slices", "pods", "_slices_by_svc", "_svcs_by_ns",
                 "_pods_by_ns")

    def __init__(self, objects: Iterable[Obj] = ()) -> None:
        self.namespaces: dict[str, Namespace] = {}
        self.services: dict[Key, Service] = {}
        self.slices: dict[Key, EndpointSlice] = {}
        self.pods: dict[Key, Pod] = {}
        self._slices_by_svc: dict[Key, dict[str, EndpointSlice]] = {}
        self._svcs_by_ns: dict[str, set[str]] = {}
        self._pods_by_ns: dict[str, dict[str, Pod]] = {}
        for obj in objects:
            self.apply("ADDED", obj)

    # -- queries the record builder uses ---------------------------------
    def slices_of(self, namespace: str, service: str) -> list[EndpointSlice]:
        """The Service's EndpointSlices, by slice name (a stable order for stable images)."""
        group = self._slices_by_svc.get((namespace, service))
        if not group:
            return []
        return [group[k] for k in sorted(group)]

    def slice_groups(self) -> list[Key]:
        """(namespace, service) of every Service label some EndpointSlice carries."""
        return list(self._slices_by_svc)

    def services_in(self, namespace: str) -> list[str]:
        return sorted(self._svcs_by_ns.get(namespace, ()))

    def pods_in(self, namespace: str) -> list[Pod]:
        group = self._pods_by_ns.get(namespace)
        return [group[k] for k in sorted(group)] if group else []

    def namespace_exists(self, namespace: str) -> bool:
        """A Namespace object exists, or a Service lives there (the API guarantees the
        namespace then; state files written by hand often omit Namespace objects)."""
        return namespace in self.namespaces or bool(self._svcs_by_ns.get(namespace))

    def all_namespaces(self) -> set[str]:
        return set(self.namespaces) | {ns for ns, names in self._svcs_by_ns.items() if names}

    def __len__(self) -> int:
        return len(self.namespaces) + len(self.services) + len(self.slices) + len(self.pods)

    # -- events ----------------------------------------------------------
    def apply(self, event_type: str, obj: Obj | tuple[str, Any]) -> Affected:
        """Apply ADDED / MODIFIED / DELETED of one stripped object; say what it touches.

        `obj` is a stripped object, or for DELETED also `(kind, key)` where key
        is the namespace name or (namespace, name).
        """
        if event_type not in ("ADDED", "MODIFIED", "DELETED"):
            raise ValueError(f"unknown event type {event_type!r}")
        if isinstance(obj, tuple):
            if event_type != "DELETED":
                raise ValueError("only DELETED may name an object by key")
            dkind, key = obj
            return self._delete(dkind, key)
        kind = _KIND_OF.get(type(obj))
        if kind is None:
            raise TypeError(f"not a stripped object: {type(obj).__name__}")
        if event_type == "DELETED":
            return self._delete(kind, obj.name if kind == "Namespace" else obj.key)
        return self._upsert(kind, obj)

    def _upsert(self, kind: str, obj: Any) -> Affected:
        out = Affected()
        if kind == "Namespace":
            if obj.name not in self.namespaces:
                existed = self.namespace_exists(obj.name)
                self.namespaces[obj.name] = obj
                if not existed:
                    out.namespaces.add(obj.name)
        elif kind == "Service":
            old = self.services.get(obj.key)
            if old != obj:
                existed = self.namespace_exists(obj.namespace)
                self.services[obj.key] = obj
                self._svcs_by_ns.setdefault(obj.namespace, set()).add(obj.name)
                out.services.add(obj.key)
                if not existed:
                    out.namespaces.add(obj.namespace)
        elif kind == "EndpointSlice":
            old_slice = self.slices.get(obj.key)
            if old_slice != obj:
                if old_slice is not None:
                    self._unindex_slice(old_slice, out)
                self.slices[obj.key] = obj
                if obj.service:
                    svc = (obj.namespace, obj.service)
                    self._slices_by_svc.setdefault(svc, {})[obj.name] = obj
                    out.services.add(svc)
        elif kind == "Pod":
            old_pod = self.pods.get(obj.key)
            if old_pod != obj:
                self.pods[obj.key] = obj
                self._pods_by_ns.setdefault(obj.namespace, {})[obj.name] = obj
                out.pod_namespaces.add(obj.namespace)
        return out

    def _unindex_slice(self, old: EndpointSlice, out: Affected) -> None:
        if not old.service:
            return
        svc = (old.namespace, old.service)
        group = self._slices_by_svc.get(svc)
        if group is not None:
            group.pop(old.name, None)
            if not group:
                del self._slices_by_svc[svc]
        out.services.add(svc)

    def _delete(self, kind: str, key: Any) -> Affected:
        out = Affected()
        if kind == "Namespace":
            name = key if isinstance(key, str) else key[1]
            if self.namespaces.pop(name, None) is not None and not self.namespace_exists(name):
                out.namespaces.add(name)
        elif kind == "Service":
            old = self.services.pop(tuple(key), None)
            if old is not None:
                names = self._svcs_by_ns.get(old.namespace)
                if names is not None:
                    names.discard(old.name)
                    if not names:
                        del self._svcs_by_ns[old.namespace]
                out.services.add(old.key)
                if not self.namespace_exists(old.namespace):
                    out.namespaces.add(old.namespace)
        elif kind == "EndpointSlice":
            old_slice = self.slices.pop(tuple(key), None)
            if old_slice is not None:
                self._unindex_slice(old_slice, out)
        elif kind == "Pod":
            old_pod = self.pods.pop(tuple(key), None)
            if old_pod is not None:
                group = self._pods_by_ns.get(old_pod.namespace)
                if group is not None:
                    group.pop(old_pod.name, None)
                    if not group:
                        del self._pods_by_ns[old_pod.namespace]
                out.pod_namespaces.add(old_pod.namespace)
        else:
            raise StateError(f"unsupported kind {kind!r}")
        return out


# -- loading -------------------------------------------------------------

def _items(doc: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind, object) of one parsed document: an object or a (typed) List of them."""
    if doc is None:
        return
    if not isinstance(doc, dict):
        raise StateError(f"{where}: a document is not a mapping")
    kind = doc.get("kind")
    if not isinstance(kind, str):
        raise StateError(f"{where}: a document without kind")
    if kind == "List" or (kind.endswith("List") and "items" in doc):
        # API lists ("ServiceList") carry no kind on their items.
        item_kind = kind[: -len("List")] if kind != "List" else None
        items = doc.get("items") or []
        if not isinstance(items, list):
            raise StateError(f"{where}: {kind}.items is not a list")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise StateError(f"{where}: {kind} item {i} is not a mapping")
            k = item.get("kind") or item_kind
            if not isinstance(k, str):
                raise StateError(f"{where}: {kind} item {i} without kind")
            if k.endswith("List") and "items" in item:
                yield from _items(item, where)
            else:
                yield k, item
    else:
        yield kind, doc


def _documents(text: str, where: str) -> tuple[list[Any], bool]:
    """The parsed documents, and whether the text was JSON."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise StateError(f"{where}: not valid JSON: {exc}") from None
        return (doc if isinstance(doc, list) else [doc]), True
    try:
        doc = _fast_yaml(text)
    except _NotPlain:
        pass
    else:
        return ([] if doc is None else [doc]), False
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return list(yaml.load_all(text, Loader=loader)), False
    except yaml.YAMLError as exc:
        raise StateError(f"{where}: not valid YAML: {_yaml_problem(exc)}") from None


class _NotPlain(Exception):
    """The fast reader met YAML it does not read: PyYAML reads the file."""


_PLAIN_TEXT = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")  # tabs, CR, control characters
_KEY = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_./-]*):(?: |$)")
_STR_TAG = "tag:yaml.org,2002:str"


class _BlockReader:
    """Block YAML as kubectl, go-yaml and yaml.dump write it, read line by line.

    PyYAML, even over libyaml, builds each scalar through Python-level nodes,
    resolvers and constructors: ~1 MB/s, 100 s for a 10k-Service dump. This
    reads the common subset ~10x faster and raises _NotPlain on anything
    else (anchors, tags, multi-line flow or plain scalars, complex keys,
    indentation it cannot place, tabs, non-ASCII), for PyYAML to read the
    whole file. Scalars are resolved by PyYAML's own implicit resolvers and
    built by its SafeConstructor, so `yes`, `0x1F`, `~` or a timestamp mean
    what they mean there; single-line flow collections and escaped quoted
    scalars are handed to PyYAML one by one.
    """

    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")
        self.i = 0
        self.resolvers = yaml.resolver.Resolver.yaml_implicit_resolvers
        self.constructor = yaml.constructor.SafeConstructor()
        self.cache: dict[str, Any] = {}
        self.loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    def document(self) -> Any:
        lines = self.lines
        self._skip()
        if self.i < len(lines) and lines[self.i] == "---":
            self.i += 1
            self._skip()
        if self.i >= len(lines):
            return None
        line = lines[self.i]
        if line[:1] == " ":
            raise _NotPlain("an indented document")
        value = self._block(0)
        self._skip()
        if self.i < len(lines):
            raise _NotPlain(f"line {self.i + 1}: more than one document, or odd indentation")
        return value

    def _skip(self) -> None:
        """Past blank and comment lines."""
        lines, i, n = self.lines, self.i, len(self.lines)
        while i < n:
            t = lines[i].lstrip(" ")
            if t and t[0] != "#":
                break
            i += 1
        self.i = i

    def _block(self, indent: int) -> Any:
        """The mapping or sequence whose lines start at ``indent``."""
        line = self.lines[self.i]
        if line.startswith("-", indent) and (len(line) == indent + 1
                                             or line[indent + 1] == " "):
            return self._sequence(indent)
        return self._mapping(indent, line[indent:])

    def _mapping(self, indent: int, first: str) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        lines = self.lines
        nlines = len(lines)
        cache = self.cache
        content = first  # the first entry may sit after a sequence's "- "
        while True:
            m = _KEY.match(content)
            if m is None:
                raise _NotPlain(f"line {self.i + 1}: not a plain key")
            k = m.group(1)
            key = cache.get(k, cache)
            if key is cache:
                key = self._plain(k)
            if key == "<<":
                raise _NotPlain("a merge key")
            rest = content[m.end():].lstrip(" ")
            self.i += 1
            if rest:
                got = cache.get(rest, cache)  # a plain scalar seen before
                out[key] = got if got is not cache else self._scalar(rest, indent)
            else:
                out[key] = self._nested(indent, allow_seq_at=indent)
            if self.i >= nlines:
                return out
            line = lines[self.i]
            stripped = line.lstrip(" ")
            if not stripped or stripped[0] == "#":
                self._skip()
                if self.i >= nlines:
                    return out
                line = lines[self.i]
                stripped = line.lstrip(" ")
            n = len(line) - len(stripped)
            if n < indent:
                return out
            if n > indent:
                raise _NotPlain(f"line {self.i + 1}: indented further than its mapping")
            if line.startswith("- ", n) or line[n:] == "-":
                return out  # the sequence this mapping is the value of goes on
            content = line[n:]

    def _nested(self, indent: int, allow_seq_at: int) -> Any:
        """The value of a key (or "-") with nothing after it: a block below, or null."""
        self._skip()
        if self.i >= len(self.lines):
            return self._plain("")
        line = self.lines[self.i]
        n = len(line) - len(line.lstrip(" "))
        if n > indent:
            return self._block(n)
        if n == allow_seq_at and (line.startswith("- ", n) or line[n:] == "-"):
            return self._sequence(n)
        return self._plain("")

    def _sequence(self, indent: int) -> list[Any]:
        out: list[Any] = []
        lines = self.lines
        while True:
            line = lines[self.i]
            rest = line[indent + 1:]
            body = rest.lstrip(" ")
            if not body:
                self.i += 1
                out.append(self._nested(indent, allow_seq_at=-1))
            else:
                at = len(line) - len(body)
                if body.startswith("- ") or body == "-":
                    raise _NotPlain(f"line {self.i + 1}: a sequence in a sequence's line")
                if _KEY.match(body):
                    out.append(self._mapping(at, body))
                else:
                    self.i += 1
                    out.append(self._scalar(body, indent))
            self._skip()
            if self.i >= len(lines):
                return out
            line = lines[self.i]
            n = len(line) - len(line.lstrip(" "))
            if n != indent or not (line.startswith("- ", n) or line[n:] == "-"):
                if n > indent:
                    raise _NotPlain(f"line {self.i + 1}: indented further than its sequence")
                return out

    def _scalar(self, text: str, indent: int) -> Any:
        """The one-line scalar ``text`` (a block scalar: the lines below it too)."""
        text = text.rstrip(" ")
        c = text[0]
        if c == "'":
            inner = text[1:-1]
            if len(text) < 2 or text[-1] != "'" or "'" in inner.replace("''", ""):
                raise _NotPlain(f"line {self.i}: a quoted scalar that goes on")
            return inner.replace("''", "'")
        if c == '"':
            inner = text[1:-1]
            if len(text) < 2 or text[-1] != '"' or '"' in inner:
                raise _NotPlain(f"line {self.i}: a quoted scalar that goes on")
            if "\\" in inner:
                return self._pyyaml(text)
            return inner
        if c in "[{":
            if text in ("[]", "{}"):
                return [] if c == "[" else {}
            return self._pyyaml(text)
        if c in "|>":
            return self._block_scalar(text, indent)
        if c in "-?:" and (len(text) == 1 or text[1] == " "):
            raise _NotPlain(f"line {self.i}: an indicator")
        if c in ",#&*!%@`]}" or " #" in text or ": " in text or text.endswith(":"):
            raise _NotPlain(f"line {self.i}: not a plain scalar")
        return self._plain(text)

    def _plain(self, text: str) -> Any:
        got = self.cache.get(text, self)
        if got is not self:
            return got
        tag = _STR_TAG
        for t, regexp in self.resolvers.get(text[:1], ()):
            if regexp.match(text):
                tag = t
                break
        if tag == _STR_TAG:
            value: Any = text
        elif tag not in self.constructor.yaml_constructors:
            raise _NotPlain(f"a scalar tagged {tag}")  # '<<', '='
        else:
            node = yaml.ScalarNode(tag, text)
            value = self.constructor.yaml_constructors[tag](self.constructor, node)
            if isinstance(value, (list, dict, set)):
                raise _NotPlain("a collection from a scalar")
        if len(self.cache) < 100_000:
            self.cache[text] = value
        return value

    def _pyyaml(self, text: str) -> Any:
        try:
            return yaml.load("x: " + text + "\n", Loader=self.loader)["x"]
        except yaml.YAMLError:
            raise _NotPlain(f"line {self.i}: PyYAML's to read") from None

    def _block_scalar(self, header: str, indent: int) -> Any:
        if any(ch.isdigit() for ch in header) or "+" in header or " #" in header:
            raise _NotPlain(f"line {self.i}: a block scalar with an indicator")
        lines = self.lines
        start = self.i
        while self.i < len(lines):
            line = lines[self.i]
            if line.strip(" ") and len(line) - len(line.lstrip(" ")) <= indent:
                break
            self.i += 1
        body = lines[start:self.i]
        while body and not body[-1].strip(" "):  # trailing blank lines: chomping's
            body.pop()
            self.i -= 1
        return self._pyyaml(header + "\n" + "\n".join(body))


def _fast_yaml(text: str) -> Any:
    """The document ``_BlockReader`` reads, or raise _NotPlain."""
    body = text[4:] if text.startswith("---\n") else text  # one leading marker is fine
    if not text.isascii() or _PLAIN_TEXT.search(text) or _yaml_unsafe(body):
        raise _NotPlain("characters or structures PyYAML must read")
    return _BlockReader(text).document()


def _yaml_problem(exc: Exception) -> str:
    """PyYAML's message on one line: the problem and where (its own spans lines)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


@dataclass(frozen=True, slots=True)
class StateShape:
    """What a state file shows about its own end (fastdns/control/statefile.py's checks).

    `complete`: the file proves it was written to its end. JSON does (a cut
    one does not parse), and so does a YAML List whose ``kind`` follows its
    ``items``: kubectl prints keys sorted (apiVersion, items, kind,
    metadata), so a cut ``kubectl get -o yaml`` output lacks its kind and is
    refused as "a document without kind". Multi-document YAML, or a List
    written ``kind`` first, can be cut at an item boundary and still parse.
    `empty_list`: some document is a List with an explicit ``items: []``,
    the one way to say "no objects" on purpose.
    """

    complete: bool = False
    empty_list: bool = False

    def __and__(self, other: StateShape) -> StateShape:
        """Two files of one state directory: complete only if both are."""
        return StateShape(self.complete and other.complete,
                          self.empty_list or other.empty_list)


def _is_list(doc: Any) -> bool:
    kind = doc.get("kind") if isinstance(doc, dict) else None
    return isinstance(kind, str) and (kind == "List" or (kind.endswith("List") and "items" in doc))


def _shape(docs: list[Any], is_json: bool) -> StateShape:
    docs = [d for d in docs if d is not None]
    if not docs:
        return StateShape()
    closed = all(_is_list(d) and "items" in d and list(d).index("kind") > list(d).index("items")
                 for d in docs)
    empty = any(_is_list(d) and d.get("items") == [] for d in docs)
    return StateShape(complete=is_json or closed, empty_list=empty)


def _describe(kind: str, obj: dict[str, Any]) -> str:
    m = obj.get("metadata")
    meta = m if isinstance(m, dict) else {}
    name = f"{meta.get('namespace') or ''}/{meta.get('name', '?')}".lstrip("/")
    return f"{kind} {name}"


def load_objects(path: str, kinds: Collection[str] = KINDS) -> list[Obj]:
    """Stripped objects of one state file (kinds not in ``kinds`` skipped)."""
    return load_file(path, kinds)[0]


def load_file(path: str, kinds: Collection[str] = KINDS) -> tuple[list[Obj], StateShape]:
    """``load_objects`` and the file's StateShape."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(f"{path}: cannot read: {exc}") from None
    docs, is_json = _documents(text, path)
    return _strip_all(docs, path, kinds), _shape(docs, is_json)


def state_files(path: str) -> list[str]:
    """The files a state path stands for: itself, or a directory's state files by name."""
    if os.path.isdir(path):
        return [os.path.join(path, n) for n in sorted(os.listdir(path))
                if n.endswith(STATE_SUFFIXES) and not n.startswith(".")
                and os.path.isfile(os.path.join(path, n))]
    return [path]


def load_state_objects(path: str | os.PathLike[str], *, pods: bool = True) -> list[Obj]:
    """Stripped objects of a state file or directory; StateError names file and object.

    ``pods=False`` skips Pod objects: only ``pods verified`` answers from
    them, and CoreDNS does not even watch Pods otherwise. A kubectl dump
    holds about as many Pods as endpoints, and keeping them cost the
    control process ~50 MB at 10k Services that nothing read.
    """
    return load_state_checked(path, pods=pods)[0]


def load_state_checked(path: str | os.PathLike[str], *, pods: bool = True
                       ) -> tuple[list[Obj], StateShape]:
    """``load_state_objects`` and the StateShape of the whole path (a directory
    is complete when every file is; no file at all is not)."""
    kinds = KINDS if pods else tuple(k for k in KINDS if k != "Pod")
    objs: list[Obj] = []
    shape: StateShape | None = None
    for f in state_files(os.fspath(path)):
        got, s = load_file(f, kinds)
        objs.extend(got)
        shape = s if shape is None else shape & s
    return objs, shape if shape is not None else StateShape()


def load_state(path: str | os.PathLike[str], *, pods: bool = True) -> ClusterState:
    """ClusterState of a state file or directory (see load_state_objects)."""
    return ClusterState(load_state_objects(path, pods=pods))


def demo_path() -> str:
    """The built-in demo cluster (`--demo`)."""
    return os.path.join(os.path.dirname(os.path.dirname(__file__)), "demo", "cluster.yaml")


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
# YAML the item-by-item parse could read differently from the whole-file
# parse: anchors, aliases, tags, directives and document markers (any of
# these, even inside a quoted string, just means "load it whole").
_YAML_NODE_PROPS = re.compile(r"(?:^|[\s\[{,])[&*!]", re.M)


def _yaml_unsafe(text: str) -> bool:
    """Whether ``text`` may hold anchors, aliases, tags, directives or markers."""
    if ("&" in text or "*" in text or "!" in text) and _YAML_NODE_PROPS.search(text):
        return True
    return text.startswith(("---", "...", "%")) or "\n---" in text or "\n..." in text \
        or "\n%" in text
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
    if _yaml_unsafe(text):
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
    if len(docs) != 1 or not _is_list(docs[0]):
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
    docs, is_json = _documents(text, path)
    objs = _strip_all(docs, path, kinds)
    shape = _shape(docs, is_json)
    per_item = _item_kinds(docs, kinds)
    # the index needs only the text: the parse tree and the bytes go first
    del docs, data

    def index() -> ItemIndex | None:
        if per_item is None or not text.isascii():
            return None
        return _index(text.encode("ascii"), text, is_json, per_item[0], per_item[1], shape)

    return objs, shape, index


def _strip_all(docs: list[Any], path: str, kinds: Collection[str]) -> list[Obj]:
    out: list[Obj] = []
    for doc in docs:
        for kind, raw in _items(doc, path):
            if kind not in kinds:
                continue  # Endpoints, Deployments ...: not DNS's business
            try:
                out.append(strip(kind, raw))
            except StateError as exc:
                msg = str(exc)
                if not msg.startswith(kind):
                    msg = f"{_describe(kind, raw)}: {msg}"
                raise StateError(f"{path}: {msg}") from None
    return out


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
    if _yaml_unsafe(text) or not text.endswith("\n"):
        raise ValueError("not plain block YAML")
    starts = []
    for m in _YAML_COL0.finditer(text):
        if not text.startswith(("- ", "-\n"), m.start()):
            raise ValueError("a line at column 0 that starts no item")
        starts.append(m.start())
    if not starts or starts[0] != 0:
        raise ValueError("the region does not start an item")
    try:
        items = _fast_yaml(text)
    except _NotPlain:
        items = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if not isinstance(items, list) or len(items) != len(starts):
        raise ValueError("the region is not its items")
    return items, list(zip(starts, [*starts[1:], len(text)], strict=True))
