#!/usr/bin/env bash
# Builds the repository's Dockerfile with podman + runc on a machine that cannot
# pull images (no registry reachable, no Docker engine), and tags the result as
# the manifests name it (ghcr.io/fastdns/fastdns:VERSION).
#
#   deploy/build-image.sh                 # base stand-in (once) + the fastdns image
#   deploy/build-image.sh --setup-image   # also the stand-in for nodelocaldns.yaml's
#                                         # init-container image (sh, ip, iptables)
#
# Where a registry is reachable, `docker build -t ghcr.io/fastdns/fastdns:0.1.0 .`
# is the same build; this script only supplies what a pull would have:
#
# 1. A local stand-in for the Dockerfile's base image (its first FROM), made from
#    Debian packages: `debootstrap --variant=minbase` from the apt mirror this
#    machine's /etc/apt/sources.list* names, then python3, pip, venv,
#    ca-certificates and Python's C headers (no gcc or libc6-dev, as in the python
#    image), shaped like the official python image: python3/pip on PATH,
#    /usr/local/bin/python3.11, no PEP 668 EXTERNALLY-MANAGED marker,
#    LANG=C.UTF-8, and docs and man pages left out as Debian's slim images do.
#    It is tagged with the base's full name, so `podman build` uses it without
#    pulling. Made once: skipped while that tag exists.
# 2. `podman build` of the Dockerfile as committed. Its RUN steps call apt-get and
#    pip, so they get this machine's package-index configuration at build time
#    only: the stand-in carries the host's apt sources (as the real image carries
#    Debian's), and pip's configuration (`pip config list`: files and PIP_* env,
#    merged into one pip.conf) plus every local file or directory it names (CA
#    bundle, constraints, find-links, file:// indexes with the files beside them)
#    are bind-mounted read-only into the build containers, never copied into an
#    image. Nothing host-specific is in the repository: all is read at run time.
#
# Environment: FASTDNS_IMAGE (default ghcr.io/fastdns/fastdns:<pyproject version>),
# FASTDNS_RUNTIME (default /usr/sbin/runc: crun refuses cgroup v1 hybrid setups).
# Needs root, podman, runc and debootstrap (apt-get install podman runc debootstrap).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNTIME=${FASTDNS_RUNTIME:-/usr/sbin/runc}
SUITE=bookworm  # the Debian release the Dockerfile's apt pins are written for
MINBASE=localhost/fastdns-stand-in/debian-minbase:$SUITE
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/pyproject.toml")
IMAGE=${FASTDNS_IMAGE:-ghcr.io/fastdns/fastdns:$VERSION}

die() { echo "build-image: $*" >&2; exit 1; }

want_setup=0
for arg in "$@"; do
  case $arg in
    --setup-image) want_setup=1 ;;
    -h|--help) sed -n '2,9s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) die "unknown argument '$arg' (see --help)" ;;
  esac
done

[ "$(id -u)" = 0 ] || die "run as root (podman build with runc, debootstrap)"
command -v podman >/dev/null || die "podman missing: apt-get install podman runc debootstrap"
[ -x "$RUNTIME" ] || die "$RUNTIME missing: apt-get install runc"

# Full image name as podman resolves a FROM: python:3.11-slim -> docker.io/library/...
full_name() {
  local name=$1 first=${1%%/*}
  if [[ $name != */* ]]; then
    echo "docker.io/library/$name"
  elif [[ $first != *.* && $first != *:* && $first != localhost ]]; then
    echo "docker.io/$name"
  else
    echo "$name"
  fi
}

BASE=$(full_name "$(awk 'toupper($1) == "FROM" { print $2; exit }' "$ROOT/Dockerfile")")
SETUP_IMAGE=$(awk '/^ *initContainers:/ { init = 1 } init && /^ *image:/ { print $2; exit }' \
  "$ROOT/deploy/nodelocaldns.yaml")

# Rlimits at or below the hard limits: without CAP_SYS_RESOURCE podman's default
# (nofile 1048576) fails with "setrlimit ... Operation not permitted".
ULIMITS=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit "nproc=4096:4096")
PODMAN=(podman --runtime "$RUNTIME")

WORK=$(mktemp -d /var/tmp/fastdns-build-image.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

have_image() { podman image exists "$1"; }

# The first deb URI of $SUITE in the host's apt sources (one-line and deb822 files).
host_mirror() {
  local f
  {
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v s="$SUITE" '$1 == "deb" { line = $0; sub(/\[[^]]*\]/, "", line); split(line, w);
      if (w[3] == s) { print w[2]; exit } }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v s="$SUITE" 'function flush() { if (deb && on && suite && uri != "") print uri;
        deb = 0; on = 1; suite = 0; uri = "" }
      BEGIN { on = 1 }
      /^[ \t]*$/ { flush(); next }
      tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
      tolower($1) == "uris:" { uri = $2 }
      tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == s) suite = 1 }
      tolower($1) == "enabled:" { on = (tolower($2) != "no") }
      END { flush() }' "$f"
  done
  } | awk 'NR == 1'
}

# The host's enabled apt sources, the keyrings they name, and its apt proxy, into $1.
copy_apt_config() {
  local rootfs=$1 f
  rm -f "$rootfs/etc/apt/sources.list"
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    install -D -m 0644 "$f" "$rootfs$f"
    { grep -ohiE '(signed-by[:=] *)[^] ]+' "$f" || true; } | sed -E 's/^[^:=]*[:=] *//' \
    | while read -r key; do
      if [ -f "$key" ] && [ ! -e "$rootfs$key" ]; then install -D -m 0644 "$key" "$rootfs$key"; fi
    done
  done
  apt-config dump | grep -E '^Acquire::[a-z]+::Proxy ' > "$rootfs/etc/apt/apt.conf.d/01host-proxy" \
    || rm -f "$rootfs/etc/apt/apt.conf.d/01host-proxy"
}

# Debian's slim images leave docs, man pages and translations out (their dpkg
# path-exclude list).
SLIM_EXCLUDES='path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*'

# Debian's container images keep no package caches or translations in their layers.
APT_CLEAN='DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
Acquire::GzipIndexes "true";
APT::AutoRemove::SuggestsImportant "false";'

make_minbase() {
  local mirror rootfs=$WORK/rootfs
  command -v debootstrap >/dev/null || die "debootstrap missing: apt-get install debootstrap"
  mirror=$(host_mirror)
  [ -n "$mirror" ] || die "no 'deb ... $SUITE' source in /etc/apt/sources.list*"
  echo "build-image: debootstrap $SUITE (minbase) from $mirror"
  debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" > "$WORK/debootstrap.log" 2>&1 \
    || { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
  printf '%s\n' "$SLIM_EXCLUDES" > "$rootfs/etc/dpkg/dpkg.cfg.d/01-slim"
  printf '%s\n' "$APT_CLEAN" > "$rootfs/etc/apt/apt.conf.d/01-container-clean"
  find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
  rm -rf "$rootfs"/usr/share/{man,info,locale}/* "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
  copy_apt_config "$rootfs"
  tar --numeric-owner --xattrs -C "$rootfs" -c . \
    | podman import --change 'CMD ["/bin/bash"]' - "$MINBASE" >"$WORK/import.log" 2>&1
  rm -rf "$rootfs"
}

# podman build of a Containerfile given on stdin, on the host network.
build_stdin() {
  local tag=$1
  "${PODMAN[@]}" build --network host "${ULIMITS[@]}" -t "$tag" -f - "$WORK" >"$WORK/build.log" 2>&1 \
    || { tail -n 30 "$WORK/build.log" >&2; die "building $tag failed"; }
}

make_base() {
  echo "build-image: making $BASE from Debian $SUITE packages"
  build_stdin "$BASE" <<EOF
FROM $MINBASE
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
       python3 python3-pip python3-venv ca-certificates \\
    && cd /tmp && apt-get download libpython3.11-dev \\
    && dpkg-deb --fsys-tarfile libpython3.11-dev_*.deb | tar -x -C / ./usr/include \\
    && rm -f libpython3.11-dev_*.deb && rm -rf /var/lib/apt/lists/* \\
    && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED \\
    && ln -s /usr/bin/python3.11 /usr/local/bin/python3.11 \\
    && ln -s python3.11 /usr/local/bin/python3 && ln -s python3 /usr/local/bin/python \\
    && ln -s /usr/bin/pip3 /usr/local/bin/pip
ENV LANG=C.UTF-8
CMD ["python3"]
EOF
}

make_setup_image() {
  echo "build-image: making $SETUP_IMAGE (sh, ip, iptables) from Debian $SUITE packages"
  build_stdin "$SETUP_IMAGE" <<EOF
FROM $MINBASE
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iproute2 iptables \\
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
EOF
}

# The host's pip configuration for the build's RUN steps: one pip.conf merged from
# `pip config list` (files, then PIP_* env, which win as in pip) with every local
# path it names moved under $HOSTDIR, and read-only mounts of those paths there.
# Prints podman build arguments, one per line. (podman 4.3 leaves the empty mount
# points, /etc/pip.conf and $HOSTDIR/..., in the image: no content of the host.)
HOSTDIR=/run/fastdns-build-host
pip_mounts() {
  python3 - "$WORK/pip.conf" "$HOSTDIR" <<'EOF'
import ast, configparser, os, subprocess, sys, urllib.parse

conf_path, hostdir = sys.argv[1], sys.argv[2]
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                     capture_output=True, text=True, check=False).stdout
items, env_items = [], []
for line in out.splitlines():
    key, sep, value = line.partition("=")
    if sep:
        section, _, name = key.rpartition(".")
        if section == ":env:":
            env_items.append(("global", name, ast.literal_eval(value)))
        else:
            items.append((section, name, ast.literal_eval(value)))
mounts = {}


def local(word, name):
    """The word with a local path moved under hostdir (and that path mounted)."""
    is_url = word.startswith("file:")
    path = urllib.parse.urlparse(word).path if is_url else word
    if not path.startswith("/") or not os.path.exists(path):
        return word
    path = os.path.realpath(path)
    # a local index's pages link to files beside it (simple/p/ -> ../../files/x.whl)
    top = os.path.dirname(path) if is_url and name.endswith("index-url") else path
    mounts[top] = hostdir + top
    return ("file://" if is_url else "") + hostdir + path


conf = configparser.ConfigParser(interpolation=None)
for section, name, value in items + env_items:
    if not conf.has_section(section):
        conf.add_section(section)
    conf.set(section, name, " ".join(local(w, name) for w in value.split()))
with open(conf_path, "w") as f:
    conf.write(f)
print(f"--volume={conf_path}:/etc/pip.conf:ro")
for src, dst in sorted(mounts.items()):
    print(f"--volume={src}:{dst}:ro")
EOF
}

if ! have_image "$MINBASE" && { ! have_image "$BASE" || { [ $want_setup = 1 ] && ! have_image "$SETUP_IMAGE"; }; }; then
  make_minbase
fi
have_image "$BASE" || make_base
if [ $want_setup = 1 ] && ! have_image "$SETUP_IMAGE"; then make_setup_image; fi

mapfile -t PIP_MOUNTS < <(pip_mounts)

# podman build of the Dockerfile tagged $1 (more podman build arguments after it). A
# rebuild moves the tag: the image it leaves untagged is removed (with the untagged
# layers only it used), so rebuilds do not pile up; no other image is touched.
build_tagged() {
  local tag=$1 old_id new_id
  shift
  old_id=$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
  "${PODMAN[@]}" build --network host "${ULIMITS[@]}" "${PIP_MOUNTS[@]}" "$@" \
    -t "$tag" -f "$ROOT/Dockerfile" "$ROOT" >"$WORK/build.log" 2>&1 \
    || { tail -n 40 "$WORK/build.log" >&2; die "podman build of $tag failed (log above)"; }
  new_id=$(podman image inspect --format '{{.Id}}' "$tag")
  if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
    podman rmi "$old_id" >/dev/null 2>&1 || true
  fi
}

start=$(date +%s)
echo "build-image: podman build $IMAGE (FROM $BASE)"
# The named build stages get tags of their own (the final build reuses them from the
# layer cache), so that their superseded images are removed like the final one's.
mapfile -t STAGES < <(awk 'toupper($1) == "FROM" && toupper($3) == "AS" { print $4 }' \
  "$ROOT/Dockerfile")
for stage in "${STAGES[@]}"; do
  build_tagged "localhost/fastdns-stand-in/build-stage-$stage:$VERSION" --target "$stage"
done
build_tagged "$IMAGE"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "build-image: $IMAGE built in $(( $(date +%s) - start ))s, $size bytes ($(( size / 1048576 )) MiB)"
