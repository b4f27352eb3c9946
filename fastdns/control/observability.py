"""The control process's one hook for metrics, health and readiness.

``Observability`` wires the HTTP endpoints (fastdns.control.httpd) to the
shared-memory counters and to the snapshot image in force, so
``control_main`` makes one call at startup and one per publish; httpd.py
itself stays a plain server of probes and scrapes.
"""

from __future__ import annotations

import contextlib
import logging
import os

from fastdns.control.httpd import HttpEndpoints, ProbeState, http_config
from fastdns.ipc import layout, tables
from fastdns.ipc.stats import SharedStats

log = logging.getLogger("fastdns.httpd")  # the logger name httpd.py has always used


# Plugins that report readiness in CoreDNS (implement ready.Readiness) among
# those fastdns runs: kubernetes, until its first full sync.
READINESS_PLUGINS = ("kubernetes",)


def image_in_force(ctl: object) -> tuple[int, int, bool, float] | None:
    """(generation, octets, synced, unix time written) of the image the workers
    serve, or None when none is published yet (or it cannot be read).

    ``/ready`` says "workers serve a snapshot", and that holds across
    control-process restarts: a restarted control process (a crash, a
    Corefile reload, a state file it refuses) starts from the image its
    predecessor published. If that image is a complete one (``IMG_SYNCED``:
    a state file, or a full sync with the API), the kubernetes plugin is
    ready at once; it does not wait for a publish of its own, which a bad
    state file may hold back for good.
    """
    from fastdns.ipc import image as img
    from fastdns.ipc import shm

    if not getattr(ctl, "generation", 0):
        return None
    try:
        seg = ctl.current()  # type: ignore[attr-defined]
        if seg is None:
            return None
        try:
            head = img.read_header(seg.buf)
            gen, name = seg.generation, seg.name
        finally:
            seg.close()
        written = os.stat(os.path.join(shm.SHM_DIR, name)).st_mtime
    except (OSError, ValueError, shm.ShmError) as e:
        log.warning("cannot read the snapshot image in force: %s", e)
        return None
    return gen, head.size, bool(head.flags & img.IMG_SYNCED), written


class Observability:
    """The control process's one hook for metrics, health and readiness.

    Usage in ``control_main`` (after the Corefile is parsed)::

        obs = Observability.start(config, ctl, corefile_text)  # binds the ports
        ...
        obs.published(generation, len(image), compile_s, publish_s)  # per publish
        obs.set_ready("kubernetes", True)  # after the first full sync/publish
        obs.start_lameduck()  # on SIGTERM: returns the lameduck seconds
        obs.stop()  # at exit

    ``start`` raises OSError when an address is taken: startup must fail,
    as CoreDNS's does.
    """

    def __init__(self, endpoints: HttpEndpoints, values: object, stats: object) -> None:
        self.endpoints = endpoints
        self.values = values
        self.stats = stats

    @classmethod
    def start(cls, config: object, ctl: object, corefile_text: str | None = None
              ) -> Observability:
        from fastdns.control import metrics, metrics_labels, metrics_values
        from fastdns.plugins import series

        stats = SharedStats.attach(ctl.instance)  # type: ignore[attr-defined]
        stats.set(layout.S_CONTROL_PID, os.getpid())
        values = metrics_values.ControlValues()
        if corefile_text is not None:
            values.set_corefile(corefile_text)
        collector = metrics.DnsCollector.for_segment(
            ctl, metrics_labels.blocks_from_config(config), values, stats,  # type: ignore[arg-type]
            cache_table=tables.cache_table(config),
            plugin_table=series.plugin_table(config))
        nworkers = ctl.nworkers  # type: ignore[attr-defined]

        def workers_serving() -> bool:
            # A worker reports a mapped generation only after binding its
            # sockets, so ready implies every worker answers.
            return all(ctl.mapped(i) > 0 for i in range(nworkers))  # type: ignore[attr-defined]

        endpoints = HttpEndpoints(http_config(config), metrics.make_registry(collector),
                                  ProbeState(lameduck_source=lambda: stats.lameduck,
                                             checks={"workers": workers_serving}),
                                  health_probe=values.observe_health)
        names = {n for b in getattr(config, "servers", ()) for n in getattr(b, "plugins", {})}
        adopted = image_in_force(ctl)
        for name in READINESS_PLUGINS:
            if name in names:
                endpoints.set_ready(name, adopted is not None and adopted[2])
        if adopted is not None:
            gen, size, _synced, published_at = adopted
            values.snapshot_adopted(gen, size, published_at)
        try:
            endpoints.start()
        except BaseException:
            stats.close()
            raise
        return cls(endpoints, values, stats)

    def published(self, generation: int, image_bytes: int, compile_seconds: float | None = None,
                  publish_seconds: float | None = None, synced: bool = True) -> None:
        """A snapshot went out; with ``synced`` (its state is a full sync, or
        the state file) the kubernetes plugin reports ready from now on."""
        self.values.snapshot_published(  # type: ignore[attr-defined]
            generation, image_bytes, compile_seconds, publish_seconds)
        if synced and "kubernetes" in self.endpoints.state.plugins():
            self.endpoints.set_ready("kubernetes", True)

    def set_ready(self, plugin: str, ready: bool) -> None:
        self.endpoints.set_ready(plugin, ready)

    def start_lameduck(self) -> float:
        return self.endpoints.start_lameduck()

    def stop(self) -> None:
        self.endpoints.stop()
        with contextlib.suppress(Exception):
            self.stats.close()  # type: ignore[attr-defined]
