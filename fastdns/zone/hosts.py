"""CoreDNS's ``hosts`` plugin, compiled into the snapshot image.

A hosts file (``/etc/hosts`` syntax) and the plugin's inline lines become
image entries, so the fast path answers them like kubernetes names:

- ``NAME A`` / ``NAME AAAA``: every address listed for NAME (inline lines
  and the file together, ``hostsfile.go`` LookupStaticHost), TTL ``ttl``
  (default 3600), AA; rotated per query with ``loadbalance``;
- ``NAME`` asked another type: NOERROR, empty, AA (``hosts.go``: the name
  exists, ``otherRecordsExist``);
- the reverse name of every address: PTR to each of its names, unless
  ``no_reverse`` (PTR names need not be in the plugin's zones);
- any other name in the plugin's zones: SERVFAIL (``hosts.go``: "we don't
  have a SOA"), or with ``fallthrough`` the next plugin (the slow path).

Only names inside the plugin's zones are kept (``hostsfile.go`` parse).
The file is re-read when its mtime or size changes, checked every
``reload`` seconds (default 5 s, 0 = never) by ``HostsWatcher``; a change
recompiles only the hosts fragments (``HostsContributor.reload``, which the
compiler calls: ``Compiler.refresh``).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from fastdns.ipc import image as img
from fastdns.zone.fragments import EMPTY, Fragment, FragmentWriter
from fastdns.zone.imagebuilder import ZoneSpec
from fastdns.zone.naming import name_wire
from fastdns.zone.templates import FLAGS_ANSWER, exact_template, rotations

if TYPE_CHECKING:  # types only (the Corefile model; corefile imports nothing of zone)
    from fastdns.corefile.model import Config, HostsConfig

log = logging.getLogger("plugin/hosts")

A, PTR, AAAA = 1, 12, 28
QT_NAME = 0
FLAGS_SERVFAIL = 0x8000 | 0x0080 | 2  # QR RA SERVFAIL


def normalize(name: str) -> str:
    name = name.lower()
    return name if name.endswith(".") else name + "."


def in_zones(name: str, zones: Sequence[str]) -> bool:
    """plugin.Zones(origins).Matches(name) != "" ."""
    for z in zones:
        if z == "." or name == z or name.endswith("." + z):
            return True
    return False


@dataclass
class HostsTable:
    """name -> addresses (in order) and address -> names, for one hosts plugin."""

    names: dict[str, list[str]] = field(default_factory=dict)
    addrs: dict[str, list[str]] = field(default_factory=dict)

    def add(self, ip: str, name: str) -> None:
        got = self.names.setdefault(name, [])
        if ip not in got:
            got.append(ip)
        back = self.addrs.setdefault(ip, [])
        if name not in back:
            back.append(name)


def parse_hosts_text(text: str, zones: Sequence[str], table: HostsTable | None = None
                     ) -> HostsTable:
    """hostsfile.go parse: ``IP NAME...`` lines, ``#`` comments, bad IPs skipped."""
    table = table if table is not None else HostsTable()
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        fields = line.split()
        if len(fields) < 2:
            continue
        ip = _parse_ip(fields[0])
        if ip is None:
            continue
        for n in fields[1:]:
            name = normalize(n)
            if in_zones(name, zones):
                table.add(ip, name)
    return table


def _parse_ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.split("%", 1)[0]))
    except ValueError:
        return None


def load_table(conf: HostsConfig) -> HostsTable:
    """Inline entries first, then the file (a missing file is empty, as in CoreDNS)."""
    table = HostsTable()
    for ip, names in conf.entries:
        addr = _parse_ip(ip)
        if addr is None:
            continue
        for n in names:
            name = normalize(n)
            if in_zones(name, conf.zones):
                table.add(addr, name)
    try:
        with open(conf.path, encoding="utf-8", errors="replace") as f:
            parse_hosts_text(f.read(), conf.zones, table)
    except OSError as e:
        if conf.path != "/etc/hosts" or not conf.entries:
            log.debug("%s: %s", conf.path, e.strerror or e)
    return table


def reverse_name(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer + "."


def hosts_fragment(table: HostsTable, conf: HostsConfig, loadbalance: bool) -> Fragment:
    """Image entries of one hosts plugin (see the module docstring)."""
    ttl = conf.ttl
    w = FragmentWriter()
    nodata = img.make_template(FLAGS_ANSWER, 0, 0, 0, b"")
    for name, ips in table.names.items():
        key = name_wire(name).lower()
        koff = w.key(key)
        for qtype, version in ((A, 4), (AAAA, 6)):
            an = tuple((None, qtype, ttl, ipaddress.ip_address(ip).packed, None)
                       for ip in ips if ipaddress.ip_address(ip).version == version)
            if not an:
                continue
            variants = rotations((an, ())) if loadbalance else [(an, ())]
            templates = [exact_template(key, v) for v in variants]
            w.entry(key, koff, qtype, w.answer_variants(templates))
        w.entry(key, koff, QT_NAME, w.answer(nodata))
    if not conf.no_reverse:
        for ip, names in table.addrs.items():
            key = name_wire(reverse_name(ip)).lower()
            koff = w.key(key)
            ptr_an = tuple((None, PTR, ttl, b"", name_wire(n)) for n in names)
            w.entry(key, koff, PTR, w.answer(exact_template(key, (ptr_an, ()))))
    return w.finish()


def hosts_zones(config: Config) -> list[ZoneSpec]:
    """One zone entry per zone of each hosts plugin: misses SERVFAIL, or fall through."""
    out: list[ZoneSpec] = []
    servfail = img.make_template(FLAGS_SERVFAIL, 0, 0, 0, b"")
    seen: set[int] = set()
    for i, b in enumerate(config.servers):
        conf = cast("HostsConfig | None", b.plugins.get("hosts"))
        if conf is None or id(conf) in seen:
            continue
        seen.add(id(conf))
        for z in conf.zones:
            falls = bool(conf.fallthrough) and any(
                f == "." or z == f or z.endswith("." + f) for f in conf.fallthrough)
            if falls:
                flags, neg = img.ZF_SLOW_MISS | img.ZF_FALLTHROUGH, ()  # type: tuple[int, tuple[bytes, ...]]
            else:
                flags, neg = img.ZF_AUTH, (servfail,)
            out.append(ZoneSpec(name_wire(z).lower(), flags, neg, conf.ttl, i,
                                    img.ZK_HOSTS))
    return out


class HostsContributor:
    """Every hosts plugin of a Corefile, compiled: an ``ImageContributor``
    (``fastdns/zone/contributor.py``) whose fragment ``i`` holds the entries
    of the ``i``-th hosts plugin and whose zones are ``hosts_zones``."""

    tag = "h"

    def __init__(self, config: Config) -> None:
        self.plugins: list[tuple[HostsConfig, bool]] = []  # (conf, loadbalance)
        seen: set[int] = set()
        for b in config.servers:
            conf = b.plugins.get("hosts")
            if conf is not None and id(conf) not in seen:
                seen.add(id(conf))
                self.plugins.append((cast("HostsConfig", conf), "loadbalance" in b.plugins))
        self._zones = hosts_zones(config)
        self._frags: dict[Hashable, Fragment] = {}
        self.reload()

    @classmethod
    def for_config(cls, config: Config) -> HostsContributor | None:
        """The contributor of ``config``'s hosts plugins; None when it has none."""
        if not any("hosts" in b.plugins for b in config.servers):
            return None
        return cls(config)

    def zones(self) -> list[ZoneSpec]:
        return self._zones

    def fragments(self) -> dict[Hashable, Fragment]:  # keyed by plugin index
        return self._frags

    def reload(self) -> bool:
        """Re-read every hosts plugin's file; True when an entry changed."""
        changed = False
        for i, (conf, lb) in enumerate(self.plugins):
            frag = hosts_fragment(load_table(conf), conf, lb)
            if self._frags.get(i, EMPTY) != frag:
                changed = True
                if frag is EMPTY:
                    self._frags.pop(i, None)
                else:
                    self._frags[i] = frag
        return changed

    def watcher(self, request: Callable[[], None]) -> HostsWatcher:
        return HostsWatcher([c for c, _lb in self.plugins], request)


class HostsWatcher:
    """Polls each hosts file's (mtime, size) every ``reload`` s and asks for a recompile.

    ``request()`` is called from this thread; it must hand the work to the
    thread that owns the compiler (``ControlLoop.post_call``).
    """

    def __init__(self, confs: Sequence[HostsConfig], request: Callable[[], None]) -> None:
        self.confs = [c for c in confs if c.reload > 0]
        self.request = request
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stamps = {c.path: _stamp(c.path) for c in self.confs}

    def start(self) -> None:
        if not self.confs:
            return
        self._thread = threading.Thread(target=self._run, name="hosts-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = min(c.reload for c in self.confs)
        while not self._stop.wait(interval):
            changed = False
            for c in self.confs:
                st = _stamp(c.path)
                if st != self._stamps.get(c.path):
                    self._stamps[c.path] = st
                    changed = True
            if changed:
                log.info("hosts file changed, reloading")
                self.request()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)
