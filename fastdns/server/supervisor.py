"""``fastdns serve``: the supervisor process.

It owns nothing but processes and the control segment: it reads the
Corefile far enough to know what to listen on, creates the shared control
segment (so that it outlives a crash of the control process), starts one
control process and N workers, each in a fresh interpreter (no state
inherited through ``fork``; ``childproc.py`` rather than ``multiprocessing``,
whose ``spawn`` adds a resource-tracker process), restarts any child that
dies with exponential backoff, and on SIGTERM/SIGINT stops the children,
sweeps this run's ``/dev/shm/fastdns-<instance>-*`` segments and exits 0.

Signals (``fastdns/procsignals.py``): the supervisor alone decides when the
tree stops. A SIGTERM or SIGINT to the whole process group (systemd's
``KillMode=control-group``, Ctrl-C) leaves the children serving; the
supervisor keeps health's ``lameduck`` to its end (a second SIGTERM or
SIGINT cuts it short), then tells each child to stop with
``procsignals.STOP`` and exits 0.

Shared memory it owns for the instance's whole life: the control segment,
and the flock on ``fastdns-<instance>-lock`` that says "alive"
(``reclaim.InstanceLock``). Before creating anything else it reclaims the
segments of every dead instance in the directory (``reclaim.reclaim``), so a
SIGKILL of the whole tree (an OOM kill of the pod) leaks only until the
next start.

Like NSD (``server.c``: the main process only restarts its children), the
supervisor never touches packets or zone data, so it is very unlikely to die;
if it is killed anyway, the children get SIGTERM through PR_SET_PDEATHSIG and
the control process sweeps the segments.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import platform
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastdns import procsignals
from fastdns.coredns_cli import package_version
from fastdns.ipc import layout, reclaim, shm
from fastdns.ipc.stats import SharedStats
from fastdns.server import portcheck
from fastdns.server.childproc import ChildProcess, set_comm
from fastdns.server.childproc import wait as wait_objects

log = logging.getLogger("supervisor")

DEFAULT_COREFILE = "/etc/coredns/Corefile"
DEFAULT_PORT = 53

# Exit codes shared by the supervisor and the control process.
EXIT_OK = 0
EXIT_CONFIG = 1  # bad Corefile, state or options: the message is on stderr
EXIT_CONTROL_FATAL = 3  # control process: configuration error, do not restart

BACKOFF_FIRST = 0.1  # seconds before the first restart of a child
BACKOFF_MAX = 10.0
BACKOFF_RESET = 10.0  # a child that stayed up this long restarts fast again
STOP_GRACE = 5.0  # SIGTERM, then SIGKILL after this many seconds

_PR_SET_PDEATHSIG = 1


class ServeError(Exception):
    """A startup error already phrased for the operator (``file:line: ...``)."""


# -- logging ----------------------------------------------------------------


class _CoreDNSFormatter(logging.Formatter):
    """``[INFO] plugin/reload: ...`` is CoreDNS's shape; ours names the component."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        return f"[{record.levelname}] {record.name}: {msg}"


def setup_logging(level: str = "info") -> None:
    """One stderr handler in CoreDNS's style; called in every process we start."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_CoreDNSFormatter())
    root.addHandler(handler)
    root.setLevel(_level(level))


def _level(name: str) -> int:
    value = logging.getLevelName(str(name).upper())
    return value if isinstance(value, int) else logging.INFO


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGTERM when the supervisor dies (Linux prctl(2)).

    Without it a SIGKILLed supervisor would leave workers bound to the port.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


# -- the plan: what to serve, from the command line and the Corefile ----------


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
    from fastdns.corefile.config import DEFAULT_DEMO_COREFILE

    if args.corefile is None and getattr(args, "demo", False):
        return DEFAULT_DEMO_COREFILE, "<demo Corefile>"
    path = args.corefile or DEFAULT_COREFILE
    try:
        return Path(path).read_text(), path
    except OSError as e:
        raise ServeError(f"{path}: cannot read the Corefile: {e.strerror or e}") from e


def parse_config(text: str, filename: str) -> Any:
    """The corefile module's Config, its errors turned into ServeError."""
    from fastdns.corefile.config import parse_corefile
    from fastdns.corefile.errors import CorefileError

    try:
        return parse_corefile(text, filename)
    except CorefileError as e:
        raise ServeError(str(e)) from e


def check_plugins(config: Any, filename: str) -> list[str]:
    """Refuse what this server does not run; returns the warning lines.

    ``fastdns.corefile.verdict`` decides, the same function ``check-corefile``
    asks, so both commands give one verdict on one Corefile.
    """
    from fastdns.corefile import verdict

    found = verdict.problems(config)
    if found:
        raise ServeError(str(found[0]))
    return verdict.warnings(config)


def listen_addresses(config: Any) -> tuple[tuple[str, int], ...]:
    """(address, port) pairs over all server blocks, in Corefile order, deduplicated.

    Without ``bind`` CoreDNS listens on every address (``listen_hosts`` gives
    ""); here that is the IPv4 and IPv6 wildcards (workers set IPV6_V6ONLY
    so both can be bound on one port).
    """
    out: list[tuple[str, int]] = []
    for block in config.servers:
        port = block.port if block.port is not None else DEFAULT_PORT
        for host in block.listen_hosts:
            for a in (("0.0.0.0", "::") if host == "" else (host,)):
                pair = (a, int(port))
                if pair not in out:
                    out.append(pair)
    return tuple(out)


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


def choose_source(args: argparse.Namespace, config: Any,
                  environ: Any = None) -> tuple[str, str | None]:
    """(source, path) of the cluster state: the command line's, else the Corefile's.

    ``--kubeconfig``, ``--state`` and ``--demo`` are overrides for local use.
    Without them a Corefile with ``kubernetes`` watches the API the way
    CoreDNS finds it (``plugin/kubernetes/kubernetes.go`` getClientConfig):
    its ``kubeconfig``, else its ``endpoint``, else the pod's service account
    (``fastdns/control/apiaccess.py``). The control process builds the
    client from the same Corefile (``process.kube_config``).
    """
    from fastdns.control import apiaccess

    if getattr(args, "kubeconfig", None):
        return "kube", args.kubeconfig
    if getattr(args, "state", None):
        if not os.path.exists(args.state):
            raise ServeError(f"{args.state}: state file or directory does not exist")
        return "state", args.state
    if getattr(args, "demo", False):
        return "demo", demo_state_path()
    kube = next((b.plugins["kubernetes"] for b in config.servers if "kubernetes" in b.plugins),
                None)
    if kube is None:
        # node-local cache mode (NodeLocal DNSCache's Corefile): forward only
        return "none", None
    problem = apiaccess.problem(kube, os.environ if environ is None else environ)
    if problem:
        raise ServeError(problem)
    return "kube", None


def _served_zones(config: Any) -> tuple[str, ...]:
    zones: list[str] = []
    for block in config.servers:
        k = block.plugins.get("kubernetes")
        for z in (k.zones if k is not None else ()) or block.zones:
            if z not in zones:
                zones.append(z)
    return tuple(zones)


def _lameduck(config: Any) -> float:
    return max((float(getattr(b.plugins["health"], "lameduck", 0.0) or 0.0)
                for b in config.servers if "health" in b.plugins), default=0.0)


def reload_plan(plan: ServePlan, text: str) -> tuple[Any, ServePlan]:
    """(config, plan) for a reloaded Corefile ``text``; ServeError if it cannot run.

    The same checks as startup; what the command line chose (state source,
    workers) stays.
    """
    import dataclasses

    filename = plan.corefile_path or plan.corefile_name
    config = parse_config(text, filename)
    for warning in check_plugins(config, filename):
        log.warning("%s", warning)
    from fastdns.control.process import FatalConfig, build_compiler

    try:  # what the control process would refuse at its start
        build_compiler(config)
    except FatalConfig as e:
        raise ServeError(str(e)) from e
    return config, dataclasses.replace(
        plan, corefile_text=text, listen=listen_addresses(config), zones=_served_zones(config),
        lameduck=_lameduck(config))


# -- child entry points (module level: childproc pickles them by name) -----


def _worker_entry(spec: Any, log_level: str, parent_pid: int) -> None:
    procsignals.supervised(parent_pid)  # a group SIGTERM is the supervisor's to judge
    setup_logging(log_level)
    die_with_parent(parent_pid)
    from fastdns.server.worker import worker_main

    worker_main(spec)


def _control_entry(spec: Any, log_level: str, parent_pid: int) -> None:
    # Until control_main installs its own handlers, a stop (the supervisor's
    # STOP, or PR_SET_PDEATHSIG's SIGTERM) must still unwind through the sweep:
    # procsignals' default raises SystemExit(0).
    procsignals.supervised(parent_pid)
    setup_logging(log_level)
    code = EXIT_OK
    try:
        die_with_parent(parent_pid)
        from fastdns.control.process import control_main

        code = control_main(spec)
    finally:
        if os.getppid() != parent_pid:
            # the supervisor is gone: nobody else will remove this run's segments
            shm.sweep(spec.instance)
    sys.exit(code)


# -- supervision --------------------------------------------------------------


@dataclass
class Child:
    """One supervised process slot (the control process or worker ``index``)."""

    name: str
    index: int  # -1 for the control process
    target: Any
    args: tuple
    proc: Any = None
    started: float = 0.0
    backoff: float = BACKOFF_FIRST
    restart_at: float | None = None
    restarts: int = 0
    reloading: bool = False  # stopped to take a reloaded Corefile: restart at once


class Supervisor:
    def __init__(self, plan: ServePlan, instance: str | None = None,
                 quiet: bool = False) -> None:
        self.plan = plan
        self.quiet = quiet  # CoreDNS -quiet: no startup banner
        self.instance = instance or secrets.token_hex(6)
        self.ctl: shm.ControlSegment | None = None
        self.children: list[Child] = []
        self.stopping = False
        self.exit_code = EXIT_OK
        self._announced = False
        self._wake_r, self._wake_w = os.pipe()
        self.stats: Any = None  # fastdns.ipc.stats.SharedStats, when available
        self._signals = 0
        self._last_signal = "SIGTERM"
        self.lock: reclaim.InstanceLock | None = None
        self.reloader: Any = None  # fastdns.control.reload.Reloader
        self.loop_probe: Any = None  # fastdns.control.loopdetect.LoopProbe
        self._reload_requested = False

    # signals ---------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals += 1
        self._last_signal = signal.Signals(signum).name
        if not self.stopping:
            log.info("%s: shutting down", signal.Signals(signum).name)
        self.stopping = True

    def _install_signals(self) -> None:
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        # CoreDNS reloads on SIGUSR1 (core/dnsserver + caddy's signal handling);
        # SIGHUP must not kill us either.
        signal.signal(signal.SIGUSR1, self._on_reload_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _on_reload_signal(self, signum: int, frame: Any) -> None:
        self._reload_requested = True

    # children --------------------------------------------------------------

    def _child_args(self, index: int) -> tuple:
        from fastdns.control.process import ControlSpec
        from fastdns.server.worker import WorkerSpec

        p = self.plan
        pid = os.getpid()
        if index < 0:
            cspec = ControlSpec(
                instance=self.instance, corefile_text=p.corefile_text,
                corefile_name=p.corefile_name, source=p.source, source_path=p.source_path,
                nworkers=p.nworkers, supervisor_pid=pid)
            return (cspec, p.log_level, pid)
        wspec = WorkerSpec(index=index, instance=self.instance, listen=p.listen)
        return (wspec, p.log_level, pid)

    def _make_children(self) -> None:
        p = self.plan
        self.children.append(Child("control", -1, _control_entry, self._child_args(-1)))
        for i in range(p.nworkers):
            self.children.append(
                Child(f"worker {i}", i, _worker_entry, self._child_args(i)))

    # reload (fastdns/control/reload.py) -------------------------------------

    def _setup_reload(self) -> None:
        from fastdns.control import reload

        reload.write_corefile(self.instance, self.plan.corefile_text, self.plan.corefile_name)
        config = parse_config(self.plan.corefile_text, self.plan.corefile_name)
        self.reloader = reload.Reloader(
            self.plan.corefile_path, self.plan.corefile_text, config,
            lambda text: reload_plan(self.plan, text), self._apply_reload,
            self.stats.reload_failed if self.stats is not None else lambda: None,
            clock=time.monotonic)

    def _apply_reload(self, text: str, plan: ServePlan) -> None:
        """Put a validated Corefile in force without closing a socket that stays.

        Workers pick the text up from the Corefile segment when the version
        word moves; the control process is restarted on it (workers keep
        serving the image in force until the new one is published).
        """
        from fastdns.control import reload

        self.plan = plan
        reload.write_corefile(self.instance, text)
        if self.stats is not None:
            self.stats.add(layout.S_CONFIG_VERSION)
        for c in self.children:
            c.args = self._child_args(c.index)
            if c.index < 0 and c.proc is not None and c.proc.is_alive():
                c.reloading = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(c.proc.pid, procsignals.STOP)

    def _setup_loop(self) -> None:
        """The loop plugin's probes (fastdns/control/loopdetect.py); sent once serving."""
        from fastdns.control import loopdetect

        config = parse_config(self.plan.corefile_text, self.plan.corefile_name)
        probes = loopdetect.plan_probes(config)
        loopdetect.create_segment(self.instance, probes)
        self.loop_probe = loopdetect.LoopProbe(self.instance, probes)

    def _maybe_reload(self) -> None:
        if self.reloader is None:
            return
        requested, self._reload_requested = self._reload_requested, False
        if requested or self.reloader.due():
            try:
                self.reloader.check()
            except Exception:  # noqa: BLE001 - a reload never takes the server down
                log.exception("reload failed")

    def _start(self, child: Child) -> None:
        if child.index >= 0 and self.ctl is not None:
            # The new worker maps the current image itself; its old slot must
            # not pin an image the control process could otherwise unlink.
            self.ctl.release_worker(child.index)
        comm = "fastdns-ctl" if child.index < 0 else f"fastdns-w{child.index}"
        proc = ChildProcess(child.target, child.args, name=f"fastdns {child.name}", comm=comm,
                            hold_signals=procsignals.HELD)
        proc.start()
        if child.restarts and self.stats is not None:
            if child.index >= 0:
                self.stats.worker_restarted()
            else:
                self.stats.control_restarted()
        child.proc = proc
        child.started = time.monotonic()
        child.restart_at = None
        log.info("%s started (pid %d)", child.name, proc.pid)

    def _reap(self, child: Child) -> None:
        proc = child.proc
        proc.join(0)
        code = proc.exitcode
        proc.close()
        child.proc = None
        if child.index >= 0 and self.ctl is not None:
            self.ctl.release_worker(child.index)
        if self.stopping:
            return
        if child.reloading:
            child.reloading = False
            child.restart_at = time.monotonic()
            return
        how = _describe_exit(code)
        from fastdns.control.loopdetect import EXIT_LOOP

        if child.index >= 0 and code == EXIT_LOOP:
            # the worker printed CoreDNS's "Loop (...) detected" message: stop
            self.exit_code = EXIT_CONFIG
            self.stopping = True
            return
        if child.index < 0 and code == EXIT_CONTROL_FATAL and not self._announced:
            # configuration or state error at startup: the control process said why
            self.exit_code = EXIT_CONFIG
            self.stopping = True
            return
        if child.index >= 0 and not self._announced:
            # A worker that dies before the server ever served (a port in use,
            # an address not on this host) would die again: fail like CoreDNS.
            log.error("%s (pid %d) failed at startup: %s", child.name, proc.pid, how)
            self.exit_code = EXIT_CONFIG
            self.stopping = True
            return
        now = time.monotonic()
        if now - child.started >= BACKOFF_RESET:
            child.backoff = BACKOFF_FIRST
        delay = child.backoff
        child.backoff = min(child.backoff * 2, BACKOFF_MAX)
        child.restart_at = now + delay
        child.restarts += 1
        log.warning("%s (pid %d) died: %s; restarting in %.1fs",
                    child.name, proc.pid, how, delay)

    def _lameduck(self) -> None:
        """CoreDNS health ``lameduck``: /ready says 503 but DNS is answered for a while,
        so that endpoints controllers take this server out before it stops
        (``plugin/health/health.go`` OnFinalShutdown). The children ignore
        the group's SIGTERM (``procsignals``), so they serve to its end.
        A second SIGTERM or SIGINT cuts it short, as a second Ctrl-C ends
        CoreDNS at once (caddy ``sigtrap.go``); the exit status stays 0."""
        if self.plan.lameduck <= 0:
            return
        log.info("going into lameduck mode for %gs", self.plan.lameduck)
        first = self._signals
        deadline = time.monotonic() + self.plan.lameduck
        while self._signals == first and (left := deadline - time.monotonic()) > 0:
            wait_objects([self._wake_r], timeout=left)
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 512)
        if self._signals != first:
            log.info("%s: lameduck cut short", self._last_signal)

    def _stop_children(self) -> None:
        live = [c for c in self.children if c.proc is not None and c.proc.is_alive()]
        for c in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(c.proc.pid, procsignals.STOP)
        deadline = time.monotonic() + STOP_GRACE
        for c in live:
            c.proc.join(max(0.0, deadline - time.monotonic()))
        for c in live:
            if c.proc.is_alive():
                log.warning("%s (pid %d) did not stop in %.0fs: SIGKILL",
                            c.name, c.proc.pid, STOP_GRACE)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(c.proc.pid, signal.SIGKILL)
                c.proc.join(2.0)

    def _attach_stats(self) -> None:
        """Process-level stats words of the control segment (docs/internals.md §4)."""
        self.stats = SharedStats.attach(self.instance)
        self.stats.set(layout.S_SUPERVISOR_PID, os.getpid())

    def _all_serving(self) -> bool:
        """The first image is published and every worker has mapped it."""
        ctl = self.ctl
        if ctl is None or ctl.generation == 0:
            return False
        return all(ctl.mapped(c.index) > 0 for c in self.children
                   if c.index >= 0 and c.proc is not None)

    def _announce(self) -> None:
        if self.quiet:
            return
        p = self.plan
        addrs = ", ".join(_fmt_addr(a, port) for a, port in p.listen)
        log.info("serving %s on %s (udp, tcp) with %d worker%s",
                 " ".join(p.zones), addrs, p.nworkers, "" if p.nworkers == 1 else "s")

    # main loop -------------------------------------------------------------

    def run(self) -> int:
        set_comm("fastdns")  # ps -e / top: fastdns, fastdns-ctl, fastdns-w0, ...
        self._install_signals()
        try:
            # The lock first: this instance is "alive" before any segment of it exists.
            lock = self.lock = reclaim.InstanceLock.acquire(self.instance)
        except OSError as e:  # /dev/shm missing, full or read-only: one line, exit 1
            log.error("%s: cannot create shared memory: %s", shm.SHM_DIR, e.strerror or e)
            signal.set_wakeup_fd(-1)
            return EXIT_CONFIG
        try:
            self._reclaim()
            self.ctl = shm.ControlSegment.create(self.instance, self.plan.nworkers)
        except OSError as e:
            lock.release()
            log.error("%s: cannot create shared memory: %s", shm.SHM_DIR, e.strerror or e)
            signal.set_wakeup_fd(-1)
            return EXIT_CONFIG
        except BaseException:
            lock.release()
            raise
        try:
            self._attach_stats()
            self._setup_reload()
            self._setup_loop()
            self._make_children()
            if not self.quiet:
                log.info("fastdns-%s, python %s, %s/%s", package_version(),
                         platform.python_version(), sys.platform, platform.machine())
                log.info("fastdns supervisor pid %d, shm instance %s", os.getpid(),
                         self.instance)
            for c in self.children:
                self._start(c)
            self._loop()
        finally:
            self.stopping = True
            if self.stats is not None:
                self.stats.start_lameduck()
            if self._signals and self._announced:
                self._lameduck()
            self._stop_children()
            if self.stats is not None:
                self.stats.close()
            removed = shm.sweep(self.instance, keep={lock.name})
            lock.release()  # last: no segment of this instance is left
            self.ctl.close()
            signal.set_wakeup_fd(-1)
            log.debug("swept %d shm segments", len(removed))
            log.info("stopped")
        return self.exit_code

    def _reclaim(self) -> None:
        """Sweep what dead instances left in /dev/shm (``reclaim.reclaim``: one line each way)."""
        try:
            done = reclaim.reclaim(own=self.instance)
        except OSError as e:  # never a reason not to start
            log.warning("could not reclaim the shm segments of dead instances: %s", e)
            return
        if done.instances:
            log.info("reclaimed %d shm segments (%s) of %d dead instance%s: %s",
                     done.segments, _fmt_octets(done.octets), len(done.instances),
                     "" if len(done.instances) == 1 else "s", " ".join(done.instances))
        if done.unowned:
            log.info("left alone %d shm segments (%s) of %d instance%s without a lock file "
                     "(an older fastdns, or not made by `fastdns serve`): %s",
                     done.unowned_segments, _fmt_octets(done.unowned_octets),
                     len(done.unowned), "" if len(done.unowned) == 1 else "s",
                     " ".join(done.unowned[:8]) + (" ..." if len(done.unowned) > 8 else ""))

    def _loop(self) -> None:
        while not self.stopping:
            now = time.monotonic()
            timeout = 0.05 if not self._announced else 1.0
            if self._announced:
                self._maybe_reload()
                if self.reloader is not None and self.reloader.next_at is not None:
                    timeout = max(0.0, min(timeout, self.reloader.next_at - now))
            for c in self.children:
                if c.proc is None and c.restart_at is not None:
                    if c.restart_at <= now:
                        self._start(c)
                    else:
                        timeout = min(timeout, c.restart_at - now)
            sentinels = {c.proc.sentinel: c for c in self.children if c.proc is not None}
            ready = wait_objects([*sentinels, self._wake_r], timeout=max(0.0, timeout))
            for obj in ready:
                if obj == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 512)
                    continue
                child = sentinels[obj]
                if child.proc is not None and not child.proc.is_alive():
                    self._reap(child)
            if not self._announced and self._all_serving():
                self._announced = True
                self._announce()
                if self.loop_probe is not None:
                    self.loop_probe.start()


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _fmt_octets(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _fmt_addr(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def run(args: argparse.Namespace) -> int:
    """Entry point of ``fastdns serve``; returns the process exit code."""
    setup_logging(getattr(args, "log_level", "info") or "info")
    if getattr(args, "dns_port", None):
        from fastdns.corefile.zones import DNS_PORT_ENV

        os.environ[DNS_PORT_ENV] = str(args.dns_port)  # inherited by control and workers
    try:
        plan = make_plan(args)
        portcheck.check_listen(plan.listen)
    except (ServeError, portcheck.BindError) as e:
        print(str(e), file=sys.stderr)
        return EXIT_CONFIG
    pidfile = getattr(args, "pidfile", None)
    if pidfile:
        try:
            Path(pidfile).write_text(f"{os.getpid()}\n")
        except OSError as e:
            print(f"{pidfile}: cannot write the pidfile: {e.strerror or e}", file=sys.stderr)
            return EXIT_CONFIG
    try:
        return Supervisor(plan, quiet=bool(getattr(args, "quiet", False))).run()
    finally:
        if pidfile:
            with contextlib.suppress(OSError):
                os.unlink(pidfile)
