"""``certproxy serve``: run the proxy until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import sys

from .common import EXIT_CONFIG, EXIT_OK, config_from

# Settings offered as flags on `serve` (all of them are also environment variables).
SERVE_FLAGS = (
    "store",
    "domains",
    "bind",
    "http_port",
    "routes",
    "log_format",
    "log_level",
    "shutdown_grace",
    "upstream_connect_timeout",
    "upstream_read_timeout",
)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..service.logs import setup_logging
    from ..service.server import StartupError, run

    config = config_from(args, SERVE_FLAGS)
    setup_logging(config.log_format, config.log_level)
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(run(config))
    except StartupError as exc:
        print(f"certproxy: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        pass
    return EXIT_OK
