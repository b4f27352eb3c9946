"""`fastdns serve` as an operator starts it: CoreDNS's flags, the API found from the
Corefile alone, and one verdict shared with `check-corefile`."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dns.exception
import dns.rcode
import pytest
import yaml

from fastdns import coredns_cli
from fastdns.control import apiaccess
from fastdns.corefile.config import parse_corefile
from fastdns.supervisor import plan as supervisor
from fastdns.testing.fakeapi.server import FakeApiServer
from tests.helpers import (
    DEMO,
    KUBERNETES,
    ROOT,
    Server,
    a_records,
    ask,
    free_port,
    run_serve,
    service_answered_after,
)

# -- CoreDNS's flags, rewritten (coredns_cli.translate) -------------------------

TRANSLATE = [
    (["-conf", "/etc/coredns/Corefile"], ["--corefile", "/etc/coredns/Corefile"]),
    (["--conf=/c"], ["--corefile", "/c"]),
    (["--corefile", "/a", "-conf", "/b"], ["--corefile", "/a", "--corefile", "/b"]),
    (["-dns.port", "1053"], ["--dns-port", "1053"]),
    (["-dns.port=5353", "-quiet"], ["--dns-port", "5353", "--quiet"]),
    (["-quiet=false", "-version=true"], ["--version"]),
    (["-pidfile", "/run/x.pid", "-plugins"], ["--pidfile", "/run/x.pid", "--plugins"]),
    (["--workers", "2"], ["--workers", "2"]),
    (["--", "-conf", "x"], ["--", "-conf", "x"]),
    (["---conf", "x"], ["---conf", "x"]),  # Go: bad flag syntax; argparse refuses it
]


@pytest.mark.parametrize(("argv", "want"), TRANSLATE)
def test_translate(argv, want):
    assert coredns_cli.translate(argv) == want


@pytest.mark.parametrize(("argv", "message"), [
    (["-conf"], "flag needs an argument: -conf"),
    (["-quiet=maybe"], 'invalid boolean value "maybe" for -quiet: parse error'),
])
def test_bad_flags_are_one_line_exit_2(argv, message):
    with pytest.raises(coredns_cli.FlagError, match=message):
        coredns_cli.translate(argv)
    r = run_serve(argv)
    assert (r.returncode, r.stderr.strip()) == (2, message)


def test_version_and_plugins():
    r = run_serve(["--corefile", "/etc/coredns/Corefile", "-version"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "fastdns-0.1.0" and lines[1].startswith(f"{sys.platform}/"), r.stdout
    r = run_serve(["-plugins"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:8] == ["Server types:", "  dns", "", "Caddyfile loaders:", "  flag",
                         "  default", "", "Other plugins:"]
    for name in ("kubernetes", "forward", "cache", "health", "ready", "prometheus", "loop"):
        assert f"  dns.{name}" in lines
    assert "  dns.view" not in lines  # not run by fastdns: not listed


def test_coredns_flags_on_a_running_server(tmp_path):
    """kubeadm's args appended to the image's entrypoint: `-conf` wins over the
    entrypoint's --corefile, `-dns.port` gives the port of a key without one,
    `-pidfile` holds the server's PID while it runs, `-quiet` drops the banner."""
    port = free_port()
    cf = tmp_path / "Corefile"
    cf.write_text("cluster.local in-addr.arpa {\n    bind 127.0.0.1\n"
                  "    kubernetes cluster.local in-addr.arpa\n}\n")
    pidfile = tmp_path / "coredns.pid"
    srv = Server(tmp_path, ["--corefile", "/etc/coredns/Corefile", "-conf", str(cf),
                            "-dns.port", str(port), "-pidfile", str(pidfile), "-quiet",
                            "--state", str(DEMO), "--workers", "1"], port)
    try:
        deadline = time.monotonic() + 30
        answered = None
        while time.monotonic() < deadline and srv.proc.poll() is None:
            try:
                answered = ask(KUBERNETES, port=port, timeout=0.3)
                if a_records(answered):
                    break
            except (dns.exception.Timeout, OSError):
                pass
            time.sleep(0.05)
        assert answered is not None and a_records(answered) == {"10.96.0.1"}, srv.log()
        assert pidfile.read_text() == f"{srv.proc.pid}\n"
        log = srv.log()
        assert "supervisor: serving" not in log and "fastdns-0.1.0" not in log, log
        assert srv.stop(signal.SIGTERM) == 0, srv.log()
        assert not pidfile.exists()
    finally:
        srv.stop(signal.SIGKILL)


# -- where the cluster state comes from (supervisor.choose_source) -----------------

KUBE_ONLY = ".:1053 {\n    kubernetes cluster.local\n}\n"


def _args(**kw) -> argparse.Namespace:
    base = {"kubeconfig": None, "state": None, "demo": False}
    base.update(kw)
    return argparse.Namespace(**base)


def test_flags_override_the_corefile(tmp_path):
    config = parse_corefile(KUBE_ONLY)
    assert supervisor.choose_source(_args(kubeconfig="/k"), config, {}) == ("kube", "/k")
    assert supervisor.choose_source(_args(demo=True), config, {})[0] == "demo"
    assert supervisor.choose_source(_args(state=str(DEMO)), config, {}) == ("state", str(DEMO))


def test_the_corefile_alone_chooses_the_api(tmp_path):
    endpoint = parse_corefile(".:1053 {\n    kubernetes cluster.local {\n"
                              "        endpoint https://10.0.0.1:6443\n    }\n}\n")
    assert supervisor.choose_source(_args(), endpoint, {}) == ("kube", None)
    kc = tmp_path / "kubeconfig"
    kc.write_text("{}")
    kubeconfig = parse_corefile(".:1053 {\n    kubernetes cluster.local {\n"
                                f"        kubeconfig {kc} ctx\n    }}\n}}\n")
    assert supervisor.choose_source(_args(), kubeconfig, {}) == ("kube", None)
    missing = parse_corefile(".:1053 {\n    kubernetes cluster.local {\n"
                             f"        kubeconfig {tmp_path / 'nope'}\n    }}\n}}\n")
    with pytest.raises(supervisor.ServeError, match="nope: no such file"):
        supervisor.choose_source(_args(), missing, {})
    forward_only = parse_corefile(".:1053 {\n    forward . 127.0.0.1:5300\n}\n")
    assert supervisor.choose_source(_args(), forward_only, {}) == ("none", None)


def test_in_a_pod_without_a_token_says_so():
    config = parse_corefile(KUBE_ONLY)
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    if os.access(apiaccess.SA_TOKEN, os.R_OK):
        pytest.skip("this machine has a service-account token mounted")
    with pytest.raises(supervisor.ServeError, match="automountServiceAccountToken"):
        supervisor.choose_source(_args(), config, env)


def test_no_source_at_all_is_one_line(tmp_path):
    cf = tmp_path / "Corefile"
    cf.write_text(KUBE_ONLY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run([sys.executable, "-m", "fastdns", "serve", "-conf", str(cf)],
                       capture_output=True, text=True, timeout=30, env=env, cwd=ROOT)
    assert r.returncode == 1
    assert r.stderr.strip() == apiaccess.NO_SOURCE
    for way in ("kubeconfig", "endpoint", "KUBERNETES_SERVICE_HOST", "--state", "--demo"):
        assert way in r.stderr


def _serve_from(tmp_path: Path, corefile: str, port: int) -> Server:
    (tmp_path / "Corefile").write_text(corefile)
    return Server(tmp_path, ["-conf", str(tmp_path / "Corefile"), "--workers", "2"], port)


def _created_service_answers(api: FakeApiServer, port: int) -> float:
    took = service_answered_after(api, port, timeout=5.0)
    # every worker answers it (one query lands on each in turn; ask several times)
    for _ in range(8):
        assert a_records(ask("made-later.default.svc.cluster.local.", port=port)) \
            == {"10.96.99.9"}
    return took


@pytest.mark.slow
@pytest.mark.parametrize("how", ["endpoint", "kubeconfig"])
def test_serve_finds_the_api_from_the_corefile(tmp_path, how):
    """No --kubeconfig: the kubernetes plugin's own `endpoint` / `kubeconfig` option."""
    with FakeApiServer() as api:
        api.load(yaml.safe_load_all(DEMO.read_text()))
        port = free_port()
        option = (f"endpoint {api.url}" if how == "endpoint"
                  else f"kubeconfig {api.write_kubeconfig(str(tmp_path / 'kc'))}")
        srv = _serve_from(tmp_path, f"cluster.local:{port} {{\n    bind 127.0.0.1\n"
                          f"    kubernetes cluster.local {{\n        {option}\n    }}\n}}\n",
                          port)
        try:
            srv.wait_answering()
            log = srv.log()
            assert f"watching the Kubernetes API: {how} " in log, log
            assert _created_service_answers(api, port) < 2.0, srv.log()[-2000:]
            assert srv.stop(signal.SIGTERM) == 0
        finally:
            srv.stop(signal.SIGKILL)


# -- one verdict: check-corefile accepts exactly what serve runs ------------------

VERDICT_CASES = {
    "kubeadm": (ROOT / "tests" / "corefiles" / "kubeadm.Corefile").read_text(),
    "nodelocal": (ROOT / "tests" / "corefiles" / "nodelocaldns.Corefile").read_text(),
    "log-only": "example.org:1053 {\n    errors\n    log\n}\n",
    "two-kubernetes": ("a.local:1053 {\n    kubernetes a.local\n}\n"
                       "b.local:1053 {\n    kubernetes b.local\n}\n"),
    "etcd": ".:1053 {\n    etcd skydns.local\n    forward . 127.0.0.1:5300\n}\n",
    "pprof": (".:1053 {\n    pprof\n    dnstap unix:///tmp/tap.sock\n"
              "    forward . 127.0.0.1:5300\n}\n"),
    "many-unsupported": (".:1053 {\n    sign db.example example.org\n    forward . 127.0.0.1\n}\n"
                         "b.test:1053 {\n    etcd\n    forward . 127.0.0.1\n    frob\n}\n"),
    "hosts": ".:1053 {\n    hosts {\n        192.0.2.1 a.example\n    }\n}\n",
    "whoami": ".:1053 {\n    whoami\n}\n",
}


@pytest.mark.parametrize("case", sorted(VERDICT_CASES))
def test_check_and_serve_agree(tmp_path, case):
    cf = tmp_path / "Corefile"
    cf.write_text(VERDICT_CASES[case])
    check = subprocess.run([sys.executable, "-m", "fastdns", "check-corefile", str(cf)],
                           capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert check.returncode in (0, 1), check.stdout + check.stderr
    try:
        supervisor.make_plan(argparse.Namespace(
            corefile=str(cf), demo=True, state=None, kubeconfig=None, workers=1,
            log_level="info"))
        served = True
    except supervisor.ServeError as e:
        served = False
        refusal = str(e)
        # the refusal serve prints is a line check-corefile printed too
        reason = str(e).split(": ", 1)[1]
        assert reason.split(": ")[-1] in check.stdout, (str(e), check.stdout)
    assert (check.returncode == 0) == served, check.stdout
    assert case not in ("kubeadm", "nodelocal", "hosts", "whoami", "pprof") or served
    if case == "many-unsupported":
        # every line at once, as check-corefile lists them (sign, etcd, frob)
        assert not served and [x.split(": ")[1] for x in refusal.splitlines()] == [
            "plugin sign", "plugin etcd", "plugin frob"], refusal
