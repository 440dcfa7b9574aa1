"""The ``certproxy`` command line: the parser and one module per command.

Exit codes: 0 success; 1 unhealthy / operation failed; 2 bad configuration or
usage (one line on stderr naming the setting).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..service.config import ConfigError, flag_name
from .common import EXIT_CONFIG, EXIT_OK
from .serve import SERVE_FLAGS

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="certproxy", description=("TLS front for a self-hosted Docker registry and its web UI.")
    )
    parser.add_argument("--version", action="version", version=f"certproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_serve_args, _status_args, _renew_args, _htpasswd_args, _healthcheck_args, _doctor_args):
        add(sub)
    return parser


def _serve_args(sub: Commands) -> None:
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", type=Path, help="TOML file with the same keys as the environment")
    for name in SERVE_FLAGS:
        serve.add_argument(
            flag_name(name),
            dest=name,
            default=None,
            metavar="VALUE",
            help=f"overrides CERTPROXY_{name.upper()}",
        )


def _status_args(sub: Commands) -> None:
    status = sub.add_parser("status", help="show the certificates in the store")
    status.add_argument("--config", type=Path)
    status.add_argument("--store", dest="store", default=None)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--url",
        help="the running certproxy's /healthz or base URL, to show what it serves "
        "(default: where the configuration puts its listener)",
    )


def _renew_args(sub: Commands) -> None:
    renew = sub.add_parser("renew", help="issue or renew the certificate now (when due, or --force)")
    renew.add_argument("--config", type=Path)
    ca = renew.add_mutually_exclusive_group()
    ca.add_argument(
        "--staging",
        action="store_true",
        default=None,
        help="Let's Encrypt's staging directory (untrusted certificates, high limits)",
    )
    ca.add_argument("--directory", dest="acme_directory", metavar="URL", help="any ACME directory")
    renew.add_argument(
        "--ca-bundle",
        dest="acme_ca_bundle",
        metavar="FILE",
        help="CA file to trust for the ACME API (private CA, Pebble)",
    )
    renew.add_argument(
        "--domain",
        dest="domain_list",
        action="append",
        metavar="NAME",
        help="a name for the certificate (repeat; the first names it)",
    )
    renew.add_argument("--email", metavar="ADDR")
    renew.add_argument("--store")
    renew.add_argument("--http-port", dest="http_port", metavar="PORT")
    renew.add_argument("--force", action="store_true", help="order even if not due")


def _htpasswd_args(sub: Commands) -> None:
    htp = sub.add_parser("htpasswd", help="print a bcrypt htpasswd line for USER")
    htp.add_argument("user")
    htp.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input instead of prompting",
    )
    htp.add_argument("--cost", type=int, default=12, help="bcrypt cost (default 12)")


def _healthcheck_args(sub: Commands) -> None:
    health = sub.add_parser("healthcheck", help="exit 0 when /healthz says healthy")
    health.add_argument("--config", type=Path)
    health.add_argument(
        "--url",
        help="the running certproxy's /healthz or base URL "
        "(default: where the configuration puts its listener)",
    )
    health.add_argument("--timeout", type=float, default=5.0)


def _doctor_args(sub: Commands) -> None:
    doctor = sub.add_parser(
        "doctor", help="check the path to a registry from this machine: TLS, login, a push and a pull"
    )
    doctor.add_argument("url", metavar="URL", help="the registry, https://HOST[:PORT]")
    doctor.add_argument("--user", metavar="NAME", help="log in as NAME (the password from a prompt or stdin)")
    doctor.add_argument(
        "--ca", type=Path, metavar="FILE", help="CA file to trust (default: the system store)"
    )
    doctor.add_argument(
        "--size", metavar="SIZE", help="test blob size: bytes or KiB/MiB/GiB (default 128MiB)"
    )
    doctor.add_argument(
        "--idle",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="pause mid-body to find idle timeouts (default 5)",
    )
    doctor.add_argument("--repository", metavar="NAME", help="repository to push the throwaway blobs to")
    doctor.add_argument("--json", action="store_true", help="one JSON document on stdout")


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    # Each command's module loads only when it runs (serve never imports the acme library).
    if name == "serve":
        from .serve import cmd_serve

        return cmd_serve
    if name == "status":
        from .status import cmd_status

        return cmd_status
    if name == "renew":
        from .renew import cmd_renew

        return cmd_renew
    if name == "doctor":
        from .doctor import cmd_doctor

        return cmd_doctor
    if name == "healthcheck":
        from .healthcheck import cmd_healthcheck

        return cmd_healthcheck
    from .htpasswd import cmd_htpasswd

    return cmd_htpasswd


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code = _command(args.command)(args)
        sys.stdout.flush()
    except ConfigError as exc:
        print(f"certproxy: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BrokenPipeError:
        # The reader went away (`certproxy status | head`): nothing more to say to it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
