"""``fastdns serve``: from the command line to a running process tree.

What can be refused before any child starts is refused here, in one line
on stderr and exit 1: a Corefile that cannot run (``plan.py``), a listen
address that cannot be bound (``fastdns/server/portcheck.py``), a pidfile
that cannot be written. Then the supervisor (``tree.py``) runs until it
is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from fastdns.corefile.zones import DNS_PORT_ENV
from fastdns.server import portcheck
from fastdns.supervisor.children import setup_logging
from fastdns.supervisor.plan import ServeError, make_plan
from fastdns.supervisor.tree import EXIT_CONFIG, Supervisor


def run(args: argparse.Namespace) -> int:
    """Entry point of ``fastdns serve``; returns the process exit code."""
    setup_logging(getattr(args, "log_level", "info") or "info")
    if getattr(args, "dns_port", None):
        os.environ[DNS_PORT_ENV] = str(args.dns_port)  # inherited by control and workers
    try:
        plan = make_plan(args)
        portcheck.check_listen(plan.listen)
    except (ServeError, portcheck.BindError) as e:
        print(str(e), file=sys.stderr)
        return EXIT_CONFIG
    pidfile = getattr(args, "pidfile", None)
    if pidfile:
        try:
            Path(pidfile).write_text(f"{os.getpid()}\n")
        except OSError as e:
            print(f"{pidfile}: cannot write the pidfile: {e.strerror or e}", file=sys.stderr)
            return EXIT_CONFIG
    try:
        return Supervisor(plan, quiet=bool(getattr(args, "quiet", False))).run()
    finally:
        if pidfile:
            with contextlib.suppress(OSError):
                os.unlink(pidfile)
