"""How fastdns reaches the Kubernetes API, decided before anything starts.

CoreDNS's order (``plugin/kubernetes/kubernetes.go`` getClientConfig): the
Corefile's ``kubeconfig FILE [CONTEXT]``; else its ``endpoint URL`` (with
``tls CERT KEY CACERT``); else the in-cluster service account, as
client-go's ``rest.InClusterConfig`` reads it: ``KUBERNETES_SERVICE_HOST``
and ``KUBERNETES_SERVICE_PORT`` from the pod's environment, the token and CA
from ``/var/run/secrets/kubernetes.io/serviceaccount``. The official Python
client's ``load_incluster_config`` reads exactly those (and re-reads the
token as it rotates); ``fastdns/control/kube.py`` builds the client.

This module only answers "can that work here?" early, so that a
Deployment without any of the three fails at once with a line that says
what to give it, instead of a traceback from the client in a restart loop.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from fastdns.names import host_port

if TYPE_CHECKING:  # types only
    from fastdns.corefile.model import KubernetesConfig

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SA_TOKEN = os.path.join(SA_DIR, "token")
SA_CA = os.path.join(SA_DIR, "ca.crt")
HOST_ENV, PORT_ENV = "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"

NO_SOURCE = ("no Kubernetes API to watch: the kubernetes plugin has no `kubeconfig` or "
             f"`endpoint` option, and this is not a pod ({HOST_ENV}/{PORT_ENV} unset); "
             "give the Corefile one of those, run in a pod with its service account, "
             "or, for local use, --kubeconfig PATH, --state PATH or --demo")


def in_pod(environ: Mapping[str, str]) -> bool:
    return bool(environ.get(HOST_ENV)) and bool(environ.get(PORT_ENV))


def problem(kube: KubernetesConfig, environ: Mapping[str, str]) -> str | None:
    """Why the kubernetes plugin ``kube`` cannot reach an API here, or None."""
    kubeconfig = (getattr(kube, "kubeconfig", None) or ("", ""))[0]
    if kubeconfig:
        if not os.path.isfile(kubeconfig):
            return f"kubernetes plugin kubeconfig {kubeconfig}: no such file"
        return None
    if getattr(kube, "endpoint", None):
        return None
    if not in_pod(environ):
        return NO_SOURCE
    for path, what in ((SA_TOKEN, "service-account token"), (SA_CA, "service-account CA")):
        if not os.access(path, os.R_OK):
            return (f"in a pod ({HOST_ENV} is set) but the {what} {path} cannot be read: "
                    "is automountServiceAccountToken false for this pod?")
    return None


def describe(kube: KubernetesConfig, environ: Mapping[str, str],
             kubeconfig_flag: str | None) -> str:
    """One phrase for the startup log: which API, found how."""
    path = kubeconfig_flag or (getattr(kube, "kubeconfig", None) or ("", ""))[0]
    if path:
        return f"kubeconfig {path}"
    endpoint = getattr(kube, "endpoint", None)
    if endpoint:
        return f"endpoint {endpoint[0]}"
    where = host_port(environ.get(HOST_ENV, ""), environ.get(PORT_ENV, ""))
    return f"in-cluster https://{where} (service account)"
