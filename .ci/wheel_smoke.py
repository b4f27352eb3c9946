"""Smoke test of an installed fastdns wheel through ``errors`` and ``log``.

Run by ``.ci/wheel-smoke`` with the venv's python (``-I``), from a directory
outside the checkout. Standard library only: the venv holds fastdns and its
declared runtime dependencies and nothing else, so a runtime import of a test
extra (dnspython, as ``fastdns/server/querylog.py`` once did) shows up here as
a ``ModuleNotFoundError`` instead of CoreDNS's log and error lines.

It serves a Corefile with a ``hosts`` block and a ``forward`` block whose
upstream is a loopback port nobody listens on, asks one query of each over
UDP, stops the server with SIGTERM and checks the answers, the ``log`` lines
(``plugin/log/log.go`` common format), the ``[ERROR] plugin/errors: 2 NAME
TYPE: ...`` line (``plugin/errors/errors.go``), that no traceback was
printed and that the server exited 0. The last line it prints is
``wheel smoke: N passed, M failed``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVED = "www.example.org."
SERVED_IP = "192.0.2.1"
FAILED = "nothere.example.net."
FLAG_NAMES = ((0x8000, "qr"), (0x0400, "aa"), (0x0200, "tc"), (0x0100, "rd"),
              (0x0080, "ra"), (0x0040, "z"), (0x0020, "ad"), (0x0010, "cd"))


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"ok    {name}", flush=True)
        else:
            self.failed.append(name)
            print(f"FAIL  {name}" + (f": {detail}" if detail else ""), flush=True)
        return ok


# -- DNS over UDP, by hand (RFC 1035 §4.1) -----------------------------------------


def make_query(qid: int, name: str, qtype: int = 1) -> bytes:
    """A QUERY with RD set, one question, class IN, no EDNS."""
    out = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        out += bytes([len(raw)]) + raw
    return out + b"\x00" + struct.pack(">HH", qtype, 1)


def _skip_name(msg: bytes, p: int) -> int:
    while p < len(msg):
        n = msg[p]
        if n == 0:
            return p + 1
        if n & 0xC0 == 0xC0:
            return p + 2
        p += n + 1
    raise ValueError("name runs past the message")


def parse_answer(msg: bytes) -> tuple[int, int, int, list[str]]:
    """(id, flags, rcode, the answer section's A addresses)."""
    qid, flags, qd, an, _ns, _ar = struct.unpack_from(">HHHHHH", msg)
    p = 12
    for _ in range(qd):
        p = _skip_name(msg, p) + 4
    addrs = []
    for _ in range(an):
        p = _skip_name(msg, p)
        rtype, _cls, _ttl, rdlen = struct.unpack_from(">HHIH", msg, p)
        p += 10
        if rtype == 1 and rdlen == 4:
            addrs.append(socket.inet_ntoa(msg[p:p + 4]))
        p += rdlen
    return qid, flags, flags & 0xF, addrs


def ask(port: int, query: bytes, timeout: float) -> tuple[bytes | None, int]:
    """Send one UDP query to 127.0.0.1:port; (the answer with the query's ID, our port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        s.sendto(query, ("127.0.0.1", port))
        deadline = time.monotonic() + timeout
        while True:
            s.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                data, _peer = s.recvfrom(65535)
            except (TimeoutError, ConnectionError):
                return None, s.getsockname()[1]
            if len(data) >= 12 and data[:2] == query[:2]:
                return data, s.getsockname()[1]


def free_port() -> int:
    """A loopback port free for both UDP and TCP at this moment."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free loopback port")


def flags_text(flags: int) -> str:
    """CoreDNS's {>rflags} (plugin/pkg/replacer/replacer.go appendFlags)."""
    return ",".join(name for bit, name in FLAG_NAMES if flags & bit)


def log_line_re(client_port: int, query: bytes, name: str, resp: bytes, rcode: str) -> str:
    """The log plugin's common format, with the values this exchange had."""
    qid = struct.unpack_from(">H", query)[0]
    flags = struct.unpack_from(">H", resp, 2)[0]
    return (rf"^\[INFO\] 127\.0\.0\.1:{client_port} - {qid} "
            rf'"A IN {re.escape(name)} udp {len(query)} false 512" '
            rf"{rcode} {re.escape(flags_text(flags))} {len(resp)} \d+(\.\d+)?s$")


# -- the run ------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", required=True, type=Path)
    ap.add_argument("--checkout", required=True, type=Path)
    args = ap.parse_args()
    venv, checkout = args.venv.resolve(), args.checkout.resolve()
    c = Checks()

    # 1. The fastdns imported is the wheel's, in the venv; no test extras there.
    spec = importlib.util.find_spec("fastdns")
    origin = Path(spec.origin).resolve() if spec and spec.origin else None
    c.check("fastdns is imported from the venv, not the checkout",
            origin is not None and origin.is_relative_to(venv)
            and not origin.is_relative_to(checkout), f"fastdns at {origin}")
    c.check("dnspython is not installed in the venv (the smoke would prove nothing)",
            importlib.util.find_spec("dns") is None,
            "a runtime dependency pulls dnspython in; list: pip list in the venv")
    try:
        from fastdns import codec

        compiled = not codec.NO_EXTENSIONS
    except Exception as exc:  # noqa: BLE001 - reported as a failed check
        compiled = False
        print(f"      importing fastdns.codec: {exc!r}")
    c.check("the wheel's Cython wire core loads", compiled)

    work = Path(tempfile.mkdtemp(prefix="smoke-", dir=os.getcwd()))
    port, dead = free_port(), free_port()  # nothing listens on `dead`
    corefile = work / "Corefile"
    corefile.write_text(
        f"example.org:{port} {{\n    bind 127.0.0.1\n    errors\n    log\n"
        f"    hosts {{\n        {SERVED_IP} {SERVED.rstrip('.')}\n    }}\n}}\n"
        f".:{port} {{\n    bind 127.0.0.1\n    errors\n    log\n"
        f"    forward . 127.0.0.1:{dead}\n}}\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
           and not k.startswith("FASTDNS_")}
    exe = str(venv / "bin" / "fastdns")

    # 2. check-corefile and serve agree that this Corefile runs.
    chk = subprocess.run([exe, "check-corefile", str(corefile)], capture_output=True,
                         text=True, timeout=60, env=env, cwd=work)
    c.check("fastdns check-corefile accepts the Corefile", chk.returncode == 0,
            f"exit {chk.returncode}: {(chk.stdout + chk.stderr)[-2000:]}")

    out_path, err_path = work / "serve.out", work / "serve.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([exe, "serve", "--corefile", str(corefile), "--workers", "2"],
                                stdout=out, stderr=err, env=env, cwd=work,
                                start_new_session=True)
    try:
        # 3. Served as soon as it answers (poll: the workers bind after start).
        ready = None
        deadline = time.monotonic() + 40
        qid = 0x1000
        while ready is None and time.monotonic() < deadline and proc.poll() is None:
            qid += 1
            ready, _p = ask(port, make_query(qid, SERVED), 0.5)
        c.check("fastdns serve answers within 40 s", ready is not None,
                f"server exit status {proc.poll()}")

        served_q = make_query(0x5EED, SERVED)
        served, served_port = ask(port, served_q, 5.0) if ready else (None, 0)
        got = parse_answer(served) if served else None
        c.check(f"{SERVED} A: NOERROR with A {SERVED_IP}",
                got is not None and got[2] == 0 and got[3] == [SERVED_IP], f"answer {got}")

        failed_q = make_query(0x0BAD, FAILED)
        failed, failed_port = ask(port, failed_q, 10.0) if ready else (None, 0)
        got = parse_answer(failed) if failed else None
        c.check(f"{FAILED} A (forward to a dead upstream): SERVFAIL",
                got is not None and got[2] == 2, f"answer {got}")
        time.sleep(0.5)  # the log lines are written after the answers
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what it started
            rc = proc.wait(timeout=10)
            print("      serve did not exit within 30 s of SIGTERM")
    c.check("serve exits 0 after SIGTERM", rc == 0, f"exit status {rc}")

    text = out_path.read_text(errors="replace") + err_path.read_text(errors="replace")
    lines = text.splitlines()

    def has(pattern: str) -> bool:
        return any(re.search(pattern, line) for line in lines)

    if served:
        c.check("log: a CoreDNS common-format line for the served query",
                has(log_line_re(served_port, served_q, SERVED, served, "NOERROR")),
                "want " + log_line_re(served_port, served_q, SERVED, served, "NOERROR"))
    else:
        c.check("log: a CoreDNS common-format line for the served query", False, "no answer")
    if failed:
        c.check("log: a line for the SERVFAIL",
                has(log_line_re(failed_port, failed_q, FAILED, failed, "SERVFAIL")),
                "want " + log_line_re(failed_port, failed_q, FAILED, failed, "SERVFAIL"))
    else:
        c.check("log: a line for the SERVFAIL", False, "no answer")
    errors_re = rf"^\[ERROR\] plugin/errors: 2 {re.escape(FAILED)} A: \S.*$"
    c.check("errors: an [ERROR] plugin/errors line for the SERVFAIL", has(errors_re),
            "want " + errors_re)
    for word in ("Traceback", "ModuleNotFoundError"):
        c.check(f"no {word} in the server's output", word not in text)

    if c.failed:
        print("---- server stdout ----\n" + out_path.read_text(errors="replace")[-6000:])
        print("---- server stderr ----\n" + err_path.read_text(errors="replace")[-6000:])
    print(f"wheel smoke: {c.passed} passed, {len(c.failed)} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
