"""The ``kubernetes`` plugin's grammar (plugin/kubernetes/setup.go ParseStanza)."""

from __future__ import annotations

import re

from fastdns.corefile.args import (
    duration_arg,
    fallthrough_arg,
    int_arg,
    zones_arg,
)
from fastdns.corefile.dispenser import Dispenser
from fastdns.corefile.errors import Unsupported
from fastdns.corefile.lexer import Token
from fastdns.corefile.model import (
    KubernetesConfig,
)

_LABEL_SELECTOR = re.compile(
    r"^\s*!?[A-Za-z0-9._/-]+(\s*(=|==|!=)\s*[A-Za-z0-9._-]*|\s+(in|notin)\s*\([^()]*\))?\s*$")


def _label_selector(d: Dispenser, toks: list[Token], what: str) -> str:
    """A Kubernetes label selector, checked term by term (meta.ParseToLabelSelector)."""
    text = " ".join(t.text for t in toks)
    terms, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    terms.append(cur)
    for term in terms:
        if depth != 0 or not _LABEL_SELECTOR.match(term):
            raise d.err(f"unable to parse {what} selector value: '{text}'", toks[0])
    return text


_NOT_YET = {"multicluster": "it needs the MCS-API ServiceImport watch",
            "zonal": "no _zone names are compiled"}


def _api_limit(d: Dispenser, key: str) -> float | int:
    """apiserver_qps (a float), apiserver_burst and apiserver_max_inflight (ints),
    each >= 0 (setup.go: strconv.ParseFloat / Atoi, then the sign check)."""
    arg = d.one_arg()
    try:
        value: float | int = float(arg.text) if key == "apiserver_qps" else int(arg.text, 10)
    except ValueError:
        raise d.err(f"invalid {key} \"{arg.text}\"", arg) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise d.err(f"invalid {key} \"{arg.text}\"", arg)
    if value < 0:
        raise d.err(f"{key} must be >= 0", arg)
    return value


def parse_kubernetes(d: Dispenser, zones: tuple[str, ...]) -> KubernetesConfig:
    """kubernetes [ZONES...] { ... } (plugin/kubernetes/setup.go ParseStanza)."""
    zone_toks = d.remaining_args()
    kzones = zones_arg(d, zone_toks) if zone_toks else zones
    if all(z.endswith(("in-addr.arpa.", "ip6.arpa.")) for z in kzones):
        raise d.err("non-reverse zone name must be used", zone_toks[0] if zone_toks else d.tok)
    opts: dict[str, object] = {}
    while d.next_block():
        sub = d.tok
        key = d.val()
        if key in ("endpoint_pod_names", "noendpoints"):
            d.no_args()
            opts[key] = True
        elif key == "pods":
            a = d.remaining_args()
            if len(a) != 1:
                raise d.err("pods needs exactly one of: disabled, verified, insecure", sub)
            if a[0].text not in ("disabled", "insecure", "verified"):
                raise d.err(f"wrong value for pods: {a[0].text}, "
                            "must be one of: disabled, verified, insecure", a[0])
            opts["pods"] = a[0].text
        elif key == "namespaces":
            a = d.remaining_args()
            if not a:
                raise d.arg_err()
            opts["namespaces"] = tuple(dict.fromkeys(t.text for t in a))
        elif key == "endpoint":
            a = d.remaining_args()
            if not a:
                raise d.arg_err()
            opts["endpoint"] = tuple(t.text for t in a)
        elif key == "tls":
            a = d.remaining_args()
            if len(a) != 3:
                raise d.err("tls needs CERT KEY CACERT", sub)
            opts["tls"] = (a[0].text, a[1].text, a[2].text)
        elif key in ("labels", "namespace_labels"):
            a = d.remaining_args()
            if not a:
                raise d.arg_err()
            opts[key] = _label_selector(d, a, "label" if key == "labels" else "namespace_label")
        elif key == "fallthrough":
            opts["fallthrough"] = fallthrough_arg(d, d.remaining_args())
        elif key == "ttl":
            arg = d.one_arg()
            t = int_arg(d, arg, "ttl")
            if not 0 <= t <= 3600:
                raise d.err(f"ttl must be in range [0, 3600]: {t}", arg)
            opts["ttl"] = t
        elif key == "ignore":
            a = d.remaining_args()
            if len(a) != 1 or a[0].text != "empty_service":
                bad = a[0].text if a else ""
                raise d.err(f"unable to parse ignore value: '{bad}'", a[0] if a else sub)
            opts["ignore_empty_service"] = True
        elif key == "kubeconfig":
            a = d.remaining_args()
            if len(a) not in (1, 2):
                raise d.err("kubeconfig needs KUBECONFIG [CONTEXT]", sub)
            opts["kubeconfig"] = (a[0].text, a[1].text if len(a) == 2 else "")
        elif key == "startup_timeout":
            arg = d.one_arg()
            opts["startup_timeout"] = duration_arg(d, arg, "startup_timeout")
        elif key == "upstream":
            opts["upstream"] = tuple(t.text for t in d.remaining_args())
        elif key in ("apiserver_qps", "apiserver_burst", "apiserver_max_inflight"):
            opts[key] = _api_limit(d, key)
        elif key in ("multicluster", "zonal"):
            raise Unsupported(sub.file, sub.line, f"option {key} is not implemented by fastdns "
                              f"({_NOT_YET[key]})", "kubernetes")
        else:
            raise d.unknown_property()
    if opts.get("namespaces") and opts.get("namespace_labels"):
        raise d.err("namespaces and namespace_labels cannot both be set", d.tokens[0])
    return KubernetesConfig(kzones, **opts)  # type: ignore[arg-type]
