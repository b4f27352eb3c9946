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

    c = sub.add_parser("check-corefile", help="report which Corefile lines fastdns runs as-is")
    c.add_argument("path")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from fastdns.server.supervisor import run

        return run(args)
    if args.command == "check-corefile":
        from fastdns.corefile.check import main as check_main

        return check_main(args.path)
    return 2


if __name__ == "__main__":
    sys.exit(main())
