"""Corefile parser: the Corefiles that must run unchanged, syntax, errors, selection.

The kubeadm default and NodeLocal DNSCache Corefiles live in tests/corefiles/;
their ``/etc/resolv.conf`` is pointed at a resolv.conf each test writes, so
no test ever reads the machine's resolver configuration.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastdns.corefile.config import DEFAULT_DEMO_COREFILE, load_corefile, parse_corefile
from fastdns.corefile.errors import CorefileError, Unsupported
from fastdns.corefile.lexer import tokenize
from fastdns.corefile.model import (
    BindConfig,
    CacheConfig,
    ErrorsConfig,
    ForwardConfig,
    HealthConfig,
    KubernetesConfig,
    LoadbalanceConfig,
    LogConfig,
    LoopConfig,
    PrometheusConfig,
    ReadyConfig,
    ReloadConfig,
    ServerBlock,
    Upstream,
    select_block,
)
from fastdns.corefile.verdict import is_runnable, not_running
from fastdns.plugins import registry

FIXTURES = Path(__file__).resolve().parents[1] / "corefiles"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def resolv(tmp_path: Path) -> Path:
    p = tmp_path / "resolv.conf"
    p.write_text("# written by the test\nsearch example.test\n"
                 "nameserver 192.0.2.53\nnameserver 2001:db8::53\noptions ndots:5\n")
    return p


def fixture_copy(name: str, tmp_path: Path, resolv: Path) -> Path:
    text = (FIXTURES / name).read_text().replace("/etc/resolv.conf", str(resolv))
    out = tmp_path / name
    out.write_text(text)
    return out


# -- the Corefiles that must run unchanged ------------------------------------

def test_kubeadm_default_exact(tmp_path: Path, resolv: Path) -> None:
    path = fixture_copy("kubeadm.Corefile", tmp_path, resolv)
    cfg = load_corefile(path)
    expected_plugins = {
        "errors": ErrorsConfig(),
        "health": HealthConfig(":8080", 5.0),
        "ready": ReadyConfig(":8181"),
        "kubernetes": KubernetesConfig(
            zones=("cluster.local.", "in-addr.arpa.", "ip6.arpa."),
            pods="insecure", fallthrough=("in-addr.arpa.", "ip6.arpa."), ttl=30),
        "prometheus": PrometheusConfig(":9153"),
        "forward": ForwardConfig(
            ".", (Upstream("dns", "192.0.2.53", 53), Upstream("dns", "2001:db8::53", 53)),
            resolv_conf=(str(resolv),), max_concurrent=1000),
        "cache": CacheConfig(zones=(".",), success_ttl=30, denial_ttl=30,
                             disable_success=("cluster.local.",),
                             disable_denial=("cluster.local.",)),
        "loop": LoopConfig("."),
        "reload": ReloadConfig(30.0, 15.0),
        "loadbalance": LoadbalanceConfig("round_robin"),
    }
    assert cfg.servers == [ServerBlock((".",), 53, expected_plugins, (str(path), 2))]
    assert list(cfg.servers[0].plugins) == list(expected_plugins)  # Corefile order kept
    # Each directive remembers its own line.
    lines = {n: p.source[1] for n, p in cfg.servers[0].plugins.items()}
    assert lines == {"errors": 3, "health": 4, "ready": 7, "kubernetes": 8, "prometheus": 13,
                     "forward": 14, "cache": 17, "loop": 21, "reload": 22, "loadbalance": 23}


def test_nodelocaldns(tmp_path: Path, resolv: Path) -> None:
    cfg = load_corefile(fixture_copy("nodelocaldns.Corefile", tmp_path, resolv))
    assert [(s.zones, s.port) for s in cfg.servers] == [
        (("cluster.local.",), 53), (("in-addr.arpa.",), 53), (("ip6.arpa.",), 53), ((".",), 53)]
    cluster, rev4, rev6, root = cfg.servers
    upstream = ForwardConfig(".", (Upstream("dns", "10.96.0.11", 53),), force_tcp=True)
    bind = BindConfig(("169.254.20.10", "10.96.0.10"))
    assert cluster.plugins == {
        "errors": ErrorsConfig(),
        "cache": CacheConfig(zones=("cluster.local.",), success_capacity=9984, success_ttl=30,
                             denial_capacity=9984, denial_ttl=5),
        "reload": ReloadConfig(),
        "loop": LoopConfig("cluster.local."),
        "bind": bind,
        "forward": upstream,
        "prometheus": PrometheusConfig(":9253"),
        "health": HealthConfig("169.254.20.10:8080"),
    }
    for block, zone in ((rev4, "in-addr.arpa."), (rev6, "ip6.arpa.")):
        assert block.plugins["cache"] == CacheConfig(zones=(zone,), success_ttl=30, denial_ttl=30)
        assert block.plugins["forward"] == upstream
        assert "health" not in block.plugins
    assert root.plugins["forward"] == ForwardConfig(
        ".", (Upstream("dns", "192.0.2.53", 53), Upstream("dns", "2001:db8::53", 53)),
        resolv_conf=(str(resolv),))
    assert all(s.listen_hosts == ("169.254.20.10", "10.96.0.10") for s in cfg.servers)
    groups = cfg.group_by_listen()
    assert list(groups) == [("dns", "169.254.20.10", 53), ("dns", "10.96.0.10", 53)]
    assert all(len(g) == 4 for g in groups.values())
    assert cfg.select(53, "kube-dns.kube-system.svc.Cluster.Local.")[0] is cluster
    assert cfg.select(53, "10.0.96.10.in-addr.arpa")[0] is rev4
    assert cfg.select(53, "example.com.", host="10.96.0.10")[0] is root


def test_nodelocaldns_fixture_matches_upstream_placeholders() -> None:
    """The fixture is the ConfigMap text with only the placeholders filled in."""
    text = (FIXTURES / "nodelocaldns.Corefile").read_text()
    assert "__PILLAR__" not in text
    assert text.count("bind 169.254.20.10 10.96.0.10") == 4
    assert text.count("forward . 10.96.0.11 {") == 3
    assert "forward . /etc/resolv.conf\n" in text


def test_demo_corefile() -> None:
    cfg = parse_corefile(DEFAULT_DEMO_COREFILE, "<demo>")
    [block] = cfg.servers
    assert (block.zones, block.port, block.listen_hosts) == ((".",), 1053, ("127.0.0.1",))
    assert list(block.plugins) == ["bind", "errors", "kubernetes"]
    k = block.plugins["kubernetes"]
    assert isinstance(k, KubernetesConfig)
    assert (k.pods, k.ttl, k.fallthrough) == ("insecure", 30, ("in-addr.arpa.", "ip6.arpa."))
    assert is_runnable(block)


# -- lexical and structural syntax --------------------------------------------

def test_tokens_comments_and_quotes() -> None:
    text = ('a.com { # comment {\n  log . "{remote} \\"q\\" \\d"  # trailing\n'
            '  errors#glued comment\n  "multi\nline" x\n  y\n}\n')
    toks = [(t.text, t.line) for t in tokenize(text, "f")]
    assert toks == [("a.com", 1), ("{", 1), ("log", 2), (".", 2),
                    ('{remote} "q" \\d', 2), ("errors", 3), ("multi\nline", 4), ("x", 5),
                    ("y", 6), ("}", 7)]


def test_quoted_tokens_in_config() -> None:
    cfg = parse_corefile('example.org {\n  log . "{name} {type} \\"{rcode}\\""\n}\n')
    log = cfg.servers[0].plugins["log"]
    assert isinstance(log, LogConfig)
    assert log.rules[0].format == '{name} {type} "{rcode}"'
    assert log.rules[0].name == "."


def test_quoted_multiline_token_moves_following_lines() -> None:
    text = 'a.com {\n  log . "{name}\n{type}"\n  frobnicate\n}\n'
    with pytest.raises(CorefileError) as e:
        parse_corefile(text, "F")
    assert str(e.value) == "F:4: plugin frobnicate: unknown plugin"


def test_env_substitution(monkeypatch: pytest.MonkeyPatch) -> None:
    text = ("{$ZONE}:{%PORT%} {\n  kubernetes {$ZONE} {\n    ttl {$TTL}\n  }\n"
            "  prometheus {$UNSET}:9153\n}\n")
    env = {"ZONE": "Cluster.Local", "PORT": "5353", "TTL": "17"}
    [b] = parse_corefile(text, environ=env).servers
    assert (b.zones, b.port) == (("cluster.local.",), 5353)
    assert b.plugins["kubernetes"] == KubernetesConfig(zones=("cluster.local.",), ttl=17)
    assert b.plugins["prometheus"] == PrometheusConfig(":9153")  # unset -> ""
    # The process environment is the default.
    monkeypatch.setenv("ZONE", "example.net")
    monkeypatch.setenv("PORT", "1054")
    monkeypatch.setenv("TTL", "9")
    [b] = parse_corefile(text).servers
    assert (b.zones, b.port) == (("example.net.",), 1054)


def test_snippets() -> None:
    text = ("(common) {\n  errors\n  cache 30 {\n    success 100\n  }\n}\n"
            "a.com {\n  import common\n  loop\n}\nb.com:1053 {\n  import common\n}\n")
    a, b = parse_corefile(text, "S").servers
    assert list(a.plugins) == ["errors", "cache", "loop"]
    assert list(b.plugins) == ["errors", "cache"]
    assert a.plugins["cache"] == CacheConfig(zones=("a.com.",), success_capacity=100,
                                             success_ttl=30, denial_ttl=30)
    assert b.plugins["cache"] == CacheConfig(zones=("b.com.",), success_capacity=100,
                                             success_ttl=30, denial_ttl=30)
    # Directives from a snippet keep the snippet's lines.
    assert a.plugins["cache"].source == ("S", 3)


def test_snippet_errors() -> None:
    with pytest.raises(CorefileError, match=r"^S:4: redeclaration of previously declared "
                                            r"snippet x$"):
        parse_corefile("(x) {\n errors\n}\n(x) {\n loop\n}\n", "S")
    with pytest.raises(CorefileError, match=r"^S:2: snippet \(x\) imports itself$"):
        parse_corefile("(x) {\n import x\n}\n", "S")
    # Used before it is defined: CoreDNS then looks for a file of that name.
    with pytest.raises(CorefileError, match=r"^S:2: file to import not found: .*later$"):
        parse_corefile("a.com {\n import later\n}\n(later) {\n errors\n}\n", "S")


def test_import_glob_relative_to_corefile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          resolv: Path) -> None:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "10-a.server").write_text("a.com {\n  errors\n}\n")
    (conf / "20-b.server").write_text(f"b.com {{\n  forward . {resolv}\n}}\n")
    (conf / "ignored.txt").write_text("not a server block {\n")
    (tmp_path / "plugins.inc").write_text("errors\nloop\n")
    main = tmp_path / "Corefile"
    main.write_text("import conf.d/*.server\nc.com {\n  import plugins.inc\n}\n"
                    "d.com {\n  import nothing-matches-*.inc\n}\n")
    monkeypatch.chdir("/")  # imports resolve beside the Corefile, not in the cwd
    cfg = load_corefile(main)
    assert [s.zones for s in cfg.servers] == [("a.com.",), ("b.com.",), ("c.com.",), ("d.com.",)]
    assert cfg.servers[0].source == (str(conf / "10-a.server"), 1)
    assert list(cfg.servers[2].plugins) == ["errors", "loop"]
    assert cfg.servers[2].plugins["loop"].source == (str(tmp_path / "plugins.inc"), 2)
    assert cfg.servers[3].plugins == {}


def test_import_errors_name_the_imported_file(tmp_path: Path) -> None:
    (tmp_path / "bad.inc").write_text("errors\n\nfrobnicate\n")
    main = tmp_path / "Corefile"
    main.write_text("a.com {\n  import bad.inc\n}\n")
    with pytest.raises(CorefileError) as e:
        load_corefile(main)
    assert str(e.value) == f"{tmp_path / 'bad.inc'}:3: plugin frobnicate: unknown plugin"
    (tmp_path / "loop.inc").write_text("import loop.inc\n")
    main.write_text("import loop.inc\n")
    with pytest.raises(CorefileError, match=r"maximum file import depth \(1000\) exceeded"):
        load_corefile(main)
    main.write_text("import a*b*\n")
    with pytest.raises(CorefileError, match=r"^.*Corefile:1: glob pattern may only contain one"):
        load_corefile(main)


def test_keys_ports_transports_and_commas() -> None:
    text = ("dns://Example.ORG:1053 example.net .:5353 {\n  whoami\n}\n"
            "a.com,\n  b.com, c.com:1053 {\n  errors\n}\n"
            "10.0.0.0/24 fd00::/64:1053 {\n  errors\n}\n"
            ":1054 {\n  errors\n}\n")
    s = parse_corefile(text, "K").servers
    assert [(b.zones, b.port, b.source) for b in s] == [
        (("example.org.",), 1053, ("K", 1)),
        (("example.net.",), 53, ("K", 1)),
        ((".",), 5353, ("K", 1)),
        (("a.com.", "b.com."), 53, ("K", 4)),
        (("c.com.",), 1053, ("K", 5)),
        (("0.0.10.in-addr.arpa.",), 53, ("K", 8)),
        (("0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",), 1053, ("K", 8)),
        ((".",), 1054, ("K", 11)),
    ]
    # One block, several ports: one plugin chain shared, as in CoreDNS.
    assert s[0].plugins is s[1].plugins is s[2].plugins


def test_cidr_keys_off_octet_boundary() -> None:
    [b] = parse_corefile("10.0.0.0/15 {\n  errors\n}\n").servers
    assert b.zones == ("0.10.in-addr.arpa.", "1.10.in-addr.arpa.")
    [b] = parse_corefile("192.168.1.77/28 {\n  errors\n}\n").servers
    assert len(b.zones) == 16 and b.zones[0] == "64.1.168.192.in-addr.arpa."


def test_block_without_braces_and_brace_on_next_line() -> None:
    [b] = parse_corefile("example.org\nerrors\nloop\n").servers
    assert list(b.plugins) == ["errors", "loop"]
    [b] = parse_corefile("example.org\n{\n  errors\n}\n").servers
    assert list(b.plugins) == ["errors"]


def test_kubernetes_defaults_to_block_zones() -> None:
    [a, b] = parse_corefile("cluster.local 10.0.0.0/24 {\n  kubernetes\n}\n"
                            "x.local:1053 {\n  kubernetes\n}\n").servers
    assert a.plugins["kubernetes"] == KubernetesConfig(
        zones=("cluster.local.", "0.0.10.in-addr.arpa."))
    assert b.plugins["kubernetes"] == KubernetesConfig(zones=("x.local.",))


# -- selection and grouping ----------------------------------------------------

def test_most_specific_block() -> None:
    cfg = parse_corefile("example.org {\n errors\n}\nsub.example.org {\n errors\n}\n"
                         ". {\n errors\n}\nexample.org:1053 {\n errors\n}\n")
    org, sub, root, other_port = cfg.servers
    on53 = [s for s in cfg.servers if s.port == 53]
    assert select_block(on53, "a.sub.example.org.") == (sub, "sub.example.org.")
    assert select_block(on53, "SUB.Example.Org") == (sub, "sub.example.org.")
    assert select_block(on53, "xsub.example.org.") == (org, "example.org.")
    assert select_block(on53, "example.org.") == (org, "example.org.")
    assert select_block(on53, "org.") == (root, ".")
    assert select_block(on53, ".") == (root, ".")
    assert select_block([org, sub], "example.com.") is None
    assert cfg.select(1053, "www.example.org") == (other_port, "example.org.")
    assert cfg.select(1053, "example.com") is None
    assert cfg.select(5353, "example.org") is None


def test_group_by_listen_wildcard_and_bound() -> None:
    cfg = parse_corefile("a.com {\n bind 127.0.0.1 ::1\n}\nb.com {\n bind 127.0.0.1\n}\n"
                         "c.com:1053 {\n errors\n}\n")
    groups = cfg.group_by_listen()
    assert {k: [s.zones[0] for s in v] for k, v in groups.items()} == {
        ("dns", "127.0.0.1", 53): ["a.com.", "b.com."],
        ("dns", "::1", 53): ["a.com."],
        ("dns", "", 1053): ["c.com."],
    }


# -- errors: exact file:line messages -----------------------------------------

MALFORMED = [
    ("unclosed block", ".:53 {\n  errors\n",
     "C:1: unexpected end of file: missing '}' to close the block opened on line 1"),
    ("unclosed plugin block", ".:53 {\n  errors\n  kubernetes cluster.local {\n    ttl 5\n",
     "C:3: unexpected end of file: missing '}' to close the '{' opened on line 3"),
    ("stray close brace", ".:53 {\n  errors\n}\n}\n", "C:4: unexpected '}' outside of any block"),
    ("brace without key", "{\n  errors\n}\n",
     "C:1: a server block needs at least one key (zone) before '{'"),
    ("unterminated quote", '.:53 {\n  log . "{name}\n}\n', "C:2: unterminated quoted string"),
    ("trailing comma at eof", "a.com,",
     "C:1: unexpected end of file after ',': expected another address"),
    ("comma before brace", "a.com, {\n errors\n}\n",
     "C:1: expected another address but had '{' - check for extra comma"),
    ("unknown plugin", ".:53 {\n  errors\n  frobnicate on\n}\n",
     "C:3: plugin frobnicate: unknown plugin"),
    ("coredns plugin not in fastdns", ".:53 {\n  k8s_external example.org\n}\n",
     "C:2: plugin k8s_external: not implemented by fastdns"),
    ("bad zone in key", "a..b:53 {\n  errors\n}\n",
     "C:1: server block key 'a..b:53': zone is not a valid domain name: a..b"),
    ("key ends with colon", "a.com: {\n errors\n}\n",
     "C:1: server block key 'a.com:': expecting data after last colon: 'a.com:'"),
    ("tls server", "tls://.:853 {\n  errors\n}\n",
     "C:1: server block key 'tls://.:853': tls:// servers are not supported by fastdns "
     "(plain DNS over UDP and TCP only)"),
    ("same zone twice", "example.org {\n errors\n}\nExample.org:53 {\n errors\n}\n",
     "C:4: cannot serve dns://example.org.:53 - it is already defined"),
    ("bound and unbound overlap", ". {\n bind 127.0.0.1\n}\n.:53 {\n errors\n}\n",
     "C:4: cannot serve dns://.:53 - zone overlap listener capacity with "
     "dns://.:53 on 127.0.0.1"),
    ("plugin twice", ".:53 {\n  errors\n  errors\n}\n",
     "C:3: plugin errors: this plugin can only be used once per server block"),
    ("kubernetes ttl range", ".:53 {\n  kubernetes cluster.local {\n    ttl 3601\n  }\n}\n",
     "C:3: plugin kubernetes: ttl must be in range [0, 3600]: 3601"),
    ("kubernetes ttl not a number", ".:53 {\n  kubernetes cluster.local {\n    ttl x\n  }\n}\n",
     "C:3: plugin kubernetes: ttl: invalid integer 'x'"),
    ("kubernetes pods", ".:53 {\n  kubernetes cluster.local {\n    pods secure\n  }\n}\n",
     "C:3: plugin kubernetes: wrong value for pods: secure, must be one of: disabled, "
     "verified, insecure"),
    ("kubernetes unknown option", ".:53 {\n  kubernetes cluster.local {\n\n    frob\n  }\n}\n",
     "C:4: plugin kubernetes: unknown property 'frob'"),
    ("kubernetes reverse only", ".:53 {\n  kubernetes in-addr.arpa\n}\n",
     "C:2: plugin kubernetes: non-reverse zone name must be used"),
    ("kubernetes ignore", ".:53 {\n  kubernetes cluster.local {\n    ignore foo\n  }\n}\n",
     "C:3: plugin kubernetes: unable to parse ignore value: 'foo'"),
    ("forward to nothing", ".:53 {\n  forward .\n}\n",
     "C:2: plugin forward: forward needs FROM and at least one TO"),
    ("forward to a missing file", ".:53 {\n  forward . /nonexistent/resolv.conf\n}\n",
     "C:2: plugin forward: not an IP address or file: '/nonexistent/resolv.conf'"),
    ("forward policy", ".:53 {\n  forward . 192.0.2.1 {\n    policy fastest\n  }\n}\n",
     "C:3: plugin forward: unknown policy 'fastest'"),
    ("forward rcode", ".:53 {\n  forward . 192.0.2.1 {\n    next NXDOMAIN BOGUS\n  }\n}\n",
     "C:3: plugin forward: BOGUS is not a valid rcode"),
    ("forward https", ".:53 {\n  forward . https://192.0.2.1\n}\n",
     "C:2: plugin forward: 'https' is not supported as a destination protocol in forward: "
     "https://192.0.2.1"),
    ("forward too many", ".:53 {\n  forward . " + " ".join(f"192.0.2.{i}" for i in range(16))
     + "\n}\n", "C:2: plugin forward: more than 15 TOs configured: 16"),
    ("cache zero ttl", ".:53 {\n  cache 0\n}\n",
     "C:2: plugin cache: cache TTL can not be zero or negative: 0"),
    ("cache servfail", ".:53 {\n  cache {\n    servfail 6m\n  }\n}\n",
     "C:3: plugin cache: caching SERVFAIL responses over 5 minutes is not permitted"),
    ("cache prefetch percentage", ".:53 {\n  cache {\n    prefetch 2 1m 95%\n  }\n}\n",
     "C:3: plugin cache: percentage should fall in range [10, 90]: 95"),
    ("health duration", ".:53 {\n  health {\n    lameduck 5x\n  }\n}\n",
     "C:3: plugin health: unable to parse lameduck duration value: time: unknown unit \"x\" "
     "in duration \"5x\""),
    ("health address without port", ".:53 {\n  health localhost\n}\n",
     "C:2: plugin health: address localhost: missing port in address"),
    ("reload too fast", ".:53 {\n  reload 1s\n}\n",
     "C:2: plugin reload: interval value must be greater or equal to 2s"),
    ("loadbalance weighted", ".:53 {\n  loadbalance weighted /etc/w.txt\n}\n",
     "C:2: plugin loadbalance: policy 'weighted' is not supported by fastdns (answers are "
     "rotated round_robin only)"),
    ("errors arguments", ".:53 {\n  errors stdout more\n}\n",
     "C:2: plugin errors: wrong argument count"),
    ("bind bad address", ".:53 {\n  bind 127.0.0.1 no-such-iface0\n}\n",
     "C:2: plugin bind: not a valid IP address or interface name: 'no-such-iface0'"),
    ("loop with argument", ".:53 {\n  loop now\n}\n",
     "C:2: plugin loop: unexpected argument 'now'"),
    ("log class", ".:53 {\n  log {\n    class everything\n  }\n}\n",
     "C:3: plugin log: invalid Class: 'everything'"),
    ("hosts inline", ".:53 {\n  hosts {\n    10.0.0.1 a.example\n    nope b.example\n  }\n}\n",
     "C:4: plugin hosts: inline entry: 'nope' is not an IP address"),
    ("block opened on next line of plugin", ".:53 {\n  forward . 192.0.2.1\n  {\n  }\n}\n",
     "C:3: plugin forward: unexpected token '{'"),
    ("import without argument", ".:53 {\n  import\n}\n",
     "C:2: import needs one argument: a snippet name, a file or a glob"),
]


@pytest.mark.parametrize(("text", "message"), [(t, m) for _, t, m in MALFORMED],
                         ids=[i for i, _, _ in MALFORMED])
def test_malformed(text: str, message: str) -> None:
    with pytest.raises(CorefileError) as e:
        parse_corefile(text, "C")
    assert str(e.value) == message


def test_unsupported_is_a_corefile_error() -> None:
    with pytest.raises(Unsupported) as e:
        parse_corefile(".:53 {\n  dnssec\n}\n", "U")
    assert (e.value.file, e.value.line, e.value.plugin) == ("U", 2, "dnssec")


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CorefileError, match=r"Corefile:0: cannot read Corefile: No such file"):
        load_corefile(tmp_path / "Corefile")


# -- support registry -----------------------------------------------------------

def test_supported_registry(tmp_path: Path, resolv: Path) -> None:
    # a plugin fastdns runs or parses has a parser and a config, the others none
    for row in registry.PLUGINS:
        assert (row.parse is not None) == (row.support in ("full", "ignored", "parsed")), \
            row.name
        assert (row.config is not None) == (row.parse is not None), row.name
        assert row.config is None or row.config.name == row.name
    [b] = load_corefile(fixture_copy("kubeadm.Corefile", tmp_path, resolv)).servers
    pending = [name for name, _ in not_running(b)]
    assert pending == [n for n in b.plugins if not registry.runs(n)]
    assert is_runnable(b) == (not pending)


# -- check-corefile (as a subprocess) -----------------------------------------

def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "fastdns", "check-corefile", str(path)],
                          capture_output=True, text=True, env=env, timeout=60, cwd=REPO)


def test_check_corefile_cli(tmp_path: Path, resolv: Path) -> None:
    demo = tmp_path / "demo"
    demo.write_text(DEFAULT_DEMO_COREFILE)
    r = run_check(demo)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == [
        f"{demo}:1: key .:1053: OK",
        f"{demo}:2: plugin bind: OK",
        f"{demo}:3: plugin errors: OK",
        f"{demo}:4: plugin kubernetes: OK",
        "fastdns runs this Corefile as-is",
    ]

    kubeadm = fixture_copy("kubeadm.Corefile", tmp_path, resolv)
    r = run_check(kubeadm)
    lines = r.stdout.splitlines()
    assert len(lines) == 12  # the key, 10 directives, the verdict
    for name, lineno in (("errors", 3), ("kubernetes", 8), ("forward", 14), ("cache", 17)):
        [line] = [x for x in lines if x.startswith(f"{kubeadm}:{lineno}: plugin {name}: ")]
        expect = "OK" if registry.runs(name) else "UNSUPPORTED: parsed, but"
        assert line.split(": ", 2)[2].startswith(expect), line
    every_full = all(registry.runs(n) for n in (
        "errors", "health", "ready", "kubernetes", "prometheus", "forward", "cache", "loop",
        "reload", "loadbalance"))
    assert r.returncode == (0 if every_full else 1)

    bad = tmp_path / "bad"
    bad.write_text(".:53 {\n  errors\n  frob\n  etcd skydns.local\n"
                   "  kubernetes cluster.local {\n    ttl 9999\n  }\n}\n")
    r = run_check(bad)
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        f"{bad}:1: key .:53: OK",
        f"{bad}:2: plugin errors: OK",
        f"{bad}:3: plugin frob: ERROR: unknown plugin",
        f"{bad}:4: plugin etcd: UNSUPPORTED: not implemented by fastdns",
        f"{bad}:5: plugin kubernetes: ERROR: ttl must be in range [0, 3600]: 9999 (line 6)",
        "fastdns cannot run this Corefile as-is",
    ]

    warn = tmp_path / "warn"
    warn.write_text(".:53 {\n  errors\n  pprof 127.0.0.1:6060 {\n    block 1\n  }\n"
                    "  trace zipkin localhost:9411\n  dnstap /tmp/tap.sock full\n"
                    "  forward . 127.0.0.1:5300\n}\n")
    r = run_check(warn)
    assert r.returncode == 0, r.stdout
    lines = r.stdout.splitlines()
    assert [x.split(": ")[2] for x in lines[2:5]] == ["WARN"] * 3, lines
    assert lines[2].startswith(f"{warn}:3: plugin pprof: WARN: accepted, not run: "
                               "changes nothing about answers"), lines
    assert lines[-1] == "fastdns runs this Corefile as-is, with warnings"
    warn.write_text(".:53 {\n  dnstap\n  pprof a b\n  metadata {\n    x\n  }\n"
                    "  forward . 127.0.0.1:5300\n}\n")
    r = run_check(warn)  # read as CoreDNS reads them: a socket, one address, no block
    assert r.returncode == 1 and r.stdout.count(": ERROR: wrong argument count") == 3, r.stdout
    warn.write_text(".:53 {\n  metadata\n  forward . 127.0.0.1:5300\n}\n")
    r = run_check(warn)
    assert r.returncode == 0 and ": plugin metadata: WARN: " in r.stdout, r.stdout

    syntax = tmp_path / "syntax"
    syntax.write_text(".:53 {\n  errors\n")
    r = run_check(syntax)
    assert r.returncode == 2
    assert r.stdout.splitlines()[0] == (
        f"{syntax}:1: unexpected end of file: missing '}}' to close the block opened on line 1")

    r = run_check(tmp_path / "missing")
    assert r.returncode == 2
