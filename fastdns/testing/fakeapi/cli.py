"""The standalone fake: ``python3 -m fastdns.testing.fakeapi --port 0 --state FILE``.

It prints ``listening on URL (...)`` once it serves, so a benchmark or an
image test that starts it as a subprocess reads one line to find it; a bad
state file or certificate is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import sys
from typing import Any

from fastdns.testing.fakeapi.server import FakeApiServer


def load_state_file(path: str) -> list[dict[str, Any]]:
    """Objects of a ``kubectl get -o yaml|json`` file (a List or multi-document YAML)."""
    with open(path) as f:
        text = f.read()
    if text.lstrip().startswith("{"):
        with contextlib.suppress(ValueError):  # JSON is YAML, but json is 50x faster
            return [json.loads(text)]
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [d for d in yaml.load_all(text, Loader=loader) if isinstance(d, dict)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m fastdns.testing.fakeapi",
                                description="fake Kubernetes API server (list/watch)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--state", metavar="FILE", action="append", default=[],
                   help="kubectl -o yaml/json output to serve (repeatable)")
    p.add_argument("--history", type=int, default=10000, help="watch event history size")
    p.add_argument("--bookmark-interval", type=float, default=60.0)
    p.add_argument("--token", default=None, help="require this bearer token")
    p.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate "
                   "(PEM; python3 -m fastdns.testing.pki makes one)")
    p.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    p.add_argument("--forbid", metavar="RESOURCE", action="append", default=[],
                   help="answer 403 Forbidden for this resource (services, ...; repeatable)")
    args = p.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    api = FakeApiServer(host=args.host, port=args.port, history_size=args.history,
                        bookmark_interval=args.bookmark_interval, token=args.token, tls=tls)
    try:
        for resource in args.forbid:
            api.forbid(resource)
        n = sum(api.load(load_state_file(path)) for path in args.state)
        if tls:
            api.ssl_context()  # an unreadable or mismatched pair: one line, exit 2
    except (OSError, ValueError, ssl.SSLError) as exc:
        print(f"fakeapi: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        task = asyncio.create_task(api.serve_async())
        while not api.listening and not task.done():
            await asyncio.sleep(0.01)
        print(f"listening on {api.url} ({n} objects, resourceVersion {api.resource_version})",
              flush=True)
        await task

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0
