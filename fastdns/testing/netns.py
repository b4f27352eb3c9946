"""Network namespaces for end-to-end tests: nodes, pods and upstreams wired by veth pairs.

A Kubernetes pod resolves names through its own network namespace and its
own ``/etc/resolv.conf``; ``ip netns exec NAME CMD`` gives a test exactly
that, because it bind-mounts ``/etc/netns/NAME/resolv.conf`` over
``/etc/resolv.conf`` for CMD (iproute2 ``ip/ipnetns.c``, ``bind_etc``). So a
test can run glibc (``getent``), ``dig`` or dnspython as a pod would, against
a server in another namespace, and no packet leaves the namespaces the test
made. Everything here shells out to ``ip`` (iproute2) and needs root.

API::

    missing() -> str | None          why these helpers cannot run here, or None
    unique_name(prefix="fdns-t-")    a fresh namespace name (random suffix)

    ns = Netns.create(name=None, *, resolv_conf=None)   # `ip netns add`, lo up
    ns.name, ns.path                 NAME, /run/netns/NAME
    ns.ip(*args)                     `ip -n NAME ARGS...` (raises NetnsError)
    ns.add_addr(dev, cidr)           `ip -n NAME addr add CIDR dev DEV`
    ns.add_route(dest, via=, dev=, src=)
    ns.add_dummy(dev, *cidrs)        a dummy interface holding addresses
    ns.set_resolv_conf(text)         /etc/netns/NAME/resolv.conf
    ns.exec(argv, **popen_kw)        Popen of `ip netns exec NAME ARGV...`
    ns.run(argv, timeout=, **kw)     the same, run to its end (text, captured)
    ns.entered()                     context manager: this *thread* in the ns
    ns.thread(target, *args)         a started daemon thread running in the ns
    ns.delete()                      ends exec()'s processes, deletes the ns
                                     and /etc/netns/NAME (and /etc/netns when
                                     that leaves it empty); safe to call twice
    with Netns.create() as ns: ...   delete() on exit

    veth(a, b, addr_a=None, addr_b=None) -> (dev_a, dev_b)
        a veth pair from namespace ``a`` to namespace ``b`` (``None`` = the
        host's), both ends up, each end optionally given a CIDR address.

Sockets keep the namespace they were created in, so a socket opened inside
``entered()`` (or by a ``thread()``, e.g. an asyncio loop serving a test
upstream) stays in that namespace after the thread leaves it. ``setns`` moves
only the calling thread (setns(2)); the rest of the test process is not
affected. ``entered()`` does not change the mount namespace: inside it,
``/etc/resolv.conf`` is still the host's, so resolve through ``exec``/``run``
when resolv.conf matters.

``delete()`` ends only the processes ``exec`` started (SIGTERM, then SIGKILL
after ``grace`` seconds; their process group when started with
``start_new_session=True``), never others found in the namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

NETNS_RUN_DIR = Path("/run/netns")  # where `ip netns add` keeps its bind mounts
NETNS_ETC_DIR = Path("/etc/netns")  # per-namespace files `ip netns exec` bind-mounts
CLONE_NEWNET = 0x40000000  # <linux/sched.h>
IFNAMSIZ = 16  # <linux/if.h>: interface names are at most 15 characters


class NetnsError(RuntimeError):
    """An ``ip`` command failed; the message is its command line and stderr."""


def missing() -> str | None:
    """Why network namespaces cannot be made here (a skip reason), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    return None


def unique_name(prefix: str = "fdns-t-") -> str:
    """A namespace name no other run uses (random suffix)."""
    return f"{prefix}{secrets.token_hex(4)}"


def _ip(*args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
    argv = ["ip", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc


_libc: Any = None


def _setns(fd: int) -> None:
    """Move the calling thread into the network namespace open at ``fd``."""
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, CLONE_NEWNET)
        return
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class Netns:
    """One network namespace made by ``Netns.create`` (see the module docstring)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = NETNS_RUN_DIR / name
        self._procs: list[tuple[subprocess.Popen, bool]] = []
        self._deleted = False

    @classmethod
    def create(cls, name: str | None = None, *, resolv_conf: str | None = None) -> Netns:
        """``ip netns add NAME`` with its loopback up; optionally its resolv.conf."""
        ns = cls(name or unique_name())
        _ip("netns", "add", ns.name)
        try:
            ns.ip("link", "set", "lo", "up")
            if resolv_conf is not None:
                ns.set_resolv_conf(resolv_conf)
        except BaseException:
            ns.delete()
            raise
        return ns

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    # -- configuration

    def ip(self, *args: str) -> subprocess.CompletedProcess:
        """``ip -n NAME ARGS...``; raises NetnsError when it fails."""
        return _ip("-n", self.name, *args)

    def add_addr(self, dev: str, cidr: str) -> None:
        self.ip("addr", "add", cidr, "dev", dev)

    def add_route(self, dest: str, *, via: str | None = None, dev: str | None = None,
                  src: str | None = None) -> None:
        """``ip route add DEST [via VIA] [dev DEV] [src SRC]`` (``src``: the
        address replies to DEST leave from when a socket did not choose one)."""
        args = ["route", "add", dest]
        for key, value in (("via", via), ("dev", dev), ("src", src)):
            if value is not None:
                args += [key, value]
        self.ip(*args)

    def add_dummy(self, dev: str, *cidrs: str) -> None:
        """A dummy interface (the way node-local-dns holds its link-local IP) with addresses."""
        self.ip("link", "add", dev, "type", "dummy")
        for cidr in cidrs:
            self.add_addr(dev, cidr)
        self.ip("link", "set", dev, "up")

    @property
    def etc_dir(self) -> Path:
        return NETNS_ETC_DIR / self.name

    def set_resolv_conf(self, text: str) -> Path:
        """Write /etc/netns/NAME/resolv.conf, which ``ip netns exec`` mounts on /etc/resolv.conf."""
        for attempt in range(3):
            try:  # another run's delete() may rmdir an empty /etc/netns meanwhile
                self.etc_dir.mkdir(parents=True, exist_ok=True)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        path = self.etc_dir / "resolv.conf"
        path.write_text(text)
        return path

    # -- processes and threads inside

    def exec(self, argv: Sequence[str], **popen_kw: Any) -> subprocess.Popen:
        """Start ``ip netns exec NAME ARGV...`` (it execs ARGV: the pid is ARGV's).

        ``delete()`` ends it if it still runs then."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **popen_kw)
        self._procs.append((proc, bool(popen_kw.get("start_new_session"))))
        return proc

    def run(self, argv: Sequence[str], *, timeout: float = 10.0,
            **kw: Any) -> subprocess.CompletedProcess:
        """Run ``ARGV`` in the namespace to its end: text output captured, no check."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(["ip", "netns", "exec", self.name, *argv],
                              timeout=timeout, **kw)

    @contextlib.contextmanager
    def entered(self) -> Iterator[Netns]:
        """The calling thread inside this namespace until the block ends (setns(2))."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield self
            finally:
                _setns(home)
        finally:
            os.close(home)

    def thread(self, target: Callable[..., object], *args: object,
               name: str | None = None) -> threading.Thread:
        """A started daemon thread that runs ``target(*args)`` inside this namespace."""

        def run() -> None:
            with self.entered():
                target(*args)

        t = threading.Thread(target=run, daemon=True, name=name or f"netns-{self.name}")
        t.start()
        return t

    # -- teardown

    def stop_processes(self, grace: float = 5.0) -> None:
        """SIGTERM what ``exec`` started and still runs; SIGKILL after ``grace`` s."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [(p, grp) for p, grp in self._procs if p.poll() is None]
            for p, grp in alive:
                with contextlib.suppress(ProcessLookupError):
                    if grp:
                        os.killpg(p.pid, sig)
                    else:
                        p.send_signal(sig)
            for p, _grp in alive:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(grace if sig == signal.SIGTERM else 10.0)
        self._procs = [(p, g) for p, g in self._procs if p.poll() is None]

    def delete(self, grace: float = 5.0) -> None:
        """End exec()'s processes, ``ip netns del`` and remove /etc/netns/NAME."""
        try:
            self.stop_processes(grace)
        finally:
            if not self._deleted and self.path.exists():
                _ip("netns", "del", self.name)
            self._deleted = True
            shutil.rmtree(self.etc_dir, ignore_errors=True)
            # An empty /etc/netns configures nothing; one that holds another
            # namespace's files is not empty and stays.
            with contextlib.suppress(OSError):
                NETNS_ETC_DIR.rmdir()


def veth(a: Netns | None, b: Netns | None, addr_a: str | None = None,
         addr_b: str | None = None) -> tuple[str, str]:
    """A veth pair from ``a`` to ``b`` (``None``: the host namespace), both ends up.

    Returns the two device names (random, so runs never collide; deleting
    either namespace removes the pair)."""
    tag = secrets.token_hex(4)
    dev_a, dev_b = f"fv{tag}a", f"fv{tag}b"
    assert len(dev_a) < IFNAMSIZ
    args = ["link", "add", dev_a]
    if a is not None:
        args += ["netns", a.name]
    args += ["type", "veth", "peer", "name", dev_b]
    if b is not None:
        args += ["netns", b.name]
    _ip(*args)
    for ns, dev, addr in ((a, dev_a, addr_a), (b, dev_b, addr_b)):
        prefix = ("-n", ns.name) if ns is not None else ()
        if addr is not None:
            _ip(*prefix, "addr", "add", addr, "dev", dev)
        _ip(*prefix, "link", "set", dev, "up")
    return dev_a, dev_b
