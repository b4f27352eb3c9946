"""The Kubernetes API client under KubeSource: configuration and HTTP details.

How fastdns reaches the API server (``KubeConfig``, ``client_configuration``:
in-cluster or kubeconfig credentials, timeouts, no urllib3 retries of its
own), how a streamed watch response is cut into lines, and how an API error
is read (Retry-After, the metav1.Status message). KubeSource
(fastdns/control/kube.py) holds the list/watch state machine on top.

Client choice: the official *sync* client (``kubernetes.client``) with one
thread per watched kind, not ``kubernetes.aio``:
- a silent watch must be noticed: the sync client's ``_request_timeout=
  (connect, read)`` puts a read timeout on the socket itself, so a stream
  that stops sending (a dead peer behind NAT, a hung apiserver) raises
  after ``read_timeout`` seconds. ``kubernetes.aio`` turns
  ``_request_timeout`` into one total aiohttp timeout, which for a watch of
  ``timeoutSeconds`` is no liveness check at all;
- the watch threads parse and strip JSON (a 100k-endpoint relist is
  seconds of CPU); in threads, the control loop (compile, publish) and the
  health/metrics HTTP server keep getting the GIL every switch interval
  instead of stalling behind a coroutine that parses for seconds;
- the source needs no event loop: the control process, tests and
  benchmarks use it the same way.
The cost is cross-thread delivery: the consumer queues what it gets
(``fastdns/control/process.py`` ControlLoop.post_event) and coalesces there.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import urllib3


@dataclass(frozen=True)
class KubeConfig:
    """How to reach the API and how to watch it.

    Precedence follows CoreDNS (``plugin/kubernetes/kubernetes.go``
    getClientConfig): ``kubeconfig`` (with its optional context) wins;
    otherwise ``endpoint`` (the Corefile option; only the first URL is used)
    with the optional ``tls CERT KEY CACERT`` files; otherwise the in-cluster
    service account.
    """

    endpoint: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    pods_verified: bool = False  # `pods verified`: watch Pods too
    label_selector: str | None = None  # Corefile `labels` (Services, EndpointSlices)
    namespace_label_selector: str | None = None  # Corefile `namespace_labels`
    # watch tuning
    watch_timeout: float = 300.0  # timeoutSeconds, +/- 10 % jitter
    # > the apiserver's bookmark period (apiserver/pkg/storage/cacher/cacher.go
    # defaultBookmarkFrequency = 1 min), so only a dead stream times out
    read_timeout: float = 90.0
    connect_timeout: float = 10.0
    list_read_timeout: float = 60.0
    page_size: int = 500
    # Corefile apiserver_qps / apiserver_burst / apiserver_max_inflight (0: none)
    api_qps: float = 0.0
    api_burst: int = 0
    api_max_inflight: int = 0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0

    def kinds(self) -> tuple[str, ...]:
        base = ("Namespace", "Service", "EndpointSlice")
        return (*base, "Pod") if self.pods_verified else base

    @property
    def in_cluster(self) -> bool:
        """Neither kubeconfig nor endpoint: the pod's service account is used."""
        return not self.kubeconfig and not self.endpoint


# The API's name for each kind (what RBAC rules and the apiserver's messages say).
RESOURCE_NAMES = {"Namespace": "namespaces", "Service": "services",
                  "EndpointSlice": "endpointslices", "Pod": "pods"}
# Each kind's cluster-wide list/watch path, as CoreV1Api.list_namespace,
# list_service_for_all_namespaces, DiscoveryV1Api.list_endpoint_slice_for_all_namespaces
# and CoreV1Api.list_pod_for_all_namespaces request it.
RESOURCE_PATHS = {"Namespace": "/api/v1/namespaces", "Service": "/api/v1/services",
                  "EndpointSlice": "/apis/discovery.k8s.io/v1/endpointslices",
                  "Pod": "/api/v1/pods"}
# The generated methods' keyword arguments -> the API's query parameters.
_QUERY = {"watch": "watch", "resource_version": "resourceVersion",
          "allow_watch_bookmarks": "allowWatchBookmarks", "timeout_seconds": "timeoutSeconds",
          "limit": "limit", "_continue": "continue", "label_selector": "labelSelector",
          "field_selector": "fieldSelector"}


def list_call(api_client: Any, kind: str, limiter: Any = None) -> Callable[..., Any]:
    """``kind``'s list/watch request, as the generated ``list_*`` method with
    ``_preload_content=False`` makes it: the raw urllib3 response, always.

    Made through the client's own ``ApiClient`` (``param_serialize`` and
    ``call_api``: its host, TLS, bearer token and retries), but not through
    the generated ``CoreV1Api`` method: kubernetes 33+ wraps each in pydantic's
    ``validate_call``, which builds a schema of that method's ~20 parameters
    on its first call, and the client's lazy loading then imports the API
    classes and models behind it: +41 MB of the control process's heap to
    list 1,000 Services, before any object (issue 14). What it validated are
    these fixed keywords. A non-2xx answer raises ``ApiException`` with the
    response, as the generated method's legacy path does
    (``ApiClient._call_with_legacy_options``). ``limiter``: an
    ``apilimit.ApiLimiter`` each request waits for (Corefile ``apiserver_*``).
    """
    from kubernetes.client.exceptions import ApiException

    path = RESOURCE_PATHS[kind]

    def call(*, _request_timeout: Any = None, **params: Any) -> Any:
        query = [(_QUERY[k], v) for k, v in params.items() if v is not None]
        request = api_client.param_serialize(
            method="GET", resource_path=path, query_params=query,
            header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
        if limiter is not None and limiter.limits:
            with limiter.request():
                resp = api_client.call_api(*request, _request_timeout=_request_timeout)
        else:
            resp = api_client.call_api(*request, _request_timeout=_request_timeout)
        if not 200 <= resp.status <= 299:
            resp.read()
            raise ApiException.from_response(http_resp=resp, body=None, data=None)
        return resp.response

    return call


def client_configuration(cfg: KubeConfig) -> Any:
    """A ``kubernetes.client.Configuration`` for cfg (see KubeConfig's precedence)."""
    from kubernetes import client, config

    conf = client.Configuration()
    if cfg.kubeconfig:
        config.load_kube_config(config_file=cfg.kubeconfig, context=cfg.context,
                                client_configuration=conf, persist_config=False)
    elif cfg.endpoint:
        conf.host = cfg.endpoint.rstrip("/")
        if cfg.tls_cert:
            conf.cert_file = cfg.tls_cert
        if cfg.tls_key:
            conf.key_file = cfg.tls_key
        if cfg.tls_ca:
            conf.ssl_ca_cert = cfg.tls_ca
    else:
        # The client re-reads the projected token when its own one-minute cache
        # expires (try_refresh_token, kubernetes/config/incluster_config.py);
        # KubeSource also reloads it at once on a 401 (_reload_incluster).
        config.load_incluster_config(client_configuration=conf)
    # One retry covers a keep-alive connection the server closed meanwhile.
    # Everything else is this module's backoff: no urllib3 retry of read
    # timeouts (a silent server must be seen) nor its own sleeping through a
    # 429's Retry-After (uninterruptible by stop()).
    conf.retries = urllib3.Retry(total=1, read=0, redirect=0, respect_retry_after_header=False)
    conf.connection_pool_maxsize = 8
    return conf


def bearer(conf: Any) -> str | None:
    return (getattr(conf, "api_key", None) or {}).get("BearerToken")


def retry_after(exc: Any) -> float | None:
    """Seconds from a Retry-After header or a Status' details.retryAfterSeconds."""
    headers = getattr(exc, "headers", None)
    value = headers.get("Retry-After") if headers is not None else None
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass  # an HTTP-date: fall through to the body
    try:
        body = json.loads(getattr(exc, "body", None) or "")
        return float(body["details"]["retryAfterSeconds"])
    except (ValueError, TypeError, KeyError):
        return None


def iter_lines(resp: Any, chunk: int = 1 << 16) -> Iterator[bytes]:
    """Lines of a streamed urllib3 response as the bytes arrive.

    ``read1`` returns whatever one socket read brings (chunked or not), so
    an event is parsed as soon as its line is complete; ``stream()`` would
    wait for ``chunk`` bytes on a response that is not chunk-encoded.
    """
    buf = bytearray()
    while data := resp.read1(chunk):
        start = len(buf)
        buf.extend(data)
        if buf.find(b"\n", start) < 0:
            continue
        lines = buf.split(b"\n")
        buf = lines.pop()
        for line in lines:
            if line.strip():
                yield bytes(line)
    if buf.strip():
        yield bytes(buf)


def describe(exc: BaseException) -> str:
    """``HTTP 403 Forbidden: <the Status message>`` for an API error, else the
    exception in one line (no traceback: every failure here is retried)."""
    status = getattr(exc, "status", None)
    if status:
        head = f"HTTP {status} {getattr(exc, 'reason', '') or ''}".strip()
        message = status_message(getattr(exc, "body", None))
        if message and message != getattr(exc, "reason", None):
            return f"{head}: {message}"[:600]
        return head
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def status_message(body: Any) -> str | None:
    """The ``message`` of a metav1.Status response body, if it is one."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str) or not body.startswith("{"):
        return None
    try:
        st = json.loads(body)
    except ValueError:
        return None
    msg = st.get("message") if isinstance(st, dict) and st.get("kind") == "Status" else None
    return " ".join(msg.split()) if isinstance(msg, str) and msg else None
