"""template's Corefile syntax and frozen config, as ``plugin/template/setup.go`` reads it.

``template CLASS TYPE [ZONE...] { match REGEX...; answer RR; additional RR;
authority RR; rcode CODE; ederror CODE [REASON]; fallthrough [ZONE...] }``.
A block may hold several ``template`` directives; CoreDNS's setup loops
over them into one handler whose templates are tried in order, so
fastdns merges them (``merge_template``). ``var`` and ``expr`` (the expr
language) and the RR types fastdns does not encode are refused as not
implemented; errors carry setup.go's wording.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import ClassVar

from fastdns.corefile.args import fallthrough_arg, zones_arg
from fastdns.corefile.dispenser import Dispenser
from fastdns.corefile.errors import Unsupported
from fastdns.corefile.lexer import Token
from fastdns.corefile.model import PluginConfig
from fastdns.mnemonics import CLASSES, TYPES
from fastdns.names import RCODES
from fastdns.plugins.template import gotmpl, rrtext
from fastdns.plugins.template.goregex import GoRegexError, compile_go

CLASS_OF = {v: k for k, v in CLASSES.items()}  # miekg StringToClass
TYPE_OF = {v: k for k, v in TYPES.items()}  # miekg StringToType
RCODE_OF = {v: k for k, v in RCODES.items()}  # miekg StringToRcode
ANY = 255


@dataclass(frozen=True)
class RRTemplate:
    """One ``answer``/``additional``/``authority`` argument: its text and parsed form."""
    section: str
    text: str
    nodes: tuple[gotmpl.Node, ...] = field(compare=False, repr=False)


@dataclass(frozen=True)
class Template:
    qclass: int
    qtype: int
    zones: tuple[str, ...]
    regex: tuple[str, ...] = (".*",)
    answer: tuple[RRTemplate, ...] = ()
    additional: tuple[RRTemplate, ...] = ()
    authority: tuple[RRTemplate, ...] = ()
    rcode: int = 0
    ederror: tuple[int, str] | None = None
    #: fallthrough zones; () is no ``fallthrough`` (fall.F zero value: never)
    fallthrough: tuple[str, ...] = ()

    @property
    def compiled(self) -> tuple[re.Pattern[str], ...]:
        return _compiled(self.regex)


_CACHE: dict[tuple[str, ...], tuple[re.Pattern[str], ...]] = {}


def _compiled(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    got = _CACHE.get(patterns)
    if got is None:
        got = _CACHE[patterns] = tuple(compile_go(p) for p in patterns)
    return got


@dataclass(frozen=True)
class TemplateConfig(PluginConfig):
    name: ClassVar[str] = "template"
    templates: tuple[Template, ...] = ()

    @property
    def zones(self) -> tuple[str, ...]:
        """``Handler.Zones``: every template's zones."""
        return tuple(dict.fromkeys(z for t in self.templates for z in t.zones))


def _unsupported(d: Dispenser, tok: Token, reason: str) -> Unsupported:
    return Unsupported(tok.file, tok.line, reason, d.plugin)


def _rr(d: Dispenser, section: str, args: list[Token]) -> tuple[RRTemplate, ...]:
    if not args:
        raise d.arg_err()
    out = []
    for a in args:
        try:
            nodes = gotmpl.parse(section, a.text)
        except gotmpl.TemplateSyntaxError as e:
            if "not implemented by fastdns" in str(e):
                raise _unsupported(d, a, f"could not compile template: {a.text}, {e}") from None
            raise d.err(f"could not compile template: {args[-1].text}, {e}", a) from None
        rtype = rrtext.static_type(a.text)
        if rtype is not None and rtype not in rrtext.SUPPORTED:
            raise _unsupported(d, a, f"{section} records of type {rtype} are not "
                                     "implemented by fastdns")
        out.append(RRTemplate(section, a.text, nodes))
    return tuple(out)


def parse_template(d: Dispenser, zones: tuple[str, ...]) -> TemplateConfig:
    """One ``template`` directive (setup.go templateParse, one ``c.Next`` round)."""
    args = d.remaining_args()
    if len(args) < 2:
        raise d.arg_err()
    if args[0].text not in CLASS_OF:
        raise d.err(f"invalid query class {args[0].text}", args[0])
    if args[1].text not in TYPE_OF:
        raise d.err(f"invalid RR class {args[1].text}", args[1])
    tzones = zones_arg(d, args[2:]) if len(args) > 2 else zones
    o: dict[str, object] = {}
    regex: list[str] = []
    sections: dict[str, tuple[RRTemplate, ...]] = {"answer": (), "additional": (),
                                                    "authority": ()}
    while d.next_block():
        key, sub = d.val(), d.tok
        if key == "match":
            pats = d.remaining_args()
            if not pats:
                raise d.arg_err()
            for p in pats:
                try:
                    compile_go(p.text)
                except GoRegexError as e:
                    if "not implemented by fastdns" in str(e):
                        raise _unsupported(d, p, f"regex {p.text}: {e}") from None
                    if "too long" in str(e):
                        raise d.err(str(e), p) from None
                    raise d.err(f"could not parse regex: {p.text}, {e}", p) from None
                regex.append(p.text)
        elif key in sections:
            sections[key] += _rr(d, key, d.remaining_args())
        elif key == "rcode":
            if not d.next_arg():
                raise d.arg_err()
            code = RCODE_OF.get(d.val())
            if code is None:
                raise d.err(f"unknown rcode {d.val()}")
            if code > 15:
                raise _unsupported(d, d.tok, f"rcode {d.val()} (an extended rcode) is not "
                                             "implemented by fastdns")
            o["rcode"] = code
        elif key == "ederror":
            a = d.remaining_args()
            if len(a) not in (1, 2):
                raise d.arg_err()
            if not a[0].text.isdigit() or int(a[0].text) > 0xFFFF:
                raise d.err(f"error parsing extended DNS error code {d.val()}, "
                            f'strconv.ParseUint: parsing "{a[0].text}": invalid syntax', a[0])
            o["ederror"] = (int(a[0].text), a[1].text if len(a) == 2 else "")
        elif key == "fallthrough":
            o["fallthrough"] = fallthrough_arg(d, d.remaining_args())
        elif key == "upstream":
            d.remaining_args()  # setup.go: "remove soon", ignored
        elif key in ("var", "expr"):
            raise _unsupported(d, sub, f"{key} (the expr language) is not implemented "
                                       "by fastdns")
        else:
            raise d.arg_err()
    t = Template(CLASS_OF[args[0].text], TYPE_OF[args[1].text], tuple(tzones),
                 regex=tuple(regex) or (".*",), **sections, **o)  # type: ignore[arg-type]
    return TemplateConfig((t,))


def merge_template(old: PluginConfig, new: PluginConfig) -> PluginConfig:
    """Several ``template`` directives in one block: one handler, tried in order."""
    assert isinstance(old, TemplateConfig) and isinstance(new, TemplateConfig)
    return dataclasses.replace(TemplateConfig(old.templates + new.templates), source=old.source)
