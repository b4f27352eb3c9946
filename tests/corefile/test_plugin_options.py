"""Each plugin's argument grammar, per its CoreDNS README / setup.go."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastdns.corefile.config import parse_corefile
from fastdns.corefile.durations import parse_duration
from fastdns.corefile.errors import CorefileError, Unsupported
from fastdns.corefile.model import (
    COMBINED_LOG_FORMAT,
    COMMON_LOG_FORMAT,
    CacheConfig,
    Consolidate,
    ErrorsConfig,
    ForwardConfig,
    HostsConfig,
    KubernetesConfig,
    LogConfig,
    LogRule,
    ReloadConfig,
    Upstream,
)
from fastdns.corefile.parsers import interface_addresses
from fastdns.corefile.zones import cidr_zones, is_domain_name, parse_key


def plugin(body: str, name: str, key: str = ".:53"):
    [block] = parse_corefile(f"{key} {{\n{body}\n}}\n", "P").servers
    return block.plugins[name]


@pytest.mark.parametrize(("text", "seconds"), [
    ("5s", 5.0), ("1m30s", 90.0), ("500ms", 0.5), ("0", 0.0), ("1.5h", 5400.0),
    (".5s", 0.5), ("2h45m", 9900.0), ("100us", 1e-4), ("-3s", -3.0), ("1h0m0s", 3600.0),
])
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "s", "1x", ".s", "5 s", "1d"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError, match="^time: "):
        parse_duration(text)


def test_zone_helpers() -> None:
    assert cidr_zones("10.0.0.0/8") == ["10.in-addr.arpa."]
    assert cidr_zones("10.1.2.3/24") == ["2.1.10.in-addr.arpa."]  # host bits masked
    assert cidr_zones("0.0.0.0/0") == ["in-addr.arpa."]
    assert cidr_zones("2001:db8::/32") == ["8.b.d.0.1.0.0.2.ip6.arpa."]
    assert cidr_zones("10.0.0.0") is None and cidr_zones("example.org") is None
    assert cidr_zones("10.0.0.0/255.0.0.0") is None  # Go's ParseCIDR wants a prefix length
    assert parse_key("dns://10.0.0.0/16:1053") == ("dns", ["0.10.in-addr.arpa."], 1053)
    assert is_domain_name("a" * 63 + ".com") and not is_domain_name("a" * 64 + ".com")
    assert not is_domain_name(".".join(["abcdefghi"] * 26))  # > 255 octets


def test_errors_consolidate() -> None:
    e = plugin("errors {\n consolidate 5m \".* i/o timeout$\" warning\n"
               " consolidate 30s ^Failed.+\n}", "errors")
    assert e == ErrorsConfig((Consolidate(300.0, ".* i/o timeout$", "warning"),
                              Consolidate(30.0, "^Failed.+", "error")))
    assert plugin("errors stdout", "errors") == ErrorsConfig()


def test_kubernetes_all_options() -> None:
    k = plugin("kubernetes cluster.local 10.96.0.0/16 {\n"
               " endpoint https://10.0.0.1:6443\n tls cert.pem key.pem ca.pem\n"
               " kubeconfig /etc/kube.conf prod\n namespaces default kube-system\n"
               " labels environment in (staging, qa),application=nginx\n"
               " pods verified\n endpoint_pod_names\n ttl 0\n noendpoints\n fallthrough\n"
               " ignore empty_service\n startup_timeout 10s\n}", "kubernetes")
    assert k == KubernetesConfig(
        zones=("cluster.local.", "96.10.in-addr.arpa."), endpoint=("https://10.0.0.1:6443",),
        tls=("cert.pem", "key.pem", "ca.pem"), kubeconfig=("/etc/kube.conf", "prod"),
        namespaces=("default", "kube-system"),
        labels="environment in (staging, qa),application=nginx", pods="verified",
        endpoint_pod_names=True, ttl=0, noendpoints=True, fallthrough=(".",),
        ignore_empty_service=True, startup_timeout=10.0)
    with pytest.raises(CorefileError, match="cannot both be set"):
        plugin("kubernetes cluster.local {\n namespaces a\n namespace_labels x=y\n}",
               "kubernetes")
    with pytest.raises(CorefileError, match=r"^P:3: plugin kubernetes: unable to parse label"):
        plugin("kubernetes cluster.local {\n labels a in (b\n}", "kubernetes")


def test_forward_options(tmp_path: Path) -> None:
    f = plugin("forward example.ORG 192.0.2.1 192.0.2.2:5353 [2001:db8::1]:53 2001:db8::2 "
               "tls://192.0.2.3 tls://192.0.2.4%dns.example:8853 {\n"
               " except a.example.org B.example.org\n force_tcp\n prefer_udp\n expire 20s\n"
               " max_fails 0\n tls\n policy sequential\n"
               " health_check 2s no_rec domain Health.Example\n max_concurrent 100\n"
               " next NXDOMAIN servfail\n failover REFUSED\n failfast_all_unhealthy_upstreams\n"
               " max_idle_conns 4\n max_connect_attempts 3\n}", "forward")
    assert f == ForwardConfig(
        "example.org.",
        (Upstream("dns", "192.0.2.1", 53), Upstream("dns", "192.0.2.2", 5353),
         Upstream("dns", "2001:db8::1", 53), Upstream("dns", "2001:db8::2", 53),
         Upstream("tls", "192.0.2.3", 853), Upstream("tls", "192.0.2.4", 8853, "dns.example")),
        except_zones=("a.example.org.", "b.example.org."), force_tcp=True, prefer_udp=True,
        expire=20.0, max_fails=0, tls=(), policy="sequential", health_check=2.0,
        health_check_no_rec=True, health_check_domain="health.example.", max_concurrent=100,
        next_rcodes=(3, 2), failover_rcodes=(5,), failfast_all_unhealthy_upstreams=True,
        max_idle_conns=4, max_connect_attempts=3)
    assert f.to[2].addr == "[2001:db8::1]:53"
    with pytest.raises(CorefileError, match="NoError cannot be used in failover"):
        plugin("forward . 192.0.2.1 {\n failover NOERROR\n}", "forward")
    with pytest.raises(CorefileError, match=r"^P:3: plugin forward: max_fails can't be negative"):
        plugin("forward . 192.0.2.1 {\n max_fails -1\n}", "forward")


def test_forward_resolv_conf_keeps_path(tmp_path: Path) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_text("nameserver 198.51.100.7\n; comment\n#nameserver 203.0.113.1\n")
    f = plugin(f"forward . {rc} 192.0.2.9", "forward")
    assert f.to == (Upstream("dns", "198.51.100.7", 53), Upstream("dns", "192.0.2.9", 53))
    assert f.resolv_conf == (str(rc),)
    rc.write_text("search only.example\n")
    with pytest.raises(CorefileError, match="no nameserver found in"):
        plugin(f"forward . {rc}", "forward")


def test_cache_options() -> None:
    c = plugin("cache 300 example.org 10.0.0.0/8 {\n success 5000 600 10\n denial 2500 60 1\n"
               " prefetch 10 1m30s 20%\n serve_stale 2h verify\n servfail 0\n"
               " disable success\n keepttl\n}", "cache")
    assert c == CacheConfig(
        zones=("example.org.", "10.in-addr.arpa."), success_capacity=5000, success_ttl=600,
        success_minttl=10, denial_capacity=2500, denial_ttl=60, denial_minttl=1, prefetch=10,
        prefetch_duration=90.0, prefetch_percentage=20, serve_stale=7200.0,
        serve_stale_verify=True, servfail_ttl=0.0, disable_success=(".",), keepttl=True)
    assert plugin("cache {\n serve_stale\n}", "cache", "example.org").serve_stale == 3600.0


@pytest.mark.parametrize("line, want", [
    ("serve_stale 1h immediate 30s", dict(serve_stale_ttl=30)),
    ("serve_stale 1h immediate 30s 1m", dict(serve_stale_ttl=30, serve_stale_recheck=60.0)),
    ("serve_stale 1h verify 100ms", dict(serve_stale_verify=True,
                                         serve_stale_verify_timeout=0.1)),
    ("serve_stale 1h verify 0 30s", dict(serve_stale_verify=True, serve_stale_ttl=30)),
    ("serve_stale 1h verify 100ms 30s 30s", dict(serve_stale_verify_timeout=0.1,
                                                 serve_stale_ttl=30, serve_stale_recheck=30.0)),
])
def test_cache_serve_stale_arguments(line, want) -> None:
    c = plugin(f"cache {{\n {line}\n}}", "cache", "example.org")
    assert {k: getattr(c, k) for k in want} == want and c.serve_stale == 3600.0


@pytest.mark.parametrize("line, message", [
    ("serve_stale 1h immediate 30s 30s 1s", "wrong argument count"),
    ("serve_stale 1h sometimes", "invalid value for serve_stale refresh mode: sometimes"),
    ("serve_stale 1h verify -1s", "invalid negative timeout for serve_stale verify"),
    ("serve_stale 1h verify x", "invalid serve_stale verify timeout: time: invalid duration"),
    ("serve_stale 1h immediate 1500ms", "must be a whole number of seconds"),
    ("serve_stale 1h immediate -30s", "invalid negative response TTL for serve_stale"),
    ("serve_stale 1h immediate 30s 6m", "failure recheck cannot exceed 5 minutes"),
    ("serve_stale_policy prefer_positive", "serve_stale_policy requires serve_stale"),
    ("serve_stale\n serve_stale_policy newest", "invalid serve_stale_policy: newest"),
    ("serve_stale\n serve_stale_policy prefer_positive\n serve_stale_policy prefer_positive",
     "serve_stale_policy can only be specified once"),
])
def test_cache_serve_stale_refused(line, message) -> None:
    with pytest.raises(CorefileError) as e:
        plugin(f"cache {{\n {line}\n}}", "cache", "example.org")
    assert message in str(e.value), str(e.value)


def test_cache_prefer_positive_is_unsupported_not_wrong() -> None:
    with pytest.raises(Unsupported, match="prefer_positive is not implemented"):
        plugin("cache {\n serve_stale\n serve_stale_policy prefer_positive\n}", "cache",
               "example.org")
    assert plugin("cache", "cache", "example.org") == CacheConfig(zones=("example.org.",))


def test_reload_jitter_capped() -> None:
    assert plugin("reload", "reload") == ReloadConfig(30.0, 15.0)
    assert plugin("reload 10s 8s", "reload") == ReloadConfig(10.0, 5.0)
    assert plugin("reload 1m 2s", "reload") == ReloadConfig(60.0, 2.0)
    with pytest.raises(CorefileError, match="jitter value must be greater or equal to 1s"):
        plugin("reload 10s 500ms", "reload")


def test_log_rules() -> None:
    assert plugin("log", "log") == LogConfig()
    log = plugin("log example.org example.net {combined} {\n class denial error\n}", "log")
    assert log == LogConfig((LogRule("example.org.", COMBINED_LOG_FORMAT, ("denial", "error")),
                             LogRule("example.net.", COMBINED_LOG_FORMAT, ("denial", "error"))))
    # Repeated log directives add rules, as CoreDNS allows.
    log = plugin("log a.com {common}\nlog", "log")
    assert log.rules == (LogRule("a.com.", COMMON_LOG_FORMAT), LogRule())


def test_bind_addresses_interfaces_and_except() -> None:
    b = plugin("bind 127.0.0.1 ::1\nbind 127.0.0.2", "bind")
    assert b.addresses == ("127.0.0.1", "::1", "127.0.0.2")
    lo = interface_addresses("lo")
    assert lo is not None and "127.0.0.1" in lo
    assert plugin("bind lo", "bind").addresses == tuple(lo)
    assert "127.0.0.1" not in plugin("bind lo {\n except 127.0.0.1\n}", "bind").addresses
    assert interface_addresses("no-such-iface0") is None


def test_hosts() -> None:
    h = plugin("hosts /etc/hosts.extra example.org {\n 10.0.0.1 a.example.org A2.example.org\n"
               " fd00::1 v6.example.org\n ttl 60\n no_reverse\n reload 0\n"
               " fallthrough\n}", "hosts")
    assert h == HostsConfig(
        zones=("example.org.",), path="/etc/hosts.extra",
        entries=(("10.0.0.1", ("a.example.org.", "a2.example.org.")),
                 ("fd00::1", ("v6.example.org.",))),
        ttl=60, no_reverse=True, reload=0.0, fallthrough=(".",))
    assert plugin("hosts", "hosts", "a.com") == HostsConfig(zones=("a.com.",))
    with pytest.raises(CorefileError, match=r"^P:3: plugin hosts: ttl provided is invalid$"):
        plugin("hosts {\n ttl 0\n}", "hosts")


def test_no_argument_plugins() -> None:
    for name in ("debug", "whoami", "loop"):
        plugin(name, name)
        with pytest.raises(CorefileError, match=f"^P:2: plugin {name}: unexpected argument"):
            plugin(f"{name} x", name)


def test_health_ready_prometheus_addresses() -> None:
    assert plugin("health [::1]:8080", "health").addr == "[::1]:8080"
    assert plugin("ready 127.0.0.1:8181", "ready").addr == "127.0.0.1:8181"
    assert plugin("prometheus", "prometheus").addr == "localhost:9153"
    with pytest.raises(CorefileError, match="too many colons"):
        plugin("ready ::1:8181", "ready")


_WORDS = [".:53", "{", "}", "errors", "health", "kubernetes", "cluster.local", "forward", ".",
          "192.0.2.1", "cache", "30", "success", "prefetch", "import", "(s)", "s", '"', "\\",
          "#", ",", "a.com,", "log", "bind", "hosts", "10.0.0.1", "ttl", "pods", "fallthrough",
          "{$X}", "reload", "loop", "dns://", ":1053", "10.0.0.0/24", "except", "tls", "-1", "5s"]


def test_garbage_raises_only_corefile_error(tmp_path: Path) -> None:
    """Whatever the text, the parser answers with a config or a CorefileError."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    corefile = str(tmp_path / "Corefile")  # imports of junk names resolve in an empty dir

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.tuples(st.sampled_from(_WORDS), st.sampled_from([" ", "\n", ""])),
                    max_size=30))
    def check(parts: list[tuple[str, str]]) -> None:
        text = "".join(w + s for w, s in parts)
        try:
            parse_corefile(text, corefile, environ={})
        except CorefileError as e:
            assert str(e).startswith(f"{corefile}:")

    check()
