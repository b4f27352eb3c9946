"""Test upstreams (fastdns.testing.upstream) on a background event loop, for tests
that drive a `fastdns serve` subprocess with blocking dnspython calls."""

from __future__ import annotations

import asyncio
import socket
import threading

from fastdns.testing.upstream import TestUpstream


class UpstreamThread:
    """Runs TestUpstreams in one daemon thread; knobs are plain attributes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.upstreams: list[TestUpstream] = []

    def start(self, records: dict, **kw) -> TestUpstream:
        up = TestUpstream(records, **kw)
        asyncio.run_coroutine_threadsafe(up.start(), self.loop).result(10)
        self.upstreams.append(up)
        return up

    def close(self) -> None:
        for up in self.upstreams:
            asyncio.run_coroutine_threadsafe(up.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Blackhole:
    """A UDP+TCP port that reads nothing: every query to it times out."""

    def __init__(self) -> None:
        for attempt in range(20):
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind(("127.0.0.1", 0))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                self.tcp.bind(("127.0.0.1", self.port))
                break
            except OSError:  # the UDP port's TCP twin is taken (EADDRINUSE): another port
                self.udp.close()
                self.tcp.close()
                if attempt == 19:
                    raise
        self.tcp.listen(1)  # connects complete in the backlog, nothing is answered

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()
