"""Start a Python function in a fresh interpreter (or by fork), without ``multiprocessing``.

Why: the ``spawn`` start method of ``multiprocessing`` always launches
``multiprocessing.resource_tracker`` as one more process (~15 MiB RSS) to
clean up ``multiprocessing.shared_memory`` and semaphores, which fastdns
never uses (its segments are plain files in /dev/shm, ``shm.py``), and its
children import the parent's ``__main__`` again. A ``fastdns serve`` tree
must be supervisor + control + workers and nothing else.

What it keeps of ``spawn``: a fresh interpreter (nothing inherited through
``fork``) started with the parent's interpreter flags and ``sys.path``,
stdin from /dev/null, stdout and stderr shared, ``target(*args)`` handed
over as a pickle, a traceback on stderr and exit status 1 when the target
raises, ``SystemExit`` codes as the exit status, and a negative ``exitcode``
when a signal ended the child. The ``Process`` methods the supervisor uses
(``start``, ``pid``, ``sentinel``, ``is_alive``, ``join``, ``exitcode``,
``close``) behave as in ``multiprocessing``.

``hold_signals``: signals blocked in the child from its first instruction
(the blocked mask survives fork and execve, signal(7)); the target unblocks
them once its handlers are in place. The supervisor holds the stop signals
this way (``fastdns/procsignals.py``), so a process-group SIGTERM that lands
while a child boots waits for the child's own rule instead of killing it.

The child side runs as::

    python3 -m fastdns.server.childproc NAME COMM FD [ALIVE_FD]

reading the parent's ``sys.path``, then ``(target, args)``, from the pipe
``FD`` (the target must be importable by its module name, as with
``spawn``). NAME is only there for ``ps`` and error messages; COMM becomes
the kernel's name of the process (prctl PR_SET_NAME, at most 15 bytes),
which ``top``, ``ps -e`` and ``pgrep`` show. ALIVE_FD, held open until
exit, is the exit sentinel on kernels without pidfd_open(2).

``fork=True`` starts the child by ``fork(2)`` alone, without a new
interpreter: it shares every page the parent had until one side writes it,
so a parent that imported the child's modules first (and froze them,
``gc.freeze``) gives each child those megabytes for nothing (issue 14: a
worker's private memory goes from ~19 MB to ~7 MB). What the child must not
inherit is undone before ``target`` runs, as an ``execve`` would: every fd
but 0-2 (and the liveness pipe) is closed, Python's signal handlers go back
to the defaults (an ignored signal stays ignored, as across ``execve``),
the wakeup fd is cleared, and the child leaves by ``os._exit`` (no parent's
``atexit`` handler runs in it), with the same exit statuses. The objects
the parent had are frozen (``gc.freeze`` just before the fork), so the
child never collects one and so never closes an fd number it reuses (in the
parent they stay frozen too: its collector never writes to the pages it
shares with its children). A
fork with another thread running could inherit a lock that thread holds:
then the child gets a fresh interpreter after all (``forked`` says which).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # types only: subprocess is imported where it is used
    import subprocess

_PR_SET_NAME = 15  # prctl(2); the name is cut to 16 bytes with its NUL


class ChildProcess:
    """One child interpreter running ``target(*args)``; start it once."""

    def __init__(self, target: Callable[..., Any], args: tuple = (),
                 name: str = "fastdns child", comm: str | None = None,
                 hold_signals: Iterable[int] = (), fork: bool = False) -> None:
        self.target = target
        self.args = args
        self.name = name
        self.comm = comm or name
        self.hold_signals = frozenset(hold_signals)
        self.fork = fork
        self.forked = False  # started by fork(2) alone (``fork`` and one thread)
        self._popen: subprocess.Popen | _Forked | None = None
        self._sentinel: int | None = None
        self._keep: int | None = None  # the sentinel, when it is the liveness pipe

    def start(self) -> None:
        import pickle
        import subprocess

        if self._popen is not None:
            raise RuntimeError("a ChildProcess can only be started once")
        if self.fork and _single_threaded():
            self._start_forked()
            return
        # Pickled before anything starts, so an unpicklable argument is the
        # caller's exception here, not a dead child. Two pickles: the child
        # needs our sys.path before it can import the target's module.
        payload = (pickle.dumps(list(sys.path), protocol=pickle.HIGHEST_PROTOCOL)
                   + pickle.dumps((self.target, self.args), protocol=pickle.HIGHEST_PROTOCOL))
        data_r, data_w = os.pipe()
        alive_r, alive_w = (-1, -1) if _HAVE_PIDFD else os.pipe()
        argv = [sys.executable, *subprocess._args_from_interpreter_flags(),  # type: ignore[attr-defined]  # noqa: E501
                "-m", "fastdns.server.childproc", self.name, self.comm, str(data_r)]
        if alive_w >= 0:
            argv.append(str(alive_w))
        # Blocked here for the instant of the fork, so the child inherits the
        # mask; one that arrives meanwhile is only delayed (pending), not lost.
        held = (signal.pthread_sigmask(signal.SIG_BLOCK, self.hold_signals)
                if self.hold_signals else None)
        try:
            self._popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                           pass_fds=[fd for fd in (data_r, alive_w) if fd >= 0],
                                           env=_child_env())
        except BaseException:
            for fd in (data_w, alive_r):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            if held is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
            for fd in (data_r, alive_w):
                if fd >= 0:
                    os.close(fd)
        # Without pidfds the child holds the write end of a pipe until it
        # exits, which then reads EOF: multiprocessing's own sentinel.
        if alive_r >= 0:
            self._sentinel = self._keep = alive_r
        else:
            self._sentinel = os.pidfd_open(self._popen.pid)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(data_w, view):]
        except BrokenPipeError:
            pass  # the child died before reading; its exit status says why
        finally:
            os.close(data_w)

    def _start_forked(self) -> None:
        """``start`` by fork(2) alone; the child side is ``_forked_child``."""
        import gc

        alive_r, alive_w = (-1, -1) if _HAVE_PIDFD else os.pipe()
        for f in (sys.stdout, sys.stderr):  # or the child writes the parent's buffers again
            with contextlib.suppress(Exception):
                f.flush()
        gc.collect()
        gc.freeze()  # nothing the parent had is ever collected (finalized) in the child
        held = (signal.pthread_sigmask(signal.SIG_BLOCK, self.hold_signals)
                if self.hold_signals else None)
        try:
            pid = os.fork()
        except BaseException:
            if held is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
            for fd in (alive_r, alive_w):
                if fd >= 0:
                    os.close(fd)
            raise
        if pid == 0:  # the child keeps the mask, as across execve
            _forked_child(self.target, self.args, self.name, self.comm, alive_w)
        if held is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        self._popen = _Forked(pid)
        self.forked = True
        if alive_w >= 0:
            os.close(alive_w)
            self._sentinel = self._keep = alive_r
        else:
            self._sentinel = os.pidfd_open(pid)

    # -- what multiprocessing.Process offers ---------------------------------

    @property
    def pid(self) -> int | None:
        return None if self._popen is None else self._popen.pid

    @property
    def sentinel(self) -> int:
        """An fd that becomes readable when the child exits (a pidfd, pidfd_open(2))."""
        if self._sentinel is None:
            raise ValueError("process not started or closed")
        return self._sentinel

    @property
    def exitcode(self) -> int | None:
        """None while running; the exit status, or -N when signal N ended it."""
        if self._popen is None:
            return None
        return self._popen.poll()  # reaps: no zombie is left behind

    def is_alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        """Wait until the child exited (and reap it) or ``timeout`` seconds passed."""
        if self._popen is None:
            raise ValueError("can only join a started process")
        if self._popen.poll() is not None:
            return
        if self._sentinel is not None and self._keep is None:
            # a pidfd is readable once the child is a zombie: reap it then
            if wait([self._sentinel], timeout):
                self._popen.poll()
        else:
            # The liveness pipe reads EOF a moment before the child can be
            # reaped (its files close first), or early if the child closed
            # it: Popen.wait polls waitpid(2) within the timeout instead.
            import subprocess

            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout)

    def close(self) -> None:
        """Release the sentinel fd; the child must have exited."""
        if self._popen is not None and self._popen.poll() is None:
            raise ValueError("cannot close a process that is still running")
        if self._sentinel is not None:
            os.close(self._sentinel)
            self._sentinel = self._keep = None

    def __del__(self) -> None:
        if self._sentinel is not None:
            with contextlib.suppress(OSError):
                os.close(self._sentinel)

    def __repr__(self) -> str:
        code = None if self._popen is None else self._popen.returncode
        state = "initial" if self._popen is None else "started" if code is None else code
        return f"<ChildProcess {self.name!r} pid={self.pid} {state}>"


class _Forked:
    """The ``subprocess.Popen`` methods ``ChildProcess`` uses, for a forked child."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                done, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: say so, as Popen does
                self.returncode = 0
                return 0
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        import subprocess
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return code


def _single_threaded() -> bool:
    """Only this thread runs (Python's own threads: the only ones a fastdns parent has)."""
    import threading

    return threading.active_count() == 1


def _forked_child(target: Callable[..., Any], args: tuple, name: str, comm: str,
                  alive_fd: int) -> None:
    """The child side of ``fork=True``: undo what ``execve`` would not have
    passed on, run ``target(*args)``, and leave by ``os._exit`` with the exit
    status the interpreter would have given. Never returns."""
    code = 1
    try:
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        for signum in signal.valid_signals():
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                handler = signal.getsignal(signum)
                if callable(handler) and handler is not signal.default_int_handler:
                    # a fresh interpreter's default: KeyboardInterrupt on SIGINT
                    signal.signal(signum, signal.default_int_handler
                                  if signum == signal.SIGINT else signal.SIG_DFL)
        # every fd but stdin/stdout/stderr (and the liveness pipe): the parent's
        # lock, pipes, pidfds and sockets are not the child's
        _close_fds(keep={0, 1, 2, alive_fd})
        if alive_fd >= 0:
            os.set_inheritable(alive_fd, False)
        null = os.open(os.devnull, os.O_RDONLY)  # stdin, as Popen(stdin=DEVNULL) gives
        os.dup2(null, 0)
        os.close(null)
        # a fresh interpreter's streams on fds 0-2 (the parent's could write to
        # an fd closed above: a test's capture, a redirect)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, errors="backslashreplace",  # noqa: SIM115
                          closefd=False)
        set_comm(comm)
        target(*args)
        code = 0
    except SystemExit as e:
        code = _exit_status(e)
    except BaseException:
        # multiprocessing's shape: who crashed, then the traceback (stderr is shared)
        import traceback

        with contextlib.suppress(Exception):
            print(f"Process {name} (pid {os.getpid()}):", file=sys.stderr)
            traceback.print_exc()
        code = 1
    finally:
        for f in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                f.flush()
        os._exit(code)


def _exit_status(e: SystemExit) -> int:
    """The status an interpreter exits with for ``SystemExit(e.code)``."""
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code & 0xFF
    print(e.code, file=sys.stderr)  # sys.exit("message"): printed, status 1
    return 1


def _close_fds(keep: set[int]) -> None:
    """Close every open fd not in ``keep``: those /proc/self/fd lists (a
    close_range(2) up to RLIMIT_NOFILE is one close(2) per number on older
    kernels), else every number up to the limit (``os.closerange``)."""
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        try:
            limit = max(int(os.sysconf("SC_OPEN_MAX")), 256)
        except (OSError, ValueError):
            limit = 65536
        low = 0
        for fd in sorted(k for k in keep if k >= 0):
            if low < fd:  # an empty range: closerange(0, 0) closes every fd (3.11)
                os.closerange(low, fd)
            low = fd + 1
        if low < limit:
            os.closerange(low, limit)
        return
    for fd in fds:
        if fd not in keep:
            with contextlib.suppress(OSError):  # the listing's own fd is gone already
                os.close(fd)


def _pidfd_works() -> bool:
    """pidfd_open(2) is Linux 5.3+, and a seccomp profile may refuse it."""
    try:
        fd = os.pidfd_open(os.getpid())
    except (AttributeError, OSError):
        return False
    os.close(fd)
    return True


_HAVE_PIDFD = _pidfd_works()


def _child_env() -> dict[str, str] | None:
    """The environment for ``python -m fastdns.server.childproc`` to find this tree.

    The parent may have found ``fastdns`` through a ``sys.path`` entry that a
    fresh interpreter would not have (pytest's ``pythonpath``, a path added at
    run time); the child's ``sys.path`` is only set from the parent's after
    this module is running. None: inherit the environment unchanged.
    """
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    pythonpath = os.environ.get("PYTHONPATH", "")
    found = [os.getcwd(), *pythonpath.split(os.pathsep)]
    with contextlib.suppress(AttributeError, ValueError):
        import site

        found += [*site.getsitepackages(), site.getusersitepackages()]
    if any(p and os.path.abspath(p) == root for p in found):
        return None
    return dict(os.environ, PYTHONPATH=root + (os.pathsep + pythonpath if pythonpath else ""))


def wait(fds: Iterable[int], timeout: float | None = None) -> list[int]:
    """The fds of ``fds`` that are readable within ``timeout`` seconds (None: no limit).

    ``multiprocessing.connection.wait`` for plain fds, without importing
    ``multiprocessing`` into every process that uses it.
    """
    import select

    fds = list(fds)
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
    # POLLHUP/POLLERR count as ready: a pipe whose writer exited reads EOF
    return [fd for fd, _ev in poller.poll(ms)]


# -- the child side ------------------------------------------------------------


def set_comm(name: str) -> None:
    """This process's name for the kernel (``comm``, 15 bytes), where prctl(2) exists."""
    with contextlib.suppress(OSError, AttributeError, ImportError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def main(argv: list[str]) -> int:
    import pickle

    name, comm, fd = argv[0], argv[1], int(argv[2])
    if len(argv) > 3:
        # the liveness pipe (no pidfd): held open, but not by our own children
        os.set_inheritable(int(argv[3]), False)
    set_comm(comm)
    # from our own parent, over a private pipe
    with open(fd, "rb") as f:
        try:
            sys.path[:] = pickle.load(f)
        except EOFError:
            print(f"{name}: the parent sent nothing to run", file=sys.stderr)
            return 1
        target, args = pickle.load(f)
    try:
        target(*args)
    except SystemExit:
        raise
    except BaseException:
        # multiprocessing's shape: who crashed, then the traceback (stderr is shared)
        import traceback

        print(f"Process {name} (pid {os.getpid()}):", file=sys.stderr)
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
