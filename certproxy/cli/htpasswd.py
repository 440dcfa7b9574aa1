"""``certproxy htpasswd USER``: print a bcrypt htpasswd line."""

from __future__ import annotations

import argparse
import getpass
import sys

from ..service.auth import HtpasswdError, make_entry
from .common import EXIT_CONFIG, EXIT_FAIL, EXIT_OK


def cmd_htpasswd(args: argparse.Namespace) -> int:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.user}: ")
        if getpass.getpass("again: ") != password:
            print("certproxy htpasswd: the passwords differ", file=sys.stderr)
            return EXIT_FAIL
    if not password:
        print("certproxy htpasswd: empty password", file=sys.stderr)
        return EXIT_FAIL
    if not 4 <= args.cost <= 16:
        print("certproxy htpasswd: --cost must be 4 to 16", file=sys.stderr)
        return EXIT_CONFIG
    try:
        print(make_entry(args.user, password, args.cost))
    except HtpasswdError as exc:
        print(f"certproxy htpasswd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK
