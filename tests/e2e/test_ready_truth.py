"""/ready tells the truth after any restart of the control process.

``/ready`` means "every worker serves a snapshot": a generation is in force,
each worker has mapped one, and it is a complete one. A control process
restarted while the state file is bad keeps the image its predecessor
published (and, from the restart copy of the last good state, compiles the
Corefile in force), so it is ready; the bad file shows in
``fastdns_state_pending_bad`` and the log.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import urllib.request

import dns.rcode
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastdns.control import observability
from fastdns.control.process import build_compiler
from fastdns.control.publisher import Publisher
from fastdns.corefile import config as corefile
from fastdns.ipc import shm
from fastdns.zone.state import demo_path, load_state
from tests.helpers import DEMO, KUBERNETES, Server, a_records, ask, free_port, http_get, wait_for

# -- the hook in-process: what a restarted control process finds ---------------------------


def _corefile(extra: str = "") -> str:
    return ("cluster.local:53 {\n    kubernetes cluster.local\n    ready 127.0.0.1:0\n"
            f"    prometheus 127.0.0.1:0\n{extra}}}\n")


def _metric(eps, name: str) -> float:
    with urllib.request.urlopen(eps.url("/metrics"), timeout=5) as r:
        for fam in text_string_to_metric_families(r.read().decode()):
            for s in fam.samples:
                if s.name == name:
                    return s.value
    raise AssertionError(f"no {name}")


@pytest.fixture
def segment():
    instance = "rt" + secrets.token_hex(5)
    ctl = shm.ControlSegment.create(instance, 2)
    yield ctl
    ctl.close()
    shm.sweep(instance)


def _publish(ctl, synced: bool, times: int = 1) -> int:
    config = corefile.parse_corefile(_corefile())
    compiler = build_compiler(config)
    compiler.synced = synced
    pub = Publisher(ctl)
    state = load_state(demo_path())
    for _ in range(times):
        pub.publish(bytes(compiler.full(state)), force=True)
    pub.close()
    return ctl.generation


def test_restarted_hook_reports_the_image_in_force(segment):
    gen = _publish(segment, synced=True, times=3)
    assert gen == 3
    for i in range(segment.nworkers):
        segment.set_mapped(i, gen)
    config = corefile.parse_corefile(_corefile())
    obs = observability.Observability.start(config, segment, _corefile())  # no publish of its own
    try:
        eps = obs.endpoints
        assert http_get(eps.url("/ready")) == (200, "OK")
        assert _metric(eps, "fastdns_snapshot_generation") == 3
        assert _metric(eps, "fastdns_snapshot_image_bytes") > 64
        written = os.stat(os.path.join(shm.SHM_DIR, segment.image_name())).st_mtime
        assert _metric(eps, "fastdns_snapshot_published_timestamp_seconds") == \
            pytest.approx(written)
        # no state file source: its metrics are absent, not a misleading 0
        with pytest.raises(AssertionError):
            _metric(eps, "fastdns_state_pending_bad")
        segment.set_mapped(1, 0)  # a worker (re)starting has mapped nothing yet
        assert http_get(eps.url("/ready")) == (503, "workers")
    finally:
        obs.stop()


def test_restarted_hook_waits_when_the_image_in_force_is_incomplete(segment):
    """An unsynced image (the API never answered) is served, but not ready: CoreDNS's rule."""
    gen = _publish(segment, synced=False)
    for i in range(segment.nworkers):
        segment.set_mapped(i, gen)
    obs = observability.Observability.start(corefile.parse_corefile(_corefile()), segment,
                                            _corefile())
    try:
        assert http_get(obs.endpoints.url("/ready")) == (503, "kubernetes")
        assert _metric(obs.endpoints, "fastdns_snapshot_generation") == gen
        obs.published(gen + 1, 4096, synced=True)
        assert http_get(obs.endpoints.url("/ready")) == (200, "OK")
    finally:
        obs.stop()


def test_first_start_still_waits_for_its_first_publish(segment):
    obs = observability.Observability.start(corefile.parse_corefile(_corefile()), segment,
                                            _corefile())
    try:
        assert http_get(obs.endpoints.url("/ready")) == (503, "kubernetes,workers")
        assert _metric(obs.endpoints, "fastdns_snapshot_generation") == 0
    finally:
        obs.stop()


# -- a served instance: kill -9 the control process while the state file is bad --------


def corefile_text(port: int, rport: int, mport: int, ttl: int) -> str:
    return f"""\
cluster.local:{port} {{
    bind 127.0.0.1
    kubernetes cluster.local {{
        ttl {ttl}
    }}
    ready 127.0.0.1:{rport}
    prometheus 127.0.0.1:{mport}
    reload 1h
}}
"""


def scrape(mport: int) -> dict[str, float]:
    status, body = http_get(f"http://127.0.0.1:{mport}/metrics", timeout=3)
    if status != 200:
        return {}
    return {s.name: s.value for fam in text_string_to_metric_families(body)
            for s in fam.samples if not s.labels}


def _ttl(port: int) -> int | None:
    try:
        r = ask(KUBERNETES, port=port, timeout=1.0)
    except Exception:  # noqa: BLE001 - not answering right now
        return None
    return r.answer[0].ttl if r.answer else None


def test_restart_with_a_bad_state_file_is_ready_and_applies_a_reload(tmp_path):
    state = tmp_path / "cluster.yaml"
    good = DEMO.read_text()
    state.write_text(good)
    port, rport, mport = free_port(), free_port(), free_port()
    cf = tmp_path / "Corefile"
    cf.write_text(corefile_text(port, rport, mport, 30))
    srv = Server(tmp_path, ["--corefile", str(cf), "--state", str(state), "--workers", "2"],
                 port)
    ready = f"http://127.0.0.1:{rport}/ready"
    try:
        srv.wait_answering()
        assert wait_for(lambda: http_get(ready) == (200, "OK"), 10)
        copy = os.path.join(shm.SHM_DIR, f"{shm.PREFIX}{srv.instance}-state")
        # the restart copy of the last good state, written a second after the
        # state is accepted (statefile.py: not in the way of the first compile)
        assert wait_for(lambda: os.path.exists(copy), 5)

        # the file goes bad (emptied) and the running control process refuses it
        with open(state, "w"):
            pass
        assert wait_for(lambda: scrape(mport).get("fastdns_state_pending_bad") == 1, 5)

        # 1. kill -9 the control process: its successor is ready with the last good state
        old = srv.pids("control")[-1]
        os.kill(old, signal.SIGKILL)
        assert wait_for(lambda: len(srv.pids("control")) >= 2, 10), srv.log()[-2000:]
        assert wait_for(lambda: scrape(mport).get("fastdns_state_pending_bad") == 1, 10)
        assert http_get(ready) == (200, "OK")
        m = scrape(mport)
        assert m["fastdns_snapshot_generation"] > 0 and m["fastdns_state_rejected_total"] >= 1
        assert "serving the last good state kept from before the restart" in srv.log()
        assert a_records(ask(KUBERNETES, port=port)) and _ttl(port) == 30

        # 2. a Corefile reload in that state (it restarts the control process) is applied
        cf.write_text(corefile_text(port, rport, mport, 45))
        os.kill(srv.proc.pid, signal.SIGUSR1)
        assert wait_for(lambda: _ttl(port) == 45, 15), srv.log()[-3000:]
        assert wait_for(lambda: len(srv.pids("control")) >= 3, 10)
        assert wait_for(lambda: http_get(ready) == (200, "OK"), 10)
        assert wait_for(lambda: scrape(mport).get("fastdns_state_pending_bad") == 1, 10)
        assert ask("nginx.default.svc.cluster.local.", port=port).rcode() == dns.rcode.NOERROR

        # 3. without the restart copy: still ready on the image in force, its generation
        #    reported, and a reload that cannot be applied says so
        gen = scrape(mport)["fastdns_snapshot_generation"]
        os.unlink(copy)
        os.kill(srv.pids("control")[-1], signal.SIGKILL)
        assert wait_for(lambda: len(srv.pids("control")) >= 4, 10), srv.log()[-2000:]
        assert wait_for(lambda: scrape(mport).get("fastdns_state_pending_bad") == 1, 10)
        assert http_get(ready) == (200, "OK")
        assert scrape(mport)["fastdns_snapshot_generation"] == gen
        not_applied = "the Corefile in force is not applied until the state file loads"
        assert srv.log().count(not_applied) == 1
        cf.write_text(corefile_text(port, rport, mport, 50))
        os.kill(srv.proc.pid, signal.SIGUSR1)
        assert wait_for(lambda: srv.log().count(not_applied) == 2, 15), srv.log()[-3000:]
        assert wait_for(lambda: http_get(ready) == (200, "OK"), 10)
        assert _ttl(port) == 45

        # 4. a good state file again: the reloaded Corefile is compiled with it
        tmp = tmp_path / "cluster.yaml.tmp"
        tmp.write_text(good)
        os.replace(tmp, state)
        assert wait_for(lambda: _ttl(port) == 50, 10), srv.log()[-3000:]
        assert wait_for(lambda: scrape(mport).get("fastdns_state_pending_bad") == 0, 5)
        assert wait_for(lambda: os.path.exists(copy), 5)
        assert http_get(ready) == (200, "OK")
        assert not re.search(r"Traceback", srv.log()), srv.log()[-3000:]
    finally:
        srv.stop_and_sweep()
