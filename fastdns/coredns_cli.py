"""CoreDNS's command line, accepted by ``fastdns serve``.

kubeadm's CoreDNS Deployment runs the image with ``args: ["-conf",
"/etc/coredns/Corefile"]``; appended to fastdns's entrypoint (``fastdns
serve --corefile /etc/coredns/Corefile``) those must mean what they mean to
CoreDNS, so that swapping the image is the whole migration.

CoreDNS's flags (``coredns.go``, ``core/dnsserver/register.go`` and caddy's
``caddy/caddymain/run.go``) are Go ``flag`` package flags: one or two
dashes, ``-name value`` or ``-name=value``, booleans as ``-name`` or
``-name=false``. Each is rewritten to the ``serve`` option of the same
meaning; everything else is left for argparse.
"""

from __future__ import annotations

# CoreDNS flag -> (serve option, takes a value)
FLAGS: dict[str, tuple[str, bool]] = {
    "conf": ("--corefile", True),  # Corefile to load
    "dns.port": ("--dns-port", True),  # default port of dns:// keys without one
    "pidfile": ("--pidfile", True),  # write the process ID here
    "quiet": ("--quiet", False),  # no initialization output
    "version": ("--version", False),  # print the version and exit
    "plugins": ("--plugins", False),  # list the plugins and exit
}

_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False"}


class FlagError(ValueError):
    """A CoreDNS flag used in a way Go's flag package refuses; str is the message."""


def translate(argv: list[str]) -> list[str]:
    """``argv`` with CoreDNS's flags rewritten as ``serve`` options.

    ``--`` ends option parsing (as in Go and argparse): what follows is
    passed through unchanged.
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            out.extend(argv[i - 1:])
            break
        name, eq, value = arg.lstrip("-").partition("=")
        dashes = len(arg) - len(arg.lstrip("-"))
        if dashes not in (1, 2) or name not in FLAGS:
            out.append(arg)
            continue
        option, takes_value = FLAGS[name]
        if takes_value:
            if not eq:
                if i >= len(argv):
                    raise FlagError(f"flag needs an argument: -{name}")
                value = argv[i]
                i += 1
            out += [option, value]
        elif not eq or value in _TRUE:
            out.append(option)
        elif value not in _FALSE:
            raise FlagError(f'invalid boolean value "{value}" for -{name}: parse error')
    return out


def version_text() -> str:
    """CoreDNS's ``-version`` shape: ``CoreDNS-1.11.1`` / ``linux/amd64, go1.21.1, ...``."""
    import platform
    import sys

    return (f"fastdns-{package_version()}\n"
            f"{sys.platform}/{platform.machine()}, python{platform.python_version()}")


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("fastdns")
    except Exception:  # noqa: BLE001 - not installed: running from a checkout
        import fastdns

        return getattr(fastdns, "__version__", "dev")


def plugins_text() -> str:
    """CoreDNS's ``-plugins`` listing (caddy's ``caddy.DescribePlugins``), for
    the plugins fastdns runs."""
    from fastdns.plugins import registry

    names = sorted(p.name for p in registry.PLUGINS if p.runs)
    return "\n".join(["Server types:", "  dns", "", "Caddyfile loaders:", "  flag", "  default",
                      "", "Other plugins:", *(f"  dns.{n}" for n in names)])
