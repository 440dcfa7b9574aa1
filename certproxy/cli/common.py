"""What every command shares: exit codes and the configuration from flags."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from ..service.config import SETTINGS, Config, load_config

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


def config_from(args: argparse.Namespace, names: Sequence[str]) -> Config:
    """Flags named in ``names`` over the environment over ``--config``."""
    flags: dict[str, Any] = {n: getattr(args, n, None) for n in names if n in SETTINGS}
    return load_config(os.environ, flags, getattr(args, "config", None))
