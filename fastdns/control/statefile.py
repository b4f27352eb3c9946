"""Cluster state from a file or directory (``--state``, ``--demo``), watched for changes.

Polling, not inotify: a ``stat`` of a few files every 50 ms costs nothing,
works on every filesystem (ConfigMap volumes swap a symlink, which inotify
on the file itself misses) and keeps the promise "served within 1 s". A
file rewritten in place must have been still for ``SETTLE_INTERVAL``
(200 ms) before it is read (rule 1 below); one renamed into place is read at
the next poll. A changed single-List file is read item by item
(``IncrementalLoader``): only the items that differ are parsed again.
The fingerprint of a file is (device, inode, size, mtime in ns), so an
atomic rename, an in-place rewrite and a truncation are all seen. A change
is loaded on the poller's thread.

What is published (issue 12: ``kubectl get ... > state.yaml`` truncates the
file before kubectl has written a byte, and a file cut at an item boundary
still parses):

1. Settled. A file renamed into place (a new inode: ``mv``, ``sed -i``, a
   ConfigMap's symlink swap) is read at once. One rewritten in place, or
   new, is read once it has been still for SETTLE_INTERVAL (newest mtime
   that old, or its fingerprint unchanged over a wait that long). What was
   read counts only if the fingerprint is the same afterwards, so a
   rewrite seen mid-write is read again once it settles.
2. Parsed completely: every document and every object loads.
3. Not empty. A state without a single Namespace, Service, EndpointSlice
   (or Pod) is refused, unless one of its documents is a List with an
   explicit ``items: []``: the operator's way to empty the cluster.
4. Not cut short. A state holding at most half as many objects as the last
   good one is refused, unless the file proves it was written to its end
   (``StateShape.complete``: JSON, or a List whose ``kind`` follows its
   ``items``, as ``kubectl -o yaml`` prints it). That is how an operator
   shrinks a cluster on purpose.

A refused version is logged once, in one line (file, reason, "keeping the
last good state"), counted (``rejected``: ``fastdns_state_rejected_total``)
and sets ``pending_bad`` (``fastdns_state_pending_bad``) until a version is
accepted. The last good state stays in force.

The restart copy (``StateCache``): the last good state, serialized, in
``fastdns-<instance>-state`` beside the instance's images (swept with
them). A control process restarted while the file is bad (after a crash,
or for a Corefile reload, which restarts it) compiles that copy, so the new
Corefile is applied and rule 4 keeps its baseline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastdns.zone.objects import StateError

log = logging.getLogger("control/statefile")

POLL_INTERVAL = 0.05
SETTLE_INTERVAL = 0.2  # the least a file rewritten in place must be still before it is read
STATE_SUFFIXES = (".yaml", ".yml", ".json")
SETTLE_TRIES = 25  # startup: how many intervals a file still being written is waited for

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


def renamed_into_place(old: Fingerprint | None, new: Fingerprint) -> bool:
    """Every file that changed between ``old`` and ``new`` is a new inode at an
    existing name: written elsewhere and renamed over it, so complete."""
    if not old:
        return False
    before = {e[0]: e for e in old if len(e) == 5}
    changed = False
    for e in new:
        if len(e) != 5:  # the directory's own entry
            continue
        b = before.get(e[0])
        if b == e:
            continue
        if b is None or b[2] == e[2]:
            return False  # a new file, or one rewritten in place
        changed = True
    return changed


@dataclass
class Loaded:
    """What a loader read: the state, what the file shows about its own end
    (``fastdns.zone.state.StateShape``), and optionally the state serialized
    for the restart copy (or a function making it, called once accepted);
    ``how``: how it was read, for the log ("" for a whole load)."""

    state: Any
    complete: bool = False
    empty_list: bool = False
    blob: bytes | Callable[[], bytes] | None = None
    how: str = ""


class IncrementalLoader:
    """A loader that reads a changed single-List file item by item.

    ``full(path, data)`` loads the whole file (``data``: the bytes just read
    there, or None to read it) and returns the Loaded with a function giving
    (its ``state.ItemIndex`` or None, one object per item), called when the
    next version arrives (the isolated loader builds the index after handing
    the objects over). Once a version is indexed, the next one is compared
    with it block by block (``state.patch_file``): only the items that differ
    are parsed and stripped again, the others keep their objects, and the
    state is rebuilt from those (``make_state``). Whatever ``patch_file``
    cannot vouch for, and every bad file, goes through ``full`` with the bytes
    read, so what is refused, and why, is what the whole load says of the
    version seen. The index follows every version read, accepted or not: a
    patch needs the bytes and objects of one version, not of the state in
    force. ``blob_of(objects, shape)`` serializes a patched state for the
    restart copy.
    """

    def __init__(self, full: Callable[[str, bytes | None],
                                      tuple[Loaded, Callable[[], tuple[Any, list[Any]]]]],
                 make_state: Callable[[list[Any]], Any],
                 blob_of: Callable[[list[Any], Any], bytes] | None = None,
                 kinds: Any = None) -> None:
        self.full = full
        self.make_state = make_state
        self.blob_of = blob_of
        self.kinds = kinds
        self._pending: Callable[[], tuple[Any, list[Any]]] | None = None
        self._index: Any = None
        self._items: list[Any] = []
        self.full_loads = 0
        self.patched = 0
        self.reparsed = 0  # items parsed again by the last patch

    def __call__(self, path: str) -> Loaded:
        data = None
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._index, self._items = pending()
        if self._index is not None and os.path.isfile(path):
            got, data = self._patch(path)
            if got is not None:
                return got
        # (when it raises, the index stays: any version read is a base to patch from)
        loaded, pending = self.full(path, data)
        self._index, self._items, self._pending = None, [], pending
        self.full_loads += 1
        return loaded

    def _patch(self, path: str) -> tuple[Loaded | None, bytes | None]:
        from fastdns.zone.state import KINDS
        from fastdns.zone.statepatch import Unpatchable, patch_file

        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None, None  # the whole load says why
        t0 = time.perf_counter()
        try:
            items, index, n = patch_file(self._index, self._items, data,
                                         self.kinds if self.kinds is not None else KINDS)
        except Unpatchable as e:
            log.info("%s: loading the whole file (%s)", path, e)
            return None, data
        del data
        objs = [o for o in items if o is not None]
        self._index, self._items = index, items
        self.patched += 1
        self.reparsed = n
        shape = index.shape
        blob_of = self.blob_of
        blob = None if blob_of is None else (lambda: blob_of(objs, shape))
        return Loaded(self.make_state(objs), shape.complete, shape.empty_list, blob,
                      how=f"{n} of {len(items)} items read again in "
                          f"{(time.perf_counter() - t0) * 1e3:.0f} ms"), None


def _default_loader(path: str) -> Loaded:
    from fastdns.zone.state import ClusterState, load_state_checked

    objs, shape = load_state_checked(path)
    return Loaded(ClusterState(objs), shape.complete, shape.empty_list)


def refusal(loaded: Loaded, last_good: int | None) -> str | None:
    """Why ``loaded`` must not replace a last good state of ``last_good`` objects
    (None: no last good state yet); None when it may (rules 3 and 4 above)."""
    n = len(loaded.state)
    if n == 0:
        if loaded.empty_list:
            return None
        return ("holds no Namespace, Service or EndpointSlice (a file being rewritten?); "
                "an explicit empty List (kind: List, items: []) empties the cluster")
    if last_good and 2 * n <= last_good and not loaded.complete:
        return (f"holds {n} objects, at most half of the last good state's {last_good} "
                "(a file cut short?); a List printed by kubectl (-o json, or -o yaml: "
                "kind after items) may shrink the cluster")
    return None


class StateCache:
    """The last good state, serialized, where a restarted control process finds it.

    ``blob`` is what the loader returned (the isolated child's pickle),
    stored zlib-compressed (a 10k-Service state: 6.8 MB -> 1.7 MB) after a
    one-line header: the format, ``tag`` (what the loader kept, e.g. Pods or
    not: a copy made for another configuration is not served) and the
    number of objects (rule 4's baseline, used even when the copy is not).
    ``decode`` turns a blob back into a state.
    """

    MAGIC = "FDNSSTATE1"

    def __init__(self, path: str, decode: Callable[[bytes], Any], tag: str = "") -> None:
        self.path = path
        self.decode = decode
        self.tag = tag or "-"

    @classmethod
    def for_instance(cls, instance: str, decode: Callable[[bytes], Any],
                     tag: str = "") -> StateCache:
        from fastdns.ipc import shm

        return cls(os.path.join(shm.SHM_DIR, f"{shm.PREFIX}{instance}-state"), decode, tag)

    def save(self, blob: bytes, objects: int) -> None:
        head = f"{self.MAGIC} {self.tag} {objects}\n".encode()
        tmp = self.path + ".tmp"
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)  # a crashed predecessor's
            # Ours alone (0600, a new file, no symlink followed), as shm's segments:
            # load() unpickles it, so nobody else may have written it.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(head + zlib.compress(blob, 1))
            os.replace(tmp, self.path)
        except OSError as e:  # a full tmpfs: the copy is an extra, never a failure
            log.warning("%s: cannot keep the last good state for a restart: %s",
                        self.path, e.strerror or e)
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def load(self) -> tuple[Any | None, int | None]:
        """(the state saved last, its number of objects); (None, None) when there is
        none or it is unreadable, (None, objects) when it was made for another tag."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None, None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_uid != os.getuid() or st.st_mode & 0o022:
                log.warning("%s: not written by this user alone; not used", self.path)
                return None, None
            raw = f.read()
        head, _, body = raw.partition(b"\n")
        fields = head.decode("ascii", errors="replace").split()
        if len(fields) != 3 or fields[0] != self.MAGIC or not fields[2].isdigit():
            log.warning("%s: not a copy of a state; not used", self.path)
            return None, None
        objects = int(fields[2])
        if fields[1] != self.tag:
            log.warning("%s: the last good state was kept for another configuration (%s, "
                        "not %s); not served", self.path, fields[1], self.tag)
            return None, objects
        try:
            return self.decode(zlib.decompress(body)), objects
        except Exception as e:  # noqa: BLE001 - a damaged copy is no copy
            log.warning("%s: the last good state cannot be read back: %s", self.path,
                        describe_error(e))
            return None, objects


class StateFileSource:
    """Loads ``path`` now and on every change, calling ``on_state(state)``.

    ``on_state`` runs on the poller thread; the control loop only queues it.
    ``loader(path)`` returns a ``Loaded`` (or a bare state: then nothing
    proves the file complete); ``cache`` is the restart copy, if any.
    """

    def __init__(self, path: str, on_state: Callable[[Any], None], *,
                 interval: float = POLL_INTERVAL,
                 loader: Callable[[str], Any] = _default_loader,
                 cache: StateCache | None = None, settle: float | None = None,
                 save_delay: float = 0.0) -> None:
        self.path = path
        self.on_state = on_state
        self.interval = interval
        # how long a file must be still (rule 1): never less than SETTLE_INTERVAL
        self.settle = max(interval, SETTLE_INTERVAL) if settle is None else settle
        self.loader = loader
        self.cache = cache
        self._seen: Fingerprint | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.loads = 0
        self.rejected = 0  # versions refused: unreadable, gone, empty, cut short
        self.pending_bad = False  # the file on disk is not the state in force
        self.last_good: int | None = None  # objects in the state in force
        self.from_cache = False  # load_now served the restart copy
        # The restart copy is written this long after a state is accepted, on
        # the poller thread once it is running: serializing and compressing it
        # (~0.2 s at 10k Services) must not hold the GIL while the loop compiles
        # and publishes that state. 0: at once.
        self.save_delay = save_delay
        self._unsaved: tuple[bytes | Callable[[], bytes], int, float] | None = None

    # -- startup ---------------------------------------------------------------

    def load_now(self) -> Any:
        """The state to serve at startup (synchronously, on the caller's thread).

        The file's, if it is accepted; else, in a restarted control process,
        the restart copy (``from_cache``; the refusal is logged once); else
        StateError with the reason, for the caller to report.
        """
        cached, self.last_good = self.cache.load() if self.cache is not None else (None, None)
        fp = fingerprint(self.path)
        for _ in range(SETTLE_TRIES):
            if not fp or self._settle(fp):
                break
            fp = fingerprint(self.path)
        self._seen = fp
        try:
            if not fp:
                raise StateError(f"{self.path}: cannot read: no such file or directory")
            loaded = self._load()
            reason = refusal(loaded, self.last_good)
            if reason is not None:
                raise StateError(f"{self.path}: {reason}")
        except Exception as e:  # noqa: BLE001 - whatever the file holds, say why
            if cached is None:
                self._refused(None)
                raise StateError(describe_error(e)) from None  # the caller reports it
            self._refused(f"{describe_error(e)}; serving the last good state kept from "
                          f"before the restart ({len(cached)} objects)")
            self.from_cache = True
            return cached
        self._accepted(loaded)
        return loaded.state

    # -- polling ---------------------------------------------------------------

    def poll(self) -> bool:
        """Reload if the fingerprint moved; True when a new state was handed over."""
        fp = fingerprint(self.path)
        if fp == self._seen:
            return False
        if not fp:
            self._seen = fp
            self._refused(f"{self.path}: state file is gone; keeping the last good state")
            return False
        if not renamed_into_place(self._seen, fp) and not self._settle(fp):
            return False  # still being written: look again at the next poll
        try:
            loaded = self._load()
        except Exception as e:  # noqa: BLE001 - any bad file must not stop the server
            if fingerprint(self.path) != fp:
                return False  # it changed while we read it: the next poll reads it again
            self._seen = fp
            self._refused(f"{describe_error(e)}; keeping the last good state")
            return False
        if fingerprint(self.path) != fp:
            return False
        self._seen = fp
        reason = refusal(loaded, self.last_good)
        if reason is not None:
            self._refused(f"{self.path}: {reason}; keeping the last good state")
            return False
        blob, loaded.blob = loaded.blob, None
        self.on_state(loaded.state)
        log.info("%s: reloaded%s", self.path, f" ({loaded.how})" if loaded.how else "")
        self._accepted(loaded, blob)
        return True

    def _settle(self, fp: Fingerprint) -> bool:
        """Whether ``fp`` has been still for ``settle`` s, waiting out the rest of
        it if its newest mtime is younger (False: it moved meanwhile, or stop)."""
        newest = max(e[-1] for e in fp)
        wait = self.settle - (time.time_ns() - newest) / 1e9
        if wait <= 0:
            return True
        if self._stop.wait(min(wait, self.settle)):
            return False
        return fingerprint(self.path) == fp

    def _load(self) -> Loaded:
        got = self.loader(self.path)
        return got if isinstance(got, Loaded) else Loaded(got)

    def _accepted(self, loaded: Loaded,
                  blob: bytes | Callable[[], bytes] | None = None) -> None:
        self.loads += 1
        self.last_good = len(loaded.state)
        if self.pending_bad:
            log.info("%s: accepted again (%d objects)", self.path, self.last_good)
        self.pending_bad = False
        self.from_cache = False
        blob = blob if blob is not None else loaded.blob
        if self.cache is not None and blob is not None:
            self._unsaved = (blob, self.last_good, time.monotonic())
            if self.save_delay <= 0:
                self.save_pending(force=True)

    def save_pending(self, force: bool = False) -> None:
        """Write the restart copy of the last accepted state, once it is due."""
        pending = self._unsaved
        if pending is None or self.cache is None:
            return
        blob, objects, accepted = pending
        if not force and time.monotonic() - accepted < self.save_delay:
            return
        self._unsaved = None
        self.cache.save(blob() if callable(blob) else blob, objects)

    def _refused(self, msg: str | None) -> None:
        self.rejected += 1
        self.pending_bad = True
        if msg is not None:
            log.error("%s", msg)

    # -- the poller thread ------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="statefile", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.poll():
                    self.save_pending()
            except Exception:  # pragma: no cover - keep polling whatever happens
                log.exception("%s: polling failed", self.path)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        with contextlib.suppress(Exception):
            self.save_pending(force=True)


def describe_error(e: BaseException) -> str:
    """The loader's message; the exception type only when it says nothing else."""
    msg = str(e).strip()
    return msg if msg else type(e).__name__
