"""The ``fastdns`` command line: ``serve`` and ``check-corefile``."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastdns", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the DNS server (supervisor, control, workers)")
    s.add_argument("--corefile", default=None,
                   help="Corefile path (default /etc/coredns/Corefile; with --demo a built-in one)")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--state", metavar="PATH",
                     help="cluster state: kubectl -o yaml/json output, a file or a directory")
    src.add_argument("--demo", action="store_true", help="serve the built-in demo cluster")
    src.add_argument("--kubeconfig", metavar="PATH", help="watch the Kubernetes API")
    s.add_argument("--workers", type=int, default=None, help="worker processes (default: CPUs)")
    s.add_argument("--log-level", default="info")
    # CoreDNS's own flags (fastdns/coredns_cli.py rewrites -conf, -dns.port, ...)
    s.add_argument("--dns-port", type=_port, default=None,
                   help="default port of server blocks that name none (CoreDNS -dns.port)")
    s.add_argument("--pidfile", default=None, help="write the server's PID here (CoreDNS)")
    s.add_argument("--quiet", action="store_true", help="no startup output (CoreDNS -quiet)")
    s.add_argument("--version", action="store_true", help="print the version and exit")
    s.add_argument("--plugins", action="store_true", help="list the plugins and exit")

    c = sub.add_parser("check-corefile", help="report which Corefile lines fastdns runs as-is")
    c.add_argument("path")
    return p


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    from fastdns import coredns_cli
    from fastdns.nodecache import flags as nodecache_flags

    argv = sys.argv[1:] if argv is None else list(argv)
    sync = None
    if argv[:1] == ["serve"]:
        try:
            rest = argv[1:]
            node_cache, rest = nodecache_flags.split(rest)
            if node_cache is not None:  # kubernetes/dns node-cache's command line
                from fastdns.nodecache import sync as nodecache_sync
                from fastdns.nodecache.render import RenderError

                try:
                    rest, sync = nodecache_sync.prepare(node_cache, rest)
                except (RenderError, OSError, UnicodeDecodeError) as e:
                    print(f"node-cache: {e}", file=sys.stderr)
                    return 1
            argv = ["serve", *coredns_cli.translate(rest)]
        except coredns_cli.FlagError as e:
            print(e, file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        if args.version:
            print(coredns_cli.version_text())
            return 0
        if args.plugins:
            print(coredns_cli.plugins_text())
            return 0
        from fastdns.supervisor.serve import run

        if sync is not None:
            sync.start()
        return run(args)
    if args.command == "check-corefile":
        from fastdns.corefile.check import main as check_main

        return check_main(args.path)
    return 2


if __name__ == "__main__":
    sys.exit(main())
