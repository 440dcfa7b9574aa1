"""``certproxy healthcheck``: exit 0 when the running certproxy's ``/healthz`` says healthy.

Without ``--url`` it asks where the configuration (flags, environment,
``--config``) puts the listener: the admin socket when one is set (it reaches
this process even where replicas share the ports), the plain-HTTP port on the
bind address, the admin port when plain HTTP is off, else the first TLS route. So the image's
``HEALTHCHECK`` follows ``CERTPROXY_BIND``, ``CERTPROXY_HTTP_PORT=off`` and a
port set in the TOML file.
"""

from __future__ import annotations

import argparse
import sys

from .common import EXIT_FAIL, EXIT_OK, config_from
from .health_client import default_url, get_health, health_url


def cmd_healthcheck(args: argparse.Namespace) -> int:
    url = health_url(args.url) if args.url else default_url(config_from(args, ()))
    answer = get_health(url, args.timeout)
    if answer.code is None:
        print(f"unhealthy: {url}: {answer.error}", file=sys.stderr)
        return EXIT_FAIL
    status = answer.body.get("status", "?") if answer.body else "?"
    if answer.code == 200:
        print(f"{answer.code} {status}")
        return EXIT_OK
    print(f"{answer.code} {status}", file=sys.stderr)
    return EXIT_FAIL
