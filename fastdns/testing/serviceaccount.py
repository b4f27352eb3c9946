"""What a pod has of its service account, made on a test machine.

A container in a pod finds the API through two things the kubelet gives it
(https://kubernetes.io/docs/tasks/run-application/access-api-from-pod/):
- the environment of the ``kubernetes`` Service in ``default``:
  ``KUBERNETES_SERVICE_HOST``, ``KUBERNETES_SERVICE_PORT``,
  ``KUBERNETES_SERVICE_PORT_HTTPS`` (its port is named ``https``) and the
  Docker-links style ``KUBERNETES_PORT_443_TCP*`` variables;
- the projected ``kube-api-access-*`` volume, mounted read-only at
  ``/var/run/secrets/kubernetes.io/serviceaccount``: ``token`` (a bound
  token the kubelet rewrites at 80 % of its lifetime, about hourly),
  ``ca.crt`` (the cluster CA) and ``namespace``.

``write_service_account`` lays the directory out as the kubelet's
AtomicWriter does (``pkg/volume/util/atomic_writer.go``): the files live in
a timestamped ``..YYYY_MM_DD_HH_MM_SS.N`` directory, ``..data`` is a symlink
to it and each file name a symlink into ``..data``; an update writes a new
timestamped directory and renames a fresh symlink over ``..data``, so a
reader sees the old token or the new one, never a half-written file.

``launch_in_pod`` starts a command "as in a pod": in a private mount
namespace (``unshare --mount --propagation private``) the directory is
bind-mounted read-only over the service-account path, the environment is
the pod's, and optionally the whole runs in a network namespace
(``ip netns exec NS``, which also puts ``/etc/netns/NS/resolv.conf`` over
``/etc/resolv.conf``). The official client's ``load_incluster_config``
then reads exactly what it reads in a pod; nothing in the client is
patched. The host's own file system only gets the empty mount point when it
lacks one, and loses it again when the last such process has been waited
for.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SA_MOUNT", "PodProcess", "ServiceAccountDir", "launch_in_pod",
           "launch_unavailable", "pod_command", "pod_environment", "write_service_account"]

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
_DATA = "..data"
_FILES = ("token", "ca.crt", "namespace")


def _timestamped_name() -> str:
    # the kubelet's name: ".." + time.Now().UTC().Format("2006_01_02_15_04_05.") + random
    now = datetime.datetime.now(datetime.UTC)
    return f"..{now:%Y_%m_%d_%H_%M_%S}.{now.microsecond:06d}{os.getpid() % 1000:03d}"


@dataclass(frozen=True)
class ServiceAccountDir:
    """A service-account directory (see the module docstring); ``update`` rotates."""

    path: str

    @property
    def token_path(self) -> str:
        return os.path.join(self.path, "token")

    @property
    def ca_path(self) -> str:
        return os.path.join(self.path, "ca.crt")

    @property
    def namespace_path(self) -> str:
        return os.path.join(self.path, "namespace")

    def read(self, name: str) -> str:
        return Path(self.path, name).read_text()

    def update(self, *, token: str | None = None, ca_cert: str | None = None,
               namespace: str | None = None) -> None:
        """Replace some files atomically, as the kubelet does when it rotates the
        token: ``token`` is the token text, ``ca_cert`` a PEM file's path."""
        base = Path(self.path)
        current = {name: (base / _DATA / name).read_bytes() for name in _FILES
                   if (base / _DATA / name).exists()}
        if token is not None:
            # kubelet writes the token exactly, with no newline: a newline would end
            # up inside the Authorization header the client builds from the file
            current["token"] = token.encode()
        if ca_cert is not None:
            current["ca.crt"] = Path(ca_cert).read_bytes()
        if namespace is not None:
            current["namespace"] = namespace.encode()
        self._write(current)

    def _write(self, files: Mapping[str, bytes]) -> None:
        base = Path(self.path)
        old = os.readlink(base / _DATA) if (base / _DATA).is_symlink() else None
        stamp = _timestamped_name()
        while (base / stamp).exists():
            stamp = _timestamped_name()
        tsdir = base / stamp
        tsdir.mkdir(mode=0o755)
        for name, data in files.items():
            (tsdir / name).write_bytes(data)
            os.chmod(tsdir / name, 0o644)  # kube-api-access's defaultMode 0644
        tmp = base / (_DATA + "_tmp")
        tmp.unlink(missing_ok=True)
        os.symlink(stamp, tmp)
        os.replace(tmp, base / _DATA)  # rename(2): the switch is atomic
        for name in files:
            link = base / name
            if not link.is_symlink():
                os.symlink(os.path.join(_DATA, name), link)
        if old and old != stamp:
            shutil.rmtree(base / old, ignore_errors=True)


def write_service_account(directory: str | os.PathLike[str], token: str, ca_cert: str, *,
                          namespace: str = "kube-system") -> ServiceAccountDir:
    """Write token, ca.crt (copied from the PEM file ``ca_cert``) and namespace into
    ``directory`` (created if missing, mode 0755 like the kubelet's volume)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    sa = ServiceAccountDir(str(d))
    sa._write({"token": token.encode(), "ca.crt": Path(ca_cert).read_bytes(),
               "namespace": namespace.encode()})
    return sa


def pod_environment(host: str, port: int = 443, *, hostname: str = "coredns-0",
                    path: str | None = None) -> dict[str, str]:
    """A container's environment in a pod whose cluster's API is at host:port:
    PATH, HOSTNAME, HOME and the ``kubernetes`` Service's variables."""
    addr = f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"
    prefix = f"KUBERNETES_PORT_{port}_TCP"
    return {
        "PATH": path or os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:"
                                       "/usr/bin:/sbin:/bin"),
        "HOSTNAME": hostname,
        "HOME": "/root" if os.geteuid() == 0 else os.environ.get("HOME", "/"),
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        "KUBERNETES_PORT": addr,
        prefix: addr,
        f"{prefix}_PROTO": "tcp",
        f"{prefix}_PORT": str(port),
        f"{prefix}_ADDR": host,
    }


def launch_unavailable() -> str | None:
    """Why ``launch_in_pod`` cannot work here (a test's skip reason), or None."""
    if os.geteuid() != 0:
        return "a pod-like launch needs root (mount namespaces and bind mounts)"
    for tool in ("unshare", "mount", "sh"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: util-linux)"
    return None


def pod_command(argv: Sequence[str], sa_dir: str, *, netns: str | None = None,
                mount_point: str = SA_MOUNT) -> list[str]:
    """The command line ``launch_in_pod`` runs: ``[ip netns exec NS] unshare --mount
    --propagation private sh -c 'mount -o bind,ro SA MOUNT && exec "$@"' ...``.
    Every process in between execs, so the returned process is ``argv``'s."""
    script = 'mount -o bind,ro "$1" "$2" && shift 2 && exec "$@"'
    cmd = [shutil.which("unshare") or "unshare", "--mount", "--propagation", "private",
           shutil.which("sh") or "sh", "-c", script, "fastdns-pod", sa_dir, mount_point,
           *argv]
    if netns is not None:
        cmd = [shutil.which("ip") or "ip", "netns", "exec", netns, *cmd]
    return cmd


# -- the mount point on the host: made when missing, removed after the last user

_mount_lock = threading.Lock()
_mount_users: dict[str, int] = {}
_mount_made: dict[str, list[str]] = {}


def _acquire_mount_point(path: str) -> None:
    with _mount_lock:
        if _mount_users.get(path, 0) == 0:
            made: list[str] = []
            cur = path
            while not os.path.isdir(cur):
                made.append(cur)
                cur = os.path.dirname(cur)
            for d in reversed(made):
                os.mkdir(d, 0o755)
            _mount_made[path] = made  # deepest first
        _mount_users[path] = _mount_users.get(path, 0) + 1


def _release_mount_point(path: str) -> None:
    with _mount_lock:
        _mount_users[path] -= 1
        if _mount_users[path] > 0:
            return
        del _mount_users[path]
        for d in _mount_made.pop(path, []):
            try:
                os.rmdir(d)  # only if empty: a directory someone filled meanwhile stays
            except OSError:
                break


class PodProcess(subprocess.Popen):
    """A Popen whose exit (seen by ``wait`` or ``poll``) gives the mount point back."""

    def __init__(self, args: Sequence[str], *, mount_point: str, **kwargs: Any) -> None:
        self._mount_point: str | None = None
        self._release_lock = threading.Lock()
        _acquire_mount_point(mount_point)
        try:
            super().__init__(args, **kwargs)
        except BaseException:
            _release_mount_point(mount_point)
            raise
        self._mount_point = mount_point

    def _released(self) -> None:
        with self._release_lock:
            mp, self._mount_point = self._mount_point, None
        if mp is not None:
            _release_mount_point(mp)

    def poll(self) -> int | None:
        rc = super().poll()
        if rc is not None:
            self._released()
        return rc

    def wait(self, timeout: float | None = None) -> int:
        rc = super().wait(timeout)
        self._released()
        return rc


def launch_in_pod(argv: Sequence[str], sa_dir: str | ServiceAccountDir,
                  env: Mapping[str, str], *, netns: str | None = None,
                  mount_point: str = SA_MOUNT, **popen_kwargs: Any) -> PodProcess:
    """Start ``argv`` with ``sa_dir`` at the service-account path and ``env`` as its
    whole environment (``pod_environment`` plus what the command needs), in
    network namespace ``netns`` if given. Wait for it (``wait``/``poll``) so the
    mount point this made, if any, is removed."""
    reason = launch_unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    path = sa_dir.path if isinstance(sa_dir, ServiceAccountDir) else str(sa_dir)
    cmd = pod_command(argv, os.path.abspath(path), netns=netns, mount_point=mount_point)
    return PodProcess(cmd, mount_point=mount_point, env=dict(env), **popen_kwargs)
