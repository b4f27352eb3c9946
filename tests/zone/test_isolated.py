"""State files parsed in a child process (zone/isolated.py): the same objects,
the same errors, and Pods only when asked for."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from fastdns.zone.isolated import decode, encode, load_objects_isolated
from fastdns.zone.objects import Pod
from fastdns.zone.state import StateError, demo_path, load_objects

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(HERE, "zonetests", "cluster.yaml")


@pytest.mark.parametrize("path", [demo_path(), CLUSTER])
def test_same_objects_as_in_process(path):
    want = load_objects(path)
    assert decode(encode(want)) == want
    assert load_objects_isolated(path) == want
    without = load_objects_isolated(path, pods=False)
    assert without == [o for o in want if not isinstance(o, Pod)] and len(without) < len(want)


def test_a_directory_is_every_state_file_in_it(tmp_path):
    (tmp_path / "a.yaml").write_text(Path(demo_path()).read_text())
    (tmp_path / "b.yaml").write_text(Path(CLUSTER).read_text())
    assert load_objects_isolated(str(tmp_path)) == load_objects(demo_path()) + load_objects(CLUSTER)


def test_errors_name_file_and_object(tmp_path):
    p = tmp_path / "state.yaml"
    p.write_text(yaml.safe_dump({"kind": "Service", "metadata": {"name": "bad", "namespace": "ns"},
                                 "spec": {"ports": [{"port": "eighty"}]}}))
    with pytest.raises(StateError) as exc:
        load_objects_isolated(str(p))
    assert str(p) in str(exc.value) and "Service ns/bad" in str(exc.value)
    (tmp_path / "y.json").write_text("{nope")
    with pytest.raises(StateError, match="y.json"):
        load_objects_isolated(str(tmp_path / "y.json"))
    with pytest.raises(StateError, match="cannot read"):
        load_objects_isolated(str(tmp_path / "missing.yaml"))
