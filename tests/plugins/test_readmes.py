"""Each plugin README in docs/plugins/ has CoreDNS's fixed shape, and every
Corefile example in it parses and is accepted as fastdns runs it: a README
cannot drift from the parser unnoticed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fastdns.corefile.config import parse_corefile
from fastdns.corefile.verdict import problems
from fastdns.plugins import registry

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins"
SHAPE = ["Name", "Description", "Syntax", "Examples", "Metrics", "Ready"]
READMES = sorted(p for p in DOCS.glob("*.md") if p.name != "ignored.md")
#: the plugins issue 15 added, each documented
DOCUMENTED = {"template", "bufsize", "chaos", "rewrite", "any", "minimal", "acl", "header",
              "nsid", "timeouts", "autopath", "dns64"}


def test_every_added_plugin_has_a_readme_and_runs():
    assert {p.stem for p in READMES} >= DOCUMENTED
    assert all(registry.runs(name) for name in DOCUMENTED)


@pytest.mark.parametrize("path", READMES, ids=lambda p: p.stem)
def test_shape_and_examples(path):
    text = path.read_text()
    assert re.findall(r"^## (\w+)", text, re.M) == SHAPE, path.name
    assert text.startswith(f"# {path.stem}\n")
    examples = re.findall(r"^~~~ corefile\n(.*?)^~~~$", text, re.M | re.S)
    assert examples, f"{path.name}: no corefile example"
    for example in examples:
        cfg = parse_corefile(example, str(path))
        assert problems(cfg) == [], (path.name, example)
