"""Exponential backoff with jitter for API retries.

A fleet of DNS pods that lost the API server must not come back in lockstep:
each delay is drawn in [d/2, d] where d doubles from ``base`` up to ``cap``
("equal jitter", AWS Architecture Blog "Exponential Backoff And Jitter";
client-go's wait.Backoff uses the same doubling with a jitter factor).
"""

from __future__ import annotations

import random


class Backoff:
    """Delays for consecutive failures; ``reset()`` after a success."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, factor: float = 2.0,
                 rng: random.Random | None = None) -> None:
        if base <= 0 or cap < base or factor < 1:
            raise ValueError("backoff needs 0 < base <= cap and factor >= 1")
        self.base = base
        self.cap = cap
        self.factor = factor
        self.failures = 0
        self._rng = rng or random.Random()

    def next(self, retry_after: float | None = None) -> float:
        """The delay before the next try; a server's Retry-After wins when longer."""
        ceiling = min(self.cap, self.base * self.factor ** self.failures)
        self.failures += 1
        delay = ceiling / 2 + self._rng.random() * ceiling / 2
        if retry_after is not None and retry_after > delay:
            # RFC 9110 §10.2.3: the client is asked to wait at least this long
            return float(retry_after)
        return delay

    def reset(self) -> None:
        self.failures = 0
