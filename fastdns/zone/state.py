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
from collections.abc import Collection, Iterable, Iterator
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
from fastdns.zone.yamlfast import NotPlain, fast_yaml

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


def parse_documents(text: str, where: str, kinds: Collection[str] = KINDS
                    ) -> tuple[list[Any], bool]:
    """The parsed documents, and whether the text was JSON. Top-level YAML
    items of a kind fastdns knows but ``kinds`` leaves out (Pods, unless
    ``pods verified``) are read as ``{"kind": KIND}`` only (yamlfast.py)."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise StateError(f"{where}: not valid JSON: {exc}") from None
        return (doc if isinstance(doc, list) else [doc]), True
    try:
        doc = fast_yaml(text, frozenset(k for k in KINDS if k not in kinds))
    except NotPlain:
        pass
    else:
        return ([] if doc is None else [doc]), False
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return list(yaml.load_all(text, Loader=loader)), False
    except yaml.YAMLError as exc:
        raise StateError(f"{where}: not valid YAML: {_yaml_problem(exc)}") from None


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


def is_list_doc(doc: Any) -> bool:
    kind = doc.get("kind") if isinstance(doc, dict) else None
    return isinstance(kind, str) and (kind == "List" or (kind.endswith("List") and "items" in doc))


def state_shape(docs: list[Any], is_json: bool) -> StateShape:
    docs = [d for d in docs if d is not None]
    if not docs:
        return StateShape()
    closed = all(is_list_doc(d) and "items" in d and list(d).index("kind") > list(d).index("items")
                 for d in docs)
    empty = any(is_list_doc(d) and d.get("items") == [] for d in docs)
    return StateShape(complete=is_json or closed, empty_list=empty)


def _describe(kind: str, obj: dict[str, Any]) -> str:
    m = obj.get("metadata")
    meta = m if isinstance(m, dict) else {}
    name = f"{meta.get('namespace') or ''}/{meta.get('name', '?')}".lstrip("/")
    return f"{kind} {name}"


def strip_all(docs: list[Any], path: str, kinds: Collection[str]) -> list[Obj]:
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
    docs, is_json = parse_documents(text, path, kinds)
    return strip_all(docs, path, kinds), state_shape(docs, is_json)


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
