"""``certproxy htpasswd USER``: print a bcrypt htpasswd line."""

from __future__ import annotations

import argparse
import getpass
import sys

from ..service.auth import HtpasswdError, make_entry
from .common import EXIT_CONFIG, EXIT_FAIL, EXIT_OK


def _interactive() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except ValueError:  # stdin closed
        return False


def cmd_htpasswd(args: argparse.Namespace) -> int:
    if args.password_stdin or not _interactive():
        # A pipe or a file: the first line is the password (`echo pw | certproxy htpasswd bob`).
        line = sys.stdin.readline() if sys.stdin is not None else ""
        if not line:
            print(
                "certproxy htpasswd: no password on standard input (pipe one in, or run it "
                "in a terminal to be asked)",
                file=sys.stderr,
            )
            return EXIT_FAIL
        password = line.rstrip("\r\n")
    else:
        try:
            password = getpass.getpass(f"password for {args.user}: ")
            again = getpass.getpass("again: ")
        except EOFError:
            print("certproxy htpasswd: no password given", file=sys.stderr)
            return EXIT_FAIL
        if again != password:
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
