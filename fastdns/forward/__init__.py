"""Forwarding to upstream resolvers and the response cache (CoreDNS ``forward`` and ``cache``).

``Forwarder(ForwardConfig)`` talks to the upstreams; ``ResponseCache(CacheConfig)``
keeps their answers; ``ForwardingResolver(forwarder, cache)`` is what a
worker's slow path awaits for a forwarded name.
"""

from fastdns.forward.cache import ResponseCache
from fastdns.forward.forwarder import Forwarder, ForwardError, ForwardRefused, NoUpstream
from fastdns.forward.resolver import ForwardingResolver, from_plugins

__all__ = ["Forwarder", "ForwardError", "ForwardRefused", "NoUpstream", "ResponseCache",
           "ForwardingResolver", "from_plugins"]
