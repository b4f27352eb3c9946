# Multi-stage build: compile the Cython core in a full image, run on slim.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY fastdns ./fastdns
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libcap2-bin \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    # Bind port 53 without root, as CoreDNS's image does with its binary.
    && setcap cap_net_bind_service=+ep "$(readlink -f /usr/local/bin/python3.11)" \
    && apt-get purge -y libcap2-bin && rm -rf /var/lib/apt/lists/*
USER 65532:65532
EXPOSE 53/udp 53/tcp 9153/tcp 8080/tcp 8181/tcp
ENTRYPOINT ["fastdns", "serve", "--corefile", "/etc/coredns/Corefile"]
