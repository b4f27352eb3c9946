"""node-cache's own behaviour (kubernetes/dns ``cmd/node-cache``), for its DaemonSet.

- ``flags``: node-cache's command line, beside CoreDNS's;
- ``render``: the Corefile from the base, its ``__PILLAR__`` placeholders and
  the kube-dns ConfigMap (``stubDomains``, ``upstreamNameservers``);
- ``sync``: the re-render every 10 s, and the reload it triggers.

The dummy interface and the iptables/nftables rules are not done here yet
(issue 16): with ``-setupinterface`` or ``-setupiptables`` on, fastdns says so
in one line and serves on addresses something else must provide.
"""
