"""The first code each child process runs, and the logging every process shares.

``childproc`` starts the control process in a fresh interpreter and pickles
its entry point by name, so it imports this module and nothing else of the
supervisor: the worker's and the control process's mains are imported
inside their entry points, so a worker never loads the control process's
code (nor the other way round). Workers are forked from the supervisor
after ``preload_worker`` imported their code there (``tree.py``), or, with
``FASTDNS_FORK_WORKERS=0``, started like the control process.

Each entry point first takes the supervisor's signal rules
(``procsignals.supervised``: a group SIGTERM is the supervisor's to judge),
then asks the kernel for SIGTERM should the supervisor die
(``die_with_parent``), then runs the child's main.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fastdns import procsignals
from fastdns.ipc import shm

if TYPE_CHECKING:  # the specs only: a child imports the one main it runs, below
    from fastdns.control.process import ControlSpec
    from fastdns.server.worker import WorkerSpec

_PR_SET_PDEATHSIG = 1


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


def preload_worker(forward: bool) -> None:
    """Import what each worker runs into the supervisor, which then forks them
    (``tree.py``): the pages of these modules are shared by the supervisor and
    every worker instead of being each worker's own (issue 14). ``forward``:
    the Corefile forwards, so the workers load the forwarders too.

    Best effort: a module that cannot be imported here fails in each worker
    as it would have without this (a worker that fails before serving stops
    the server), not in the supervisor.
    """
    try:
        import uvloop  # noqa: F401

        from fastdns.server import worker  # noqa: F401

        if forward:
            from fastdns.server import cforward, forwarding  # noqa: F401
    except ImportError as e:
        logging.getLogger("supervisor").debug("workers import their own modules: %s", e)


def worker_entry(spec: WorkerSpec | Mapping[str, Any], log_level: str,
                 parent_pid: int) -> None:
    """A worker's first code; ``spec`` is its ``WorkerSpec`` or the fields of one
    (what the supervisor sends: it does not import the worker's code)."""
    procsignals.supervised(parent_pid)  # a group SIGTERM is the supervisor's to judge
    setup_logging(log_level)
    die_with_parent(parent_pid)
    from fastdns.server.worker import WorkerSpec, worker_main

    worker_main(spec if isinstance(spec, WorkerSpec) else WorkerSpec(**spec))


def control_entry(spec: ControlSpec | Mapping[str, Any], log_level: str,
                  parent_pid: int) -> None:
    """The control process's first code; ``spec`` is its ``ControlSpec`` or the
    fields of one (what the supervisor sends)."""
    # Until control_main installs its own handlers, a stop (the supervisor's
    # STOP, or PR_SET_PDEATHSIG's SIGTERM) must still unwind through the sweep:
    # procsignals' default raises SystemExit(0).
    procsignals.supervised(parent_pid)
    setup_logging(log_level)
    code = 0
    instance = spec.instance if not isinstance(spec, Mapping) else spec["instance"]
    try:
        die_with_parent(parent_pid)
        from fastdns.control.process import ControlSpec, control_main

        code = control_main(spec if isinstance(spec, ControlSpec) else ControlSpec(**spec))
    finally:
        if os.getppid() != parent_pid:
            # the supervisor is gone: nobody else will remove this run's segments
            shm.sweep(instance)
    sys.exit(code)
