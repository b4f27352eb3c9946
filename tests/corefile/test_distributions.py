"""Every distribution's default Corefile in tests/corefiles/ runs as-is.

One verdict for each file, from ``check-corefile`` (the same code ``serve``
asks: corefile/verdict.py): exit status 0 and "fastdns runs this Corefile
as-is". The files are the distributions' own text, with only the
placeholders their installers fill in; the end-to-end tests
(tests/e2e/test_*_corefile.py, test_nodelocal.py) start `fastdns serve` on
them. A file added to the directory is checked here without another line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COREFILES = sorted((ROOT / "tests" / "corefiles").glob("*.Corefile"))


def test_the_distributions_are_all_here():
    names = {p.stem for p in COREFILES}
    assert {"kubeadm", "k3s", "eks", "rke2", "openshift", "nodelocaldns"} <= names, names


@pytest.mark.parametrize("path", COREFILES, ids=lambda p: p.stem)
def test_check_corefile_runs_it_as_is(path, tmp_path):
    # imports name absolute paths (k3s: /etc/coredns/custom/*.server): point them here
    text = path.read_text().replace("/etc/coredns", str(tmp_path))
    (tmp_path / "custom").mkdir()
    copy = tmp_path / path.name
    copy.write_text(text)
    r = subprocess.run([sys.executable, "-m", "fastdns", "check-corefile", str(copy)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1].startswith("fastdns runs this Corefile as-is"), r.stdout
