"""Upstream selection order (CoreDNS plugin/forward/policy.go).

``random`` (default) shuffles the list per query; ``round_robin`` rotates
the start by one per query; ``sequential`` always tries them in the
configured order. The forwarder walks the returned list, skipping upstreams
that are down.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


class Random:
    name = "random"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.SystemRandom()

    def order(self, items: Sequence[T]) -> list[T]:
        out = list(items)
        if len(out) > 1:
            self._rng.shuffle(out)
        return out


class RoundRobin:
    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def order(self, items: Sequence[T]) -> list[T]:
        n = len(items)
        if n == 0:
            return []
        start = self._next % n
        self._next = (start + 1) % n
        return list(items[start:]) + list(items[:start])


class Sequential:
    name = "sequential"

    def order(self, items: Sequence[T]) -> list[T]:
        return list(items)


POLICIES = {"random": Random, "round_robin": RoundRobin, "sequential": Sequential}


def make_policy(name: str):
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown forward policy {name!r}") from None
