"""The control loop: one thread owns the cluster state, the compiler and the publisher.

Sources run on their own threads and only post to a queue: ``post_state``
(a whole new state, from the state file), ``post_event`` and
``post_synced`` (the Kubernetes watch, ``fastdns/control/kube.py``),
``post_call`` (a compiled plugin's sources changed). Events are coalesced
for ``coalesce`` seconds after the first one arrives, then compiled
incrementally and published as one new generation, so a burst of endpoint
updates during a rollout costs one publish, not hundreds.
"""

from __future__ import annotations

import gc
import logging
import queue
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastdns.control import heap
from fastdns.control.publisher import Publisher
from fastdns.control.statefile import describe_error

if TYPE_CHECKING:  # types only: the zone package is imported where it is used
    from fastdns.zone.compiler import Compiler, Image
    from fastdns.zone.objects import Obj, Service
    from fastdns.zone.state import Affected, ClusterState

log = logging.getLogger("control")

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
TRIM_BATCH = 1000  # a batch this large (a relist) has its freed heap given back

_STOP = object()


class ControlLoop:
    """Owns state, compiler and publisher; everything else talks to it by queue."""

    def __init__(self, compiler: Compiler, publisher: Publisher, *, coalesce: float = COALESCE,
                 state: ClusterState | None = None) -> None:
        self.compiler = compiler
        if hasattr(compiler, "reuse_buffer"):
            # each image is published (copied out) before the next compile:
            # one buffer, its pages faulted in once (Compiler.reuse_buffer)
            compiler.reuse_buffer = True
        if getattr(publisher, "in_place", False) and hasattr(compiler, "out_buffer"):
            # better still: each image assembled in its own shared-memory
            # segment, no copy on the heap (Publisher.buffer)
            compiler.out_buffer = publisher.buffer
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
        self.on_publish: Callable[[int, int, float, float, bool], None] | None = None
        # (seconds, service_kind) per watch event a published snapshot serves,
        # from the event's arrival here (ControlValues.observe_programming_latency)
        self.on_programmed: Callable[[float, str], None] | None = None
        # Service -> CoreDNS service_kind; KubeSource.service_kind knows selectors
        self.service_kind: Callable[[Service], str] = default_service_kind
        # The last batch's compile + publish time, and when it ended: under a
        # steady stream of events the window widens to that cost (see _run()).
        self._last_cost = 0.0
        self._last_done = float("-inf")

    # thread-safe entry points -------------------------------------------------

    # Every item carries its arrival time (monotonic): the coalescing window
    # and the programming latency both count from it.

    def post_state(self, state: ClusterState) -> None:
        self._q.put(("state", time.monotonic(), state))

    def post_event(self, kind: str, event_type: str, obj: Obj | tuple[str, Any]) -> None:
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

    @property
    def stopping(self) -> bool:
        """Whether ``stop`` was called (a signal arrived)."""
        return self._stopping

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

    def _publish(self, image: Image, t0: float, why: str) -> int | None:
        # Synchronous on purpose: a publish thread overlapping the next compile
        # measured 3x slower (bench/bench_kube.py), because the assembler holds
        # the GIL for its whole run and every step of the publish (CRC, pwrite,
        # rename) must win the GIL back in between.
        t1 = time.perf_counter()
        before = self.publisher.generation
        try:
            gen = self.publisher.publish(image)
        finally:
            if self.publisher.generation != before and getattr(self.compiler, "out_buffer", None):
                # in force now: the compiler's fragments may live in it (Compiler.placed)
                self.compiler.placed(image)
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
        affected = _new_affected()
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
            # None before any state arrived: only a Compiler without a kubernetes
            # builder reads no state then (a hosts reload, a forward-only image)
            image = self.compiler.full(self.state)  # type: ignore[arg-type]
        elif not affected and reassemble:
            image = self.compiler.assemble()
        elif not affected:
            log.debug("%s: no DNS-visible change", label)
            return
        else:
            # affected came from applying events to a state: it is set here
            image = self.compiler.update(self.state, affected)  # type: ignore[arg-type]
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
        if full or len(batch) >= TRIM_BATCH:
            heap.trim()  # what the compile or a relist's pages freed goes back (heap.py)

    def _programmed(self, visible: list[tuple[float, Any]]) -> list[tuple[float, str]]:
        """(arrival, service_kind) of the DNS-visible Service/EndpointSlice events,
        taken in the loop thread, which owns the state."""
        if self.on_programmed is None or not visible or self.state is None:
            return []  # (visible events were applied to a state: it is never None here)
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


def default_service_kind(svc: Service) -> str:
    """CoreDNS's service_kind of a stripped Service, not knowing its selector."""
    return KIND_HEADLESS_WITH_SELECTOR if svc.headless else KIND_CLUSTER_IP


def _service_of(obj: object, services: dict[tuple[str, str], Service]) -> Service | None:
    """The Service a Service or EndpointSlice event programs (None: neither, or gone)."""
    from fastdns.zone.objects import EndpointSlice, Service

    if isinstance(obj, Service):
        return services.get(obj.key, obj)
    if isinstance(obj, EndpointSlice) and obj.service:
        return services.get((obj.namespace, obj.service))
    return None


def _new_affected() -> Affected:
    from fastdns.zone.state import Affected

    return Affected()


def sync_state(current: ClusterState, new: ClusterState) -> Affected:
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
            if was is not obj and was != obj:  # a patched reload keeps unchanged objects
                out |= current.apply("ADDED" if was is None else "MODIFIED", obj)
    for attr, kind in reversed(kinds):
        old_objs, new_objs = getattr(current, attr), getattr(new, attr)
        for key in [k for k in old_objs if k not in new_objs]:
            out |= current.apply("DELETED", (kind, key))
    return out
