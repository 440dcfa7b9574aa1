"""``certproxy doctor URL``: checks the path from this machine to a registry, push and pull
included (see ``certproxy.doctor``). Exit 0 when it works, 1 when a check failed, 2 for
bad usage (one line naming the flag)."""

from __future__ import annotations

import argparse
import getpass
import re
import ssl
import sys
from pathlib import Path
from urllib.parse import urlsplit

from ..doctor import DEFAULT_IDLE, Check, Options, render, run
from ..service.config import ConfigError
from .common import EXIT_FAIL, EXIT_OK

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}
_REPOSITORY = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")


def parse_size(text: str) -> int:
    """``134217728``, ``128MiB``, ``1.5 GiB`` -> bytes; ConfigError naming --size otherwise."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ConfigError("--size", f"{text!r} is not a size (bytes, or a number with KiB, MiB or GiB)")
    size = int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])
    if size < 1:
        raise ConfigError("--size", f"{text!r}: the test blob needs at least one byte")
    return size


def parse_url(text: str) -> tuple[str, int]:
    """``https://HOST[:PORT][/]`` -> (host, port); ConfigError naming URL otherwise."""
    try:
        parts = urlsplit(text)
        port = parts.port or 443
    except ValueError as exc:
        raise ConfigError("URL", f"{text!r}: {exc}") from None
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError("URL", f"{text!r}: give the registry as https://HOST[:PORT]")
    if parts.username or parts.password:
        raise ConfigError(
            "URL", "credentials in the URL: use --user NAME (the password from a prompt or stdin)"
        )
    if parts.path not in ("", "/", "/v2", "/v2/") or parts.query:
        raise ConfigError("URL", f"{text!r}: give the registry's root, https://HOST[:PORT]")
    return parts.hostname, port


def _ca(path: Path | None) -> Path | None:
    if path is None:
        return None
    try:
        ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError("--ca", f"{path}: {reason}") from None
    return path


def _password(user: str | None) -> str | None:
    if user is None:
        return None
    if sys.stdin.isatty():
        return getpass.getpass(f"password for {user}: ")
    line = sys.stdin.readline()
    if not line:
        raise ConfigError("--user", "no password on standard input (one line)")
    return line.rstrip("\r\n")


IDLE_MAX = 600  # seconds: a pause longer than any front's idle timeout worth testing


def options_from(args: argparse.Namespace) -> Options:
    host, port = parse_url(args.url)
    size = parse_size(args.size) if args.size is not None else Options.size
    if not 0 <= args.idle <= IDLE_MAX:  # also nan and inf
        raise ConfigError("--idle", f"{args.idle:g}: give seconds up to {IDLE_MAX}, 0 to skip the idle check")
    if args.repository is not None and not _REPOSITORY.fullmatch(args.repository):
        raise ConfigError("--repository", f"{args.repository!r} is not a repository name")
    ca = _ca(args.ca)
    return Options(
        host,
        port,
        user=args.user,
        password=_password(args.user),
        ca=ca,
        size=size,
        idle=args.idle,
        repository=args.repository,
        etc=Options.etc_from_environment(),
    )


def _print(check: Check) -> None:
    print(render(check), flush=True)


def cmd_doctor(args: argparse.Namespace) -> int:
    options = options_from(args)
    if args.json:
        report = run(options)
        print(report.to_json())
    else:
        print(f"certproxy doctor {args.url.rstrip('/')}", flush=True)
        report = run(options, _print)
        print("the path works" if report.ok else "the path does not work: see the ✗ above")
    return EXIT_OK if report.ok else EXIT_FAIL


__all__ = ["DEFAULT_IDLE", "cmd_doctor", "options_from", "parse_size", "parse_url"]
