"""CoreDNS Corefile support: lexer, parser, typed configuration, checks.

``config.load_corefile(path)`` / ``config.parse_corefile(text, filename)``
give a ``model.Config`` of ``model.ServerBlock`` objects whose ``plugins``
map plugin names to frozen dataclasses; every problem is an
``errors.CorefileError`` naming file, line and plugin. ``verdict`` says
whether ``fastdns serve`` runs a Corefile; which plugins exist, parse and
run is the plugin registry's (fastdns/plugins/registry.py).

Nothing is imported here: the registry imports this package's parsers and
models, and the parser front end (``config``) imports the registry, so the
package itself must not pull ``config`` in.
"""
