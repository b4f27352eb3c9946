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
from collections.abc import Iterator
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
