"""The ``forward`` plugin: send a query to the upstreams, return the checked answer.

Semantics follow CoreDNS ``plugin/forward/forward.go`` (``ServeDNS``): the
upstreams are ordered by the policy; down ones are skipped; when every one
is down the health checking is assumed broken and a random upstream is used
(``coredns_forward_healthcheck_broken_total``), unless
``failfast_all_unhealthy_upstreams``. A failed exchange (read timeout,
network error) starts that upstream's health probes and moves to the next
upstream; when the attempts or the overall deadline (CoreDNS
``defaultTimeout`` 5 s) run out the answer is SERVFAIL. Beyond
``max_concurrent`` queries in flight the answer is REFUSED
(``ErrLimitExceeded``). Names outside FROM or under an ``except`` zone are
not forwarded: ``forward`` returns None and the caller goes on.

Transport: the client's (UDP or TCP) unless ``force_tcp`` (always TCP) or
``prefer_udp`` (always UDP first); an answer with TC over UDP is retried over
TCP at the same upstream (RFC 7766 §5), so the caller gets (and may cache)
the whole answer and ``fit`` truncates it again for a small UDP client.
Every query toward an upstream carries a fresh random ID (RFC 5452 §4).
"""

from __future__ import annotations

import asyncio
import secrets
import time

from fastdns.codec import wire
from fastdns.constants import Flag, Rcode
from fastdns.corefile.model import ForwardConfig
from fastdns.forward.health import HealthChecker
from fastdns.forward.message import adapt, fit, in_any_zone, with_id
from fastdns.forward.policy import make_policy
from fastdns.forward.stats import Histogram
from fastdns.forward.tlsclient import client_context, server_name
from fastdns.forward.upstream import Upstream, UpstreamError
from fastdns.names import forward_rcode_text, is_subdomain, zone_key

READ_TIMEOUT = 2.0  # CoreDNS plugin/pkg/proxy: per-exchange read timeout
TIMEOUT = 5.0  # CoreDNS plugin/forward defaultTimeout: one query, all attempts
HEALTH_TIMEOUT = 1.0  # CoreDNS hcReadTimeout
_TC_HI = int(Flag.TC) >> 8  # TC in the first flags octet


class ForwardError(Exception):
    """The forwarder has no answer; ``rcode`` is what the client gets."""

    rcode = Rcode.SERVFAIL


class ForwardRefused(ForwardError):
    """More than ``max_concurrent`` queries in flight (CoreDNS ErrLimitExceeded)."""

    rcode = Rcode.REFUSED


class NoUpstream(ForwardError):
    """Every attempt failed before the deadline (CoreDNS ErrNoHealthy / last error)."""


class Forwarder:
    """One ``forward`` stanza, for one worker's event loop.

    Counters (plain ints; ``fastdns/server/forwarding.py`` copies them into the
    worker's shm block, ``fastdns/control/metrics.py`` exports them):
    ``durations[(to, rcode)]`` -> ``Histogram``
    (``coredns_proxy_request_duration_seconds{proxy_name="forward",to,rcode}``,
    whose count is the requests per upstream and rcode),
    ``healthcheck_broken`` (``coredns_forward_healthcheck_broken_total``),
    ``max_concurrent_rejects`` (``coredns_forward_max_concurrent_rejects_total``),
    ``healthcheck_failures()`` -> ``{to: n}``
    (``coredns_proxy_healthcheck_failures_total{proxy_name,to}``),
    ``udp_exchanges[to]`` (UDP exchanges: each one a fresh socket, RFC 5452,
    so each is a ``coredns_proxy_conn_cache_misses_total{proto="udp"}``).
    """

    proxy_name = "forward"

    def __init__(self, config: ForwardConfig, *, read_timeout: float = READ_TIMEOUT,
                 timeout: float = TIMEOUT, health_timeout: float = HEALTH_TIMEOUT,
                 policy=None) -> None:
        if not config.to:
            raise ValueError("forward: no upstreams")
        self.config = config
        self.read_timeout = (config.read_timeout if config.read_timeout is not None
                             else read_timeout)
        tls = (client_context(config.tls) if any(u.transport == "tls" for u in config.to)
               else None)
        self.timeout = timeout
        self.from_zone = zone_key(config.from_zone)
        self.except_zones = tuple(zone_key(z) for z in config.except_zones)
        self.upstreams = [
            Upstream(u.host, u.port, expire=config.expire, max_idle_conns=config.max_idle_conns,
                     tls=tls if u.transport == "tls" else None,
                     server_hostname=server_name(config.tls_servername, u.tls_servername,
                                                 u.host),
                     max_age=config.max_age, source=config.source_address)
            for u in config.to]
        self.policy = policy or make_policy(config.policy)
        self.max_fails = config.max_fails
        self.max_concurrent = config.max_concurrent
        self.force_tcp = config.force_tcp
        self.prefer_udp = config.prefer_udp
        self.health = HealthChecker(
            config.health_check if config.max_fails else 0.0, tcp=config.force_tcp,
            domain=config.health_check_domain, recursion=not config.health_check_no_rec,
            timeout=health_timeout)
        self.inflight = 0
        # counters
        self.requests = 0
        self.max_concurrent_rejects = 0
        self.healthcheck_broken = 0
        self.tc_retries = 0
        self.failures = 0  # queries answered SERVFAIL because every attempt failed
        self.durations: dict[tuple[str, str], Histogram] = {}
        self.udp_exchanges: dict[str, int] = {}

    def healthcheck_failures(self) -> dict[str, int]:
        return {u.addr: u.healthcheck_failures for u in self.upstreams}

    def handles(self, q) -> bool:
        """Is ``q`` for this stanza: below FROM and under no ``except`` zone."""
        return is_subdomain(q.key, self.from_zone) and not (
            self.except_zones and in_any_zone(q.key, self.except_zones))

    async def forward(self, query: bytes, q, tcp: bool = False) -> bytes | None:
        """The answer to send to the client, or None when this stanza does not apply.

        None also for an upstream rcode listed in ``next`` (CoreDNS passes
        those to the next plugin).
        """
        if not self.handles(q):
            return None
        try:
            data = await self.exchange(query, q, tcp)
        except ForwardError as e:
            return wire.error_response(query, q, e.rcode)
        if self.config.next_rcodes and (data[3] & 0xF) in self.config.next_rcodes:
            return None
        return fit(data, query, q, tcp)

    async def exchange(self, query: bytes, q, tcp: bool = False) -> bytes:
        """The whole upstream answer (never truncated by us), with the client's ID and question.

        Raises ``ForwardRefused`` beyond ``max_concurrent`` and ``NoUpstream``
        when every attempt failed.
        """
        self.requests += 1
        if self.max_concurrent and self.inflight >= self.max_concurrent:
            self.max_concurrent_rejects += 1
            raise ForwardRefused("max_concurrent queries in flight")
        self.inflight += 1
        try:
            return await self._exchange(query, q, tcp)
        finally:
            self.inflight -= 1

    async def _exchange(self, query: bytes, q, tcp: bool) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        use_tcp = self.force_tcp or (tcp and not self.prefer_udp)
        ups = self.policy.order(self.upstreams)
        n = len(ups)
        # CoreDNS keeps cycling through the list until its deadline; we also
        # bound the attempts, so an upstream that fails fast (ICMP refused)
        # cannot make the loop spin.
        max_attempts = 2 * n
        attempts = i = skipped = 0
        last_err: Exception | None = None
        failover: bytes | None = None
        while attempts < max_attempts:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if i >= n:
                i = skipped = 0
            up = ups[i]
            i += 1
            if up.down(self.max_fails):
                skipped += 1
                if skipped < n:
                    continue
                if self.config.failfast_all_unhealthy_upstreams:
                    break
                # All down: assume health checking is broken, pick one at random.
                self.healthcheck_broken += 1
                up = secrets.choice(self.upstreams)
            attempts += 1
            t0 = time.perf_counter()
            try:
                data = await self._ask(up, query, q, use_tcp, min(self.read_timeout, remaining))
                if not use_tcp and up.tls is None and data[2] & _TC_HI:
                    self.tc_retries += 1
                    left = deadline - loop.time()
                    if left <= 0:
                        raise UpstreamError("deadline reached before the TCP retry")
                    data = await self._ask(up, query, q, True, min(self.read_timeout, left))
            except UpstreamError as e:
                last_err = e
                self.health.trigger(up)
                continue
            rcode = data[3] & 0xF
            self._observe(up.addr, rcode, time.perf_counter() - t0)
            if rcode in self.config.failover_rcodes and attempts < max_attempts:
                failover = data
                continue
            return adapt(data, query, q)
        if failover is not None:
            return adapt(failover, query, q)
        self.failures += 1
        raise NoUpstream(str(last_err) if last_err else "no healthy upstream")

    async def _ask(self, up: Upstream, query: bytes, q, tcp: bool, timeout: float) -> bytes:
        qid = secrets.randbits(16)
        if not tcp and up.tls is None:
            self.udp_exchanges[up.addr] = self.udp_exchanges.get(up.addr, 0) + 1
        return await up.exchange(with_id(query, qid), qid, q, tcp, timeout)

    def _observe(self, to: str, rcode: int, seconds: float) -> None:
        key = (to, forward_rcode_text(rcode))
        h = self.durations.get(key)
        if h is None:
            h = self.durations[key] = Histogram()
        h.observe(seconds)

    def close(self) -> None:
        """Stop the health probes and close the idle TCP connections."""
        self.health.close()
        for up in self.upstreams:
            up.close()
