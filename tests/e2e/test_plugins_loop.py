"""loop: a Corefile that forwards to itself stops with CoreDNS's message."""

from __future__ import annotations

import re
import signal
import time

import pytest

from tests.helpers import DEMO, KUBERNETES, Server, ask, corefile_for, free_port, run_serve

pytestmark = pytest.mark.slow


def test_forward_to_itself_is_a_detected_loop(tmp_path):
    port = free_port()
    cf = tmp_path / "Corefile"
    cf.write_text(f""".:{port} {{
    bind 127.0.0.1
    forward . 127.0.0.1:{port}
    loop
}}
""")
    r = run_serve(["--corefile", str(cf), "--workers", "2"], timeout=40)
    assert r.returncode == 1, r.stderr[-3000:]
    m = re.search(r'\[FATAL\] plugin/loop: Loop \(127\.0\.0\.1:\d+ -> 127\.0\.0\.1:(\d+)\) '
                  r'detected for zone "\.", see https://coredns\.io/plugins/loop#troubleshooting'
                  r'\. Query: "HINFO (\d+)\.(\d+)\."', r.stderr)
    assert m, r.stderr[-3000:]
    assert int(m.group(1)) == port


def test_loop_plugin_without_a_loop_keeps_serving(tmp_path):
    """The probe gets an answer (REFUSED: no block forwards it) and nothing stops."""
    port = free_port()
    cf = tmp_path / "Corefile"
    cf.write_text(corefile_for(port, v6=False, extra="    loop\n"))
    srv = Server(tmp_path, ["--corefile", str(cf), "--state", str(DEMO), "--workers", "1"],
                 port)
    try:
        srv.wait_answering()
        time.sleep(3.5)  # the probe is answered at once, then armed 2 s more
        assert srv.proc.poll() is None, srv.log()
        assert ask(KUBERNETES, port=port).answer
    finally:
        srv.stop(signal.SIGTERM)
    assert "Loop (" not in srv.log()
