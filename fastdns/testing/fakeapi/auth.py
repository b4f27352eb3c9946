"""Bearer tokens that rotate, and RBAC refusals, as the apiserver's filters apply them.

With no token every request is served (an apiserver with anonymous access
and no RBAC); with tokens, an API request without one of them is answered
``401 Unauthorized`` before anything else is looked at. ``forbid`` makes a
resource answer RBAC's 403, whose Status names the user, the verb and the
resource, so a missing ClusterRole can be shown.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

from aiohttp import web

from fastdns.testing.fakeapi.resources import is_watch, resolve_kind, route, status_response


class Auth:
    """Who may call: the accepted tokens and the refused resources."""

    def __init__(self, token: str | None, user: str) -> None:
        self.user = user
        self._lock = threading.Lock()
        # accepted bearer tokens -> when they stop being accepted (monotonic
        # seconds; None: never), newest last
        self._tokens: dict[str, float | None] = {token: None} if token else {}
        # kind -> the verbs refused (None: all of them), see forbid()
        self._forbidden: dict[str, frozenset[str] | None] = {}

    @property
    def token(self) -> str | None:
        """The newest accepted bearer token (None: authentication is off)."""
        with self._lock:
            return next(reversed(self._tokens), None)

    def set_tokens(self, *tokens: str) -> None:
        """Accept exactly these bearer tokens from now on; none: no authentication."""
        with self._lock:
            self._tokens = dict.fromkeys(tokens)

    def rotate_token(self, new: str | None = None, *, grace: float = 0.0) -> str:
        """Accept ``new`` (a fresh random token when None) and stop accepting the
        others ``grace`` seconds from now (0: at once). A projected service-account
        token is rotated by the kubelet at 80 % of its lifetime and the old one
        stays valid until it expires, so a client that does not re-read the
        file is refused some time after the rotation. Returns the new token."""
        token = new or secrets.token_urlsafe(32)
        with self._lock:
            until = time.monotonic() + grace
            for old, expiry in self._tokens.items():
                if old != token and (expiry is None or expiry > until):
                    self._tokens[old] = until
            self._tokens.pop(token, None)
            self._tokens[token] = None
        return token

    def forbid(self, resource: str, *verbs: str) -> None:
        """Refuse ``resource`` (``services``, ``Service``, ...) with RBAC's 403, for
        ``verbs`` (get, list, watch, create, update, delete) or every verb: what
        a ServiceAccount without the ClusterRole that grants them gets."""
        kind = resolve_kind(resource)
        with self._lock:
            self._forbidden[kind] = frozenset(verbs) if verbs else None

    def allow(self, resource: str | None = None) -> None:
        """Lift ``forbid`` for one resource, or for all of them."""
        with self._lock:
            if resource is None:
                self._forbidden.clear()
            else:
                self._forbidden.pop(resolve_kind(resource), None)

    def authenticated(self, header: str | None) -> bool:
        """The bearer-token authenticator (apiserver pkg/authentication/request/
        bearertoken/bearertoken.go): ``Authorization: Bearer TOKEN``, the scheme
        case-insensitive (the Python client's in-cluster loader sends ``bearer``)."""
        with self._lock:
            if not self._tokens:
                return True
            parts = (header or "").strip().split(" ", 2)
            if len(parts) < 2 or parts[0].lower() != "bearer" or not parts[1]:
                return False
            expiry = self._tokens.get(parts[1], 0.0)
            if expiry is None:
                return True
            if expiry <= time.monotonic():
                self._tokens.pop(parts[1], None)  # expired for good
                return False
            return True

    def refusal(self, request: web.Request) -> web.Response | None:
        """RBAC's refusal of this request, if ``forbid`` covers it."""
        with self._lock:
            if not self._forbidden:
                return None
        found = route(request.path.rstrip("/"))
        if found is None:
            return None
        res, namespace, name = found
        if request.method == "GET":
            verb = "get" if name else "watch" if is_watch(request.query) else "list"
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                    "DELETE": "delete"}.get(request.method, request.method.lower())
        with self._lock:
            if res.kind not in self._forbidden:
                return None
            verbs = self._forbidden[res.kind]
            anonymous = not self._tokens
        if verbs is not None and verb not in verbs:
            return None
        user = "system:anonymous" if anonymous else self.user
        # apiserver endpoints/handlers/responsewriters/errors.go (forbiddenMessage)
        # and apimachinery api/errors NewForbidden
        scope = (f'in the namespace "{namespace}"' if namespace is not None
                 else "at the cluster scope")
        reason = (f'User "{user}" cannot {verb} resource "{res.plural}" '
                  f'in API group "{res.group}" {scope}')
        what = f'{res.qualified} "{name}"' if name else res.qualified
        details: dict[str, Any] = {}
        if name:
            details["name"] = name
        if res.group:
            details["group"] = res.group
        details["kind"] = res.plural
        return status_response(403, f"{what} is forbidden: {reason}", "Forbidden",
                               details=details)
