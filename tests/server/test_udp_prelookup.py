"""The UDP fast path's pre-lookup hook (docs/internals.md §4, "Pre-lookup hook").

The hook is a C function a plugin's extension hands over in a PyCapsule;
here ctypes makes one from Python, so the test needs no extension of its own.
"""

from __future__ import annotations

import ctypes
import socket
import time

import dns.flags
import dns.message
import dns.rcode
import pytest
from test_worker import build_test_image

from fastdns.ipc import counters as ctr
from fastdns.ipc import layout, readout

try:
    from fastdns.server import _udp
except ImportError:  # pragma: no cover - pure-Python run
    _udp = None

pytestmark = pytest.mark.skipif(_udp is None, reason="fastdns.server._udp not built")

PRE_LOOKUP, PRE_ANSWER, PRE_SLOW, PRE_POST, PRE_DROP = 0, 1, 2, 3, 4
ZONE_PRELOOKUP = -3  # the zone Python gets for a packet a hook handed on
_u8p = ctypes.POINTER(ctypes.c_ubyte)
_ssizep = ctypes.POINTER(ctypes.c_ssize_t)


class Peer(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_void_p), ("local_port", ctypes.c_int)]


HOOK_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, _u8p, _ssizep, _u8p, ctypes.c_ssize_t,
                           _ssizep, ctypes.POINTER(Peer))
POST_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, _u8p, _ssizep, _u8p, ctypes.c_ssize_t,
                           _ssizep)


class Hook(ctypes.Structure):
    _fields_ = [("fn", HOOK_FN), ("ctx", ctypes.c_void_p), ("post", POST_FN)]


_NAME = b"fastdns.prelookup"
_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


def _peer(p) -> tuple[str, int, int]:
    """(client address, client port, local port) of a hook's ``fastdns_peer``."""
    fam = ctypes.c_ushort.from_address(p.contents.addr).value
    raw = ctypes.string_at(p.contents.addr, 28 if fam == socket.AF_INET6 else 16)
    port = int.from_bytes(raw[2:4], "big")
    host = socket.inet_ntop(fam, raw[8:24] if fam == socket.AF_INET6 else raw[4:8])
    return host, port, p.contents.local_port


def capsule(fn, post=None, seen=None):
    """A PyCapsule of a hook calling ``fn(pkt: bytearray) -> (code, bytes | None)``
    (and ``post(pkt, answer: bytes) -> (code, bytes | None)``); ``seen`` collects
    the peers the hook was called with."""

    def call(ctx, pkt, length, out, cap, ans, peer):
        if seen is not None:
            seen.append(_peer(peer))
        data = bytearray(ctypes.string_at(pkt, length[0]))
        code, answer = fn(data)
        ctypes.memmove(pkt, bytes(data), len(data))
        length[0] = len(data)
        if answer is not None:
            ctypes.memmove(out, answer, len(answer))
            ans[0] = len(answer)
        return code

    def call_post(ctx, pkt, length, out, cap, ans):
        data = bytearray(ctypes.string_at(pkt, length[0]))
        code, answer = post(data, ctypes.string_at(out, ans[0]))
        if answer is not None:
            ctypes.memmove(out, answer, len(answer))
            ans[0] = len(answer)
        return code

    hook = Hook(HOOK_FN(call), None, POST_FN(call_post) if post is not None else POST_FN())
    cap = _capsule_new(ctypes.addressof(hook), _NAME, None)
    return cap, hook  # the caller keeps the structure (and its thunk) alive


class Rig:
    """A FastPath on a loopback socket, counting into a private block."""

    def __init__(self) -> None:
        self.block = bytearray(layout.ROWS_END * 8)
        self.writer = ctr.Counters(memoryview(self.block))
        self.writer.start(1)
        self.slow_calls: list[int] = []
        self.slow_data: list[bytes] = []
        self.fast = _udp.FastPath(bytearray(8), self.block, lambda: None, self._slow)
        self.fast.set_image(build_test_image(1), 0)
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.setblocking(False)
        self.cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.cli.settimeout(5)

    def _slow(self, data, addr, zone, fd):
        self.slow_calls.append(zone)
        self.slow_data.append(data)
        r = dns.message.make_response(dns.message.from_wire(data))
        r.set_rcode(dns.rcode.SERVFAIL)
        return r.to_wire()

    def ask(self, name: str) -> dns.message.Message:
        self.cli.sendto(dns.message.make_query(name, "A").to_wire(), self.srv.getsockname())
        self.drain()
        return dns.message.from_wire(self.cli.recv(4096))

    def drain(self) -> None:
        deadline = time.monotonic() + 5
        while not self.fast.drain(self.srv.fileno(), 1) and time.monotonic() < deadline:
            time.sleep(0.001)

    def counts(self) -> dict:
        return readout.read_counters(bytes(self.block))

    def close(self) -> None:
        self.fast.release()
        self.writer.release()
        self.srv.close()
        self.cli.close()


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


NAME = "kubernetes.default.svc.cluster.local."


def test_without_a_hook_the_image_answers(rig):
    assert rig.ask(NAME).answer[0][0].address == "10.96.0.1"
    assert rig.ask("x" + NAME[1:]).rcode() == dns.rcode.NXDOMAIN


def test_a_hook_rewrites_the_key_before_the_lookup(rig):
    def rewrite(pkt):
        if pkt[13:14] == b"x":  # the first octet of the first label
            pkt[13:14] = b"k"
        return PRE_LOOKUP, None

    cap, keep = capsule(rewrite)
    rig.fast.set_prelookup(cap)
    resp = rig.ask("x" + NAME[1:])
    assert resp.rcode() == dns.rcode.NOERROR and resp.answer[0][0].address == "10.96.0.1"
    assert str(resp.question[0].name) == NAME  # the question as looked up
    rig.fast.set_prelookup(None)
    assert rig.ask("x" + NAME[1:]).rcode() == dns.rcode.NXDOMAIN
    del keep


def test_a_hook_answers_and_the_answer_is_counted(rig):
    def refuse(pkt):
        r = bytearray(pkt)
        r[2] |= 0x80
        r[3] = (r[3] & 0xF0) | dns.rcode.REFUSED
        return PRE_ANSWER, bytes(r)

    cap, keep = capsule(refuse)
    rig.fast.set_prelookup(cap)
    assert rig.ask(NAME).rcode() == dns.rcode.REFUSED
    got = rig.counts()
    assert got["responses"]["REFUSED"] == 1 and got["queries"][("udp", 1, "A")] == 1
    del keep


def test_a_hook_hands_the_query_to_the_slow_path(rig):
    cap, keep = capsule(lambda pkt: (PRE_SLOW, None))
    rig.fast.set_prelookup(cap)
    assert rig.ask(NAME).rcode() == dns.rcode.SERVFAIL
    assert rig.slow_calls == [ZONE_PRELOOKUP] and rig.counts()["slow"]["total"] == 1
    del keep


def test_only_a_named_capsule_is_a_hook(rig):
    with pytest.raises(TypeError):
        rig.fast.set_prelookup(object())
    empty = Hook()  # no function
    with pytest.raises(TypeError):
        rig.fast.set_prelookup(_capsule_new(ctypes.addressof(empty), b"something.else", None))
    with pytest.raises(ValueError):
        rig.fast.set_prelookup(_capsule_new(ctypes.addressof(empty), _NAME, None))


def test_the_hook_sees_the_client_and_the_local_port(rig):
    seen: list = []
    cap, keep = capsule(lambda pkt: (PRE_LOOKUP, None), seen=seen)
    rig.fast.set_prelookup(cap)
    rig.ask(NAME)
    cli_port = rig.cli.getsockname()[1]
    assert seen == [("127.0.0.1", cli_port, rig.srv.getsockname()[1])]
    del keep


def test_hooks_chain_in_order_and_the_first_answer_wins(rig):
    calls: list[str] = []

    def first(pkt):
        calls.append("first")
        pkt[13:14] = b"k"  # x... -> kubernetes...
        return PRE_LOOKUP, None

    def second(pkt):
        calls.append("second:" + chr(pkt[13]))
        return PRE_LOOKUP, None

    def answering(pkt):
        calls.append("answering")
        r = bytearray(pkt)
        r[2] |= 0x80
        r[3] = (r[3] & 0xF0) | dns.rcode.REFUSED
        return PRE_ANSWER, bytes(r)

    (c1, k1), (c2, k2), (c3, k3) = capsule(first), capsule(second), capsule(answering)
    rig.fast.set_prelookup([c1, c2])
    assert rig.ask("x" + NAME[1:]).answer[0][0].address == "10.96.0.1"
    assert calls == ["first", "second:k"]
    calls.clear()
    rig.fast.set_prelookup((c3, c1))
    assert rig.ask(NAME).rcode() == dns.rcode.REFUSED
    assert calls == ["answering"]  # the chain stops at an answer
    with pytest.raises(ValueError):
        rig.fast.set_prelookup([c1] * 13)  # MAX_HOOKS is 12
    del k1, k2, k3


def test_a_slow_verdict_hands_on_the_packet_as_it_came(rig):
    def rewrite(pkt):
        pkt[13:14] = b"k"
        return PRE_LOOKUP, None

    (c1, k1), (c2, k2) = capsule(rewrite), capsule(lambda pkt: (PRE_SLOW, None))
    rig.fast.set_prelookup([c1, c2])
    assert rig.ask("x" + NAME[1:]).rcode() == dns.rcode.SERVFAIL
    assert rig.slow_calls == [ZONE_PRELOOKUP]
    assert dns.message.from_wire(rig.slow_data[0]).question[0].name.to_text() == "x" + NAME[1:]
    del k1, k2


def test_post_sees_the_image_answer_and_may_change_it(rig):
    got: list = []

    def rewrite(pkt):
        pkt[13:14] = b"k"
        return PRE_POST, None

    def post(pkt, answer):
        got.append((chr(pkt[13]), len(answer)))
        r = bytearray(answer)
        r[12 + 1] = ord("x")  # the question back as asked
        return PRE_ANSWER, bytes(r)

    cap, keep = capsule(rewrite, post)
    rig.fast.set_prelookup(cap)
    resp = rig.ask("x" + NAME[1:])
    assert resp.answer[0][0].address == "10.96.0.1"
    assert resp.question[0].name.to_text() == "x" + NAME[1:]
    assert got and got[0][0] == "k" and got[0][1] > 12
    del keep


def test_an_answer_of_a_later_hook_passes_the_posts_before_it(rig):
    """CoreDNS's chain: a plugin's answer goes out through the response
    writers of the plugins above it (header, minimal, nsid): so a hook's
    PRE_ANSWER runs the posts of the hooks before it that asked for one."""
    def wants_post(pkt):
        return PRE_POST, None

    def set_aa(pkt, answer):
        r = bytearray(answer)
        r[2] |= 0x04
        return PRE_ANSWER, bytes(r)

    def answering(pkt):
        r = bytearray(pkt)
        r[2] |= 0x80
        r[3] = (r[3] & 0xF0) | dns.rcode.REFUSED
        return PRE_ANSWER, bytes(r)

    (c1, k1), (c2, k2) = capsule(wants_post, set_aa), capsule(answering)
    rig.fast.set_prelookup([c1, c2])
    r = rig.ask(NAME)
    assert r.rcode() == dns.rcode.REFUSED and r.flags & dns.flags.AA
    rig.fast.set_prelookup([c2, c1])  # the post of a hook after the answer: not run
    r = rig.ask(NAME)
    assert r.rcode() == dns.rcode.REFUSED and not r.flags & dns.flags.AA
    assert rig.slow_calls == []
    del k1, k2


def test_post_without_an_image_answer_hands_on_the_original(rig):
    lens: list[int] = []

    def rewrite(pkt):
        pkt[13:14] = b"q"  # qubernetes...: not in the image (NXDOMAIN is an answer)
        return PRE_POST, None

    def post(pkt, answer):
        lens.append(len(answer))
        return PRE_SLOW, None

    cap, keep = capsule(rewrite, post)
    rig.fast.set_prelookup(cap)
    assert rig.ask(NAME).rcode() == dns.rcode.SERVFAIL  # the rig's slow path
    assert rig.slow_calls == [ZONE_PRELOOKUP]
    assert dns.message.from_wire(rig.slow_data[0]).question[0].name.to_text() == NAME
    assert lens and lens[0] > 0  # NXDOMAIN came from the image, post refused it
    del keep


def test_a_hook_drops_the_query(rig):
    cap, keep = capsule(lambda pkt: (PRE_DROP, None))
    rig.fast.set_prelookup(cap)
    rig.cli.sendto(dns.message.make_query(NAME, "A").to_wire(), rig.srv.getsockname())
    rig.drain()
    rig.cli.settimeout(0.3)
    with pytest.raises(socket.timeout):
        rig.cli.recv(4096)
    got = rig.counts()
    assert got["queries"][("udp", 1, "A")] == 1 and not rig.slow_calls
    del keep


def test_the_all_slow_hook_sends_every_query_to_python(rig):
    rig.fast.set_prelookup(_udp.all_slow_hook())
    assert rig.ask(NAME).rcode() == dns.rcode.SERVFAIL
    assert rig.slow_calls == [ZONE_PRELOOKUP]
    rig.fast.set_prelookup(None)
    assert rig.ask(NAME).answer[0][0].address == "10.96.0.1"
