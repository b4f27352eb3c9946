"""How a compiled plugin contributes to the snapshot image: the ``ImageContributor`` interface.

The zone compiler (``fastdns/zone/compiler.py``) compiles the kubernetes
plugin's records itself. Every other plugin whose answers are precompiled
into the image (``hosts`` today, ``fastdns/zone/hosts.py``; ``template``
and ``autopath`` next) is an ``ImageContributor`` handed to the
``Compiler``, which calls it; a plugin never subclasses the compiler, so
any number of them compose. The hooks, in the order the compiler uses them:

- ``tag``: a short string naming the contributor's fragments; the compiler
  stores each of them under ``(tag, key)``, and that tuple's sort order is
  their order in the image. The compiler's own tags ("s", "n", "q", "a",
  "p") are taken, and two contributors cannot share one.
- ``zones()``, once, when the compiler is built: the zone table entries the
  plugin answers for (``ZoneSpec``: misses answered from the entry, or
  handed to the slow path). They come before the compiler's other extra
  zones, and the first entry of a name wins.
- ``fragments()``: the plugin's compiled entries now, key -> ``Fragment``
  (``fastdns/zone/fragments.py``), keys of one contributor comparable with
  each other. They are put back after every ``Compiler.full``: a relist of
  the cluster does not re-read the plugin's sources.
- ``reload()``: re-read the plugin's sources (its configuration is fixed:
  a Corefile change builds a new compiler); True when ``fragments()``
  changed. ``Compiler.refresh`` calls it, on the thread that owns the
  compiler, and the next ``assemble`` serves the change.
- ``watcher(request)``: what notices that the sources changed and then
  calls ``request()`` from its own thread (the control process passes
  ``ControlLoop.post_call(compiler.refresh)``), or None when nothing can
  change; the control process starts and stops it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Protocol

from fastdns.zone.fragments import Fragment
from fastdns.zone.imagebuilder import ZoneSpec

# fragment tags of the compiler itself: Services, namespaces, verified pods,
# apex names, PTR buckets
COMPILER_TAGS = frozenset({"s", "n", "q", "a", "p"})


class Watcher(Protocol):
    """Polls a contributor's sources on a thread of its own."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class ImageContributor(Protocol):
    """A compiled plugin's share of the image (see the module docstring)."""

    tag: str

    def zones(self) -> Sequence[ZoneSpec]: ...

    def fragments(self) -> Mapping[Hashable, Fragment]: ...

    def reload(self) -> bool: ...

    def watcher(self, request: Callable[[], None]) -> Watcher | None: ...
