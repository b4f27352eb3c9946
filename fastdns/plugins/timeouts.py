"""timeouts (``plugin/timeouts``): the TCP read, write and idle timeouts, and maxtcpqueries.

CoreDNS sets them per server (a block's port); fastdns has one TCP listener
per worker behind every port (server/tcp.py ``TcpListener``), so one
``timeouts`` setting applies to all of them, and a Corefile whose blocks
set different ones is refused, naming both lines, rather than served with
one of them silently. The parser follows plugin/timeouts/timeouts.go: no
arguments, at least one option, each duration between 1 s and 24 h, and
``maxtcpqueries`` -1 (no bound) or positive. ``idle`` is the allowance a
connection has between messages while the listener has room; near its
connection cap fastdns still shortens it (tcp.py ``idle_allowance``), as
CoreDNS's own idle handling does not, so the cap cannot be exhausted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from fastdns.corefile.dispenser import Dispenser
from fastdns.corefile.durations import duration_from_arg
from fastdns.corefile.model import Config, PluginConfig
from fastdns.plugins.spec import Plugin

MIN, MAX = 1.0, 24 * 3600.0


@dataclass(frozen=True)
class TimeoutsConfig(PluginConfig):
    name: ClassVar[str] = "timeouts"
    read: float | None = None
    write: float | None = None
    idle: float | None = None
    maxtcpqueries: int | None = None


def parse_timeouts(d: Dispenser, zones: tuple[str, ...]) -> TimeoutsConfig:
    """timeouts { read D; write D; idle D; maxtcpqueries N }."""
    if d.remaining_args():
        raise d.arg_err()
    got: dict[str, Any] = {}
    while d.next_block():
        key = d.val()
        arg = d.one_arg()
        if key == "maxtcpqueries":
            try:
                n = int(arg.text, 10)
            except ValueError:
                raise d.err(f"invalid value for maxtcpqueries '{arg.text}'", arg) from None
            if n == 0 or n < -1:
                raise d.err(f"maxtcpqueries provided '{n}' needs to be -1 (unlimited) or a "
                            "positive integer", arg)
            got[key] = n
            continue
        if key not in ("read", "write", "idle"):
            raise d.err(f"unknown option: '{key}'")
        try:
            seconds = duration_from_arg(arg.text)
        except ValueError as e:
            raise d.err(str(e), arg) from None
        if not MIN <= seconds <= MAX:
            raise d.err(f"timeout provided '{arg.text}' needs to be between 1 second and "
                        "24 hours", arg)
        got[key] = seconds
    if not got:
        raise d.err("timeouts block with no timeouts specified", d.tokens[0])
    return TimeoutsConfig(**got)


def in_force(config: Config | None) -> TimeoutsConfig | None:
    """The one ``timeouts`` setting of ``config`` (None: CoreDNS's defaults)."""
    if config is None:
        return None
    found = [c for b in config.servers
             if isinstance(c := b.plugins.get("timeouts"), TimeoutsConfig)]
    return found[0] if found else None


def apply(config: Config | None, listener: Any) -> None:
    """Set a worker's TcpListener from ``config`` (start and every reload)."""
    read, write, idle = listener.defaults
    conf = in_force(config)
    if conf is not None:
        read = conf.read if conf.read is not None else read
        write = conf.write if conf.write is not None else write
        idle = conf.idle if conf.idle is not None else idle
    listener.read_timeout, listener.write_timeout, listener.idle_timeout = read, write, idle
    listener.max_queries = conf.maxtcpqueries if conf and conf.maxtcpqueries else -1


PLUGIN = Plugin("timeouts", "full", config=TimeoutsConfig, parse=parse_timeouts,
                stages=("setup",), handler=False)
