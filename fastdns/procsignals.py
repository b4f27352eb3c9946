"""How the processes of one ``fastdns serve`` tree treat stop signals.

Rule: whichever processes get SIGTERM or SIGINT, the supervisor alone
decides. A signal sent to the whole process group (systemd's default
``KillMode=control-group``, Ctrl-C in a terminal, an init that forwards to
the group) reaches the control process and every worker too; if they obeyed
it, nothing would serve through the lameduck period the supervisor then
keeps (CoreDNS's ``health { lameduck }``, ``plugin/health/health.go``:
the servers go on answering while it waits).

So a child the supervisor started (``supervised(parent_pid)``):

- stops on ``STOP`` (SIGUSR2), which only the supervisor sends: at the end
  of lameduck, and to the control process to restart it on a reloaded
  Corefile;
- stops on SIGTERM or SIGINT only once its supervisor is gone
  (``os.getppid()`` is no longer the supervisor's pid): that is
  PR_SET_PDEATHSIG's SIGTERM (``fastdns.supervisor.children.die_with_parent``), or any stop
  signal after a SIGKILL of the supervisor alone. While the supervisor
  lives, they are ignored: it got the same group signal and decides;
- ignores SIGHUP and SIGUSR1 (the supervisor's: it ignores the one and
  reloads on the other), so a group SIGUSR1 reloads instead of killing
  every child.

From their fork until ``supervised`` has installed this, ``HELD`` is
blocked in the child (``ChildProcess(hold_signals=HELD)``): a group signal
that lands while a restarted child's interpreter boots stays pending and is
then judged by the rule, instead of killing the child by default action.

A process not started by the supervisor (a worker a test runs on its own)
keeps the plain meaning: SIGTERM, SIGINT and STOP all stop it.

Neutral ground: the control process and the workers both import this, and
neither may import the other's room (docs/internals.md, import rules).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

STOP = signal.SIGUSR2  # the supervisor's "stop now" to its own children
STOP_SIGNALS = (STOP, signal.SIGTERM, signal.SIGINT)
HELD = frozenset(STOP_SIGNALS)  # blocked from fork until supervised() runs
IGNORED = (signal.SIGHUP, signal.SIGUSR1)  # the supervisor's to act on

_parent: int | None = None  # the supervisor's pid, once supervised() ran


def supervised(parent_pid: int) -> None:
    """First thing in a child of the supervisor: this module's rule, then unblock ``HELD``.

    Until the child installs its own handlers (``install`` / ``loop_install``)
    a stop that counts ends it with status 0 (``SystemExit``).
    """
    global _parent
    _parent = parent_pid
    for sig in IGNORED:
        signal.signal(sig, signal.SIG_IGN)
    install(_exit_zero)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)


def is_stop(signum: int) -> bool:
    """Whether signal ``signum`` means "stop now" for this process (see the module docstring)."""
    if signum == STOP or _parent is None:
        return True
    return os.getppid() != _parent


def install(handler: Callable[[int, FrameType | None], Any]) -> None:
    """``signal.signal(sig, ...)`` for every stop signal; ``handler(signum, frame)``
    runs only for a signal that ``is_stop``."""

    def judged(signum: int, frame: FrameType | None) -> None:
        if is_stop(signum):
            handler(signum, frame)

    for sig in STOP_SIGNALS:
        signal.signal(sig, judged)


def loop_install(loop: asyncio.AbstractEventLoop, stop: Callable[[], Any]) -> None:
    """The same for an asyncio (uvloop) loop: ``stop()`` runs on a signal that ``is_stop``."""
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, _if_stop, sig, stop)


def _if_stop(signum: int, stop: Callable[[], Any]) -> None:
    if is_stop(signum):
        stop()


def _exit_zero(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
