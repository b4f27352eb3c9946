"""Fuzz target ``statefile``: a ``--state`` file, from the loader to the image workers map.

A state file is written by hand or by ``kubectl get -o yaml|json`` and is
re-read on every change; nothing validated it the way the API server
validates objects. Property, for any octets as the file:

- ``load_state_checked`` (what the isolated loader child runs: read,
  UTF-8, JSON or YAML, Lists, strip to objects, the file's shape) raises
  only ``StateError``.
- What it returns survives the child's pipe: ``isolated.encode`` ->
  pickle -> ``decode`` gives equal objects.
- ``ClusterState`` takes them, and the zone compiler compiles them (a
  state the loader accepted must not fail at compile: on a reload that is
  a traceback and a last good state that never gets served).
- The image answers: the first Services' names asked for A and SRV, and
  the PTR names of their addresses and of endpoints, give the same answer
  from the Cython core and the Python twin, and a client (dnspython) can
  read every name in it.

The compiler runs with ``pods verified`` and ``endpoint_pod_names``, so
that Pods and endpoint names are compiled too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pickle
import shutil
import struct
import tempfile
from typing import Any

from fuzz import c_core
from fuzz.known import KNOWN, KnownBug

COREFILE = """\
cluster.local:1053 in-addr.arpa:1053 ip6.arpa:1053 {
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods verified
        endpoint_pod_names
        ttl 30
    }
}
"""
ASKED = 8  # Services whose names are asked of each image

state: Any = None
isolated: Any = None
objects: Any = None
compiler: Any = None
py: Any = None
c: Any = None
errors: Any = None
dns_message: Any = None
PATH = ""


def setup() -> None:
    global state, isolated, objects, compiler, py, c, errors, dns_message, PATH
    import dns.message

    from fastdns import errors as errs
    from fastdns import wire
    from fastdns.control.process import build_compiler
    from fastdns.corefile.config import parse_corefile
    from fastdns.zone import isolated as iso
    from fastdns.zone import objects as objs
    from fastdns.zone import state as st

    state, isolated, objects, py, c, errors = st, iso, objs, wire, c_core(), errs
    dns_message = dns.message
    compiler = build_compiler(parse_corefile(COREFILE))
    PATH = os.path.join(tempfile.mkdtemp(prefix="fastdns-fuzz-state-"), "state.yaml")


def _query(name: str, qtype: int) -> bytes | None:
    try:
        qname = py.encode_name(name)
    except errors.WireError:
        return None  # not a name anyone can ask
    return struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH",
                                                                                    qtype, 1)


def _bad_label(s: Any) -> bool:
    return isinstance(s, str) and not 0 < len(s.encode("ascii", "replace")) <= 63


def known_cause(objs: list[Any]) -> str | None:
    """Which listed bug (fuzz/known.py) the loaded objects show, if any: each is
    something the API server's validation would have refused."""
    o = objects
    for obj in objs:
        if isinstance(obj, o.EndpointSlice):
            if not isinstance(obj.service, str | None) or any(
                    not isinstance(e.hostname, str | None) or not isinstance(e.target_pod,
                                                                             str | None)
                    for e in obj.endpoints):
                return "state-field-type"
    for obj in objs:
        ports = getattr(obj, "ports", ())
        if any(not 0 <= p.port <= 0xFFFF for p in ports):
            return "state-port-range"
    for obj in objs:
        parts = [obj.name, getattr(obj, "namespace", "x")]
        parts += [f"_{p.name}" for p in getattr(obj, "ports", ()) if p.name]
        parts += [f"_{p.protocol}" for p in getattr(obj, "ports", ())]
        if isinstance(obj, o.EndpointSlice):
            parts += [e.hostname for e in obj.endpoints if e.hostname]
            parts += [e.target_pod for e in obj.endpoints if e.target_pod]
            if obj.service is not None:
                parts.append(obj.service)
        if any(_bad_label(p) for p in parts):
            return "state-bad-label"
    return None


def teardown() -> None:
    """Remove the scratch directory ``setup`` made (the runner never returns to do it)."""
    shutil.rmtree(os.path.dirname(PATH), ignore_errors=True)


def check(data: bytes) -> None:
    with open(PATH, "wb") as f:
        f.write(data)
    try:
        objs, _shape = state.load_state_checked(PATH)
    except objects.StateError:
        return
    try:
        served(objs)
    except Exception as e:
        cause = known_cause(objs)
        if cause in KNOWN:  # a fixed bug left in known_cause counts as a new crash
            raise KnownBug(cause, e) from e
        raise


def served(objs: list[Any]) -> None:
    """Loaded objects through the pipe, the compiler and the image."""
    rows = pickle.loads(pickle.dumps(isolated.encode(objs), protocol=pickle.HIGHEST_PROTOCOL))
    assert isolated.decode(rows) == objs, "the isolated loader's pipe changes the objects"
    cluster = state.ClusterState(objs)
    image = bytes(compiler.full(cluster, now=1_700_000_000))
    services = sorted(cluster.services.values(), key=lambda s: (s.namespace, s.name))[:ASKED]
    asked = [(f"{s.name}.{s.namespace}.svc.cluster.local", qtype)
             for s in services for qtype in (1, 33)]
    # PTR answers name Services and endpoints (docs: REFERENCE.md, PTR)
    addrs = [ip for s in services for ip in s.cluster_ips]
    addrs += [e.addresses[0] for sl in cluster.slices.values() for e in sl.endpoints[:2]
              if e.addresses][:ASKED]
    for a in addrs:
        with contextlib.suppress(ValueError):
            asked.append((ipaddress.ip_address(a).reverse_pointer, 12))
    for name, qtype in asked:
        q = _query(name, qtype)
        if q is None:
            continue
        got = py.answer(image, q, 0, 0)
        assert got == c.answer(image, q, 0, 0), "the C core and the twin read the image apart"
        assert got[0] != py.ST_DROP
        if got[0] == py.ST_ANSWER:
            r = py.parse_response(got[1])
            assert r.qname == q[12 : 12 + len(r.qname)]
            m = dns_message.from_wire(got[1])  # every name in it readable by a client
            for rrset in m.answer:
                if rrset.rdtype == 12:  # a PTR names something in the cluster zone
                    for rr in rrset:
                        assert rr.target.to_text().endswith(".cluster.local."), rr.target
