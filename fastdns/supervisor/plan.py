"""The plan: what ``fastdns serve`` runs, from the command line and the Corefile.

The supervisor reads the Corefile only this far: enough to refuse what
cannot run (with the verdict ``check-corefile`` gives), to know the listen
set (``fastdns/corefile/listen.py``) and where the cluster state comes from.
Everything the children need goes into one picklable ``ServePlan``; a
reloaded Corefile goes through the same checks (``reload_plan``) before it
replaces the plan in force.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fastdns.control import apiaccess
from fastdns.corefile import config as corefile_config
from fastdns.corefile import model as corefile
from fastdns.corefile import verdict
from fastdns.corefile.errors import CorefileError
from fastdns.corefile.listen import listen_addresses
from fastdns.ipc import layout

log = logging.getLogger("supervisor")

DEFAULT_COREFILE = "/etc/coredns/Corefile"


class ServeError(Exception):
    """A startup error already phrased for the operator (``file:line: ...``)."""


@dataclass(frozen=True)
class ServePlan:
    """Everything a control process and the workers need, picklable."""

    corefile_text: str
    corefile_name: str
    listen: tuple[tuple[str, int], ...]
    source: str  # "state" | "demo" | "kube"
    source_path: str | None
    nworkers: int
    log_level: str = "info"
    zones: tuple[str, ...] = ()
    lameduck: float = 0.0  # health's `lameduck`: keep serving this long after SIGTERM
    corefile_path: str | None = None  # the file `reload` watches (None: built in)


def demo_state_path() -> str:
    return str(Path(__file__).resolve().parent.parent / "demo" / "cluster.yaml")


def _corefile_text(args: argparse.Namespace) -> tuple[str, str]:
    if args.corefile is None and getattr(args, "demo", False):
        return corefile_config.DEFAULT_DEMO_COREFILE, "<demo Corefile>"
    path = args.corefile or DEFAULT_COREFILE
    try:
        return Path(path).read_text(), path
    except OSError as e:
        raise ServeError(f"{path}: cannot read the Corefile: {e.strerror or e}") from e


def parse_config(text: str, filename: str) -> corefile.Config:
    """The corefile module's Config; every error it has, one line each, as
    one ServeError (an operator fixes a ConfigMap once, not once per line)."""
    try:
        analysis = corefile_config.analyse(text, filename)
    except CorefileError as e:
        raise ServeError(str(e)) from e
    if analysis.errors:
        raise ServeError("\n".join(str(e) for e in analysis.errors))
    assert analysis.config is not None
    return analysis.config


def check_plugins(config: corefile.Config, filename: str) -> list[str]:
    """Refuse what this server does not run; returns the warning lines.

    ``fastdns.corefile.verdict`` decides, the same function ``check-corefile``
    asks, so both commands give one verdict on one Corefile.
    """
    found = verdict.problems(config)
    if found:
        raise ServeError("\n".join(dict.fromkeys(str(p) for p in found)))
    return verdict.warnings(config)


def default_workers() -> int:
    """One worker per CPU this process may run on (a container's cpuset, not the host's)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, layout.MAX_WORKERS))


def make_plan(args: argparse.Namespace) -> ServePlan:
    text, filename = _corefile_text(args)
    config = parse_config(text, filename)
    for warning in check_plugins(config, filename):
        log.warning("%s", warning)
    source, path = choose_source(args, config)
    nworkers = args.workers if args.workers is not None else default_workers()
    if not 1 <= nworkers <= layout.MAX_WORKERS:
        raise ServeError(f"--workers must be within 1..{layout.MAX_WORKERS}")
    return ServePlan(
        corefile_text=text, corefile_name=filename, listen=listen_addresses(config),
        source=source, source_path=path, nworkers=nworkers,
        log_level=getattr(args, "log_level", "info") or "info", zones=_served_zones(config),
        lameduck=_lameduck(config),
        corefile_path=None if filename.startswith("<") else filename)


def choose_source(args: argparse.Namespace, config: corefile.Config,
                  environ: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """(source, path) of the cluster state: the command line's, else the Corefile's.

    ``--kubeconfig``, ``--state`` and ``--demo`` are overrides for local use.
    Without them a Corefile with ``kubernetes`` watches the API the way
    CoreDNS finds it (``plugin/kubernetes/kubernetes.go`` getClientConfig):
    its ``kubeconfig``, else its ``endpoint``, else the pod's service account
    (``fastdns/control/apiaccess.py``). The control process builds the
    client from the same Corefile (``process.kube_config``).
    """
    if getattr(args, "kubeconfig", None):
        return "kube", args.kubeconfig
    if getattr(args, "state", None):
        if not os.path.exists(args.state):
            raise ServeError(f"{args.state}: state file or directory does not exist")
        return "state", args.state
    if getattr(args, "demo", False):
        return "demo", demo_state_path()
    kube = next((k for b in config.servers
                 if isinstance(k := b.plugins.get("kubernetes"), corefile.KubernetesConfig)),
                None)
    if kube is None:
        # node-local cache mode (NodeLocal DNSCache's Corefile): forward only
        return "none", None
    problem = apiaccess.problem(kube, os.environ if environ is None else environ)
    if problem:
        raise ServeError(problem)
    return "kube", None


def _served_zones(config: corefile.Config) -> tuple[str, ...]:
    zones: list[str] = []
    for block in config.servers:
        k = block.plugins.get("kubernetes")
        kzones = k.zones if isinstance(k, corefile.KubernetesConfig) else ()
        for z in kzones or block.zones:
            if z not in zones:
                zones.append(z)
    return tuple(zones)


def _lameduck(config: corefile.Config) -> float:
    return max((float(getattr(b.plugins["health"], "lameduck", 0.0) or 0.0)
                for b in config.servers if "health" in b.plugins), default=0.0)


def reload_plan(plan: ServePlan, text: str) -> tuple[corefile.Config, ServePlan]:
    """(config, plan) for a reloaded Corefile ``text``; ServeError if it cannot run.

    The same checks as startup; what the command line chose (state source,
    workers) stays.
    """
    filename = plan.corefile_path or plan.corefile_name
    config = parse_config(text, filename)
    for warning in check_plugins(config, filename):
        log.warning("%s", warning)
    # what the control process would refuse at its start; imported only on a
    # reload, so that the supervisor starts without the control process's code
    from fastdns.control.process import FatalConfig, build_compiler

    try:
        build_compiler(config)
    except FatalConfig as e:
        raise ServeError(str(e)) from e
    return config, dataclasses.replace(
        plan, corefile_text=text, listen=listen_addresses(config), zones=_served_zones(config),
        lameduck=_lameduck(config))
