"""The plugin registry: one module per plugin, one ordered table of them.

``fastdns/plugins/spec.py`` says what a plugin declares (``Plugin``),
``fastdns/plugins/registry.py`` holds the table in CoreDNS's ``plugin.cfg``
order, and each plugin fastdns runs has a module here declaring its entry
(``whoami.py`` is the whole plugin; the big ones point at their code in
``corefile/``, ``zone/`` and ``forward/``). The Corefile parser,
``check-corefile``, ``serve``, the worker's slow path and the metric labels
all read that one table. docs/plugins.md tells how to add a plugin.
"""
