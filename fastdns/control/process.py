"""The control process: sources -> ClusterState -> compile -> publish.

``control_main`` builds what the control loop (``fastdns/control/loop.py``)
owns: the zone compiler for the Corefile (``build_compiler``), the
publisher, and the source that feeds the loop -- the state file
(``statefile.StateFileSource``) or the Kubernetes watch
(``fastdns/control/kube.py``) -- plus the compiled plugins' watchers and
the HTTP endpoints (``fastdns/control/httpd.py``).

The process may crash and be restarted by the supervisor: workers keep
serving the last image, and the new control process adopts the segments it
finds (``Publisher.recover``) and continues the generation sequence. With a
state file it compiles the file, or if the file is refused, the restart
copy of the last good state (``statefile.StateCache``), so a Corefile
reload (which restarts it) is applied even then.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from fastdns.control.loop import COALESCE, ControlLoop
from fastdns.control.publisher import Publisher
from fastdns.control.statefile import POLL_INTERVAL, StateFileSource, describe_error
from fastdns.ipc import layout, shm
from fastdns.ipc.stats import SharedStats

if TYPE_CHECKING:  # types only: these are imported where they are used
    from fastdns.control.kube import KubeConfig
    from fastdns.control.statefile import Loaded, StateCache
    from fastdns.corefile.model import Config, KubernetesConfig, PluginConfig, ServerBlock
    from fastdns.zone.compiler import Compiler
    from fastdns.zone.imagebuilder import ZoneSpec
    from fastdns.zone.objects import Endpoint
    from fastdns.zone.options import KubernetesOptions
    from fastdns.zone.state import ClusterState

log = logging.getLogger("control")

EXIT_OK = 0
EXIT_CONTROL_FATAL = 3  # configuration error: the supervisor does not restart us


@dataclass(frozen=True)
class ControlSpec:
    """What the supervisor hands the control process (picklable for spawn)."""

    instance: str
    corefile_text: str
    corefile_name: str
    source: str  # "state" | "demo" | "kube"
    source_path: str | None
    nworkers: int
    supervisor_pid: int
    poll_interval: float = POLL_INTERVAL
    coalesce: float = COALESCE


class FatalConfig(Exception):
    """The Corefile or the first state cannot be served; the message says why."""


# -- Corefile -> zone compiler -------------------------------------------------


def kubernetes_options(block: ServerBlock, index: int = 0) -> KubernetesOptions:
    """The zone room's KubernetesOptions for server block ``index``'s ``kubernetes`` plugin.

    ``local_ips`` (the apex NS glue when no kube-dns endpoint is local,
    CoreDNS ``nsAddrs``) are the block's ``bind`` addresses when it has any.
    """
    from fastdns.zone.options import KubernetesOptions

    conf = cast("KubernetesConfig", block.plugins["kubernetes"])
    kw: dict[str, Any] = dict(
        zones=tuple(conf.zones) or tuple(block.zones), ttl=conf.ttl,
        namespaces=tuple(conf.namespaces), pods=conf.pods,
        endpoint_pod_names=conf.endpoint_pod_names, noendpoints=conf.noendpoints,
        ignore_empty_service=conf.ignore_empty_service, fallthrough=tuple(conf.fallthrough),
        block=index, loadbalance="loadbalance" in block.plugins)
    hosts = tuple(h for h in getattr(block, "listen_hosts", ()) if h not in ("", "::", "0.0.0.0"))
    if hosts:
        kw["local_ips"] = hosts
    try:
        return KubernetesOptions(**kw)
    except ValueError as e:
        file, line = getattr(conf, "source", ("", 0))
        raise FatalConfig(f"{file}:{line}: plugin kubernetes: {e}") from e


def build_compiler(config: Config) -> Compiler:
    """One compiler over every server block that has a ``kubernetes`` plugin."""
    # A block with several ports is one ServerBlock per port sharing one
    # plugin object (corefile/model.py): count each kubernetes plugin once.
    seen: list[PluginConfig] = []
    options = []
    for i, b in enumerate(config.servers):
        conf = b.plugins.get("kubernetes")
        if conf is not None and not any(conf is c for c in seen):
            seen.append(conf)
            options.append(kubernetes_options(b, i))
    if len(options) > 1:
        raise FatalConfig("more than one kubernetes plugin is not supported yet")
    # NodeLocal DNSCache's Corefile has no kubernetes plugin: an image of
    # forward zones only (every name goes to the slow path).
    from fastdns.plugins import registry
    from fastdns.zone.compiler import Compiler
    from fastdns.zone.contributor import ImageContributor

    # the compiled plugins' shares of the image (hosts today), from the registry
    contributors: list[ImageContributor] = [
        c for p in registry.PLUGINS if p.contributor is not None
        and (c := p.contributor(config)) is not None]
    return Compiler(options[0] if options else None, forward_zones(config), contributors)


def forward_zones(config: Config) -> list[ZoneSpec]:
    """Zones of blocks without ``kubernetes`` that ``forward``: the fast path hands them over.

    Without an entry a forward-only zone inside a kubernetes zone (say
    ``10.in-addr.arpa`` beside ``kubernetes cluster.local in-addr.arpa``)
    would get the kubernetes zone's NXDOMAIN instead of the forwarder
    (CoreDNS picks the most specific server block first). The root zone
    needs no entry: names in no zone are handed over anyway.
    """
    from fastdns.ipc import image as img
    from fastdns.zone.imagebuilder import ZoneSpec
    from fastdns.zone.naming import name_wire

    out: list[ZoneSpec] = []
    for i, b in enumerate(config.servers):
        if "kubernetes" in b.plugins or "forward" not in b.plugins:
            continue
        for z in b.zones:
            if z != ".":
                out.append(ZoneSpec(name_wire(z).lower(), img.ZF_SLOW_MISS,
                                        block=i, kind=img.ZK_FORWARD))
    return out


def _addresses(endpoints: Sequence[Endpoint]) -> int:
    """Addresses of a slice's endpoints; the compact column form counts them
    without building an Endpoint per address (0.19 s at 150k endpoints)."""
    from fastdns.zone.objects import Endpoints

    if isinstance(endpoints, Endpoints):
        return endpoints.address_count()
    return sum(len(e.addresses) for e in endpoints)


def summarize(state: ClusterState) -> str:
    """'4 namespaces, 8 services, 12 endpoints in 7 slices, 8 pods' for the startup log."""
    endpoints = sum(_addresses(sl.endpoints) for sl in state.slices.values())
    return (f"{len(state.all_namespaces())} namespaces, {len(state.services)} services, "
            f"{endpoints} endpoints in {len(state.slices)} slices, {len(state.pods)} pods")


# -- process main ------------------------------------------------------------


def kube_config(config: Config, kubeconfig: str | None) -> KubeConfig:
    """KubeConfig from the Corefile's kubernetes plugin; ``--kubeconfig`` wins over its
    ``kubeconfig`` option (CoreDNS's precedence is then kubeconfig > endpoint > in-cluster)."""
    from fastdns.control.kube import KubeConfig

    conf = cast("KubernetesConfig", next(
        b.plugins["kubernetes"] for b in config.servers if "kubernetes" in b.plugins))
    path, context = (conf.kubeconfig or (None, None))
    tls = conf.tls or (None, None, None)
    return KubeConfig(
        endpoint=conf.endpoint[0] if conf.endpoint else None,
        kubeconfig=kubeconfig or path, context=context or None,
        tls_cert=tls[0], tls_key=tls[1], tls_ca=tls[2],
        pods_verified=conf.pods == "verified",
        label_selector=conf.labels, namespace_label_selector=conf.namespace_labels,
        api_qps=conf.apiserver_qps, api_burst=conf.apiserver_burst,
        api_max_inflight=conf.apiserver_max_inflight)


def _keeps_pods(compiler: Compiler) -> bool:
    opts = getattr(compiler, "options", None)
    return opts is not None and opts.pods == "verified"


def state_loader(compiler: Compiler) -> Callable[[str], Loaded]:
    """A state file's ClusterState, parsed in a child process (``zone/isolated.py``:
    the parse's garbage would pin ~90 MB here at 10k Services), keeping Pods
    only where ``pods verified`` answers from them (CoreDNS watches Pods in
    that mode only). Returns a ``statefile.Loaded``: with the file's shape
    and the child's pickle, the restart copy (``state_cache``)."""
    import pickle

    from fastdns.control.statefile import IncrementalLoader, Loaded
    from fastdns.zone.isolated import encode, load_isolated_indexed
    from fastdns.zone.state import KINDS, ClusterState

    pods = _keeps_pods(compiler)

    def load(path: str, data: bytes | None) -> tuple[Loaded, Callable[[], tuple[Any, list]]]:
        objs, shape, blob, index_later = load_isolated_indexed(path, pods=pods, data=data)

        def indexed() -> tuple[Any, list[Any]]:
            index = index_later()
            if index is None:
                return None, []
            return index, [objs[i] if i >= 0 else None for i in index.which]

        return Loaded(ClusterState(objs), shape.complete, shape.empty_list, blob), indexed

    def blob_of(objs: list[Any], shape: Any) -> bytes:  # what the child's pickle holds
        return pickle.dumps((encode(objs), (shape.complete, shape.empty_list)),
                            protocol=pickle.HIGHEST_PROTOCOL)

    # a change is read item by item (statefile.IncrementalLoader)
    return IncrementalLoader(load, ClusterState, blob_of,
                             KINDS if pods else tuple(k for k in KINDS if k != "Pod"))


def state_cache(instance: str, compiler: Compiler) -> StateCache:
    """The restart copy of the last good state (``statefile.StateCache``); a copy
    made with or without Pods serves only a configuration that keeps the same."""
    from fastdns.control.statefile import StateCache
    from fastdns.zone.isolated import objects_from_blob
    from fastdns.zone.state import ClusterState

    return StateCache.for_instance(instance, lambda b: ClusterState(objects_from_blob(b)),
                                   "pods" if _keeps_pods(compiler) else "no-pods")


def startup_timeout(config: Config) -> float:
    """The kubernetes plugin's ``startup_timeout`` (CoreDNS default 5 s)."""
    conf = next(b.plugins["kubernetes"] for b in config.servers if "kubernetes" in b.plugins)
    return float(getattr(conf, "startup_timeout", 5.0))


def start_kube_source(loop: ControlLoop, config: Any, kubeconfig: str | None,
                      restarted: bool) -> Any:
    """List+watch the API into the loop (``fastdns/control/kube.py``).

    Startup as CoreDNS's (``plugin/kubernetes/kubernetes.go`` InitKubeCache /
    setup.go onStart): wait up to ``startup_timeout`` for the first full
    sync, so the first image workers map is complete; if the API does not
    answer in time, serve anyway with CoreDNS's warning: the empty, unsynced
    image, whose zone misses answer SERVFAIL + SOA until the sync lands
    (``handler.go``: no NXDOMAIN before ``HasSynced``). Readiness stays false
    until then (``Observability.published(synced=...)``). A restarted control
    process keeps the previous, complete image in force until its own sync.
    """
    from fastdns.control import apiaccess
    from fastdns.control.kube import KubeSource
    from fastdns.zone.state import ClusterState

    loop.set_unsynced(ClusterState())
    kube = next(b.plugins["kubernetes"] for b in config.servers if "kubernetes" in b.plugins)
    log.info("watching the Kubernetes API: %s", apiaccess.describe(kube, os.environ, kubeconfig))
    source = KubeSource(kube_config(config, kubeconfig), loop.post_event, loop.post_synced)
    loop.service_kind = source.service_kind
    try:
        source.start()
    except Exception as e:  # kubernetes.config.ConfigException, an unreadable file
        raise FatalConfig(f"cannot configure the Kubernetes client: {e}") from e
    if not restarted:
        timeout = startup_timeout(config)
        if loop.wait_synced(source, timeout):
            log.info("first sync with the Kubernetes API done")
        elif not loop.stopping:
            log.warning("starting server with unsynced Kubernetes API (no full sync "
                        "within startup_timeout %gs)", timeout)
            loop.publish_full(loop.state, "waiting for the first sync with the Kubernetes API")
    return source


def _parse(spec: ControlSpec) -> Any:
    from fastdns.corefile.config import parse_corefile
    from fastdns.corefile.errors import CorefileError

    try:
        return parse_corefile(spec.corefile_text, spec.corefile_name)
    except CorefileError as e:
        raise FatalConfig(str(e)) from e


def _record_pid(instance: str) -> None:
    """The control pid word the metrics exporter reads for process_* metrics."""
    stats = SharedStats.attach(instance)
    try:
        stats.set(layout.S_CONTROL_PID, os.getpid())
    finally:
        stats.close()


def control_main(spec: ControlSpec) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code (3 = do not restart me)."""
    ctl = shm.ControlSegment.attach(spec.instance)
    restarted = ctl.generation > 0
    _record_pid(spec.instance)
    publisher = Publisher(ctl, background=True)  # file work off the event path
    removed = publisher.recover()
    if restarted:
        log.info("restarted: generation %d in force, %d stale segments removed",
                 ctl.generation, len(removed))
    loop: ControlLoop | None = None
    source: Any = None  # StateFileSource or KubeSource: start() / stop()
    obs: Any = None  # /metrics, /health, /ready (fastdns/control/httpd.py)
    watchers: list[Any] = []  # the compiled plugins' (contributor.Watcher)

    def on_signal(signum: int, frame: Any) -> None:
        if loop is not None:
            loop.stop()
        else:
            raise SystemExit(EXIT_OK)

    from fastdns import procsignals  # the supervisor's STOP; a group SIGTERM is its to judge

    procsignals.install(on_signal)
    try:
        try:
            config = _parse(spec)
            compiler = build_compiler(config)
        except FatalConfig as e:
            log.error("%s", e)
            return EXIT_CONTROL_FATAL
        loop = ControlLoop(compiler, publisher, coalesce=spec.coalesce)
        for contributor in compiler.contributors:  # hosts files, re-read on change (issue 6)
            watch = contributor.watcher(lambda: loop.post_call(compiler.refresh))
            if watch is not None:
                watch.start()
                watchers.append(watch)
        from fastdns.control.observability import Observability

        try:
            obs = Observability.start(config, ctl, spec.corefile_text)
        except OSError as e:  # "listen tcp :8080: bind: address already in use"
            log.error("%s", e.strerror or e)
            return EXIT_CONTROL_FATAL
        loop.on_publish = obs.published
        loop.on_programmed = obs.values.observe_programming_latency
        if spec.source in ("state", "demo"):
            assert spec.source_path is not None
            source = StateFileSource(spec.source_path, loop.post_state,
                                     interval=spec.poll_interval,
                                     loader=state_loader(compiler),
                                     cache=state_cache(spec.instance, compiler),
                                     save_delay=1.0)  # the restart copy: off the compile
            obs.values.state_source = source  # fastdns_state_rejected_total, _pending_bad
            try:
                # a restarted control process whose file is refused gets the
                # restart copy of the last good state (statefile.StateCache)
                state = source.load_now()
                log.info("%s: %s%s", spec.source_path,
                         "last good state: " if source.from_cache else "", summarize(state))
                loop.publish_full(state, "restart" if restarted else "initial load")
            except Exception as e:  # noqa: BLE001 - a bad first state is the operator's
                msg = describe_error(e)
                if not msg.startswith(spec.source_path):
                    msg = f"{spec.source_path}: {msg}"
                if not restarted:
                    log.error("%s", msg)
                    return EXIT_CONTROL_FATAL
                # Workers serve the image the previous control process
                # published; without a state this configuration (a reloaded
                # Corefile, say) cannot be compiled: say so.
                log.error("%s; keeping generation %d; the Corefile in force is not applied "
                          "until the state file loads", msg, ctl.generation)
            source.start()
        elif spec.source == "kube":
            try:
                source = start_kube_source(loop, config, spec.source_path, restarted)
            except FatalConfig as e:
                log.error("%s", e)
                return EXIT_CONTROL_FATAL
        elif spec.source == "none":
            # no kubernetes plugin (node-local cache mode): one image of the
            # forward zones, nothing to watch
            from fastdns.zone.state import ClusterState

            loop.publish_full(ClusterState(), "restart" if restarted else "initial load")
        else:  # pragma: no cover - the supervisor validates
            log.error("unknown state source %r", spec.source)
            return EXIT_CONTROL_FATAL
        loop.run()
        return EXIT_OK
    finally:
        for watch in watchers:
            watch.stop()
        if source is not None:
            source.stop()
        if obs is not None:
            obs.stop()
        with contextlib.suppress(Exception):
            publisher.collect()
        with contextlib.suppress(Exception):
            publisher.close()  # runs the queued unlinks, removes the spare
        if os.getppid() != spec.supervisor_pid:
            # The supervisor is gone (PR_SET_PDEATHSIG brought us here):
            # nobody else will sweep this run's segments.
            shm.sweep(spec.instance)
        ctl.close()
