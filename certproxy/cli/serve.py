"""``certproxy serve``: run the proxy until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..service.config import SETTINGS
from .common import EXIT_CONFIG, EXIT_OK, config_from

if TYPE_CHECKING:
    from ..service.config import Config
    from ..service.workers import Worker

# Every setting is a flag of `serve` (and an environment variable, and a TOML key).
SERVE_FLAGS = tuple(SETTINGS)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..service.checks import raise_fd_limit, tune_malloc
    from ..service.logs import setup_logging
    from ..service.workers import Worker, serve_workers

    config = config_from(args, SERVE_FLAGS)
    setup_logging(config.log_format, config.log_level)
    # Every listener full, each client with its upstream connection, and room for files;
    # a warning only when one full listener cannot fit.
    listeners = len(config.routes) + 2
    cap = config.max_connections
    warning = raise_fd_limit(cap * listeners * 2 + 256, needed=cap * 2 + 256)
    if warning:
        logging.getLogger("certproxy").warning("%s; connections past it are refused", warning)
    tune_malloc()
    if config.workers == 1:
        return _serve(config, Worker(replicated=config.share_ports), lambda: None)
    return serve_workers(
        config.workers, lambda worker, ready: _serve(config, worker, ready), replicated=config.share_ports
    )


def _serve(config: Config, worker: Worker, ready: Callable[[], None]) -> int:
    from ..service.checks import StartupError
    from ..service.server import run

    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(run(config, worker, ready))
    except StartupError as exc:
        print(f"certproxy: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        pass
    return EXIT_OK
