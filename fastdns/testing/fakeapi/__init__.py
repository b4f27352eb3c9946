"""A fake Kubernetes API server that speaks the real list/watch protocol.

The tests and benchmarks of the control plane need an API server that fails
the way a real one does: paged lists with ``continue`` tokens, chunked watch
streams that end at ``timeoutSeconds``, BOOKMARK events, a bounded event
history whose end is a ``410 Expired`` ERROR line *inside* a 200 stream,
429s with ``Retry-After``, and a server that vanishes and comes back. Only
the four kinds DNS watches are served (Namespaces, Services, EndpointSlices,
Pods), cluster-wide and namespaced, plus the discovery stubs clients call.

Protocol references: https://kubernetes.io/docs/reference/using-api/api-concepts/
(efficient detection of changes, watch bookmarks, retrieving large results
sets in chunks, 410 Gone responses) and the apiserver watch cache
(``staging/src/k8s.io/apiserver/pkg/storage/cacher``): one resourceVersion
counter shared by all kinds (etcd's revision), "too old resource version: X
(Y)" when X is older than the cache's history.

Use from tests (``from fastdns.testing.fakeapi.server import FakeApiServer``)::

    with FakeApiServer() as api:            # real HTTP on 127.0.0.1:<ephemeral>
        api.create("Service", {...})
        api.url, api.write_kubeconfig(path)

or standalone (benchmarks, subprocesses)::

    python3 -m fastdns.testing.fakeapi --port 0 --state cluster.yaml

which prints ``listening on http://127.0.0.1:PORT`` once it serves. Objects
can then be changed over HTTP like on a real server (POST to a namespaced
collection, PUT/DELETE on an object), and the test controls are under
``/_fake/`` (``POST /_fake/compact``, ``/_fake/down?seconds=2``, ...).

Like a cluster's apiserver it can serve HTTPS (``tls=(cert, key)``, see
``fastdns.testing.pki``) and authenticate bearer tokens that rotate
(``rotate_token``: bound service-account tokens are replaced about hourly
and the old one stays valid for a while), and it can refuse a resource the
way RBAC does (``forbid("services")``: a 403 whose Status names the user,
the verb and the resource), so a missing ClusterRole can be shown.

The modules: ``server`` (FakeApiServer: life cycle, test controls, the HTTP
entry), ``store`` (objects, resourceVersion, event history), ``listing``
(paged lists, get, writes), ``watch`` (streams, bookmarks, 410), ``auth``
(tokens, RBAC), ``faults`` (counting, delays, injected failures),
``resources`` (kinds, paths, discovery, Status), ``selectors`` and ``cli``.
"""
