# Multi-stage build: compile the Cython core in a full image, run on slim.
# The base names its Debian release: the apt pins below are bookworm's
# (python:3.11-slim alone now follows Debian's newest release).
FROM python:3.11-slim-bookworm AS build
# Pinned to bookworm's upstream versions (hadolint DL3008); the trailing `*`
# accepts the point-release revisions the security archive replaces.
RUN apt-get update && apt-get install -y --no-install-recommends \
       gcc=4:12.2.0-* libc6-dev=2.36-* \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY fastdns ./fastdns
# fastdns and its runtime dependencies in a venv without pip, copied whole into
# the runtime stage: one layer of installed files, no wheels beside them. The
# kubernetes client's asyncio twin (kubernetes/aio, 68 MB in client >= 37),
# which fastdns never imports, is left out.
RUN python3 -m venv --without-pip /opt/fastdns \
    && pip --python /opt/fastdns/bin/python install --no-cache-dir . \
    && rm -rf /opt/fastdns/lib/python3.11/site-packages/kubernetes/aio

FROM python:3.11-slim-bookworm
COPY --from=build /opt/fastdns /opt/fastdns
# Bind port 53 without root, as CoreDNS's image does with its binary.
RUN apt-get update && apt-get install -y --no-install-recommends libcap2-bin=1:2.66-* \
    && setcap cap_net_bind_service=+ep "$(readlink -f /usr/local/bin/python3.11)" \
    && apt-get purge -y libcap2-bin && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/fastdns/bin:$PATH
USER 65532:65532
EXPOSE 53/udp 53/tcp 9153/tcp 8080/tcp 8181/tcp
ENTRYPOINT ["fastdns", "serve", "--corefile", "/etc/coredns/Corefile"]
