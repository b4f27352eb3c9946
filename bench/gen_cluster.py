#!/usr/bin/env python3
"""Synthetic cluster state in the `--state` format (a kubectl `List`).

    python3 bench/gen_cluster.py --services 10000 --endpoints-per-service 15 \
        --headless-share 0.2 --dualstack-share 0.1 -o /tmp/cluster.json

Deterministic for a given seed. Services spread over namespaces of ~100
Services each; every Service has one or two named ports; endpoints are split
into EndpointSlices of at most 100 (the EndpointSlice controller's default);
half the headless Services are StatefulSet-style (endpoint hostnames).
Dual-stack Services get two cluster IPs and an IPv6 slice next to the IPv4
one (the same pods, so the endpoint count per family is M). Output is JSON
for a `.json` file name (fast to load), else YAML.
"""

from __future__ import annotations

import argparse
import json
import random
import sys

SLICE_MAX = 100


def _v4(base: int, i: int) -> str:
    n = base + i
    return f"{n >> 24 & 255}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


def _v6(prefix: str, i: int) -> str:
    return f"{prefix}{i >> 16 & 0xFFFF:x}:{i & 0xFFFF:x}"


SVC_V4 = (10 << 24) | (96 << 16)  # 10.96.0.0/12
POD_V4 = (10 << 24) | (128 << 16)  # 10.128.0.0/9


def generate(services: int, per_service: int, headless_share: float, dualstack_share: float,
             seed: int = 1, pods: bool = True, per_namespace: int = 100) -> dict:
    rnd = random.Random(seed)
    items: list[dict] = []
    nns = max(1, (services + per_namespace - 1) // per_namespace)
    for n in range(nns):
        items.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns-{n}"}})
    pod_index = 0
    for s in range(services):
        ns = f"ns-{s % nns}"
        name = f"svc-{s}"
        headless = rnd.random() < headless_share
        dual = not headless and rnd.random() < dualstack_share
        sts = headless and rnd.random() < 0.5
        ports = [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]
        if s % 3 == 0:
            ports.append({"name": "grpc", "port": 9090, "protocol": "TCP", "targetPort": 9090})
        spec: dict = {"type": "ClusterIP", "ports": ports, "selector": {"app": name}}
        if headless:
            spec["clusterIP"] = "None"
            spec["clusterIPs"] = ["None"]
        else:
            ips = [_v4(SVC_V4, s + 16)]
            if dual:
                ips.append(_v6("fd00:10:96::", s + 16))
            spec["clusterIP"] = ips[0]
            spec["clusterIPs"] = ips
        items.append({"apiVersion": "v1", "kind": "Service",
                      "metadata": {"name": name, "namespace": ns}, "spec": spec})
        eps4, eps6 = [], []
        for e in range(per_service):
            pod = f"{name}-{e}" if sts else f"{name}-{rnd.getrandbits(32):08x}"
            ip4 = _v4(POD_V4, pod_index)
            ip6 = _v6("fd00:10:244::", pod_index)
            pod_index += 1
            ready = rnd.random() > 0.02
            ep = {"addresses": [ip4], "conditions": {"ready": ready, "serving": ready,
                                                    "terminating": False},
                  "nodeName": f"node-{pod_index % 50}",
                  "targetRef": {"kind": "Pod", "name": pod, "namespace": ns}}
            if sts:
                ep["hostname"] = pod
            eps4.append(ep)
            if dual:
                eps6.append({**ep, "addresses": [ip6]})
            if pods:
                pips = [{"ip": ip4}] + ([{"ip": ip6}] if dual else [])
                items.append({"apiVersion": "v1", "kind": "Pod",
                              "metadata": {"name": pod, "namespace": ns, "labels": {"app": name}},
                              "status": {"phase": "Running", "podIP": ip4, "podIPs": pips}})
        slice_ports = [{"name": p["name"], "port": p["targetPort"], "protocol": p["protocol"]}
                       for p in ports]
        for family, eps in (("IPv4", eps4), ("IPv6", eps6)):
            for k in range(0, len(eps), SLICE_MAX):
                items.append({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": f"{name}-{family.lower()}-{k // SLICE_MAX}",
                                 "namespace": ns,
                                 "labels": {"kubernetes.io/service-name": name}},
                    "addressType": family, "endpoints": eps[k : k + SLICE_MAX],
                    "ports": slice_ports})
    return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
            "items": items}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--services", type=int, required=True)
    ap.add_argument("--endpoints-per-service", type=int, default=10)
    ap.add_argument("--headless-share", type=float, default=0.2)
    ap.add_argument("--dualstack-share", type=float, default=0.1)
    ap.add_argument("--services-per-namespace", type=int, default=100)
    ap.add_argument("--no-pods", action="store_true", help="omit Pod objects")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-o", "--output", default="-")
    a = ap.parse_args(argv)
    doc = generate(a.services, a.endpoints_per_service, a.headless_share, a.dualstack_share,
                   a.seed, not a.no_pods, a.services_per_namespace)
    if a.output.endswith(".json"):
        text = json.dumps(doc, separators=(",", ":"))
    else:
        import yaml

        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        text = yaml.dump(doc, Dumper=dumper, sort_keys=False)
    if a.output == "-":
        sys.stdout.write(text)
    else:
        with open(a.output, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
