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
    with --index, then the pickle of the file's state.ItemIndex or None)
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys

from fastdns.zone.objects import (
    Endpoint,
    EndpointSlice,
    Namespace,
    Obj,
    Pod,
    Service,
    ServicePort,
    StateError,
)
from fastdns.zone.state import ItemIndex, StateShape

EXIT_STATE_ERROR = 3
TIMEOUT = 600.0  # seconds: a state file that takes longer is not a state file


def _ports(ports: tuple[ServicePort, ...]) -> tuple:
    return tuple((p.name, p.protocol, p.port) for p in ports)


def encode(objs: list[Obj]) -> list[tuple]:
    out: list[tuple] = []
    for o in objs:
        if isinstance(o, EndpointSlice):
            out.append(("E", o.namespace, o.name, o.service, o.address_type,
                        tuple((e.addresses, e.ready, e.hostname, e.target_pod, e.node_name)
                              for e in o.endpoints), _ports(o.ports)))
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
            out.append(EndpointSlice(r[1], r[2], r[3], r[4],
                                     tuple(Endpoint(*e) for e in r[5]),
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


def load_isolated_indexed(path: str, *, pods: bool = True
                          ) -> tuple[list[Obj], StateShape, bytes, ItemIndex | None]:
    """``load_isolated``, and the file's ``state.ItemIndex`` where it has one (a
    single List file: ``state.patch_file`` then reads a new version item by item)."""
    argv = [sys.executable, "-m", "fastdns.zone.isolated", os.fspath(path), "--index"]
    if not pods:
        argv.append("--no-pods")
    out = _run(argv, path)
    f = io.BytesIO(out)
    rows, shape = pickle.load(f)  # our own child's output
    blob = out[:f.tell()]
    index = pickle.load(f)
    return decode(rows), StateShape(*shape), blob, index


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
    from fastdns.zone.state import KINDS, load_file_indexed, load_state_checked

    pods = "--no-pods" not in argv
    index = None
    try:
        if "--index" in argv and os.path.isfile(argv[0]):
            kinds = KINDS if pods else tuple(k for k in KINDS if k != "Pod")
            objs, shape, index = load_file_indexed(argv[0], kinds)
        else:
            objs, shape = load_state_checked(argv[0], pods=pods)
    except StateError as e:
        print(e, file=sys.stderr)
        return EXIT_STATE_ERROR
    out = (encode(objs), (shape.complete, shape.empty_list))
    sys.stdout.buffer.write(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))
    if "--index" in argv:
        sys.stdout.buffer.write(pickle.dumps(index, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
