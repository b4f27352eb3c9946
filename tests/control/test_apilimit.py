"""apiserver_qps / apiserver_burst / apiserver_max_inflight (control/apilimit.py):
the token bucket and the in-flight cap as CoreDNS's client-go rest.Config and
its max-inflight round tripper give them, the Corefile lines as setup.go reads
them, and a real list/watch sync through the real client paced by them."""

from __future__ import annotations

import threading
import time

import pytest

from fastdns.control.apilimit import ApiLimiter
from fastdns.corefile import config as corefile
from fastdns.corefile.errors import CorefileError, Unsupported
from tests.control.test_kube_source import api, run_source, svc  # noqa: F401 - fixtures


class Clock:
    def __init__(self) -> None:
        self.t = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def test_the_bucket_gives_the_burst_then_qps():
    c = Clock()
    lim = ApiLimiter(qps=4, burst=3, clock=c, sleep=c.sleep)
    times = []
    for _ in range(7):
        with lim.request():
            times.append(c.t)
    assert times[:3] == [100.0] * 3  # the burst at once
    gaps = [round(b - a, 6) for a, b in zip(times[2:], times[3:], strict=False)]
    assert gaps == [0.25] * 4  # then one every 1/qps


def test_qps_alone_takes_client_go_s_default_burst_and_zero_is_unlimited():
    c = Clock()
    lim = ApiLimiter(qps=1, clock=c, sleep=c.sleep)
    for _ in range(10):
        with lim.request():
            pass
    assert c.slept == []  # rest.Config's default Burst: 10
    with lim.request():
        pass
    assert c.slept and abs(sum(c.slept) - 1.0) < 1e-6
    assert not ApiLimiter().limits


def test_max_inflight_caps_concurrent_requests():
    lim = ApiLimiter(max_inflight=2)
    inside, peak, lock = [0], [0], threading.Lock()

    def one():
        with lim.request():
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.05)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert peak[0] == 2


def parse(option: str):
    text = f"cluster.local:53 {{\n    kubernetes cluster.local {{\n        {option}\n    }}\n}}\n"
    return corefile.parse_corefile(text, "Corefile").servers[0].plugins["kubernetes"]


@pytest.mark.parametrize("line, field, want", [
    ("apiserver_qps 12.5", "apiserver_qps", 12.5),
    ("apiserver_qps 0", "apiserver_qps", 0.0),
    ("apiserver_burst 20", "apiserver_burst", 20),
    ("apiserver_max_inflight 4", "apiserver_max_inflight", 4),
])
def test_corefile_accepts(line, field, want):
    assert getattr(parse(line), field) == want


@pytest.mark.parametrize("line, message", [
    ("apiserver_qps", "wrong argument count"),
    ("apiserver_qps 1 2", "wrong argument count"),
    ("apiserver_qps fast", 'invalid apiserver_qps "fast"'),
    ("apiserver_qps -1", "apiserver_qps must be >= 0"),
    ("apiserver_burst 1.5", 'invalid apiserver_burst "1.5"'),
    ("apiserver_burst -3", "apiserver_burst must be >= 0"),
    ("apiserver_max_inflight x", 'invalid apiserver_max_inflight "x"'),
])
def test_corefile_refuses(line, message):
    with pytest.raises(CorefileError) as e:
        parse(line)
    assert message in str(e.value) and str(e.value).startswith("Corefile:3: plugin kubernetes:")


@pytest.mark.parametrize("line", ["multicluster clusterset.local", "zonal"])
def test_options_fastdns_lacks_are_unsupported_not_unknown(line):
    with pytest.raises(Unsupported) as e:
        parse(line)
    assert "is not implemented by fastdns" in str(e.value)


def test_a_sync_through_the_real_client_is_paced(api, run_source):  # noqa: F811
    for i in range(8):
        api.create("Service", svc(f"s{i}", f"10.0.1.{i}"))
    before = api.requests()
    t0 = time.monotonic()
    src, rec = run_source(page_size=1, api_qps=10, api_burst=2)
    took = time.monotonic() - t0
    made = api.requests() - before  # list pages and watch starts
    assert made >= 12, made
    # after the burst of 2, no faster than 10 a second
    assert took >= (made - 2 - 3) / 10, (made, took)  # the 3 watch starts may trail the sync
    names = {o.name for k, _, o in rec.since(0) if k == "Service"}
    assert {f"s{i}" for i in range(8)} <= names
