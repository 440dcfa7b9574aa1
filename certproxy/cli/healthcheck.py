"""``certproxy healthcheck``: exit 0 when the running certproxy's ``/healthz`` says healthy."""

from __future__ import annotations

import argparse
import os
import sys

from .common import EXIT_FAIL, EXIT_OK
from .health_client import get_health


def cmd_healthcheck(args: argparse.Namespace) -> int:
    url = args.url
    if not url:
        port = os.environ.get("CERTPROXY_HTTP_PORT", "80")
        url = f"http://127.0.0.1:{port}/healthz"
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
