"""The process tree: one control process and N workers, restarted when they die.

The supervisor owns nothing but processes and the control segment. It
creates the shared control segment (so that it outlives a crash of the
control process), starts one control process in a fresh interpreter and
N workers forked from itself (below; ``childproc.py`` rather than
``multiprocessing``, whose ``spawn`` adds a resource-tracker process),
restarts any child that dies with exponential backoff, and on
SIGTERM/SIGINT (``signals.py``) stops the children, sweeps this run's
``/dev/shm/fastdns-<instance>-*`` segments and exits 0.

Shared memory it owns for the instance's whole life: the control segment,
and the flock on ``fastdns-<instance>-lock`` that says "alive"
(``reclaim.InstanceLock``). Before creating anything else it reclaims the
segments of every dead instance in the directory (``reclaim.reclaim``), so a
SIGKILL of the whole tree (an OOM kill of the pod) leaks only until the
next start.

Workers are forked from the supervisor (``childproc``'s ``fork=True``), which
imported their modules first (``children.preload_worker``): the pages of the
interpreter and of those modules are then shared by the supervisor and every
worker, about 12 MB less private memory per worker (issue 14), while
``childproc`` still undoes what a fresh interpreter would not inherit (fds,
signal handlers, stdio streams). No worker inherits state it acts on: it
gets its spec, attaches the segments itself and builds everything else
after the fork. A restart while another thread runs (the loop plugin's
probes, for their first seconds) gets a fresh interpreter, as does every
worker with ``FASTDNS_FORK_WORKERS=0``, and the control process always: its
code is not the workers', and it is restarted on every reload.

A child that fails before the server ever served (a port in use, a bad
Corefile the control process refuses, a detected loop) would fail again:
then the whole server stops with exit 1, as CoreDNS does, instead of
restarting it forever.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import secrets
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastdns import procsignals
from fastdns.control.loopdetect import EXIT_LOOP, LoopProbe, create_segment, plan_probes
from fastdns.coredns_cli import package_version
from fastdns.ipc import layout, reclaim, shm
from fastdns.ipc.stats import SharedStats
from fastdns.names import host_port
from fastdns.server.childproc import ChildProcess, set_comm
from fastdns.server.childproc import wait as wait_objects
from fastdns.supervisor.children import control_entry, preload_worker, worker_entry
from fastdns.supervisor.plan import ServePlan, parse_config
from fastdns.supervisor.relay import ReloadRelay
from fastdns.supervisor.signals import Signals

log = logging.getLogger("supervisor")

# Exit codes of the supervisor (the control process's own: control/process.py).
EXIT_OK = 0
EXIT_CONFIG = 1  # bad Corefile, state or options: the message is on stderr

BACKOFF_FIRST = 0.1  # seconds before the first restart of a child
BACKOFF_MAX = 10.0
BACKOFF_RESET = 10.0  # a child that stayed up this long restarts fast again
STOP_GRACE = 5.0  # SIGTERM, then SIGKILL after this many seconds
FORK_ENV = "FASTDNS_FORK_WORKERS"  # "0": each worker in a fresh interpreter


def fork_workers() -> bool:
    """Whether workers are forked from the supervisor (``FORK_ENV``, default yes)."""
    return os.environ.get(FORK_ENV, "1").strip().lower() not in ("0", "", "no", "false")


@dataclass
class Child:
    """One supervised process slot (the control process or worker ``index``)."""

    name: str
    index: int  # -1 for the control process
    target: Callable[..., None]
    args: tuple
    proc: ChildProcess | None = None
    started: float = 0.0
    backoff: float = BACKOFF_FIRST
    restart_at: float | None = None
    restarts: int = 0
    reloading: bool = False  # stopped to take a reloaded Corefile: restart at once


class Supervisor:
    """Starts the tree, keeps it up, and takes it down; ``run`` is its whole life."""

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
        self.signals = Signals(self._on_stop)
        self.stats: SharedStats | None = None
        self.lock: reclaim.InstanceLock | None = None
        self.relay: ReloadRelay | None = None
        self.loop_probe: LoopProbe | None = None
        self.fork = fork_workers()

    def _on_stop(self, name: str) -> None:
        if not self.stopping:
            log.info("%s: shutting down", name)
        self.stopping = True

    # children --------------------------------------------------------------

    def _child_args(self, index: int) -> tuple[dict[str, Any], str, int]:
        """``(spec fields, log level, supervisor pid)``: the child makes its
        ``ControlSpec`` or ``WorkerSpec`` of the fields (``children.py``), so the
        supervisor never imports the control process's or the worker's code."""
        p = self.plan
        pid = os.getpid()
        if index < 0:
            return (dict(instance=self.instance, corefile_text=p.corefile_text,
                         corefile_name=p.corefile_name, source=p.source,
                         source_path=p.source_path, nworkers=p.nworkers,
                         supervisor_pid=pid), p.log_level, pid)
        return (dict(index=index, instance=self.instance, listen=p.listen), p.log_level, pid)

    def _make_children(self) -> None:
        p = self.plan
        self.children.append(Child("control", -1, control_entry, self._child_args(-1)))
        for i in range(p.nworkers):
            self.children.append(
                Child(f"worker {i}", i, worker_entry, self._child_args(i)))

    def _on_plan(self, plan: ServePlan) -> None:
        """A reloaded Corefile is in its segment (``relay.py``): the workers take
        it up themselves; the control process is restarted on it."""
        self.plan = plan
        for c in self.children:
            c.args = self._child_args(c.index)
            if c.index < 0 and c.proc is not None and c.proc.is_alive():
                c.reloading = True
                _signal(c.proc, procsignals.STOP)

    def _setup_loop(self) -> None:
        """The loop plugin's probes (fastdns/control/loopdetect.py); sent once serving."""
        config = parse_config(self.plan.corefile_text, self.plan.corefile_name)
        probes = plan_probes(config)
        create_segment(self.instance, probes)
        self.loop_probe = LoopProbe(self.instance, probes)

    def _preload_workers(self) -> None:
        """The workers' modules, imported here before they are forked (``preload_worker``)."""
        if self.fork:
            config = parse_config(self.plan.corefile_text, self.plan.corefile_name)
            preload_worker(any("forward" in b.plugins for b in config.servers))

    def _start(self, child: Child) -> None:
        if child.index >= 0 and self.ctl is not None:
            # The new worker maps the current image itself; its old slot must
            # not pin an image the control process could otherwise unlink.
            self.ctl.release_worker(child.index)
        comm = "fastdns-ctl" if child.index < 0 else f"fastdns-w{child.index}"
        proc = ChildProcess(child.target, child.args, name=f"fastdns {child.name}", comm=comm,
                            hold_signals=procsignals.HELD, fork=self.fork and child.index >= 0)
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

    def _reap(self, child: Child, proc: ChildProcess) -> None:
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
        if child.index >= 0 and code == EXIT_LOOP:
            # the worker printed CoreDNS's "Loop (...) detected" message: stop
            self.exit_code = EXIT_CONFIG
            self.stopping = True
            return
        if child.index < 0 and not self._announced and code == _exit_control_fatal():
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

    def _stop_children(self) -> None:
        """STOP to each live child, SIGKILL to any still there after STOP_GRACE."""
        live = [(c, c.proc) for c in self.children if c.proc is not None and c.proc.is_alive()]
        for _c, proc in live:
            _signal(proc, procsignals.STOP)
        deadline = time.monotonic() + STOP_GRACE
        for _c, proc in live:
            proc.join(max(0.0, deadline - time.monotonic()))
        for c, proc in live:
            if proc.is_alive():
                log.warning("%s (pid %d) did not stop in %.0fs: SIGKILL",
                            c.name, proc.pid, STOP_GRACE)
                _signal(proc, signal.SIGKILL)
                proc.join(2.0)

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
        addrs = ", ".join(host_port(a, port) for a, port in p.listen)
        log.info("serving %s on %s (udp, tcp) with %d worker%s",
                 " ".join(p.zones), addrs, p.nworkers, "" if p.nworkers == 1 else "s")

    # main loop -------------------------------------------------------------

    def run(self) -> int:
        set_comm("fastdns")  # ps -e / top: fastdns, fastdns-ctl, fastdns-w0, ...
        self.signals.install()
        try:
            # The lock first: this instance is "alive" before any segment of it exists.
            lock = self.lock = reclaim.InstanceLock.acquire(self.instance)
        except OSError as e:  # /dev/shm missing, full or read-only: one line, exit 1
            log.error("%s: cannot create shared memory: %s", shm.SHM_DIR, e.strerror or e)
            self.signals.uninstall()
            return EXIT_CONFIG
        try:
            self._reclaim()
            ctl = self.ctl = shm.ControlSegment.create(self.instance, self.plan.nworkers)
        except OSError as e:
            lock.release()
            log.error("%s: cannot create shared memory: %s", shm.SHM_DIR, e.strerror or e)
            self.signals.uninstall()
            return EXIT_CONFIG
        except BaseException:
            lock.release()
            raise
        try:
            self._attach_stats()
            self.relay = ReloadRelay(self.instance, self.plan, self.stats, self._on_plan)
            self._setup_loop()
            self._preload_workers()
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
            if self.signals.count and self._announced:
                self.signals.lameduck(self.plan.lameduck)
            self._stop_children()
            if self.stats is not None:
                self.stats.close()
            removed = shm.sweep(self.instance, keep={lock.name})
            lock.release()  # last: no segment of this instance is left
            ctl.close()
            self.signals.uninstall()
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
            relay = self.relay
            if self._announced and relay is not None:
                relay.maybe_reload(self.signals.take_reload())
                if relay.next_at is not None:
                    timeout = max(0.0, min(timeout, relay.next_at - now))
            for c in self.children:
                if c.proc is None and c.restart_at is not None:
                    if c.restart_at <= now:
                        self._start(c)
                    else:
                        timeout = min(timeout, c.restart_at - now)
            sentinels = {c.proc.sentinel: (c, c.proc) for c in self.children
                         if c.proc is not None}
            ready = wait_objects([*sentinels, self.signals.wake_r], timeout=max(0.0, timeout))
            for obj in ready:
                if obj == self.signals.wake_r:
                    self.signals.drain()
                    continue
                child, proc = sentinels[obj]
                if child.proc is proc and not proc.is_alive():
                    self._reap(child, proc)
            if not self._announced and self._all_serving():
                self._announced = True
                self._announce()
                if self.loop_probe is not None:
                    self.loop_probe.start()


def _exit_control_fatal() -> int:
    """The control process's "do not restart me" status (``control/process.py``).

    Imported only when the control process died before the server served:
    the supervisor otherwise never loads the control process's code.
    """
    from fastdns.control.process import EXIT_CONTROL_FATAL

    return EXIT_CONTROL_FATAL


def _signal(proc: ChildProcess, signum: int) -> None:
    """``kill(2)`` a started child; one that is already gone is no error."""
    if proc.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signum)


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _fmt_octets(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"
