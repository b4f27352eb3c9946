"""A changed state file is read item by item (issue 14), and reads as a whole load would.

``state.patch_file`` compares a new version with the ItemIndex of the one
read last (block checksums, item spans) and parses only the items that
differ; ``statefile.IncrementalLoader`` falls back to the whole load for
anything else, so every bad file is judged by the whole load's rules.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from pathlib import Path

import pytest
import yaml

from fastdns.control import statefile
from fastdns.zone.objects import KINDS
from fastdns.zone.state import ClusterState, load_file
from fastdns.zone.statepatch import BLOCK, Unpatchable, load_file_indexed, patch_file
from tests.helpers import Server, a_records, ask, corefile_for, free_port, wait_for

NO_PODS = tuple(k for k in KINDS if k != "Pod")


def cluster(n: int, base: int = 0) -> dict:
    """A kubectl List: Namespaces, Services, an EndpointSlice each, Pods."""
    items: list[dict] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}]
    for i in range(n):
        name = f"svc-{i}"
        items.append({"apiVersion": "v1", "kind": "Service",
                      "metadata": {"name": name, "namespace": "default"},
                      "spec": {"clusterIP": "None", "clusterIPs": ["None"], "type": "ClusterIP",
                               "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
        items.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                      "metadata": {"name": f"{name}-a", "namespace": "default",
                                   "labels": {"kubernetes.io/service-name": name}},
                      "addressType": "IPv4",
                      "endpoints": [{"addresses": [f"10.{base + 1}.{i // 250}.{i % 250 + 1}"],
                                     "conditions": {"ready": True}}],
                      "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
        ip = f"10.{base + 1}.{i // 250}.{i % 250 + 1}"
        items.append({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": f"{name}-pod", "namespace": "default"},
                      "status": {"phase": "Running", "podIP": ip}})
    return {"apiVersion": "v1", "items": items, "kind": "List",
            "metadata": {"resourceVersion": ""}}


def dump(doc: dict, fmt: str) -> bytes:
    if fmt == "json-compact":
        return json.dumps(doc, separators=(",", ":")).encode()
    if fmt == "json":
        return json.dumps(doc, indent=4).encode()  # as kubectl -o json
    return yaml.safe_dump(doc, sort_keys=True).encode()  # as kubectl -o yaml: kind last


FORMATS = ("json-compact", "json", "yaml")


def indexed(tmp_path, data: bytes, kinds=NO_PODS):
    f = tmp_path / "state"
    f.write_bytes(data)
    objs, shape, index = load_file_indexed(str(f), kinds)
    assert index is not None
    return [objs[w] if w >= 0 else None for w in index.which], index


def whole(tmp_path, data: bytes, kinds=NO_PODS):
    f = tmp_path / "whole"
    f.write_bytes(data)
    return load_file(str(f), kinds)[0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_one_endpoint_moved_reads_a_few_items_and_keeps_the_rest(tmp_path, fmt):
    doc = cluster(400)
    old = dump(doc, fmt)
    assert len(old) > 8 * BLOCK
    items, index = indexed(tmp_path, old)
    doc["items"][2 + 3 * 200]["endpoints"][0]["addresses"] = ["10.99.0.1"]
    new = dump(doc, fmt)
    got, index2, n = patch_file(index, items, new, NO_PODS)
    assert 1 <= n < 200, n  # a block's worth at most, not the 1201 items
    assert [o for o in got if o is not None] == whole(tmp_path, new)
    changed = [i for i, (a, b) in enumerate(zip(items, got, strict=True)) if a is not b]
    assert changed == [2 + 3 * 200]  # the others are the very same objects
    # the same bytes again: nothing read, the same objects
    again, _, n = patch_file(index2, got, new, NO_PODS)
    assert n == 0 and again is got


@pytest.mark.parametrize("fmt", FORMATS)
def test_random_edits_read_as_the_whole_file(tmp_path, fmt):
    rnd = random.Random(fmt)
    doc = cluster(300)
    data = dump(doc, fmt)
    items, index = indexed(tmp_path, data, KINDS)
    patched = 0
    for step in range(25):
        its = doc["items"]
        what = rnd.choice(("move", "insert", "delete", "rename", "many"))
        if what == "move":
            sl = next(i for i in rnd.sample(its, len(its)) if i["kind"] == "EndpointSlice")
            sl["endpoints"][0]["addresses"] = [f"10.200.{step}.{rnd.randrange(1, 250)}"]
        elif what == "insert":
            at = rnd.randrange(1, len(its) + 1)
            svc = json.loads(json.dumps(its[1]))
            svc["metadata"]["name"] = f"new-{step}"
            its.insert(at, svc)
        elif what == "delete":
            del its[rnd.randrange(1, len(its))]
        elif what == "rename":
            pod = next(i for i in rnd.sample(its, len(its)) if i["kind"] == "Pod")
            pod["metadata"]["name"] += "-x"
        else:
            for _ in range(5):
                del its[rnd.randrange(1, len(its))]
            its.append(json.loads(json.dumps(its[1])) | {"metadata": {
                "name": f"tail-{step}", "namespace": "default"}})
        data = dump(doc, fmt)
        try:
            items, index, _ = patch_file(index, items, data, KINDS)
            patched += 1
        except Unpatchable as e:  # most of the file changed: the caller loads it whole
            assert "most of the file" in str(e), (step, what, e)
            items, index = indexed(tmp_path, data, KINDS)
        assert [o for o in items if o is not None] == whole(tmp_path, data, KINDS), (step, what)
    assert patched >= 15


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_change_outside_the_items_is_loaded_whole(tmp_path, fmt):
    doc = cluster(300)
    items, index = indexed(tmp_path, dump(doc, fmt))
    doc["kind"] = "ServiceList"  # the List's own kind: every item's default kind
    with pytest.raises(Unpatchable):
        patch_file(index, items, dump(doc, fmt), NO_PODS)
    doc["kind"] = "List"
    doc["metadata"]["resourceVersion"] = "12"  # after the items
    with pytest.raises(Unpatchable):
        patch_file(index, items, dump(doc, fmt), NO_PODS)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_bad_item_is_not_patched_in(tmp_path, fmt):
    doc = cluster(300)
    items, index = indexed(tmp_path, dump(doc, fmt))
    doc["items"][400]["spec"]["ports"][0]["port"] = "x"
    with pytest.raises(Unpatchable):
        patch_file(index, items, dump(doc, fmt), NO_PODS)
    good = dump(cluster(300), fmt)
    cut = good[: len(good) // 2]  # cut mid-item
    with pytest.raises(Unpatchable):
        patch_file(index, items, cut, NO_PODS)


def test_what_cannot_be_patched_is_not_indexed(tmp_path):
    doc = cluster(50)
    f = tmp_path / "s.yaml"
    # anchors: an item's value may come from another item
    shared = {"ready": True}
    for it in doc["items"]:
        if it["kind"] == "EndpointSlice":
            it["endpoints"][0]["conditions"] = shared
    f.write_text(yaml.safe_dump(doc))
    assert "&id001" in f.read_text()
    assert load_file_indexed(str(f))[2] is None
    # several documents
    f.write_text("".join("---\n" + yaml.safe_dump(it) for it in cluster(5)["items"]))
    assert load_file_indexed(str(f))[2] is None
    # not ASCII
    doc = cluster(5)
    doc["items"][1]["metadata"]["annotations"] = {"note": "caf\u00e9"}
    f.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    objs, _, index = load_file_indexed(str(f))
    assert index is None and len(objs) == 16
    # items indented under their key
    f.write_text(re.sub(r"(?m)^(?=[- ])", "  ", yaml.safe_dump(cluster(5))))
    objs, _, index = load_file_indexed(str(f))
    assert index is None and len(objs) == 16


def test_indexed_load_reads_as_load_file(tmp_path):
    for fmt in FORMATS:
        data = dump(cluster(40), fmt)
        f = tmp_path / "s"
        f.write_bytes(data)
        objs, shape, index = load_file_indexed(str(f))
        assert (objs, shape) == load_file(str(f)) and index is not None
    for bad in (b'{"kind": "List", "items": [{"kind": "Service"}]', b'{"kind": "List", '
                b'"items": [], "items": 3}', b'{"kind":"List","items":[1]} x'):
        f.write_bytes(bad)
        with pytest.raises(Exception) as a:
            load_file(str(f))
        with pytest.raises(Exception) as b:
            load_file_indexed(str(f))
        assert str(a.value) == str(b.value)


# -- the loader and the source: a bad version is still judged whole ---------------------


def loader(calls: list[str]) -> statefile.IncrementalLoader:
    def full(path: str, data: bytes | None):
        calls.append(path)
        objs, shape, index = load_file_indexed(path, NO_PODS, data)
        items = [] if index is None else [objs[w] if w >= 0 else None for w in index.which]
        return statefile.Loaded(ClusterState(objs), shape.complete, shape.empty_list), \
            lambda: (index, items)

    return statefile.IncrementalLoader(full, ClusterState, kinds=NO_PODS)


def test_a_bad_version_is_refused_whole_and_the_next_good_one_patched(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="control/statefile")
    f = tmp_path / "cluster.json"
    doc = cluster(300)
    f.write_bytes(dump(doc, "json"))
    calls: list[str] = []
    got: list = []
    src = statefile.StateFileSource(str(f), got.append, interval=0.05, loader=loader(calls))
    src.load_now()
    assert len(calls) == 1

    def replace(data: bytes) -> None:
        tmp = tmp_path / ".tmp"
        tmp.write_bytes(data)
        os.replace(tmp, f)

    doc["items"][2 + 3 * 150]["endpoints"][0]["addresses"] = ["10.99.0.1"]
    replace(dump(doc, "json"))
    assert src.poll() and len(calls) == 1 and src.loader.patched == 1
    assert any("items read again" in r.getMessage() for r in caplog.records)
    # a bad item: the patch declines, the whole load refuses it in one line
    bad = json.loads(json.dumps(doc))
    bad["items"][304]["spec"]["ports"][0]["port"] = "x"
    replace(dump(bad, "json"))
    caplog.clear()
    assert not src.poll() and src.pending_bad and len(calls) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "keeping the last good state" in errors[0], errors
    assert len(got) == 1
    # good again: patched against the bad version's index, served
    doc["items"][2 + 3 * 150]["endpoints"][0]["addresses"] = ["10.99.0.2"]
    replace(dump(doc, "json"))
    assert src.poll() and not src.pending_bad
    assert src.loader.patched == 2, calls
    slices = got[-1].slices_of("default", "svc-150")
    assert slices[0].endpoints[0].addresses == ("10.99.0.2",)
    assert ClusterState(whole(tmp_path, dump(doc, "json"))).slices == got[-1].slices


def test_a_patched_state_keeps_the_unchanged_objects_of_the_one_in_force(tmp_path):
    """The loop's sync_state then touches one Service: one fragment recompiled."""
    from fastdns.control.loop import sync_state

    f = tmp_path / "cluster.yaml"
    doc = cluster(300)
    f.write_bytes(dump(doc, "yaml"))
    src = statefile.StateFileSource(str(f), lambda s: None, interval=0.05,
                                    loader=loader([]))
    current = src.load_now()
    doc["items"][2 + 3 * 100]["endpoints"][0]["addresses"] = ["10.99.0.3"]
    tmp = tmp_path / ".tmp"
    tmp.write_bytes(dump(doc, "yaml"))
    os.replace(tmp, f)
    new = src.loader(str(f)).state
    assert src.loader.patched == 1 and src.loader.reparsed < 100
    same = sum(current.slices[k] is new.slices[k] for k in current.slices)
    assert same == len(current.slices) - 1
    affected = sync_state(current, new)
    assert affected.services == {("default", "svc-100")} and not affected.namespaces


# -- on real sockets ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_a_changed_file_is_served_item_by_item(tmp_path, fmt):
    doc = cluster(600)
    state = tmp_path / f"cluster.{fmt}"
    state.write_bytes(dump(doc, fmt))
    port = free_port()
    cf = tmp_path / "Corefile"
    cf.write_text(corefile_for(port))
    srv = Server(tmp_path, ["--corefile", str(cf), "--state", str(state), "--workers", "1"],
                 port)
    name = "svc-500.default.svc.cluster.local."
    try:
        srv.wait_answering(name=name)
        assert a_records(ask(name, port=port)) == {"10.1.2.1"}
        for n, how in enumerate(("rename", "in-place", "rename")):
            ip = f"10.99.0.{n + 1}"
            doc["items"][1 + 3 * 500 + 1]["endpoints"][0]["addresses"] = [ip]
            data = dump(doc, fmt)
            if how == "rename":
                tmp = tmp_path / ".cluster.tmp"
                tmp.write_bytes(data)
                os.replace(tmp, state)
            else:
                with open(state, "wb") as f:  # (an empty file left to settle is refused)
                    f.write(data)
            assert wait_for(lambda ip=ip: a_records(ask(name, port=port)) == {ip}, 10.0), \
                srv.log()[-2000:]
        assert srv.log().count("items read again") == 3, srv.log()[-3000:]
        # a bad version: refused in one line, the last good state keeps serving
        bad = json.loads(json.dumps(doc))
        bad["items"][1 + 3 * 500]["spec"]["ports"][0]["port"] = "x"
        tmp = tmp_path / ".cluster.tmp"
        tmp.write_bytes(dump(bad, fmt))
        os.replace(tmp, state)
        assert wait_for(lambda: "keeping the last good state" in srv.log(), 10.0)
        assert a_records(ask(name, port=port)) == {"10.99.0.3"}
    finally:
        srv.stop_and_sweep()


# -- the fast block-YAML reader: what it reads, it reads as PyYAML does ----------------------

YAML_CASES = {
    "scalars": "a: yes\nb: No\nc: 0x1F\nd: 1_000\ne: 1.5e3\nf: .inf\ng: ~\nh: null\n"
               "i: 2024-01-01\nj: 0o17\nk: 012\nl: +1\nm: 1:20\nn: ''\no: \"\"\np: 'it''s'\n"
               "q: \"a\\tb\"\nr: -1\ns: -x\nt: http://x/y\nu:\nv: [a, b]\nw: {x: 1}\nx: []\n"
               "y: {}\n1: one\ntrue: t\nz: 2024-01-15T10:00:00Z\nsp:    b   \nq3:   'd'  \n",
    "nested": "a:\n- x\n- y: 1\n  z:\n  - 2\n  - 3\nb:\n  c:\n    d: e\n  f: [1]\ng: 1\n",
    "blocks": "a: |\n  line1\n\n  # not a comment\n  line3\nb: >-\n  folded\n  text\n\n"
              "c: |-\n    x\n  \nd: 1\n",
    "sequences": "- |\n  x\n- y\n-\n  k: v\n-\n- z\n",
    "indented": "items:\n  - a: 1\n    b: 2\n  - c\n",
    "duplicate": "a: 1\na: 2\n",
    "marker": "---\na: 1\n",
    "empty": "",
    "comments": "# only\n",
    "quoted": "a: 'x: y'\nb: \"p: q\"\n",
}
# What it leaves to PyYAML (valid or not): the whole file then goes there.
YAML_DECLINED = {
    "seq in seq": "a:\n- - 4\n",
    "continued": "a: foo\n  bar\nb: 1\n",
    "not a doc": "a: 1\n- x\n",
    "mapping in a value": "a: b: c\n",
    "anchors": "a: &x {b: 1}\nc:\n  <<: *x\n",
    "keep": "a: |+\n  x\n\nb: 1\n",
    "value tag": "a: =\n",
    "tab": "a:\tb\n",
    "two docs": "a: 1\n---\nb: 2\n",
    "non-ascii": "a: caf\u00e9\n",
    "trailing comment": "a: 1 # c\n",
}


@pytest.fixture(params=["py", "c"])
def fast_yaml(request):
    """The Python reader (the reference) and its Cython twin (_yamlfast.pyx)."""
    from fastdns.zone import yamlfast

    if request.param == "py":
        return yamlfast.fast_yaml_py
    if yamlfast.Reader is None:
        pytest.skip("the Cython reader is not built")
    return yamlfast.fast_yaml


@pytest.mark.parametrize("name", sorted(YAML_CASES))
def test_fast_yaml_reads_as_pyyaml(name, fast_yaml):
    text = YAML_CASES[name]
    want = [d for d in yaml.load_all(text, Loader=yaml.SafeLoader) if d is not None]
    got = fast_yaml(text)
    got = [] if got is None else [got]
    assert repr(got) == repr(want)


@pytest.mark.parametrize("name", sorted(YAML_DECLINED))
def test_fast_yaml_leaves_the_rest_to_pyyaml(name, fast_yaml):
    from fastdns.zone.yamlfast import NotPlain as _NotPlain

    with pytest.raises(_NotPlain):
        fast_yaml(YAML_DECLINED[name])


def test_fast_yaml_reads_dumps_and_the_demo(tmp_path, fast_yaml):
    from fastdns.zone.state import demo_path

    texts = [dump(cluster(30), "yaml").decode(), yaml.safe_dump(cluster(30), sort_keys=False),
             Path(demo_path()).read_text()]
    for text in texts:
        assert repr(fast_yaml(text)) == repr(yaml.load(text, Loader=yaml.SafeLoader))
    f = tmp_path / "s.yaml"
    f.write_text(texts[0].replace("kind: List", "kind: List\nbroken: [x"))
    with pytest.raises(Exception, match="not valid YAML"):  # PyYAML says why
        load_file(str(f))


@pytest.mark.parametrize("text", [
    *YAML_CASES.values(), *YAML_DECLINED.values(),
    "a: x&y\n", "a: &x 1\n", "a: [&x]\n", "a: {b: *x}\n", "a: b,!c\n", "&a: 1\n",
    "a: !!str 1\n", "---\na: 1\n", "a: 1\n---\n", "a: 1\n...\n", "...\n", "%YAML 1.1\n",
    "a: 1\n%x\n", "a: b%c\n", "a: --x\n", "--\n", "a: 1\r\n", "a: \x7f\n", "a: \x01\n",
    "---\n---\n", "---", "a: '-- x'\n---x: 1\n",
])
def test_the_c_scan_refuses_what_the_python_checks_refuse(text):
    from fastdns.zone import yamlfast

    if yamlfast.Reader is None:
        pytest.skip("the Cython reader is not built")
    if not text.isascii():
        return
    reader = yamlfast.Reader(text.encode("ascii"), frozenset(), yamlfast.NotPlain)
    assert reader.unsafe == yamlfast.unreadable(text), text


def test_fast_yaml_skips_kinds_as_the_reference_does(fast_yaml):
    """Pods left out (``pods`` not verified) are read as their kind alone, in
    every place a dump puts ``kind``: first, or among the item's keys."""
    from fastdns.zone import yamlfast

    doc = cluster(20)
    texts = [dump(doc, "yaml").decode(), yaml.safe_dump(doc, sort_keys=False)]
    skip = frozenset({"Pod"})
    for text in texts:
        got = fast_yaml(text, skip)
        assert repr(got) == repr(yamlfast.fast_yaml_py(text, skip))
        kinds = [i["kind"] for i in got["items"]]
        assert "Pod" in kinds and all(i == {"kind": "Pod"} for i in got["items"]
                                      if i["kind"] == "Pod")


def test_the_whole_load_judges_the_bytes_the_patch_read(tmp_path):
    """A file caught mid-rewrite (here: truncated) is judged as it was read, not as
    the writer has since finished it, so the version refused is the one seen."""
    f = tmp_path / "cluster.json"
    f.write_bytes(dump(cluster(300), "json"))
    seen: list = []
    inner = loader([])
    orig = inner.full

    def full(path, data):
        seen.append(data)
        return orig(path, data)

    inner.full = full
    src = statefile.StateFileSource(str(f), lambda s: None, interval=0.05, loader=inner)
    src.load_now()
    f.write_bytes(b"")
    loaded = inner(str(f))
    assert seen == [None, b""] and len(loaded.state) == 0
    assert statefile.refusal(loaded, src.last_good) is not None


def test_isolated_load_sends_the_objects_then_the_index(tmp_path):
    from fastdns.zone.isolated import load_isolated_indexed, objects_from_blob

    f = tmp_path / "cluster.yaml"
    data = dump(cluster(200), "yaml")
    f.write_bytes(b"not what was read")
    objs, shape, blob, index_later = load_isolated_indexed(str(f), pods=False, data=data)
    assert objs == whole(tmp_path, data) and objects_from_blob(blob) == objs
    index = index_later()
    assert index is not None and index.fmt == "yaml" and len(index.starts) == 601
    # a bad version: the child's one line
    with pytest.raises(Exception, match="not valid JSON"):
        load_isolated_indexed(str(f), pods=False, data=b'{"kind": "List", "items": [')
    # a directory: no index
    d = tmp_path / "dir"
    d.mkdir()
    (d / "a.json").write_bytes(dump(cluster(3), "json"))
    objs, _, _, index_later = load_isolated_indexed(str(d), pods=False)
    assert len(objs) == 7 and index_later() is None


SKIPPED_PODS = """\
apiVersion: v1
items:
- apiVersion: v1
  kind: Pod
  metadata:
    name: p1
    annotations:
      note: |
        kind: Service
  status: {podIP: 10.1.0.1}
- kind: Pod
  metadata: {name: p2}

# a comment between items
- apiVersion: v1
  kind: Service
  metadata:
    name: web
    namespace: default
  spec:
    clusterIP: 10.0.0.5
    ownerish:
      kind: Pod
- apiVersion: v1
  kind: Namespace
  metadata: {name: default}
kind: List
metadata:
  resourceVersion: ""
"""


def test_fast_yaml_skips_the_kinds_asked_and_reads_the_rest():
    """Pods where `pods verified` is off are scanned past, not parsed; only an
    item's own `kind:` line (indented by two, or on its dash line) marks it, not
    a nested one or a block scalar's text."""
    from fastdns.zone.state import KINDS, parse_documents, strip_all
    from fastdns.zone.yamlfast import fast_yaml as _fast_yaml

    want = yaml.load(SKIPPED_PODS, Loader=yaml.SafeLoader)
    got = _fast_yaml(SKIPPED_PODS, frozenset({"Pod"}))
    assert got["items"][:2] == [{"kind": "Pod"}, {"kind": "Pod"}]
    assert got["items"][2:] == want["items"][2:] and got["kind"] == "List"
    assert _fast_yaml(SKIPPED_PODS) == want
    no_pods = tuple(k for k in KINDS if k != "Pod")
    docs, _ = parse_documents(SKIPPED_PODS, "s", no_pods)
    full, _ = parse_documents(SKIPPED_PODS, "s")
    assert strip_all(docs, "s", no_pods) == strip_all(full, "s", no_pods)
    assert [type(o).__name__ for o in strip_all(full, "s", KINDS)].count("Pod") == 2
