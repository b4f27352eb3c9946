"""Corefile reload (CoreDNS ``reload``): check the file, validate, hand it over.

Design (docs/internals.md §4, "Corefile reload"): the supervisor checks the
Corefile every INTERVAL ± JITTER (``plugin/reload/reload.go``) and on
SIGUSR1. A changed file is validated the way startup validates it (parse,
then the plugins ``serve`` runs); an invalid one is logged with its
``file:line`` and counted in ``coredns_reload_failed_total`` (stats word
``S_RELOAD_FAILED``), and nothing else happens. A valid one is applied *in place*:

- the supervisor writes the new text to ``/dev/shm/fastdns-<instance>-corefile``
  and bumps the config version word (``layout.S_CONFIG_VERSION``); every worker
  polls that word with the generation (0.5 s) and re-reads its per-query
  plugins (log, errors, whoami) and its listen set from it, binding what is
  new and closing what is gone. The listening sockets that stay are never
  closed, so no query sitting in a socket buffer is lost;
- the control process is restarted with the new text (the path a crashed
  control process already takes: workers keep serving the image in force
  meanwhile); it compiles the new configuration and publishes it, and
  re-binds the HTTP endpoints (their addresses may have changed).

Why not CoreDNS's way (a second listener set, then stop the old one): a UDP
socket that leaves a SO_REUSEPORT group drops whatever is queued on it, so
retiring old workers loses queries under load; keeping the sockets does not.

Like CoreDNS, the hash of a failed file is remembered so a broken Corefile
is counted once, not at every interval.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from fastdns.ipc import layout, shm
from fastdns.ipc.stats import SharedStats

if TYPE_CHECKING:  # types only
    from fastdns.corefile.model import Config, ReloadConfig

log = logging.getLogger("plugin/reload")

def corefile_segment(instance: str) -> str:
    """Where the workers read the Corefile in force (swept with the instance)."""
    return os.path.join(shm.SHM_DIR, f"{shm.PREFIX}{instance}-corefile")


def write_corefile(instance: str, text: str, filename: str | None = None) -> None:
    """Atomically replace the Corefile the workers read (write, then rename).

    ``filename`` (kept beside it) is what the text is parsed as: relative
    ``import`` paths and messages depend on it.
    """
    path = corefile_segment(instance)
    if filename is not None:
        with open(path + "-name.tmp", "w", encoding="utf-8") as f:
            f.write(filename)
        os.replace(path + "-name.tmp", path + "-name")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def read_corefile_name(instance: str) -> str:
    """The file name the Corefile in force is parsed as ("Corefile" if unknown)."""
    try:
        with open(corefile_segment(instance) + "-name", encoding="utf-8") as f:
            return f.read() or "Corefile"
    except OSError:
        return "Corefile"


def read_corefile(instance: str) -> str | None:
    try:
        with open(corefile_segment(instance), encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def sha512(text: str) -> str:
    return hashlib.sha512(text.encode("utf-8")).hexdigest()


def reload_config(config: Config) -> ReloadConfig | None:
    """The ``reload`` plugin's config of a parsed Corefile (the first block's), or None."""
    for block in config.servers:
        conf = block.plugins.get("reload")
        if conf is not None:
            return cast("ReloadConfig", conf)
    return None


class Reloader:
    """The supervisor's side: when to look, and what to do with what it finds.

    ``validate(text) -> (config, plan)`` raises an exception whose ``str`` is
    the operator's message (``file:line: ...``) for an unusable Corefile;
    ``apply(text, plan)`` puts a valid one in force; ``failed()`` counts a
    failure (``coredns_reload_failed_total``).
    """

    def __init__(self, path: str | None, text: str, config: Config,
                 validate: Callable[[str], tuple[Config, Any]],
                 apply: Callable[[str, Any], None], failed: Callable[[], None], *,
                 clock: Callable[[], float]) -> None:
        self.path = path
        self.hash = sha512(text)
        self.config = config
        self.validate = validate
        self.apply = apply
        self.failed = failed
        self.clock = clock
        self.next_at: float | None = None
        self.reloads = 0
        self.failures = 0
        self._schedule()

    def _schedule(self) -> None:
        """Next periodic check: INTERVAL ± JITTER from now; none without the plugin."""
        conf = reload_config(self.config)
        if conf is None or self.path is None:
            self.next_at = None
            return
        jitter = random.uniform(-conf.jitter, conf.jitter)
        self.next_at = self.clock() + max(0.5, conf.interval + jitter)

    def due(self) -> bool:
        return self.next_at is not None and self.clock() >= self.next_at

    def check(self) -> bool:
        """Read the Corefile; apply it if it changed and is valid. True if applied."""
        try:
            return self._check()
        finally:
            self._schedule()

    def _check(self) -> bool:
        if self.path is None:
            log.warning("the Corefile is built in: nothing to reload")
            return False
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            # CoreDNS keeps the running configuration when the file cannot be read
            log.error("Corefile changed but reload failed: %s: %s", self.path, e.strerror or e)
            return False
        digest = sha512(text)
        if digest == self.hash:
            return False
        # plugin/reload/reload.go: remember the hash even if it fails, so the
        # same broken file is not retried (and counted) at every tick
        self.hash = digest
        log.info("Reloading")
        try:
            config, plan = self.validate(text)
        except Exception as e:  # noqa: BLE001 - the message is for the operator
            self.failures += 1
            self.failed()
            log.error("Corefile changed but reload failed: %s", e)
            return False
        self.apply(text, plan)
        self.config = config
        self.reloads += 1
        log.info("Running configuration SHA512 = %s", digest)
        log.info("Reloading complete")
        return True


class ConfigWatch:
    """The workers' side: has the supervisor put a new Corefile in force?

    Reads the config version word (a plain 8-octet load, single writer) and,
    when it moved, the Corefile segment.
    """

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.stats = SharedStats.attach(instance)
        self.version = self.stats.get(layout.S_CONFIG_VERSION)

    def poll(self) -> str | None:
        """The new Corefile text once per version change, else None."""
        v = self.stats.get(layout.S_CONFIG_VERSION)
        if v == self.version:
            return None
        self.version = v
        return read_corefile(self.instance)

    def close(self) -> None:
        self.stats.close()
