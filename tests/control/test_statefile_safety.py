"""A state file being rewritten, emptied or cut short never replaces the last good state.

``kubectl get ... > state.yaml`` truncates the file before kubectl writes a
byte; a script writing it in pieces leaves it cut at some point for a while.
The rules (fastdns/control/statefile.py): a change is read once it has
settled, must parse completely, must not be empty unless it is an explicit
empty List, and must not hold half the objects of the last good state or
fewer unless the file proves its own end (JSON, or a List with ``kind``
after ``items`` as kubectl prints it).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.request

import dns.exception
import dns.rcode
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastdns.control import statefile
from fastdns.zone.objects import StateError
from fastdns.zone.state import load_state_checked
from tests.helpers import Server, a_records, ask, corefile_for, free_port, wait_for

INTERVAL = 0.2  # the settle time (statefile.SETTLE_INTERVAL; the server polls every 50 ms)


def service_doc(name: str, ip: str, ns: str = "default") -> str:
    return (f"---\napiVersion: v1\nkind: Service\n"
            f"metadata:\n  name: {name}\n  namespace: {ns}\n"
            f"spec:\n  type: ClusterIP\n  clusterIP: {ip}\n  clusterIPs:\n  - {ip}\n"
            f"  ports:\n  - name: http\n    port: 80\n    protocol: TCP\n")


def multi_doc(services: dict[str, str]) -> str:
    """Multi-document YAML: a Namespace, then one Service per document."""
    text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n"
    for name, ip in services.items():
        text += service_doc(name, ip)
    return text


def kubectl_list(services: dict[str, str], *, as_json: bool = False) -> str:
    """What ``kubectl get ns,svc -o yaml|json`` prints: a List, keys sorted (kind last)."""
    items = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}]
    for name, ip in services.items():
        items.append({"apiVersion": "v1", "kind": "Service",
                      "metadata": {"name": name, "namespace": "default"},
                      "spec": {"clusterIP": ip, "clusterIPs": [ip], "type": "ClusterIP",
                               "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
    doc = {"apiVersion": "v1", "items": items, "kind": "List",
           "metadata": {"resourceVersion": ""}}
    if as_json:
        return json.dumps(doc, indent=4)
    import yaml

    return yaml.safe_dump(doc, sort_keys=True)


def services(n: int, base: int = 10) -> dict[str, str]:
    return {f"svc-{i}": f"10.96.{base}.{i + 1}" for i in range(n)}


def cut_at_document(text: str, fraction: float) -> str:
    """``text`` cut at the document boundary at or before ``fraction`` of its length."""
    at = text.rfind("\n---\n", 0, int(len(text) * fraction))
    assert at > 0
    return text[: at + 1]


def write_in_place(path, text: str) -> None:
    with open(path, "w") as f:  # same inode, O_TRUNC: what a shell redirection does
        f.write(text)


def aged(path, seconds: float = 1.0) -> None:
    """Make ``path`` look written ``seconds`` ago (it settled long since)."""
    t = time.time() - seconds
    os.utime(path, (t, t))


# -- the rules, on the source itself ------------------------------------------------------


@pytest.fixture
def source(tmp_path):
    f = tmp_path / "cluster.yaml"
    f.write_text(multi_doc(services(10)))
    got: list = []
    src = statefile.StateFileSource(str(f), got.append, interval=INTERVAL)
    first = src.load_now()
    assert len(first.services) == 10 and src.last_good == 11
    src.file, src.got = f, got
    return src


def test_empty_file_is_refused_once_and_kept_pending(source, caplog):
    caplog.set_level(logging.INFO, logger="control/statefile")
    write_in_place(source.file, "")
    aged(source.file)
    assert not source.poll() and source.got == []
    assert source.pending_bad and source.rejected == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "holds no Namespace, Service or EndpointSlice" in errors[0]
    assert str(source.file) in errors[0] and "keeping the last good state" in errors[0]
    assert not source.poll() and source.rejected == 1  # one line per version, not per poll
    # only comments and document markers: as empty
    write_in_place(source.file, "# regenerating\n---\n---\n")
    aged(source.file)
    assert not source.poll() and source.rejected == 2
    write_in_place(source.file, multi_doc(services(10)))
    aged(source.file)
    assert source.poll() and not source.pending_bad
    assert len(source.got[-1].services) == 10


def test_cut_at_an_item_boundary_is_refused(source):
    full = multi_doc(services(10))
    for fraction in (0.5, 0.3, 0.1):
        write_in_place(source.file, cut_at_document(full, fraction))
        aged(source.file)
        assert not source.poll(), fraction
    assert source.got == [] and source.rejected == 3
    # a real, small shrink goes through: 11 objects -> 8
    write_in_place(source.file, multi_doc(services(7)))
    aged(source.file)
    assert source.poll() and len(source.got[-1].services) == 7
    # and the baseline moved with it: 8 -> 4 is half, refused
    write_in_place(source.file, multi_doc(services(3)))
    aged(source.file)
    assert not source.poll()


def test_a_list_as_kubectl_prints_it_may_shrink(tmp_path):
    """kubectl's keys are sorted, so a cut -o yaml List has no kind (and a cut JSON does
    not parse): such a file proves its end and may shrink the cluster by any amount."""
    for as_json in (False, True):
        f = tmp_path / ("cluster.json" if as_json else "cluster.yaml")
        f.write_text(kubectl_list(services(10), as_json=as_json))
        got: list = []
        src = statefile.StateFileSource(str(f), got.append, interval=INTERVAL)
        src.load_now()
        full = f.read_text()
        for cut in (0.3, 0.6, 0.9):  # cut anywhere: refused, it does not load
            write_in_place(f, full[: int(len(full) * cut)])
            aged(f)
            assert not src.poll() and got == []
        write_in_place(f, kubectl_list(services(2), as_json=as_json))
        aged(f)
        assert src.poll() and len(got[-1].services) == 2, as_json


def test_a_list_written_kind_first_is_not_proof(tmp_path):
    """The demo's shape (kind: List before items) can be cut after an item and parse."""
    items = kubectl_list(services(10)).split("items:\n", 1)[1].split("kind: List")[0]
    text = "apiVersion: v1\nkind: List\nitems:\n" + items
    f = tmp_path / "cluster.yaml"
    f.write_text(text)
    objs, shape = load_state_checked(str(f))
    assert len(objs) == 11 and not shape.complete
    src = statefile.StateFileSource(str(f), lambda s: None, interval=INTERVAL)
    src.load_now()
    at = text.rfind("\n- apiVersion", 0, len(text) // 2)
    write_in_place(f, text[: at + 1])
    aged(f)
    assert not src.poll() and src.pending_bad


def test_an_explicit_empty_list_empties_the_cluster(source):
    for text in ("apiVersion: v1\nkind: List\nitems: []\n",
                 "apiVersion: v1\nitems: []\nkind: List\nmetadata:\n  resourceVersion: ''\n",
                 '{"apiVersion": "v1", "kind": "List", "items": []}'):
        write_in_place(source.file, multi_doc(services(10)))
        aged(source.file)
        source.poll()
        write_in_place(source.file, text)
        aged(source.file)
        assert source.poll(), text
        assert len(source.got[-1]) == 0 and not source.pending_bad
    # cut short, the same file says nothing of the kind
    for text in ("apiVersion: v1\nkind: List\nitems:\n", "apiVersion: v1\nkind: List\n"):
        write_in_place(source.file, multi_doc(services(10)))
        aged(source.file)
        source.poll()
        write_in_place(source.file, text)
        aged(source.file)
        assert not source.poll(), text


def test_a_rewrite_seen_mid_write_is_read_once_it_settles(source):
    """Written in place in two chunks, 50 ms apart: the first chunk alone is never read."""
    full = multi_doc(services(10, base=20))
    chunk = int(len(full) * 0.8)  # 80 %: rule 4 alone would let it through
    results: list[bool] = []
    with open(source.file, "w") as f:
        f.write(full[:chunk])
        f.flush()
        poller = threading.Thread(target=lambda: results.append(source.poll()))
        poller.start()
        time.sleep(0.05)
        f.write(full[chunk:])
    poller.join(5)
    assert results == [False] and source.got == []  # it moved while the poller waited
    assert source.rejected == 0 and not source.pending_bad  # not refused: not read at all
    assert source.poll()  # still, settled now: read
    assert source.got[-1].services[("default", "svc-9")].cluster_ips == ("10.96.20.10",)


def test_a_file_renamed_into_place_is_read_at_once(source, tmp_path):
    tmp = tmp_path / "cluster.yaml.tmp"
    tmp.write_text(multi_doc(services(10, base=30)))
    os.replace(tmp, source.file)  # fresh mtime, but a new inode: complete
    t0 = time.monotonic()
    assert source.poll()
    assert time.monotonic() - t0 < INTERVAL * 5  # no settle wait needed (loose bound)
    assert len(source.got[-1].services) == 10


def test_a_change_while_reading_is_read_again(source):
    """What was read counts only if the file is the same afterwards."""
    real = source.loader

    def loader(path):
        out = real(path)
        write_in_place(source.file, multi_doc(services(10, base=40)))
        aged(source.file, 2.0)
        return out

    write_in_place(source.file, multi_doc(services(10, base=41)))
    aged(source.file)
    source.loader = loader
    assert not source.poll() and source.got == []
    source.loader = real
    assert source.poll() and source.got[-1].services[("default", "svc-0")].cluster_ips == (
        "10.96.40.1",)


def test_first_load_of_an_empty_file_says_how_to_empty_on_purpose(tmp_path):
    f = tmp_path / "cluster.yaml"
    f.write_text("")
    aged(f)
    src = statefile.StateFileSource(str(f), lambda s: None)
    with pytest.raises(StateError) as info:
        src.load_now()
    assert str(f) in str(info.value) and "kind: List, items: []" in str(info.value)


def test_restart_copy_serves_the_last_good_state(tmp_path):
    """A restarted source whose file is refused gets the last good state from its copy,
    and judges the file against it; a copy made for another configuration is not used."""
    from fastdns.zone.isolated import load_isolated, objects_from_blob
    from fastdns.zone.state import ClusterState

    def loader(path):
        objs, shape, blob = load_isolated(path, pods=False)
        return statefile.Loaded(ClusterState(objs), shape.complete, shape.empty_list, blob)

    def decode(blob):
        return ClusterState(objects_from_blob(blob))

    f = tmp_path / "cluster.yaml"
    f.write_text(multi_doc(services(10)))
    cache = statefile.StateCache(str(tmp_path / "copy"), decode, "no-pods")
    first = statefile.StateFileSource(str(f), lambda s: None, loader=loader, cache=cache)
    assert len(first.load_now().services) == 10 and os.path.getsize(cache.path) > 0
    full = f.read_text()
    write_in_place(f, cut_at_document(full, 0.4))  # parses, but cut short
    aged(f)
    second = statefile.StateFileSource(str(f), lambda s: None, loader=loader, cache=cache)
    state = second.load_now()
    assert len(state.services) == 10 and second.from_cache and second.pending_bad
    assert second.last_good == 11
    other = statefile.StateCache(cache.path, decode, "pods")
    third = statefile.StateFileSource(str(f), lambda s: None, loader=loader, cache=other)
    with pytest.raises(StateError):  # no usable copy: the refusal is the caller's to report
        third.load_now()
    write_in_place(f, full)
    aged(f)
    assert second.poll() is True and not second.pending_bad  # back to good
    # the copy is unpickled: one that others could have written is not used
    assert oct(os.stat(cache.path).st_mode & 0o777) == "0o600"
    assert cache.load()[0] is not None
    os.chmod(cache.path, 0o666)
    assert cache.load() == (None, None)


# -- a served instance, queried throughout ---------------------------------------------


class Prober:
    """A thread asking, over and over, for every Service of the last good state."""

    def __init__(self, port: int, names: list[str]) -> None:
        self.port = port
        self.names = names
        self.asked = 0
        self.nxdomain: list[tuple[float, str]] = []
        self.other: list[tuple[float, str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        deadline = time.monotonic() + 120  # bounded whatever happens
        i = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            name = self.names[i % len(self.names)]
            i += 1
            try:
                r = ask(name, port=self.port, timeout=1.0)
            except (dns.exception.Timeout, OSError):
                continue
            self.asked += 1
            if r.rcode() == dns.rcode.NXDOMAIN:
                self.nxdomain.append((time.monotonic(), name))
            elif r.rcode() != dns.rcode.NOERROR or not a_records(r):
                self.other.append((time.monotonic(), name, dns.rcode.to_text(r.rcode())))
            time.sleep(0.002)


def scrape(mport: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=3) as r:
        body = r.read().decode()
    return {s.name: s.value for fam in text_string_to_metric_families(body)
            for s in fam.samples if not s.labels}


def test_served_state_never_turns_nxdomain_while_the_file_is_rewritten(tmp_path):
    good = services(12)
    state = tmp_path / "cluster.yaml"
    full = multi_doc(good)
    state.write_text(full)
    port, mport = free_port(), free_port()
    cf = tmp_path / "Corefile"
    cf.write_text(corefile_for(port, extra=f"    prometheus 127.0.0.1:{mport}\n"))
    srv = Server(tmp_path, ["--corefile", str(cf), "--state", str(state), "--workers", "2"],
                 port)
    names = [f"{n}.default.svc.cluster.local." for n in good]
    try:
        srv.wait_answering(name=names[0])
        refused = 0

        def refusals() -> int:
            return srv.log().count("keeping the last good state")

        with Prober(port, names) as probe:
            # 1. truncated, as `kubectl get ... > cluster.yaml` does first; left so
            write_in_place(state, "")
            assert wait_for(lambda: refusals() > refused, 5.0), srv.log()[-2000:]
            refused = refusals()
            time.sleep(3 * INTERVAL)
            m = scrape(mport)
            assert m["fastdns_state_pending_bad"] == 1
            assert m["fastdns_state_rejected_total"] >= 1
            # 2. half of it, cut at an item boundary, left so
            write_in_place(state, cut_at_document(full, 0.5))
            assert wait_for(lambda: refusals() > refused, 5.0), srv.log()[-2000:]
            refused = refusals()
            assert "at most half of the last good state" in srv.log()
            time.sleep(3 * INTERVAL)
            # 3. written back in two slow chunks: 40 % then, 1 s later (the first chunk
            #    settles and is judged, unless the rest lands while it is read), the rest
            with open(state, "w") as f:
                f.write(full[: int(len(full) * 0.4)])
                f.flush()
                time.sleep(1.0)
                f.write(full[int(len(full) * 0.4):])
            time.sleep(3 * INTERVAL)
            # 4. and again: 80 % then, 50 ms later, the rest (too close to be judged)
            with open(state, "w") as f:
                f.write(full[: int(len(full) * 0.8)])
                f.flush()
                time.sleep(0.05)
                f.write(full[int(len(full) * 0.8):])
            time.sleep(3 * INTERVAL)
            assert wait_for(lambda: scrape(mport)["fastdns_state_pending_bad"] == 0, 5.0)
            # 5. a valid change: one Service moves, one is added, in place
            changed = dict(good, **{"svc-0": "10.96.99.1", "fresh": "10.96.99.2"})
            t0 = time.monotonic()
            write_in_place(state, multi_doc(changed))
            assert wait_for(lambda: a_records(ask("fresh.default.svc.cluster.local.",
                                                  port=port)) == {"10.96.99.2"}, 5.0)
            served_in = time.monotonic() - t0
            assert a_records(ask(names[0], port=port)) == {"10.96.99.1"}
        assert probe.asked > 200, probe.asked
        assert probe.nxdomain == [], (probe.nxdomain[:5], srv.log()[-3000:])
        assert probe.other == [], probe.other[:5]
        assert served_in < 3.0, served_in
        m = scrape(mport)
        assert m["fastdns_state_pending_bad"] == 0 and m["fastdns_state_rejected_total"] >= 2
        # 6. emptied on purpose: an explicit empty List
        write_in_place(state, "apiVersion: v1\nkind: List\nitems: []\n")
        assert wait_for(lambda: ask(names[1], port=port).rcode() == dns.rcode.NXDOMAIN, 5.0)
        assert ask("fresh.default.svc.cluster.local.", port=port).rcode() == dns.rcode.NXDOMAIN
        assert scrape(mport)["fastdns_state_pending_bad"] == 0
    finally:
        srv.stop_and_sweep()
