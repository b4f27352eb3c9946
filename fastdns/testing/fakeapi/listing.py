"""Lists in pages, single gets and writes: the non-watch verbs of the API.

A paged list is served from a snapshot taken at its first page, as the
apiserver serves one from etcd at the list's resourceVersion: the
``continue`` token names that rv and the last key sent, and once the
history has moved past the rv the token gets the apiserver's 410.
"""

from __future__ import annotations

import base64
import bisect
import json
from typing import Any

from aiohttp import web

from fastdns.testing.fakeapi.resources import Resource, status_response
from fastdns.testing.fakeapi.selectors import parse_field_selector, parse_label_selector
from fastdns.testing.fakeapi.store import Store, encode, with_kind

# Message of the 410 an expired `continue` token gets (apiserver storage/errors.go).
_CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. "
    "You can start a new list without the continue parameter, or use the continue "
    "token in this response to retrieve the remainder of the results. Continuing with "
    "the provided token results in an inconsistent list - objects that were created, "
    "modified, or deleted between the time the first chunk was returned and now may "
    "show up in the list."
)


def list_response(store: Store, request: web.Request, res: Resource,
                  namespace: str | None) -> web.Response:
    """One page of a list (``limit``, ``continue``, label and field selectors)."""
    q = request.query
    label = parse_label_selector(q.get("labelSelector"))
    field = parse_field_selector(q.get("fieldSelector"))
    limit = int(q.get("limit") or 0)
    cont = q.get("continue") or ""
    with store.lock:
        if cont:
            try:
                tok = json.loads(base64.b64decode(cont))
                list_rv, start = int(tok["rv"]), str(tok["start"])
            except (ValueError, KeyError, TypeError):
                return status_response(400, "continue key is not valid")
            skey = (res.kind, namespace, q.get("labelSelector"), q.get("fieldSelector"),
                    list_rv)
            items = store.snapshots.get(skey)
            if items is None or list_rv < store.floor:
                return status_response(410, _CONTINUE_EXPIRED, "Expired")
            store.snapshots.move_to_end(skey)
        else:
            list_rv = store.rv
            start = ""
            enc = store.enc[res.kind]
            items = [(k, o, enc[k]) for k, o in sorted(store.objects[res.kind].items())
                     if (namespace is None or k[0] == namespace)
                     and (label is None or label(o)) and (field is None or field(o))]
            skey = (res.kind, namespace, q.get("labelSelector"), q.get("fieldSelector"),
                    list_rv)
    keys = [f"{k[0]}/{k[1]}" if k[0] else k[1] for k, _, _ in items]
    lo = bisect.bisect_left(keys, start) if start else 0
    hi = len(items) if limit <= 0 else min(len(items), lo + limit)
    meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
    if hi < len(items):
        nxt = keys[hi - 1] + "\x00"
        meta["continue"] = base64.b64encode(json.dumps(
            {"v": "meta.k8s.io/v1", "rv": list_rv, "start": nxt},
            separators=(",", ":")).encode()).decode()
        meta["remainingItemCount"] = len(items) - hi
        with store.lock:
            store.snapshots[skey] = items
            store.snapshots.move_to_end(skey)
            while len(store.snapshots) > store.snapshot_cache:
                store.snapshots.popitem(last=False)
    head = encode({"kind": res.list_kind, "apiVersion": res.api_version, "metadata": meta})
    body = b"".join((head[:-1], b',"items":[', b",".join(r for _, _, r in items[lo:hi]),
                     b"]}"))
    return web.Response(body=body, content_type="application/json")


def get_response(store: Store, res: Resource, namespace: str | None,
                 name: str) -> web.Response:
    """One object, or the apiserver's 404."""
    with store.lock:
        obj = store.objects[res.kind].get((namespace or "", name))
    if obj is None:
        return status_response(404, f'{res.plural} "{name}" not found')
    return web.json_response(with_kind(res, obj))


async def write_response(store: Store, request: web.Request, res: Resource,
                         namespace: str | None, name: str | None) -> web.Response:
    """POST to a collection, PUT or DELETE on an object, like on a real server."""
    if res.namespaced and namespace is None:
        return status_response(405, "writes need a namespaced path", "MethodNotAllowed")
    if request.method == "DELETE":
        if name is None:
            return status_response(405, "collection delete unsupported", "MethodNotAllowed")
        try:
            gone = store.delete(res.kind, (namespace or "", name))
        except KeyError:
            return status_response(404, f'{res.plural} "{name}" not found')
        return web.json_response(with_kind(res, gone))
    try:
        body = await request.json()
    except ValueError:
        return status_response(400, "request body is not JSON")
    if not isinstance(body, dict):
        return status_response(400, "request body is not an object")
    meta = body.setdefault("metadata", {})
    if name is not None:
        meta.setdefault("name", name)
    if namespace is not None:
        meta["namespace"] = namespace
    try:
        mode = "create" if request.method == "POST" else "update"
        obj = store.mutate(res.kind, body, mode)
    except ValueError:
        return status_response(409, f'{res.plural} "{meta.get("name")}" already exists')
    except KeyError:
        return status_response(404, f'{res.plural} "{meta.get("name")}" not found')
    return web.json_response(obj, status=201 if request.method == "POST" else 200)
