"""A throwaway certificate authority and one server certificate, for HTTPS tests.

A cluster's apiserver serves a certificate signed by the cluster CA, whose
certificate every pod finds at ``/var/run/secrets/kubernetes.io/
serviceaccount/ca.crt``; clients check the server's address against the
certificate's subjectAltName (an IP SAN for ``KUBERNETES_SERVICE_HOST``,
DNS SANs for ``kubernetes.default.svc``). ``make_pki`` makes that pair with
the ``openssl`` command line (no Python crypto dependency), with the
extensions a strict verifier wants (basicConstraints, keyUsage, subject and
authority key identifiers, serverAuth), so the same files pass OpenSSL 3 and
Python 3.13's ``VERIFY_X509_STRICT``. Keys are P-256: generated in
milliseconds, where RSA would cost a test a noticeable fraction of a second.

    pki = make_pki(tmp_path, ips=("10.213.0.1",), dns_names=("kubernetes.default.svc",))
    pki.ca_cert, pki.server_cert, pki.server_key

Standalone (an image test run by a shell script)::

    python3 -m fastdns.testing.pki DIR --ip 127.0.0.1 --dns kubernetes.default.svc
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PKI", "PKIError", "make_pki", "main"]


class PKIError(Exception):
    """openssl is missing or refused: the message says which and why."""


@dataclass(frozen=True)
class PKI:
    """Paths of the files ``make_pki`` wrote (PEM)."""

    directory: str
    ca_cert: str
    ca_key: str
    server_cert: str
    server_key: str


def _openssl(*args: str, cwd: str) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise PKIError("the openssl command is not installed (Debian: apt-get install openssl)")
    done = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise PKIError(f"openssl {args[0]} failed (exit {done.returncode}): {last}")


def _san(ips: Iterable[str], dns_names: Iterable[str]) -> str:
    entries = [f"IP:{ipaddress.ip_address(ip)}" for ip in ips]
    entries += [f"DNS:{name}" for name in dns_names]
    if not entries:
        raise ValueError("a server certificate needs at least one IP or DNS name")
    return ",".join(entries)


def make_pki(directory: str | os.PathLike[str], ips: Iterable[str] = ("127.0.0.1",),
             dns_names: Iterable[str] = ("kubernetes.default.svc",), *,
             common_name: str = "kube-apiserver", days: int = 2) -> PKI:
    """Write ca.crt/ca.key and server.crt/server.key (SANs ``ips`` and ``dns_names``)
    into ``directory`` (created if missing); PKIError if openssl fails."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    san = _san(ips, dns_names)
    cwd = str(d)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt",
             "-days", str(days), "-subj", "/CN=fastdns-test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash", cwd=cwd)
    _openssl("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", f"/CN={common_name}", cwd=cwd)
    (d / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"  # an EC key signs, never enciphers
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        f"subjectAltName={san}\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", str(days),
             "-extfile", "server.ext", cwd=cwd)
    for leftover in ("server.csr", "server.ext", "ca.srl"):
        (d / leftover).unlink(missing_ok=True)
    for key in ("ca.key", "server.key"):
        os.chmod(d / key, 0o600)
    return PKI(directory=cwd, ca_cert=str(d / "ca.crt"), ca_key=str(d / "ca.key"),
               server_cert=str(d / "server.crt"), server_key=str(d / "server.key"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m fastdns.testing.pki",
                                description="a throwaway CA and server certificate (openssl)")
    p.add_argument("directory")
    p.add_argument("--ip", action="append", default=[], help="an IP SAN (repeatable)")
    p.add_argument("--dns", action="append", default=[], help="a DNS SAN (repeatable)")
    args = p.parse_args(argv)
    try:
        pki = make_pki(args.directory, args.ip or ("127.0.0.1",),
                       args.dns or ("kubernetes.default.svc",))
    except (PKIError, ValueError, OSError) as exc:
        print(f"pki: {exc}", file=sys.stderr)
        return 1
    for name in ("ca_cert", "server_cert", "server_key"):
        print(f"{name} {getattr(pki, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
