"""The rooms' dependency rules hold, and the checker catches each breakage.

The rules and why they exist are in tests/architecture.py.  Each synthetic
tree below breaks one rule once; if the checker stopped seeing it, that
test fails, so the first test cannot pass by checking nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.architecture import violations

ROOT = Path(__file__).resolve().parent.parent


def test_the_tree_keeps_every_rule():
    assert violations(ROOT) == []


def tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for pkg in ("fastdns", "fastdns/control", "fastdns/server", "fastdns/supervisor",
                "fastdns/ipc", "fastdns/zone"):
        (tmp_path / pkg).mkdir(parents=True, exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    return tmp_path


BROKEN = {
    "wire core imports a room": (
        {"fastdns/wire.py": "from fastdns.zone import records\n",
         "fastdns/zone/records.py": ""},
        "fastdns.wire:1: the wire core imports fastdns.zone.records"),
    "Cython wire core imports a room": (
        {"fastdns/_wire.pyx": "cimport cython\nfrom fastdns.zone.records import x\n",
         "fastdns/zone/records.py": ""},
        "fastdns._wire:2: the wire core imports fastdns.zone.records"),
    "control imports the data plane": (
        {"fastdns/control/process.py": "def f():\n    import fastdns.server.worker\n",
         "fastdns/server/worker.py": ""},
        "fastdns.control.process:2: control imports fastdns.server.worker"),
    "control imports the supervisor": (
        {"fastdns/control/process.py": "from fastdns.supervisor import run\n",
         "fastdns/supervisor/run.py": ""},
        ["fastdns.control.process:1: control imports fastdns.supervisor.run",
         "fastdns.control.process:1: only the CLI imports the supervisor, "
         "not fastdns.control.process"]),
    "a worker imports the supervisor": (
        {"fastdns/server/worker.py": "from ..supervisor import plan\n",
         "fastdns/supervisor/plan.py": ""},
        "fastdns.server.worker:1: only the CLI imports the supervisor, not fastdns.server.worker"),
    "a private name imported": (
        {"fastdns/server/tcp.py": "from fastdns.server.worker import _sockaddr\n",
         "fastdns/server/worker.py": "def _sockaddr(): pass\n"},
        "fastdns.server.tcp:1: imports private fastdns.server.worker._sockaddr"),
    "a private name reached through a module": (
        {"fastdns/server/tcp.py": "from fastdns.server import worker as w\nw._sockaddr()\n",
         "fastdns/server/worker.py": "def _sockaddr(): pass\n"},
        "fastdns.server.tcp:2: reaches into private w._sockaddr"),
    "a cycle hidden in a function": (
        {"fastdns/server/a.py": "from fastdns.server import b\n",
         "fastdns/server/b.py": "def f():\n    from fastdns.server import a\n"},
        "import cycle: fastdns.server.a -> fastdns.server.b"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_broken_rule_is_reported(tmp_path, case):
    files, expected = BROKEN[case]
    expected = expected if isinstance(expected, list) else [expected]
    assert violations(tree(tmp_path, files)) == expected


def test_allowed_imports_are_not_reported(tmp_path):
    files = {
        "fastdns/wire.py": "from fastdns import errors\nfrom fastdns.ipc import image\n",
        "fastdns/errors.py": "",
        "fastdns/ipc/image.py": "",
        "fastdns/cli.py": "from fastdns.supervisor import run\n",
        "fastdns/supervisor/run.py": "from fastdns.server import worker\n",
        "fastdns/server/worker.py": ("from fastdns.server import _udp\n"
                                     "from fastdns.ipc import image\n"),
        "fastdns/server/_udp.pyx": "from fastdns.ipc.image cimport x\n",
        "fastdns/control/process.py": "from fastdns.ipc import image\n",
    }
    assert violations(tree(tmp_path, files)) == []
