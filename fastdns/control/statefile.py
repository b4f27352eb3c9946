"""Cluster state from a file or directory (``--state``, ``--demo``), watched for changes.

Polling, not inotify: a ``stat`` of a few files every 200 ms costs nothing,
works on every filesystem (ConfigMap volumes swap a symlink, which inotify
on the file itself misses) and keeps the promise "served within 1 s".
The fingerprint of a file is (device, inode, size, mtime in ns), so an
atomic rename, an in-place rewrite and a truncation are all seen. A change
is loaded on the poller's thread; a file that does not load is logged once
per fingerprint (with the file and object ``load_state`` names) and the last
good state stays in force.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("control/statefile")

POLL_INTERVAL = 0.2
STATE_SUFFIXES = (".yaml", ".yml", ".json")

Fingerprint = tuple


def fingerprint(path: str) -> Fingerprint:
    """What changes when the state at ``path`` changes; () when it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return ()
    if not os.path.isdir(path):
        return ((path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns),)
    out: list[tuple] = [(path, st.st_dev, st.st_ino, st.st_mtime_ns)]
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return tuple(out)
    for name in names:
        if name.startswith(".") or not name.endswith(STATE_SUFFIXES):
            continue
        full = os.path.join(path, name)
        try:
            s = os.stat(full)
        except OSError:
            continue
        out.append((name, s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns))
    return tuple(out)


def _default_loader(path: str) -> Any:
    from fastdns.zone.state import load_state

    return load_state(path)


class StateFileSource:
    """Loads ``path`` now and on every change, calling ``on_state(state)``.

    ``on_state`` runs on the poller thread; the control loop only queues it.
    """

    def __init__(self, path: str, on_state: Callable[[Any], None], *,
                 interval: float = POLL_INTERVAL,
                 loader: Callable[[str], Any] = _default_loader) -> None:
        self.path = path
        self.on_state = on_state
        self.interval = interval
        self.loader = loader
        self._seen: Fingerprint | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.loads = 0
        self.failures = 0

    def load_now(self) -> Any:
        """Load once, synchronously, raising the loader's error (startup path)."""
        fp = fingerprint(self.path)
        state = self.loader(self.path)
        self._seen = fp
        self.loads += 1
        return state

    def poll(self) -> bool:
        """Reload if the fingerprint moved; True when a new state was handed over."""
        fp = fingerprint(self.path)
        if fp == self._seen:
            return False
        self._seen = fp
        if not fp:
            log.error("%s: state file is gone; keeping the last good state", self.path)
            self.failures += 1
            return False
        try:
            state = self.loader(self.path)
        except Exception as e:  # noqa: BLE001 - any bad file must not stop the server
            self.failures += 1
            log.error("%s: %s; keeping the last good state", self.path, describe_error(e))
            return False
        self.loads += 1
        log.info("%s: reloaded", self.path)
        self.on_state(state)
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="statefile", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # pragma: no cover - keep polling whatever happens
                log.exception("%s: polling failed", self.path)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)


def describe_error(e: BaseException) -> str:
    """The loader's message; the exception type only when it says nothing else."""
    msg = str(e).strip()
    return msg if msg else type(e).__name__
