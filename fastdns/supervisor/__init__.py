"""The supervisor process: ``fastdns serve``'s root, which only starts and restarts.

It reads the Corefile far enough to know what to listen on, owns the shared
control segment and the instance lock, starts one control process and N
workers and restarts any that dies; it never touches packets or zone data,
so it is very unlikely to die. If it is killed anyway, the children get
SIGTERM through PR_SET_PDEATHSIG and the control process sweeps the
segments. Like NSD (``server.c``: the main process only restarts its
children).

- ``serve.py``: ``run(args)``, the entry point; refuses what cannot start.
- ``plan.py``: the ``ServePlan`` from the command line and the Corefile.
- ``tree.py``: the process tree, its restart policy and its shutdown.
- ``signals.py``: stop and reload signals, and the lameduck wait.
- ``relay.py``: the supervisor's side of ``reload``.
- ``children.py``: the first code each child runs, and the shared logging.

Only the command line (``fastdns/cli.py``, ``fastdns/coredns_cli.py``,
``fastdns/__main__.py``) imports this package (tests/architecture.py).
"""
