"""CoreDNS's ``log`` plugin, from the workers.

The UDP fast path hands a batch's answers to ``QueryLog.udp_batch`` only
when some block logs and only the answers whose response class (success,
denial, error) a rule may want (``_udp.FastPath.set_logger``), so queries
nobody logs cost one test per batch. TCP and the slow path call
``QueryLog.one``. Lines are CoreDNS's (``plugin/log/log.go``,
``plugin/pkg/replacer/replacer.go``): ``[INFO] `` + the rule's format, on
stdout, one write per batch. Types, classes and rcodes are written as
miekg/dns writes them (``fastdns/mnemonics.py``), without dnspython: this
runs in the image, which has no test extras.

Rule choice is CoreDNS's: the block is the most specific one serving the
name on the listener's port (``Config.select``); within it the first rule
whose name scope covers the name decides, and it logs only its classes.
"""

from __future__ import annotations

import re
import struct
import sys
from collections.abc import Callable
from typing import Any

from fastdns import errors
from fastdns.codec import wire
from fastdns.corefile.model import COMMON_LOG_FORMAT
from fastdns.mnemonics import class_text, type_text
from fastdns.names import rcode_text, to_text
from fastdns.wirescan import skip_name

LOG_SUCCESS, LOG_DENIAL, LOG_ERROR = 1, 2, 4
_CLASS_BITS = {"success": LOG_SUCCESS, "denial": LOG_DENIAL, "error": LOG_ERROR,
               "all": LOG_SUCCESS | LOG_DENIAL | LOG_ERROR}
_PLACEHOLDER = re.compile(r"\{[^{}]+\}")
_HEADER = struct.Struct(">HHHHHH")



def classify(resp: bytes) -> int:
    """CoreDNS response class of an answer: plugin/pkg/response/typify.go Typify,
    then classify.go (NoError/Delegation: success, NameError/NoData: denial,
    anything else: error)."""
    if len(resp) < 12:
        return LOG_ERROR
    _id, flags, qd, an, ns, ar = _HEADER.unpack_from(resp)
    rcode = flags & 0xF
    if rcode == 3:
        return LOG_DENIAL
    if an and rcode == 0 and not ar:
        return LOG_SUCCESS
    p = 12
    for _ in range(qd):
        p = skip_name(resp, p) + 4
    soa = nsrr = False
    if an == 0 or rcode:
        for _ in range(an):
            p = skip_name(resp, p)
            if p + 10 > len(resp):
                break
            p += 10 + struct.unpack_from(">H", resp, p + 8)[0]
        for _ in range(ns):
            p = skip_name(resp, p)
            if p + 10 > len(resp):
                break
            rtype = struct.unpack_from(">H", resp, p)[0]
            soa |= rtype == 6
            nsrr |= rtype == 2
            p += 10 + struct.unpack_from(">H", resp, p + 8)[0]
        for _ in range(ar):  # the OPT's extended rcode (RFC 6891 §6.1.3)
            q = skip_name(resp, p)
            if q + 10 > len(resp):
                break
            if struct.unpack_from(">H", resp, q)[0] == 41:
                rcode |= resp[q + 4] << 4
            p = q + 10 + struct.unpack_from(">H", resp, q + 8)[0]
    if an and rcode == 0:
        return LOG_SUCCESS
    if rcode == 3:
        return LOG_DENIAL
    if rcode == 0:
        if soa:
            return LOG_DENIAL
        return LOG_SUCCESS  # a delegation, or a bare NOERROR
    return LOG_ERROR


_RFLAGS: dict[int, str] = {}


def rflags(flags: int) -> str:
    """replacer.go appendFlags: qr,aa,tc,rd,ra,z,ad,cd."""
    flags &= 0x87F0
    got = _RFLAGS.get(flags)
    if got is None:
        got = _RFLAGS[flags] = _rflags(flags)
    return got


def _rflags(flags: int) -> str:
    out = []
    for bit, name in ((0x8000, "qr"), (0x0400, "aa"), (0x0200, "tc"), (0x0100, "rd"),
                      (0x0080, "ra"), (0x0040, "z"), (0x0020, "ad"), (0x0010, "cd")):
        if flags & bit:
            out.append(name)
    return ",".join(out)


def _in_scope(qname: str, scope: str) -> bool:
    """plugin.Name(scope).Matches(qname): qname equal to or below scope."""
    if scope == ".":
        return True
    q = qname.lower()
    return q == scope or q.endswith("." + scope)


class Format:
    """A log format compiled once: a str.format template and the placeholders it uses.

    replacer.go: a placeholder it does not know is written as it is.
    """

    KNOWN = frozenset({"remote", "port", ">id", "type", "class", "name", "proto", "size",
                       ">do", ">bufsize", "rcode", ">rflags", "rsize", "duration", ">opcode",
                       "remote_ip"})

    def __init__(self, fmt: str) -> None:
        parts: list[str] = []
        self.keys: list[str] = []
        pos = 0
        for m in _PLACEHOLDER.finditer(fmt):
            parts.append(fmt[pos:m.start()].replace("{", "{{").replace("}", "}}"))
            key = m.group(0)[1:-1]
            if key in self.KNOWN:
                parts.append("{}")
                self.keys.append(key)
            else:
                parts.append(m.group(0).replace("{", "{{").replace("}", "}}"))
            pos = m.end()
        parts.append(fmt[pos:].replace("{", "{{").replace("}", "}}"))
        self.template = "".join(parts)
        self.common = fmt == COMMON_LOG_FORMAT


class _Rules:
    """A block's log rules, compiled: (scope, format, class bits)."""

    def __init__(self, conf: Any) -> None:
        self.rules = [(r.name.lower(), Format(r.format),
                       sum_bits(r.classes)) for r in conf.rules]
        self.mask = 0
        for _s, _f, bits in self.rules:
            self.mask |= bits


def sum_bits(classes: tuple[str, ...]) -> int:
    bits = 0
    for c in classes:
        bits |= _CLASS_BITS[c]
    return bits


class QueryLog:
    """Every block's ``log`` rules of one Corefile, for one worker."""

    def __init__(self, config: Any, port_of_fd: Callable[[int], int] | None = None,
                 write: Callable[[str], Any] | None = None) -> None:
        self.config = config
        self.port_of_fd = port_of_fd or (lambda fd: 0)
        self._write = write or _stdout_write
        self.rules: dict[int, _Rules] = {}  # id(block plugins dict) -> rules
        self.mask = 0
        for block in config.servers:
            conf = block.plugins.get("log")
            if conf is not None and id(block.plugins) not in self.rules:
                r = _Rules(conf)
                self.rules[id(block.plugins)] = r
                self.mask |= r.mask
        self._ports = {b.port for b in config.servers}
        self._memo: dict[tuple[int, str], _Rules | None] = {}

    def __bool__(self) -> bool:
        return bool(self.rules)

    # the worker's entry points ------------------------------------------

    def udp_batch(self, fd: int, items: list[tuple[bytes, tuple, bytes]], ns: int) -> None:
        port = self.port_of_fd(fd)
        lines = []
        duration = _go_seconds(ns / 1e9)  # the batch's time, the same for all its answers
        for query, addr, resp in items:
            line = self.line(query, addr, resp, "udp", port, duration)
            if line is not None:
                lines.append(line)
        if lines:
            self._write("".join(lines))

    def one(self, query: bytes, addr: Any, resp: bytes | None, proto: str, port: int,
            seconds: float) -> None:
        if resp is None:
            return
        line = self.line(query, addr, resp, proto, port, seconds)
        if line is not None:
            self._write(line)

    # formatting --------------------------------------------------------

    def line(self, query: bytes, addr: Any, resp: bytes, proto: str, port: int,
             seconds: float | str) -> str | None:
        try:
            q = wire.parse_query(query)
        except errors.WireError:
            return None
        qname = to_text(q.qname)
        rules = self._rules_for(port, qname)
        if rules is None:
            return None
        cls = classify(resp)
        for scope, fmt, bits in rules.rules:
            if not _in_scope(qname, scope):
                continue
            if not bits & cls:
                return None
            return "[INFO] " + self.render(fmt, q, qname, addr, resp, proto, len(query),
                                           seconds) + "\n"
        return None

    def _rules_for(self, port: int, qname: str) -> _Rules | None:
        key = (port, qname)
        memo = self._memo
        if key in memo:
            return memo[key]
        if port not in self._ports:
            port = next(iter(self._ports))
        got = self.config.select(port, qname)
        rules = self.rules.get(id(got[0].plugins)) if got is not None else None
        if len(memo) >= 4096:  # names repeat; a flood of unique ones must not grow it
            memo.clear()
        memo[key] = rules
        return rules

    @staticmethod
    def render(fmt: Format, q: Any, qname: str, addr: Any, resp: bytes, proto: str,
               size: int, seconds: float | str) -> str:
        if fmt.common:  # the default format, without the general loop
            host = str(addr[0]) if addr else "-"
            flags = (resp[2] << 8 | resp[3]) if len(resp) >= 12 else 0
            rcode = flags & 0xF or classify_rcode_ext(resp)
            return (f"{'[' + host + ']' if ':' in host else host}:{addr[1] if addr else '-'}"
                    f" - {q.id} \"{type_text(q.qtype)} "
                    f"{class_text(q.qclass)} {qname} {proto} {size} "
                    f"{'true' if q.do else 'false'} {q.payload}\" "
                    f"{rcode_text(rcode)} {rflags(flags)} {len(resp)} "
                    f"{seconds if isinstance(seconds, str) else _go_seconds(seconds)}")
        vals: list[object] = []  # str.format renders each
        for key in fmt.keys:
            if key == "remote":
                host = str(addr[0]) if addr else "-"
                vals.append(f"[{host}]" if ":" in host else host)  # addrToRFC3986
            elif key == "port":
                vals.append(addr[1] if addr else "-")
            elif key == ">id":
                vals.append(q.id)
            elif key == "type":
                vals.append(type_text(q.qtype))
            elif key == "class":
                vals.append(class_text(q.qclass))
            elif key == "name":
                vals.append(qname)
            elif key == "proto":
                vals.append(proto)
            elif key == "size":
                vals.append(size)
            elif key == ">do":
                vals.append("true" if q.do else "false")
            elif key == ">bufsize":
                vals.append(q.payload)
            elif key == "rcode":
                rcode = resp[3] & 0xF if len(resp) >= 12 else 2
                if rcode == 0:
                    rcode = classify_rcode_ext(resp)  # BADVERS lives in the OPT
                vals.append(rcode_text(rcode))
            elif key == ">rflags":
                vals.append(rflags((resp[2] << 8 | resp[3]) if len(resp) >= 12 else 0))
            elif key == "rsize":
                vals.append(len(resp))
            elif key == "duration":
                vals.append(seconds if isinstance(seconds, str) else _go_seconds(seconds))
            elif key == ">opcode":
                vals.append(q.opcode)
            else:  # remote_ip
                vals.append(str(addr[0]) if addr else "-")
        return fmt.template.format(*vals)


def classify_rcode_ext(resp: bytes) -> int:
    """The extended rcode bits (<< 4) from the OPT at the end of an answer, or 0."""
    n = len(resp)
    if n >= 23 and resp[n - 11] == 0 and resp[n - 10] == 0 and resp[n - 9] == 41:
        return resp[n - 6] << 4
    return 0


def _go_seconds(s: float) -> str:
    """Go's strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s"."""
    text = repr(round(max(s, 0.0), 9))
    if "e" in text:
        text = f"{s:.9f}".rstrip("0").rstrip(".")
    if text.endswith(".0"):
        text = text[:-2]
    return text + "s"


def _stdout_write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
