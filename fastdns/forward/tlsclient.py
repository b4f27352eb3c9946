"""The TLS client side of ``forward tls://...`` (DNS over TLS, RFC 7858).

As CoreDNS builds it (plugin/pkg/tls NewTLSConfigFromArgs, plugin/forward
setup.go): ``tls`` with no arguments verifies the upstream with the system
CAs, ``tls CA`` with CA; ``tls CERT KEY`` adds a client certificate (system
CAs), ``tls CERT KEY CA`` one verified with CA. TLS 1.2 at least. The name checked is
``tls_servername``, the upstream's own ``tls://IP%NAME``, or else its IP
address (Go's tls.Dial fills ServerName from the address it dials). A DoT
upstream is always asked over TCP (CoreDNS's ``tcp-tls`` transport).
"""

from __future__ import annotations

import ssl


class TLSSetupError(ValueError):
    """A certificate, key or CA file that cannot be loaded (one line, the file named)."""


def client_context(args: tuple[str, ...] | None) -> ssl.SSLContext:
    """The context for a block's ``tls`` arguments (None or (): system CAs)."""
    args = tuple(args or ())
    try:
        ca = args[2] if len(args) == 3 else args[0] if len(args) == 1 else None
        ctx = ssl.create_default_context(cafile=ca)
        if len(args) >= 2:
            ctx.load_cert_chain(args[0], args[1])
    except (OSError, ssl.SSLError) as e:
        raise TLSSetupError(f"forward: tls {' '.join(args)}: {e}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def server_name(block_name: str | None, upstream_name: str | None, host: str) -> str:
    return upstream_name or block_name or host
