"""The ``cache`` plugin's grammar (plugin/cache/setup.go)."""

from __future__ import annotations

from fastdns.corefile.args import duration_arg, int_arg, zones_arg
from fastdns.corefile.dispenser import Dispenser
from fastdns.corefile.durations import parse_duration
from fastdns.corefile.errors import Unsupported
from fastdns.corefile.lexer import Token
from fastdns.corefile.model import CacheConfig
from fastdns.corefile.zones import go_atoi, normalize_name


def parse_cache(d: Dispenser, zones: tuple[str, ...]) -> CacheConfig:
    """cache [TTL] [ZONES...] { ... } (plugin/cache/setup.go)."""
    args = d.remaining_args()
    o: dict[str, object] = {}
    if args:
        ttl = go_atoi(args[0].text)
        if ttl is not None:
            if ttl <= 0:
                raise d.err(f"cache TTL can not be zero or negative: {ttl}", args[0])
            o["success_ttl"] = o["denial_ttl"] = ttl
            args = args[1:]
    czones = zones_arg(d, args) if args else zones
    stale_seen = policy_seen = False
    policy_at: Token | None = None
    while d.next_block():
        sub = d.tok
        key = d.val()
        if key in ("success", "denial"):
            a = d.remaining_args()
            if not 1 <= len(a) <= 3:
                raise d.err(f"{key} needs CAPACITY [TTL] [MINTTL]", sub)
            cap = int_arg(d, a[0], f"{key} capacity")
            if cap < 0:
                raise d.err(f"{key} capacity can not be negative: {cap}", a[0])
            o[f"{key}_capacity"] = cap
            if len(a) > 1:
                ttl = int_arg(d, a[1], f"{key} TTL")
                if ttl <= 0:
                    raise d.err(f"cache TTL can not be zero or negative: {ttl}", a[1])
                o[f"{key}_ttl"] = ttl
            if len(a) > 2:
                minttl = int_arg(d, a[2], f"{key} MINTTL")
                if minttl < 0:
                    raise d.err(f"cache min TTL can not be negative: {minttl}", a[2])
                o[f"{key}_minttl"] = minttl
        elif key == "prefetch":
            a = d.remaining_args()
            if not 1 <= len(a) <= 3:
                raise d.err("prefetch needs AMOUNT [DURATION [PERCENTAGE%]]", sub)
            amount = int_arg(d, a[0], "prefetch amount")
            if amount < 0:
                raise d.err(f"prefetch amount should be positive: {amount}", a[0])
            o["prefetch"] = amount
            if len(a) > 1:
                o["prefetch_duration"] = duration_arg(d, a[1], "prefetch")
            if len(a) > 2:
                pct = a[2].text
                if not pct.endswith("%"):
                    raise d.err(f"last character of percentage should be `%`, but is: '{pct[-1:]}'",
                                a[2])
                num = go_atoi(pct[:-1])
                if num is None:
                    raise d.err(f"prefetch: invalid percentage '{pct}'", a[2])
                if not 10 <= num <= 90:
                    raise d.err(f"percentage should fall in range [10, 90]: {num}", a[2])
                o["prefetch_percentage"] = num
        elif key == "serve_stale":
            stale_seen = True
            o.update(_serve_stale(d, d.remaining_args()))
        elif key == "serve_stale_policy":
            a = d.remaining_args()
            if policy_seen:
                raise d.err("serve_stale_policy can only be specified once", sub)
            policy_seen = True
            if len(a) != 1:
                raise d.arg_err()
            if a[0].text.lower() != "prefer_positive":
                raise d.err(f"invalid serve_stale_policy: {a[0].text}", a[0])
            policy_at = sub
        elif key == "servfail":
            arg = d.one_arg()
            dur = duration_arg(d, arg, "servfail")
            if dur < 0:
                raise d.err("invalid negative ttl for servfail", arg)
            if dur > 300:
                # RFC 2308 §7.1: SERVFAIL must not be cached longer than 5 minutes.
                raise d.err("caching SERVFAIL responses over 5 minutes is not permitted", arg)
            o["servfail_ttl"] = dur
        elif key == "disable":
            a = d.remaining_args()
            if not a:
                raise d.arg_err()
            if a[0].text not in ("success", "denial"):
                raise d.err('cache type for disable must be "success" or "denial"', a[0])
            dz = tuple(normalize_name(t.text) for t in a[1:]) or (".",)
            o[f"disable_{a[0].text}"] = dz
        elif key == "keepttl":
            d.no_args()
            o["keepttl"] = True
        else:
            raise d.unknown_property()
    if policy_seen and not stale_seen:
        raise d.err("serve_stale_policy requires serve_stale", d.tokens[0])
    if policy_at is not None:  # valid for CoreDNS: refused last, as unsupported
        raise Unsupported(policy_at.file, policy_at.line, "serve_stale_policy prefer_positive "
                          "is not implemented by fastdns", "cache")
    return CacheConfig(czones, **o)  # type: ignore[arg-type]


def _serve_stale(d: Dispenser, a: list[Token]) -> dict[str, object]:
    """serve_stale [DURATION] [immediate [RESPONSE_TTL [FAILURE_RECHECK]] |
    verify [VERIFY_TIMEOUT [RESPONSE_TTL [FAILURE_RECHECK]]]] (setup.go)."""
    if len(a) > 5:
        raise d.arg_err()
    o: dict[str, object] = {"serve_stale": 3600.0}
    if a:
        stale = duration_arg(d, a[0], "serve_stale")
        if stale < 0:
            raise d.err("invalid negative duration for serve_stale", a[0])
        o["serve_stale"] = stale
    verify = False
    if len(a) > 1:
        mode = a[1].text.lower()
        if mode not in ("immediate", "verify"):
            raise d.err(f"invalid value for serve_stale refresh mode: {mode}", a[1])
        verify = o["serve_stale_verify"] = mode == "verify"
    rest = a[2:]
    if verify and rest:
        t = _go_duration(d, rest[0], "invalid serve_stale verify timeout")
        if t < 0:
            raise d.err("invalid negative timeout for serve_stale verify", rest[0])
        o["serve_stale_verify_timeout"] = t
        rest = rest[1:]
    elif len(rest) > 2:
        raise d.arg_err()
    if rest:
        ttl = _go_duration(d, rest[0], "invalid serve_stale response TTL")
        if ttl < 0:
            raise d.err("invalid negative response TTL for serve_stale", rest[0])
        if ttl != int(ttl):
            raise d.err("serve_stale response TTL must be a whole number of seconds", rest[0])
        if ttl > 0xFFFFFFFF:
            raise d.err("serve_stale response TTL exceeds the DNS TTL range", rest[0])
        o["serve_stale_ttl"] = int(ttl)
    if len(rest) > 1:
        recheck = _go_duration(d, rest[1], "invalid serve_stale failure recheck")
        if recheck < 0:
            raise d.err("invalid negative failure recheck for serve_stale", rest[1])
        if recheck > 300:
            raise d.err("serve_stale failure recheck cannot exceed 5 minutes", rest[1])
        o["serve_stale_recheck"] = recheck
    return o


def _go_duration(d: Dispenser, tok: Token, what: str) -> float:
    """time.ParseDuration with CoreDNS's wrapping of its error ("WHAT: time: ...")."""
    try:
        return parse_duration(tok.text)
    except ValueError as e:
        raise d.err(f"{what}: {e}", tok) from None
