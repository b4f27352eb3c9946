"""The fake's object store: objects by kind, one resourceVersion, the event history.

Like etcd behind the apiserver, one revision counter is shared by all
kinds, and the history is one bounded window over all of them (an etcd
compaction window), not the apiserver's per-resource watch caches: a quiet
kind's resourceVersion ages with every other kind's changes, which is
exactly what bookmarks are for. ``floor`` is the oldest resourceVersion a
watch can still start from; older ones get 410.
"""

from __future__ import annotations

import bisect
import collections
import copy
import datetime
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastdns.testing.fakeapi.resources import RESOURCES, Resource

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds
# a list's items as (key, object, the object's JSON)
Items = list[tuple[Key, dict[str, Any], bytes]]


@dataclass(frozen=True)
class Event:
    rv: int
    kind: str
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]  # without kind/apiVersion
    prev: dict[str, Any] | None
    raw: bytes  # obj as compact JSON


def object_key(kind: str, obj: dict[str, Any]) -> Key:
    """The (namespace, name) an object is stored under (ValueError without a name)."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        raise ValueError(f"{kind} without metadata.name")
    ns = "" if not RESOURCES[kind].namespaced else (meta.get("namespace") or "default")
    return ns, meta["name"]


def _now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def encode(obj: Any) -> bytes:
    """Compact JSON, as the apiserver writes it."""
    return json.dumps(obj, separators=(",", ":")).encode()


def _event_rv(ev: Event) -> int:
    return ev.rv


def with_kind(res: Resource, obj: dict[str, Any]) -> dict[str, Any]:
    """The object as served: ``kind`` and ``apiVersion`` first."""
    out = {"kind": res.kind, "apiVersion": res.api_version}
    out.update(obj)
    return out


class Store:
    """Objects, their encodings and the event history, under one lock.

    ``lock`` is held by the HTTP side too, while it reads a consistent list
    or the events after a cursor; ``on_change`` is called after every
    change, outside the lock (the server wakes its watch streams).
    """

    def __init__(self, history_size: int, snapshot_cache: int,
                 on_change: Callable[[], None]) -> None:
        self.history_size = history_size
        self.lock = threading.RLock()
        self.objects: dict[str, dict[Key, dict[str, Any]]] = {k: {} for k in RESOURCES}
        # each object's JSON, encoded once per change: lists and watch lines
        # are then joins, so a 100k-endpoint list is served as fast as a real
        # apiserver serves it from its watch cache
        self.enc: dict[str, dict[Key, bytes]] = {k: {} for k in RESOURCES}
        self.rv = 1
        self._history: list[Event] = []  # live part starts at _hist_start
        self._hist_start = 0
        self.floor = 1  # watches from rv >= floor can be served from history
        # paged lists in progress: (kind, namespace, labels, fields, rv) -> items
        self.snapshots: collections.OrderedDict[tuple, Items] = collections.OrderedDict()
        self.snapshot_cache = snapshot_cache
        self._on_change = on_change

    def mutate(self, kind: str, obj: dict[str, Any], mode: str) -> dict[str, Any]:
        """Create (ValueError if it exists), update (KeyError if missing) or apply."""
        obj = copy.deepcopy(obj)
        obj.pop("kind", None)
        obj.pop("apiVersion", None)
        key = object_key(kind, obj)
        meta = obj["metadata"]
        if RESOURCES[kind].namespaced:
            meta["namespace"] = key[0]
        else:
            meta.pop("namespace", None)
        with self.lock:
            table = self.objects[kind]
            old = table.get(key)
            if mode == "create" and old is not None:
                raise ValueError(f"{kind} {key} already exists")
            if mode == "update" and old is None:
                raise KeyError(f"{kind} {key} not found")
            self.rv += 1
            if old is None:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", _now_rfc3339())
            else:
                meta["uid"] = old["metadata"].get("uid")
                meta["creationTimestamp"] = old["metadata"].get("creationTimestamp")
            meta["resourceVersion"] = str(self.rv)
            table[key] = obj
            raw = self.enc[kind][key] = encode(obj)
            self._record(Event(self.rv, kind, "ADDED" if old is None else "MODIFIED", obj, old,
                               raw))
        self._on_change()
        return with_kind(RESOURCES[kind], copy.deepcopy(obj))

    def delete(self, kind: str, key: Key) -> dict[str, Any]:
        """Remove an object (KeyError if missing); returns it at its deletion's rv."""
        if not RESOURCES[kind].namespaced:
            key = ("", key[1])
        with self.lock:
            old = self.objects[kind].pop(key)
            del self.enc[kind][key]
            self.rv += 1
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(self.rv)
            self._record(Event(self.rv, kind, "DELETED", gone, old, encode(gone)))
        self._on_change()
        return gone

    def get(self, kind: str, key: Key) -> dict[str, Any] | None:
        """A copy of one object, None if missing."""
        with self.lock:
            obj = self.objects[kind].get(key)
            return copy.deepcopy(obj) if obj is not None else None

    def all(self, kind: str) -> list[dict[str, Any]]:
        """Copies of every object of a kind, in key order."""
        with self.lock:
            return [copy.deepcopy(o) for _, o in sorted(self.objects[kind].items())]

    def compact(self) -> None:
        """Drop the whole event history: every watch from an older rv gets 410."""
        with self.lock:
            self._history.clear()
            self._hist_start = 0
            self.floor = self.rv
            self.snapshots.clear()

    def _record(self, ev: Event) -> None:
        """Append to the bounded history; the oldest event dropped sets the floor."""
        if self.history_size <= 0:
            self.floor = ev.rv
            return
        hist = self._history
        hist.append(ev)
        if len(hist) - self._hist_start > self.history_size:
            self.floor = hist[self._hist_start].rv
            self._hist_start += 1
            if self._hist_start >= self.history_size:  # amortised trim
                del hist[:self._hist_start]
                self._hist_start = 0

    def events_since(self, rv: int) -> list[Event]:
        """Events with resourceVersion > rv (lock held; rv >= floor)."""
        i = bisect.bisect_right(self._history, rv, lo=self._hist_start, key=_event_rv)
        return self._history[i:]
