"""The UDP fast path's pre-lookup hook (docs/internals.md §4, "Pre-lookup hook").

The hook is a C function a plugin's extension hands over in a PyCapsule;
here ctypes makes one from Python, so the test needs no extension of its own.
"""

from __future__ import annotations

import ctypes
import socket
import time

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

PRE_LOOKUP, PRE_ANSWER, PRE_SLOW = 0, 1, 2
_u8p = ctypes.POINTER(ctypes.c_ubyte)
_ssizep = ctypes.POINTER(ctypes.c_ssize_t)
HOOK_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, _u8p, _ssizep, _u8p, ctypes.c_ssize_t,
                           _ssizep)


class Hook(ctypes.Structure):
    _fields_ = [("fn", HOOK_FN), ("ctx", ctypes.c_void_p)]


_NAME = b"fastdns.prelookup"
_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


def capsule(fn):
    """A PyCapsule of a hook calling ``fn(pkt: bytearray) -> (code, bytes | None)``."""

    def call(ctx, pkt, length, out, cap, ans):
        data = bytearray(ctypes.string_at(pkt, length[0]))
        code, answer = fn(data)
        ctypes.memmove(pkt, bytes(data), len(data))
        length[0] = len(data)
        if answer is not None:
            ctypes.memmove(out, answer, len(answer))
            ans[0] = len(answer)
        return code

    hook = Hook(HOOK_FN(call), None)
    cap = _capsule_new(ctypes.addressof(hook), _NAME, None)
    return cap, hook  # the caller keeps the structure (and its thunk) alive


class Rig:
    """A FastPath on a loopback socket, counting into a private block."""

    def __init__(self) -> None:
        self.block = bytearray(layout.ROWS_END * 8)
        self.writer = ctr.Counters(memoryview(self.block))
        self.writer.start(1)
        self.slow_calls: list[int] = []
        self.fast = _udp.FastPath(bytearray(8), self.block, lambda: None, self._slow)
        self.fast.set_image(build_test_image(1), 0)
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.setblocking(False)
        self.cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.cli.settimeout(5)

    def _slow(self, data, addr, zone, fd):
        self.slow_calls.append(zone)
        r = dns.message.make_response(dns.message.from_wire(data))
        r.set_rcode(dns.rcode.SERVFAIL)
        return r.to_wire()

    def ask(self, name: str) -> dns.message.Message:
        self.cli.sendto(dns.message.make_query(name, "A").to_wire(), self.srv.getsockname())
        deadline = time.monotonic() + 5
        while not self.fast.drain(self.srv.fileno(), 1) and time.monotonic() < deadline:
            time.sleep(0.001)
        return dns.message.from_wire(self.cli.recv(4096))

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
    assert rig.slow_calls == [-1] and rig.counts()["slow"]["total"] == 1
    del keep


def test_only_a_named_capsule_is_a_hook(rig):
    with pytest.raises(TypeError):
        rig.fast.set_prelookup(object())
    empty = Hook()  # no function
    with pytest.raises(TypeError):
        rig.fast.set_prelookup(_capsule_new(ctypes.addressof(empty), b"something.else", None))
    with pytest.raises(ValueError):
        rig.fast.set_prelookup(_capsule_new(ctypes.addressof(empty), _NAME, None))
