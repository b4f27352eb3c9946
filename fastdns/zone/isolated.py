"""Parse a state file in a child process and hand the stripped objects back.

Why: a kubectl dump is parsed into a tree of dicts many times the size of
what is kept, and the kept strings and objects sit in the same allocator
arenas as that garbage, so the parent could not give the memory back: at
10k Services the control process stayed ~90 MB larger than its live data
after one load (bench/peers.py, RSS by process). The child pays that and
exits; the parent only allocates the stripped objects, compactly, from a
pickle of plain tuples (pickling the dataclasses themselves cost as much as
the parse).

    python3 -m fastdns.zone.isolated PATH [--no-pods] [--index]
    (stdout: the pickle of (rows, (complete, empty_list)), see state.StateShape;
    with --index, two length-prefixed frames: that pickle, then the pickle of
    the file's state.ItemIndex or None; with --stdin, the file's bytes are
    read from standard input)
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from fastdns.zone.objects import (
    Endpoints,
    EndpointSlice,
    Namespace,
    Obj,
    Pod,
    Service,
    ServicePort,
    StateError,
)
from fastdns.zone.state import StateShape
from fastdns.zone.statepatch import ItemIndex

EXIT_STATE_ERROR = 3
TIMEOUT = 600.0  # seconds: a state file that takes longer is not a state file


def _ports(ports: tuple[ServicePort, ...]) -> tuple:
    return tuple((p.name, p.protocol, p.port) for p in ports)


def encode(objs: list[Obj]) -> list[tuple]:
    out: list[tuple] = []
    for o in objs:
        if isinstance(o, EndpointSlice):
            # plain rows, not Endpoint objects: built on access, they cost
            # ~0.4 s here and as much again in decode at 160k endpoints
            eps = o.endpoints
            rows = (eps.rows() if isinstance(eps, Endpoints) else
                    [(e.addresses, e.ready, e.hostname, e.target_pod, e.node_name) for e in eps])
            out.append(("E", o.namespace, o.name, o.service, o.address_type, tuple(rows),
                        _ports(o.ports)))
        elif isinstance(o, Service):
            out.append(("S", o.namespace, o.name, o.type, o.cluster_ips, o.headless,
                        o.external_name, _ports(o.ports)))
        elif isinstance(o, Pod):
            out.append(("P", o.namespace, o.name, o.ips, o.phase))
        else:
            out.append(("N", o.name))
    return out


def decode(rows: list[tuple]) -> list[Obj]:
    out: list[Obj] = []
    sp = ServicePort
    for r in rows:
        k = r[0]
        if k == "E":
            out.append(EndpointSlice(r[1], r[2], r[3], r[4], Endpoints(r[5]),
                                     tuple(sp(*p) for p in r[6])))
        elif k == "S":
            out.append(Service(r[1], r[2], r[3], r[4], r[5], r[6], tuple(sp(*p) for p in r[7])))
        elif k == "P":
            out.append(Pod(r[1], r[2], r[3], r[4]))
        else:
            out.append(Namespace(r[1]))
    return out


def load_objects_isolated(path: str, *, pods: bool = True) -> list[Obj]:
    """``state.load_state_objects(path, pods=pods)``, run in a child process."""
    return load_isolated(path, pods=pods)[0]


def load_isolated(path: str, *, pods: bool = True) -> tuple[list[Obj], StateShape, bytes]:
    """``state.load_state_checked(path, pods=pods)`` in a child process, plus the
    child's pickle itself: ``objects_from_blob`` turns it back into the objects
    (the control process keeps it as its restart copy of the last good state,
    fastdns/control/statefile.py)."""
    argv = [sys.executable, "-m", "fastdns.zone.isolated", os.fspath(path)]
    if not pods:
        argv.append("--no-pods")
    out = _run(argv, os.fspath(path))
    rows, shape = pickle.loads(out)  # our own child's output
    return decode(rows), StateShape(*shape), out


def load_isolated_indexed(path: str, *, pods: bool = True, data: bytes | None = None
                          ) -> tuple[list[Obj], StateShape, bytes,
                                     Callable[[], ItemIndex | None]]:
    """``load_isolated`` (of ``data``, when given: the bytes the caller read at
    ``path``, so the version judged is the one it saw), and a function that
    returns the file's ``state.ItemIndex``, or None. The child sends the
    objects first and builds the index after (for JSON a second parse), while
    this process compiles; a thread takes the index in at once, so the child
    never waits on its pipe."""
    argv = [sys.executable, "-m", "fastdns.zone.isolated", os.fspath(path), "--index"]
    if not pods:
        argv.append("--no-pods")
    if data is not None:
        argv.append("--stdin")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if data is not None
                                else subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except OSError as e:
        raise StateError(f"{path}: cannot load: {e}") from None
    watchdog = threading.Timer(TIMEOUT, proc.kill)
    watchdog.daemon = True
    watchdog.start()
    assert proc.stdout is not None and proc.stderr is not None
    try:
        if data is not None:
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(data)
            proc.stdin.close()
        blob = _frame(proc.stdout)
    except BaseException:
        proc.kill()
        proc.wait()
        watchdog.cancel()
        raise
    if blob is None:  # it said why, or died
        err = proc.stderr.read()
        code = proc.wait()
        watchdog.cancel()
        proc.stdout.close()
        proc.stderr.close()
        if code == EXIT_STATE_ERROR:
            raise StateError(err.decode(errors="replace").strip())
        tail = err.decode(errors="replace").strip().splitlines()[-1:]
        raise StateError(f"{path}: loading failed (exit {code}): {' '.join(tail)}")
    rows, shape = pickle.loads(blob)  # our own child's output
    got: list[ItemIndex | None] = [None]

    def take_index() -> None:
        try:
            frame = _frame(proc.stdout)  # type: ignore[arg-type]
            got[0] = pickle.loads(frame) if frame is not None else None
        except Exception:  # noqa: BLE001 - no index is no patching, not a failure
            got[0] = None
        finally:
            proc.wait()
            watchdog.cancel()
            for f in (proc.stdout, proc.stderr):
                with contextlib.suppress(OSError):
                    f.close()  # type: ignore[union-attr]

    taker = threading.Thread(target=take_index, name="state-index", daemon=True)
    taker.start()

    def index() -> ItemIndex | None:
        taker.join(TIMEOUT)
        return got[0]

    return decode(rows), StateShape(*shape), blob, index


def _frame(f: Any) -> bytes | None:
    """One length-prefixed frame the child wrote (None at the end of its output)."""
    head = f.read(8)
    if len(head) < 8:
        return None
    n = int.from_bytes(head, "big")
    body = f.read(n)
    return body if len(body) == n else None


def _write_frame(payload: bytes) -> None:
    out = sys.stdout.buffer
    out.write(len(payload).to_bytes(8, "big"))
    out.write(payload)
    out.flush()


def _run(argv: list[str], path: str) -> bytes:
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise StateError(f"{path}: cannot load: {e}") from None
    if proc.returncode == EXIT_STATE_ERROR:
        raise StateError(proc.stderr.decode(errors="replace").strip())
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise StateError(f"{path}: loading failed (exit {proc.returncode}): {' '.join(tail)}")
    return proc.stdout


def objects_from_blob(blob: bytes) -> list[Obj]:
    """The objects of a pickle ``load_isolated`` returned (ours: trusted)."""
    return decode(pickle.loads(blob)[0])


def main(argv: list[str]) -> int:
    # A parse makes millions of container objects and keeps them all: each
    # collection the allocation counts trigger walks every one of them again,
    # and finds no cycle to free (json.loads of a 68 MB dump: 1.9 s with the
    # cyclic GC, 0.6 s without). This process exits when it has answered, so
    # whatever cycles it makes are freed with it.
    gc.disable()
    from fastdns.zone.state import KINDS, load_state_checked
    from fastdns.zone.statepatch import load_file_phased

    pods = "--no-pods" not in argv
    if "--index" in argv and ("--stdin" in argv or os.path.isfile(argv[0])):
        kinds = KINDS if pods else tuple(k for k in KINDS if k != "Pod")
        data = sys.stdin.buffer.read() if "--stdin" in argv else None
        try:
            objs, shape, index = load_file_phased(argv[0], kinds, data)
        except StateError as e:
            print(e, file=sys.stderr)
            return EXIT_STATE_ERROR
        _write_frame(pickle.dumps((encode(objs), (shape.complete, shape.empty_list)),
                                  protocol=pickle.HIGHEST_PROTOCOL))
        del objs
        _write_frame(pickle.dumps(index(), protocol=pickle.HIGHEST_PROTOCOL))
        return 0
    try:
        objs, shape = load_state_checked(argv[0], pods=pods)
    except StateError as e:
        print(e, file=sys.stderr)
        return EXIT_STATE_ERROR
    out = (encode(objs), (shape.complete, shape.empty_list))
    if "--index" in argv:  # a directory: framed, without an index
        _write_frame(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))
        _write_frame(pickle.dumps(None))
        return 0
    sys.stdout.buffer.write(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
