"""What the supervisor tells a worker: its ``WorkerSpec``, pickled to the child.

Kept apart from worker.py so the supervisor can build one without importing
the data plane's modules (fastdns/supervisor/children.py)."""

from __future__ import annotations

from dataclasses import dataclass

from fastdns.server.tcp import MAX_PER_CLIENT


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs; pickled to the child by ``server/childproc.py``."""

    index: int
    instance: str
    listen: tuple[tuple[str, int], ...]
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 1000
    tcp_read_timeout: float = 3.0  # one whole message (server/tcp.py)
    tcp_max_per_client: int = MAX_PER_CLIENT  # connections per peer address; 0: no limit
    cpu: int | None = None  # pin to this CPU (benchmarks); None: leave the mask alone
