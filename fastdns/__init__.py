"""fastdns: a Kubernetes cluster DNS server and node-local cache, CoreDNS-compatible."""

__version__ = "0.1.0"
