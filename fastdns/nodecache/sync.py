"""node-cache's Corefile kept in step with its sources (configmap.go ``initDNSConfigSync``).

The Corefile is rendered once before serving (an error there is one line
and exit 1: there is nothing to serve). It is then rendered again every 10 s
(``DefaultConfigSyncPeriod``) from the base file and the kube-dns
ConfigMap, both as mounted. A changed text is written to the Corefile path
by a rename, so a reader never sees half a file. The Corefile's ``reload``
plugin notices the new file; with ``-reloadwithsignal`` the process also
sends itself SIGUSR1, as node-cache does. A render that fails keeps the
last good file and is logged once per failure.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Mapping

from fastdns.nodecache.flags import NodeCacheParams
from fastdns.nodecache.render import DEFAULT_KUBEDNS_CM, RenderError, read_kubedns, render

log = logging.getLogger("fastdns.nodecache")

PERIOD = 10.0  # s, configmap.go DefaultConfigSyncPeriod


def kubedns_dir(p: NodeCacheParams) -> str:
    """``-kubednscm``, else /etc/kube-dns where it exists (initDNSConfigSync)."""
    if p.kubedns_cm:
        return p.kubedns_cm
    return DEFAULT_KUBEDNS_CM if os.path.exists(DEFAULT_KUBEDNS_CM) else ""


def rendered(p: NodeCacheParams, env: Mapping[str, str]) -> str:
    """The Corefile for the sources as they are now; RenderError why not."""
    try:
        with open(p.base_corefile, encoding="utf-8") as f:
            base = f.read()
    except OSError as e:
        raise RenderError(f"cannot read the base Corefile {p.base_corefile}: "
                          f"{e.strerror}") from None
    directory = kubedns_dir(p)
    return render(base, p, env, read_kubedns(directory) if directory else None)


def write(path: str, text: str) -> bool:
    """Write ``text`` to ``path`` by a rename; False when it already holds it."""
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return False
    except OSError:
        pass
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".Corefile.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True


class CorefileSync:
    """The re-render loop on a daemon thread of the serving process."""

    def __init__(self, p: NodeCacheParams, path: str, env: Mapping[str, str] | None = None,
                 period: float = PERIOD, reload: Callable[[], None] | None = None) -> None:
        self.p = p
        self.path = path
        self.env = env if env is not None else os.environ
        self.period = period
        self.reload = reload or (lambda: os.kill(os.getpid(), signal.SIGUSR1))
        self._stop = threading.Event()
        self._failing: str | None = None
        self.thread = threading.Thread(target=self._run, name="node-cache-sync", daemon=True)

    def once(self) -> bool:
        """Render and write now (RenderError, OSError when it cannot); True if changed."""
        changed = write(self.path, rendered(self.p, self.env))
        if changed:
            log.info("node-cache: %s written from %s", self.path, self.p.base_corefile)
        return changed

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                changed = self.once()
            except (RenderError, OSError, UnicodeDecodeError) as e:
                if str(e) != self._failing:
                    self._failing = str(e)
                    log.error("node-cache: %s; keeping %s as it is", e, self.path)
                continue
            self._failing = None
            if changed and self.p.reload_with_signal:
                self.reload()


def prepare(p: NodeCacheParams, rest: list[str]) -> tuple[list[str], CorefileSync]:
    """The serve command line for node-cache's flags: the Corefile rendered
    and written (CoreDNS's ``-conf`` names where, else ``-corefile``), and its
    sync, not started. RenderError/OSError when the first render fails."""
    path = p.corefile
    for i, arg in enumerate(rest):
        name, eq, value = arg.lstrip("-").partition("=")
        if name == "conf" and arg.startswith("-"):
            path = value if eq else (rest[i + 1] if i + 1 < len(rest) else path)
    sync = CorefileSync(p, path)
    sync.once()
    for what, on in (("-setupinterface", p.setup_interface), ("-setupiptables", p.setup_iptables)):
        if on:
            log.warning("node-cache: %s is not done by fastdns yet: the %s must exist "
                        "(deploy/nodelocaldns.yaml's init container)", what,
                        f"interface {p.interface_name}" if what == "-setupinterface"
                        else "NOTRACK/ACCEPT rules")
    return [*rest, "-conf", path], sync
