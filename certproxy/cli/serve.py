"""``certproxy serve``: run the proxy until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import sys

from ..service.config import SETTINGS
from .common import EXIT_CONFIG, EXIT_OK, config_from

# Every setting is a flag of `serve` (and an environment variable, and a TOML key).
SERVE_FLAGS = tuple(SETTINGS)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..service.checks import StartupError
    from ..service.logs import setup_logging
    from ..service.server import run

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
