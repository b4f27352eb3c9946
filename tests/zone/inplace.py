"""What the in-place compiler tests share: a generated cluster and stand-in segments."""

from __future__ import annotations

import importlib.util
import mmap
import os

from fastdns.zone import objects
from fastdns.zone.compiler import Compiler
from fastdns.zone.options import KubernetesOptions
from fastdns.zone.state import ClusterState

HERE = os.path.dirname(os.path.abspath(__file__))


def generate(services: int, per_service: int = 6) -> dict:
    """bench/gen_cluster.py's cluster (30 % headless, 20 % dual stack), no Pods."""
    path = os.path.join(HERE, os.pardir, os.pardir, "bench", "gen_cluster.py")
    spec = importlib.util.spec_from_file_location("gen_cluster", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.generate(services, per_service, 0.3, 0.2, pods=False)


class Segments:
    """Publisher.buffer's stand-in: each image in a mapping of its own, as
    segments are; the last three kept (the image in force and those before)."""

    def __init__(self) -> None:
        self.views: list[memoryview] = []

    def __call__(self, size: int) -> memoryview:
        view = memoryview(mmap.mmap(-1, size))
        self.views.append(view)
        del self.views[:-3]
        return view


def start_in_place(doc: dict, opts: KubernetesOptions) -> tuple[ClusterState, Compiler, Compiler]:
    """The cluster's state, a compiler assembling on the heap and one assembling
    in place (Segments), both through a first full compile (the same octets:
    a full assembly lays out alike wherever it writes), the in-place one placed."""
    state = ClusterState(objects.strip(o["kind"], o) for o in doc["items"])
    heap, inplace = Compiler(opts), Compiler(opts)
    inplace.out_buffer = Segments()
    first = inplace.full(state, now=1)
    assert bytes(first) == bytes(heap.full(state, now=1))
    inplace.placed(first)
    return state, heap, inplace
