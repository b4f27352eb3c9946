"""The control process: sources -> ClusterState -> compile -> publish.

One thread (the loop) owns the cluster state, the compiler and the
publisher; sources run on their own threads and only post to a queue:
``post_state`` (a whole new state, from the state file), ``post_event`` and
``post_synced`` (the Kubernetes watch, ``fastdns/control/kube.py``). Events
are coalesced for ``coalesce`` seconds after the first one arrives, then
compiled incrementally and published as one new generation, so a burst of
endpoint updates during a rollout costs one publish, not hundreds.

The process may crash and be restarted by the supervisor: workers keep
serving the last image, and the new control process adopts the segments it
finds (``Publisher.recover``) and continues the generation sequence. With a
state file it compiles the file, or if the file is refused, the restart
copy of the last good state (``statefile.StateCache``), so a Corefile
reload (which restarts it) is applied even then.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastdns.control.publisher import Publisher
from fastdns.control.statefile import POLL_INTERVAL, StateFileSource, describe_error
from fastdns.server import shm

log = logging.getLogger("control")

EXIT_OK = 0
EXIT_CONTROL_FATAL = 3  # configuration error: the supervisor does not restart us
COALESCE = 0.01  # seconds events are gathered before one compile + publish
MAX_WINDOW = 0.1  # the widest a busy loop's window grows (seconds)
# CoreDNS's service_kind label values of
# coredns_kubernetes_dns_programming_duration_seconds (plugin/kubernetes/object/metrics.go)
KIND_CLUSTER_IP = "cluster_ip"
KIND_HEADLESS_WITH_SELECTOR = "headless_with_selector"
KIND_HEADLESS_WITHOUT_SELECTOR = "headless_without_selector"
GC_INTERVAL = 0.1  # how often old images are checked for retirement
# Python's cyclic GC runs when the loop chooses, not when allocations say:
# a full collection over the post-sync heap stalled event -> publish by
# 100-200 ms for ~3 % of changes at 10k services / 100k endpoints (issue 5's
# p99). It runs once the queue has been idle this long...
PYGC_IDLE = 0.5
# ...and at the latest this often under steady load (one stall a minute).
PYGC_MAX_INTERVAL = 60.0
MAX_BATCH = 100_000  # items per compile: a relist's diff fits in one


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


def kubernetes_options(block: Any, index: int = 0) -> Any:
    """The zone room's KubernetesOptions for server block ``index``'s ``kubernetes`` plugin.

    ``local_ips`` (the apex NS glue when no kube-dns endpoint is local,
    CoreDNS ``nsAddrs``) are the block's ``bind`` addresses when it has any.
    """
    from fastdns.zone.records import KubernetesOptions

    conf = block.plugins["kubernetes"]
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


def build_compiler(config: Any) -> Any:
    """One compiler over every server block that has a ``kubernetes`` plugin."""
    # A block with several ports is one ServerBlock per port sharing one
    # plugin object (corefile/model.py): count each kubernetes plugin once.
    seen: list[Any] = []
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
    from fastdns.zone.compiler import Compiler
    from fastdns.zone.hosts import HostsContributor  # the hosts plugins' entries (issue 6)

    contributors = [c for c in (HostsContributor.for_config(config),) if c is not None]
    return Compiler(options[0] if options else None, forward_zones(config), contributors)


def forward_zones(config: Any) -> list[Any]:
    """Zones of blocks without ``kubernetes`` that ``forward``: the fast path hands them over.

    Without an entry a forward-only zone inside a kubernetes zone (say
    ``10.in-addr.arpa`` beside ``kubernetes cluster.local in-addr.arpa``)
    would get the kubernetes zone's NXDOMAIN instead of the forwarder
    (CoreDNS picks the most specific server block first). The root zone
    needs no entry: names in no zone are handed over anyway.
    """
    from fastdns.ipc import image as img
    from fastdns.zone.imagebuilder import ZoneSpec
    from fastdns.zone.records import name_wire

    out: list[Any] = []
    for i, b in enumerate(config.servers):
        if "kubernetes" in b.plugins or "forward" not in b.plugins:
            continue
        for z in b.zones:
            if z != ".":
                out.append(ZoneSpec(name_wire(z).lower(), img.ZF_SLOW_MISS,
                                        block=i, kind=img.ZK_FORWARD))
    return out


# -- the loop ------------------------------------------------------------------

_STOP = object()


class ControlLoop:
    """Owns state, compiler and publisher; everything else talks to it by queue."""

    def __init__(self, compiler: Any, publisher: Publisher, *, coalesce: float = COALESCE,
                 state: Any = None) -> None:
        self.compiler = compiler
        if hasattr(compiler, "reuse_buffer"):
            # each image is published (copied out) before the next compile:
            # one buffer, its pages faulted in once (Compiler.reuse_buffer)
            compiler.reuse_buffer = True
        self.publisher = publisher
        self.coalesce = coalesce
        self.state = state
        self.synced = True
        self._q: queue.SimpleQueue = queue.SimpleQueue()  # reentrant: signal handlers put
        self._stopping = False
        self.publishes = 0
        self.pygc_runs = 0  # scheduled cyclic-GC collections (see PYGC_IDLE)
        # (generation, image octets, compile s, publish s, synced) after every
        # compile: metrics and readiness (fastdns/control/httpd.py Observability).
        self.on_publish: Any = None
        # (seconds, service_kind) per watch event a published snapshot serves,
        # from the event's arrival here (ControlValues.observe_programming_latency)
        self.on_programmed: Callable[[float, str], None] | None = None
        # Service -> CoreDNS service_kind; KubeSource.service_kind knows selectors
        self.service_kind: Callable[[Any], str] = default_service_kind
        # The last batch's compile + publish time, and when it ended: under a
        # steady stream of events the window widens to that cost (see _run()).
        self._last_cost = 0.0
        self._last_done = float("-inf")

    # thread-safe entry points -------------------------------------------------

    # Every item carries its arrival time (monotonic): the coalescing window
    # and the programming latency both count from it.

    def post_state(self, state: Any) -> None:
        self._q.put(("state", time.monotonic(), state))

    def post_event(self, kind: str, event_type: str, obj: Any) -> None:
        """One watch event, as ``KubeSource`` delivers it: kind, ADDED/MODIFIED/
        DELETED, and the stripped object (``ClusterState.apply`` needs no kind)."""
        self._q.put(("event", time.monotonic(), event_type, obj))

    def post_synced(self) -> None:
        self._q.put(("synced", time.monotonic()))

    def post_call(self, fn: Callable[[], bool]) -> None:
        """Run ``fn`` on the loop thread; it returns True when the image must be
        re-assembled (a hosts file changed: ``Compiler.refresh``)."""
        self._q.put(("call", time.monotonic(), fn))

    def wait_synced(self, source: Any, timeout: float) -> bool:
        """Wait up to ``timeout`` s for ``source``'s first full sync (False: not yet,
        or stopping). The loop is not running: what the source posts meanwhile
        stays queued and becomes the first image once ``run`` starts."""
        deadline = time.monotonic() + timeout
        while not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if source.wait_synced(min(left, 0.1)):
                return True
        return False

    def stop(self) -> None:
        self._stopping = True
        self._q.put(_STOP)

    def set_unsynced(self, state: Any) -> None:
        """Start from ``state`` and publish nothing more until ``post_synced``."""
        self.state = state
        self.synced = False
        self.compiler.synced = False

    # compile + publish ---------------------------------------------------------

    def publish_full(self, state: Any, why: str) -> int | None:
        self.state = state
        t0 = time.perf_counter()
        image = self.compiler.full(state)
        return self._publish(image, t0, why)

    def process_pending(self) -> None:
        """Apply whatever is queued now, without waiting (tests, shutdown)."""
        batch = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                batch.append(item)
        if batch:
            self._apply(batch)

    def _publish(self, image: Any, t0: float, why: str) -> int | None:
        # Synchronous on purpose: a publish thread overlapping the next compile
        # measured 3x slower (bench/bench_kube.py), because the assembler holds
        # the GIL for its whole run and every step of the publish (CRC, pwrite,
        # rename) must win the GIL back in between.
        t1 = time.perf_counter()
        gen = self.publisher.publish(image)
        t2 = time.perf_counter()
        if self.on_publish is not None:  # an unchanged image is the one in force
            self.on_publish(gen if gen is not None else self.publisher.generation,
                            len(image), t1 - t0, t2 - t1, self.synced)
        if gen is None:
            log.info("%s: image unchanged (%d octets), nothing published", why, len(image))
            return None
        self.publishes += 1
        log.info("%s: published generation %d (%d octets; compiled in %.1f ms, "
                 "published in %.1f ms; spare %d/%d, waited %.1f ms)", why, gen, len(image),
                 (t1 - t0) * 1e3, (t2 - t1) * 1e3, self.publisher.spare_hits,
                 self.publisher.spare_misses, getattr(self.publisher, "spare_wait", 0.0) * 1e3)
        return gen

    def _apply(self, batch: list[tuple]) -> None:
        """Apply a coalesced batch: the last whole state wins, then events on top.

        A whole new state (the file changed) is turned into the events that
        take the current state there (``sync_state``), so a file reload and a
        watch burst take the same incremental path through the compiler.
        """
        t0 = time.perf_counter()
        affected: Any = _new_affected()
        full = self.state is None
        events = 0
        first_sync = False
        reassemble = False
        # (arrival, object) of the events that changed what DNS may answer,
        # applied on a synced state: what the programming latency measures
        visible: list[tuple[float, Any]] = []
        why = []
        for item in batch:
            if item[0] == "state":
                if self.state is None:
                    self.state = item[2]
                    full = True
                else:
                    affected |= sync_state(self.state, item[2])
                why.append("state reloaded")
            elif item[0] == "event":
                if self.state is None:
                    from fastdns.zone.state import ClusterState

                    self.state = ClusterState()
                    full = True
                got = self.state.apply(item[2], item[3])
                if got:
                    affected |= got
                    if self.synced:
                        visible.append((item[1], item[3]))
                events += 1
            elif item[0] == "call":
                if item[2]():
                    reassemble = True
                why.append("hosts reloaded")
            elif item[0] == "synced":
                if not self.synced:
                    self.synced = True
                    self.compiler.synced = True
                    full = first_sync = True
                why.append("synced")
        if events:
            why.append(f"{events} event{'s' if events != 1 else ''}")
        label = ", ".join(dict.fromkeys(why))
        if not self.synced:
            return  # a partial list must not replace a complete image
        if full:
            image = self.compiler.full(self.state)
        elif not affected and reassemble:
            image = self.compiler.assemble()
        elif not affected:
            log.debug("%s: no DNS-visible change", label)
            return
        else:
            image = self.compiler.update(self.state, affected)
        programmed = self._programmed(visible)
        if self._publish(image, t0, label) is not None:
            self._record_programmed(programmed)
        del image
        if first_sync:
            # The whole cluster state now lives until it changes, and it is
            # acyclic: keep the cyclic GC from walking ~10^6 objects in every
            # full collection, which stalls the loop for hundreds of ms at
            # 100k endpoints (CPython gc.freeze, meant for exactly this).
            gc.freeze()

    def _programmed(self, visible: list[tuple[float, Any]]) -> list[tuple[float, str]]:
        """(arrival, service_kind) of the DNS-visible Service/EndpointSlice events,
        taken in the loop thread, which owns the state."""
        if self.on_programmed is None or not visible:
            return []
        services = self.state.services
        out = []
        for arrived, obj in visible:
            svc = _service_of(obj, services)
            if svc is not None:
                out.append((arrived, self.service_kind(svc)))
        return out

    def _record_programmed(self, programmed: list[tuple[float, str]]) -> None:
        """Observe event arrival -> snapshot published, once it is published."""
        if self.on_programmed is None:
            return
        now = time.monotonic()
        for arrived, kind in programmed:
            try:
                self.on_programmed(now - arrived, kind)
            except Exception:  # noqa: BLE001 - metrics never stop the loop
                log.exception("recording the programming latency failed")

    def run(self) -> None:
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._run()
        finally:
            if gc_was_enabled:
                gc.enable()

    def _run(self) -> None:
        last_gc = last_pygc = last_item = time.monotonic()
        while not self._stopping:
            try:
                item = self._q.get(timeout=GC_INTERVAL)
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            if item is not None:
                batch = [item]
                # The window counts from the first item's arrival: what queued
                # while the previous batch compiled goes out at once, together.
                # While events keep coming (this one arrived within one batch
                # cost of the last publish), the window is at least that cost:
                # batches grow with the load and the loop stops compiling one
                # event at a time back to back (control CPU 132 % -> 94 % and
                # p99 event -> answer 140 -> 70 ms at issue 5's 50 changes/s);
                # an isolated event still waits only `coalesce`.
                window = self.coalesce
                if item[1] - self._last_done < self._last_cost:
                    window = max(window, self._last_cost)
                deadline = item[1] + window
                while len(batch) < MAX_BATCH:
                    left = deadline - time.monotonic()
                    try:
                        nxt = self._q.get(timeout=left) if left > 0 else self._q.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        self._stopping = True
                        break
                    batch.append(nxt)
                if self._stopping:
                    break
                started = time.monotonic()
                try:
                    self._apply(batch)
                except Exception as e:  # noqa: BLE001 - keep the last good image
                    log.exception("compile failed, keeping generation %d: %s",
                                  self.publisher.generation, describe_error(e))
                self._last_done = time.monotonic()
                self._last_cost = min(self._last_done - started, MAX_WINDOW)
            now = time.monotonic()
            if item is not None:
                last_item = now
            if now - last_gc >= GC_INTERVAL:
                self.publisher.collect()
                last_gc = now
            if (now - last_item >= PYGC_IDLE and last_item > last_pygc) or (
                    now - last_pygc >= PYGC_MAX_INTERVAL):
                gc.collect()
                self.pygc_runs += 1
                last_pygc = time.monotonic()


def default_service_kind(svc: Any) -> str:
    """CoreDNS's service_kind of a stripped Service, not knowing its selector."""
    return KIND_HEADLESS_WITH_SELECTOR if svc.headless else KIND_CLUSTER_IP


def _service_of(obj: Any, services: dict) -> Any:
    """The Service a Service or EndpointSlice event programs (None: neither, or gone)."""
    from fastdns.zone.objects import EndpointSlice, Service

    if isinstance(obj, Service):
        return services.get(obj.key, obj)
    if isinstance(obj, EndpointSlice) and obj.service:
        return services.get((obj.namespace, obj.service))
    return None


def _new_affected() -> Any:
    from fastdns.zone.state import Affected

    return Affected()


def sync_state(current: Any, new: Any) -> Any:
    """Apply to ``current`` the events that turn it into ``new``; their Affected.

    Upserts first (Namespaces before what lives in them), deletions last,
    so a Service moving between slices never disappears in between.
    """
    out = _new_affected()
    kinds = (("namespaces", "Namespace"), ("services", "Service"),
             ("slices", "EndpointSlice"), ("pods", "Pod"))
    for attr, _kind in kinds:
        old_objs, new_objs = getattr(current, attr), getattr(new, attr)
        for key, obj in list(new_objs.items()):
            was = old_objs.get(key)
            if was != obj:
                out |= current.apply("ADDED" if was is None else "MODIFIED", obj)
    for attr, kind in reversed(kinds):
        old_objs, new_objs = getattr(current, attr), getattr(new, attr)
        for key in [k for k in old_objs if k not in new_objs]:
            out |= current.apply("DELETED", (kind, key))
    return out


def summarize(state: Any) -> str:
    """'4 namespaces, 8 services, 12 endpoints in 7 slices, 8 pods' for the startup log."""
    endpoints = sum(len(e.addresses) for sl in state.slices.values() for e in sl.endpoints)
    return (f"{len(state.all_namespaces())} namespaces, {len(state.services)} services, "
            f"{endpoints} endpoints in {len(state.slices)} slices, {len(state.pods)} pods")


# -- process main ------------------------------------------------------------


def kube_config(config: Any, kubeconfig: str | None) -> Any:
    """KubeConfig from the Corefile's kubernetes plugin; ``--kubeconfig`` wins over its
    ``kubeconfig`` option (CoreDNS's precedence is then kubeconfig > endpoint > in-cluster)."""
    from fastdns.control.kube import KubeConfig

    conf = next(b.plugins["kubernetes"] for b in config.servers if "kubernetes" in b.plugins)
    path, context = (conf.kubeconfig or (None, None))
    tls = conf.tls or (None, None, None)
    return KubeConfig(
        endpoint=conf.endpoint[0] if conf.endpoint else None,
        kubeconfig=kubeconfig or path, context=context or None,
        tls_cert=tls[0], tls_key=tls[1], tls_ca=tls[2],
        pods_verified=conf.pods == "verified",
        label_selector=conf.labels, namespace_label_selector=conf.namespace_labels)


def _keeps_pods(compiler: Any) -> bool:
    opts = getattr(compiler, "options", None)
    return opts is not None and opts.pods == "verified"


def state_loader(compiler: Any) -> Callable[[str], Any]:
    """A state file's ClusterState, parsed in a child process (``zone/isolated.py``:
    the parse's garbage would pin ~90 MB here at 10k Services), keeping Pods
    only where ``pods verified`` answers from them (CoreDNS watches Pods in
    that mode only). Returns a ``statefile.Loaded``: with the file's shape
    and the child's pickle, the restart copy (``state_cache``)."""
    from fastdns.control.statefile import Loaded
    from fastdns.zone.isolated import load_isolated
    from fastdns.zone.state import ClusterState

    pods = _keeps_pods(compiler)

    def load(path: str) -> Loaded:
        objs, shape, blob = load_isolated(path, pods=pods)
        return Loaded(ClusterState(objs), shape.complete, shape.empty_list, blob)

    return load


def state_cache(instance: str, compiler: Any) -> Any:
    """The restart copy of the last good state (``statefile.StateCache``); a copy
    made with or without Pods serves only a configuration that keeps the same."""
    from fastdns.control.statefile import StateCache
    from fastdns.zone.isolated import objects_from_blob
    from fastdns.zone.state import ClusterState

    return StateCache.for_instance(instance, lambda b: ClusterState(objects_from_blob(b)),
                                   "pods" if _keeps_pods(compiler) else "no-pods")


def startup_timeout(config: Any) -> float:
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
        elif not loop._stopping:
            log.warning("starting server with unsynced Kubernetes API (no full sync "
                        "within startup_timeout %gs)", timeout)
            loop.publish_full(loop.state, "waiting for the first sync with the Kubernetes API")
    return source


def _parse(spec: ControlSpec) -> Any:
    from fastdns import corefile

    try:
        return corefile.parse_corefile(spec.corefile_text, spec.corefile_name)
    except corefile.CorefileError as e:
        raise FatalConfig(str(e)) from e


def _record_pid(instance: str) -> None:
    """The control pid word the metrics exporter reads for process_* metrics."""
    try:
        from fastdns.control import metrics
    except ImportError:  # pragma: no cover - prometheus-client missing
        return
    stats = metrics.SharedStats.attach(instance)
    try:
        stats.set(metrics.S_CONTROL_PID, os.getpid())
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
        from fastdns.control.httpd import Observability

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
                                     cache=state_cache(spec.instance, compiler))
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
