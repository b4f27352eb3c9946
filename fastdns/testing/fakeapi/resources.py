"""The API surface the fake serves: its four kinds, their paths, and metav1.Status.

One table (``RESOURCES``) says which kinds exist, under which prefix and
plural, and whether they are namespaced; the router, the discovery stubs,
RBAC's 403 and the store all read it, so adding a kind is one line here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

# Who a token authenticates as: CoreDNS's service account in kubeadm's manifest.
DEFAULT_USER = "system:serviceaccount:kube-system:coredns"


@dataclass(frozen=True)
class Resource:
    kind: str
    api_version: str  # "v1", "discovery.k8s.io/v1"
    prefix: str  # "/api/v1", "/apis/discovery.k8s.io/v1"
    plural: str
    namespaced: bool

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def group(self) -> str:
        """The API group ("" for the core group)."""
        return self.api_version.rpartition("/")[0]

    @property
    def qualified(self) -> str:
        """``services``, ``endpointslices.discovery.k8s.io`` (schema.GroupResource.String)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES: dict[str, Resource] = {
    r.kind: r
    for r in (
        Resource("Namespace", "v1", "/api/v1", "namespaces", False),
        Resource("Service", "v1", "/api/v1", "services", True),
        Resource("Pod", "v1", "/api/v1", "pods", True),
        Resource("EndpointSlice", "discovery.k8s.io/v1", "/apis/discovery.k8s.io/v1",
                 "endpointslices", True),
    )
}
_BY_PLURAL = {(r.prefix, r.plural): r for r in RESOURCES.values()}
# every spelling a test or a state file may use for a kind
ALIASES = {a: r.kind for r in RESOURCES.values()
           for a in (r.kind, r.kind.lower(), r.plural, r.qualified)}

_REASONS = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
    409: "AlreadyExists", 410: "Expired", 429: "TooManyRequests", 500: "InternalError",
    503: "ServiceUnavailable", 504: "Timeout",
}


def resolve_kind(kind: str) -> str:
    """The kind named by any of its ``ALIASES`` (ValueError for one not served)."""
    try:
        return ALIASES[kind]
    except KeyError:
        raise ValueError(f"fake API server does not serve kind {kind!r}") from None


def is_true(value: str | None) -> bool:
    """A boolean query parameter as the apiserver reads it (``1``, ``true``, ``True``)."""
    return value in ("1", "true", "True")


def is_watch(query: Mapping[str, str]) -> bool:
    """Whether a request asks for a watch (``?watch=true``) rather than a list."""
    return is_true(query.get("watch"))


def status_object(code: int, message: str, reason: str | None = None,
                  details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A metav1.Status as the apiserver writes it (field order included)."""
    st: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                          "status": "Failure", "message": message,
                          "reason": reason or _REASONS.get(code, "InternalError")}
    if details:
        st["details"] = details
    st["code"] = code
    return st


def status_response(code: int, message: str, reason: str | None = None, *,
                    details: dict[str, Any] | None = None,
                    headers: dict[str, str] | None = None) -> web.Response:
    """An error answered the apiserver's way: the HTTP status and a Status body."""
    return web.Response(status=code, headers=headers,
                        body=json.dumps(status_object(code, message, reason, details)),
                        content_type="application/json")


def route(path: str) -> tuple[Resource, str | None, str | None] | None:
    """Map an API path to (resource, namespace or None, object name or None)."""
    for prefix in ("/api/v1", "/apis/discovery.k8s.io/v1"):
        if not path.startswith(prefix + "/"):
            continue
        parts = path[len(prefix) + 1:].split("/")
        if prefix == "/api/v1" and parts[0] == "namespaces" and len(parts) <= 2:
            return RESOURCES["Namespace"], None, parts[1] if len(parts) == 2 else None
        if parts[0] == "namespaces" and len(parts) in (3, 4):
            res = _BY_PLURAL.get((prefix, parts[2]))
            if res is None or not res.namespaced:
                return None
            return res, parts[1], parts[3] if len(parts) == 4 else None
        if len(parts) == 1:
            res = _BY_PLURAL.get((prefix, parts[0]))
            if res is not None:
                return res, None, None
    return None


def discovery(path: str, host: str, port: int) -> dict[str, Any] | None:
    """The discovery document clients GET before they list (None: not one)."""
    if path == "/version":
        return {"major": "1", "minor": "31", "gitVersion": "v1.31.0-fastdns-fake",
                "gitCommit": "0" * 40, "gitTreeState": "clean",
                "buildDate": "2024-08-13T00:00:00Z", "goVersion": "go1.22.5",
                "compiler": "gc", "platform": "linux/amd64"}
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{host}:{port}"}]}
    if path == "/apis":
        gv = {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [{"name": "discovery.k8s.io", "versions": [gv],
                            "preferredVersion": gv}]}
    for prefix, gv_name in (("/api/v1", "v1"),
                            ("/apis/discovery.k8s.io/v1", "discovery.k8s.io/v1")):
        if path == prefix:
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv_name,
                    "resources": [
                        {"name": r.plural, "singularName": r.kind.lower(),
                         "namespaced": r.namespaced, "kind": r.kind,
                         "verbs": ["create", "delete", "get", "list", "update", "watch"]}
                        for r in RESOURCES.values() if r.prefix == prefix]}
    return None
