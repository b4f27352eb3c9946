"""The plugins' ``before`` hooks in Python (server/beforechain.py) and how the
worker takes the C pre-lookup hooks from the registry rows
(server/worker_plugins.py): order, blocks, rewrites and their reverts,
drops, a failing hook, and a ``before`` with no C hook sending every UDP
query to Python."""

from __future__ import annotations

import dns.message
import dns.rcode
import pytest

from fastdns.corefile.config import parse_corefile
from fastdns.plugins import registry
from fastdns.plugins.spec import DROP, Plugin, Rewritten
from fastdns.server import beforechain
from fastdns.server.worker_plugins import ALL_SLOW, WorkerPlugins

ADDR = ("127.0.0.1", 5353)


def query(name: str) -> bytes:
    return dns.message.make_query(name, "A").to_wire()


def qname(data: bytes) -> str:
    return dns.message.from_wire(data).question[0].name.to_text()


def refused(data: bytes) -> bytes:
    r = dns.message.make_response(dns.message.from_wire(data))
    r.set_rcode(dns.rcode.REFUSED)
    return r.to_wire()


def rename(src: str, dst: str):
    """A ``before`` that asks ``dst`` for ``src``, and an ``after`` that puts
    the question back (the revert is recorded in ``calls``)."""
    calls: list[str] = []

    def before(data, q, addr, tcp, block):
        if qname(data) != src:
            return None
        msg = dns.message.from_wire(data)
        msg.question[0].name = dns.name.from_text(dst)

        def after(original, resp):
            calls.append(qname(resp))
            r = dns.message.from_wire(resp)
            r.question[0].name = dns.name.from_text(src)
            return r.to_wire()

        return Rewritten(msg.to_wire(), after)

    return before, calls


@pytest.fixture
def rows(monkeypatch):
    """Put ``before`` hooks on the rows of plugins ``acl`` and ``rewrite``."""
    whoami = registry.BY_NAME["whoami"]
    plugins, by_name = registry.PLUGINS, registry.BY_NAME

    def install(**befores):
        rows = tuple(
            Plugin(p.name, "full", parse=whoami.parse, config=whoami.config,
                   stages=("slow_path",), before=befores[p.name][0],
                   prelookup=befores[p.name][1] if len(befores[p.name]) > 1 else None)
            if p.name in befores else p for p in plugins)
        monkeypatch.setattr(registry, "PLUGINS", rows)
        monkeypatch.setattr(registry, "BY_NAME", {**by_name, **{p.name: p for p in rows}})
    return install


def corefile(*plugins: str) -> WorkerPlugins:
    body = "".join(f"  {p}\n" for p in plugins)
    return WorkerPlugins(parse_corefile(
        f"a.test:53 {{\n{body}  whoami\n}}\nb.test:53 {{\n  whoami\n}}\n", "C"))


def test_hooks_run_in_plugin_cfg_order_and_rewrites_revert_last_first(rows):
    order: list[str] = []
    ren, calls = rename("x.a.test.", "y.a.test.")

    def acl(data, q, addr, tcp, block):
        order.append("acl:" + qname(data))
        return None

    def rewrite(data, q, addr, tcp, block):
        order.append("rewrite:" + qname(data))
        return ren(data, q, addr, tcp, block)

    rows(acl=(acl,), rewrite=(rewrite,))
    plugins = corefile("rewrite", "acl")  # Corefile order does not matter: plugin.cfg does
    verdict = plugins.before(query("x.a.test."), ADDR, False, 53)
    assert order == ["rewrite:x.a.test.", "acl:y.a.test."]  # rewrite precedes acl in plugin.cfg
    assert verdict.answer is None and qname(verdict.data) == "y.a.test."
    back = beforechain.finish(verdict.afters, query("x.a.test."), refused(verdict.data))
    assert calls == ["y.a.test."] and qname(back) == "x.a.test."


def test_a_later_answer_is_reverted_and_a_drop_is_empty(rows):
    ren, calls = rename("x.a.test.", "y.a.test.")
    rows(rewrite=(ren,), acl=(lambda data, q, addr, tcp, block: refused(data),))
    verdict = corefile("rewrite", "acl").before(query("x.a.test."), ADDR, False, 53)
    assert qname(verdict.answer) == "x.a.test." and calls == ["y.a.test."]
    rows(acl=(lambda data, q, addr, tcp, block: DROP,))
    assert corefile("acl").before(query("x.a.test."), ADDR, False, 53).answer == b""


def test_only_the_block_serving_the_name_runs_its_hooks(rows):
    seen: list[str] = []
    rows(acl=(lambda data, q, addr, tcp, block: seen.append(qname(data)),))
    plugins = corefile("acl")
    assert plugins.before(query("z.b.test."), ADDR, False, 53).answer is None
    plugins.before(query("z.a.test."), ADDR, False, 53)
    assert seen == ["z.a.test."]
    assert corefile().before(query("z.a.test."), ADDR, False, 53) is None  # no hook at all


def test_a_failing_hook_answers_servfail(rows):
    def broken(data, q, addr, tcp, block):
        raise RuntimeError("bug")

    rows(acl=(broken,))
    got = corefile("acl").before(query("z.a.test."), ADDR, False, 53)
    assert dns.message.from_wire(got.answer).rcode() == dns.rcode.SERVFAIL


def test_forwarded_answers_come_back_through_the_reverts(rows):
    ren, calls = rename("x.a.test.", "y.a.test.")
    rows(rewrite=(ren,))
    verdict = corefile("rewrite").before(query("x.a.test."), ADDR, False, 53)
    sent: list = []
    send = beforechain.wrap(sent.append, query("x.a.test."), verdict.afters)
    send(refused(verdict.data))
    send(None)  # a dropped forward stays dropped
    assert [qname(s) for s in sent[:1]] == ["x.a.test."] and sent[1] is None


def test_c_hooks_chain_and_a_before_without_one_sends_all_to_python(rows):
    cap_a, cap_r = object(), object()
    rows(acl=(lambda *a: None, lambda config: cap_a),
         rewrite=(lambda *a: None, lambda config: cap_r))
    assert corefile("acl", "rewrite").prelookup == [cap_r, cap_a]  # plugin.cfg order
    rows(acl=(lambda *a: None, lambda config: cap_a), rewrite=(lambda *a: None,))
    assert corefile("acl", "rewrite").prelookup == [ALL_SLOW]  # rewrite first, in Python
    assert corefile().prelookup == []
