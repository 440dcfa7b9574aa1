"""The ``certproxy`` command line.

Exit codes: 0 success; 1 unhealthy / operation failed; 2 bad configuration or
usage (one line on stderr naming the setting).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..certs import FileStore, PairError, utcnow
from ..certs.paths import name_for_domain
from .health import fetch_health
from .config import SETTINGS, ConfigError, Config, flag_name, load_config

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2

# Settings offered as flags on `serve` (all of them are also environment variables).
SERVE_FLAGS = ("store", "domains", "bind", "http_port", "routes", "log_format", "log_level",
               "shutdown_grace", "upstream_connect_timeout", "upstream_read_timeout")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="certproxy", description=(
        "TLS front for a self-hosted Docker registry and its web UI."))
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", type=Path, help="TOML file with the same keys as the environment")
    for name in SERVE_FLAGS:
        serve.add_argument(flag_name(name), dest=name, default=None, metavar="VALUE",
                           help=f"overrides CERTPROXY_{name.upper()}")

    status = sub.add_parser("status", help="show the certificates in the store")
    status.add_argument("--config", type=Path)
    status.add_argument("--store", dest="store", default=None)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--url", help="/healthz of the running certproxy, to show what it serves "
                                      "(default: http://127.0.0.1:$CERTPROXY_HTTP_PORT/healthz)")

    renew = sub.add_parser("renew", help="issue or renew the certificate now (when due, or --force)")
    renew.add_argument("--config", type=Path)
    ca = renew.add_mutually_exclusive_group()
    ca.add_argument("--staging", action="store_true", default=None,
                    help="Let's Encrypt's staging directory (untrusted certificates, high limits)")
    ca.add_argument("--directory", dest="acme_directory", metavar="URL", help="any ACME directory")
    renew.add_argument("--ca-bundle", dest="acme_ca_bundle", metavar="FILE",
                       help="CA file to trust for the ACME API (private CA, Pebble)")
    renew.add_argument("--domain", dest="domain_list", action="append", metavar="NAME",
                       help="a name for the certificate (repeat; the first names it)")
    renew.add_argument("--email", metavar="ADDR")
    renew.add_argument("--store")
    renew.add_argument("--http-port", dest="http_port", metavar="PORT")
    renew.add_argument("--force", action="store_true", help="order even if not due")

    htp = sub.add_parser("htpasswd", help="print a bcrypt htpasswd line for USER")
    htp.add_argument("user")
    htp.add_argument("--password-stdin", action="store_true",
                     help="read the password from standard input instead of prompting")
    htp.add_argument("--cost", type=int, default=12, help="bcrypt cost (default 12)")

    health = sub.add_parser("healthcheck", help="exit 0 when /healthz says healthy")
    health.add_argument("--url", help="default: http://127.0.0.1:$CERTPROXY_HTTP_PORT/healthz")
    health.add_argument("--timeout", type=float, default=5.0)
    return parser


def _config(args: argparse.Namespace, names: Sequence[str]) -> Config:
    flags: dict[str, Any] = {n: getattr(args, n, None) for n in names if n in SETTINGS}
    return load_config(os.environ, flags, getattr(args, "config", None))


def cmd_serve(args: argparse.Namespace) -> int:
    from .logs import setup_logging
    from .server import StartupError, run

    config = _config(args, SERVE_FLAGS)
    setup_logging(config.log_format, config.log_level)
    try:
        import uvloop  # type: ignore[import-not-found]
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


def _served(url: str) -> list[dict[str, object]] | None:
    """What a running certproxy serves, from its /healthz; None when none answers."""
    body = fetch_health(url)
    certs = body.get("certificates") if body else None
    return certs if isinstance(certs, list) else None


def cmd_status(args: argparse.Namespace) -> int:
    config = _config(args, ("store",))
    url = args.url or (f"http://127.0.0.1:{config.http_port}/healthz" if config.http_port else None)
    served = _served(url) if url else None
    store = FileStore(config.store)
    now = utcnow()
    rows: list[dict[str, object]] = []
    for kind, names, loader in (
        ("live", store.live_names(), store.load_live),
        ("bootstrap", _bootstrap_names(store), store.load_bootstrap),
    ):
        for name in names:
            try:
                rows.append(loader(name, now).summary(now))
            except PairError as exc:
                rows.append({"name": name, "kind": kind, "error": f"{exc.path}: {exc.reason}"})
    primary = name_for_domain(config.cert_domains[0])
    if args.json:
        print(json.dumps({"store": str(config.store), "primary": primary, "certificates": rows,
                          "served": served}, indent=2))
        return EXIT_OK
    _print_served(url, served)
    print(f"store {config.store}  (primary name: {primary})")
    if not rows:
        print("no certificates")
        return EXIT_OK
    header = ("NAME", "KIND", "EXPIRES", "DAYS", "ISSUER", "SERIAL", "DOMAINS")
    table = [header]
    for r in rows:
        if "error" in r:
            table.append((str(r["name"]), str(r["kind"]), "-", "-", "INVALID", "-", str(r["error"])))
        else:
            table.append((str(r["name"]), str(r["kind"]), str(r["not_after"])[:19],
                          f"{r['days_left']:.1f}", str(r["issuer"]), str(r["serial"])[:16],
                          ",".join(r["domains"])))  # type: ignore[arg-type]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return EXIT_OK


def _print_served(url: str | None, served: list[dict[str, object]] | None) -> None:
    if served is None:
        print(f"no running certproxy answered at {url}" if url else "no HTTP listener configured")
        return
    print(f"served by the running certproxy ({url}):")
    for c in served:
        print(f"  {c.get('name')}  {c.get('kind')}  serial {c.get('serial')}  "
              f"loaded at {c.get('loaded_at')}  expires {c.get('not_after')}")


def _bootstrap_names(store: FileStore) -> list[str]:
    try:
        return sorted(p.name for p in store.paths.bootstrap.iterdir() if p.is_dir()
                      and not p.name.startswith("."))
    except OSError:
        return []


def cmd_healthcheck(args: argparse.Namespace) -> int:
    url = args.url
    if not url:
        port = os.environ.get("CERTPROXY_HTTP_PORT", "80")
        url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as resp:  # noqa: S310
            body = json.loads(resp.read() or b"{}")
            print(f"{resp.status} {body.get('status', '?')}")
            return EXIT_OK if resp.status == 200 else EXIT_FAIL
    except urllib.error.HTTPError as exc:
        try:
            status = json.loads(exc.read() or b"{}").get("status", "?")
        except ValueError:
            status = "?"
        print(f"{exc.code} {status}", file=sys.stderr)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"unhealthy: {url}: {reason}", file=sys.stderr)
    return EXIT_FAIL


RENEW_FLAGS = ("staging", "acme_directory", "acme_ca_bundle", "domains", "email", "store",
               "http_port")


def renew_config(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    """The configuration `certproxy renew` runs with (flags over environment over file)."""
    if args.domain_list:
        args.domains = ",".join(args.domain_list)
    flags: dict[str, Any] = {n: getattr(args, n, None) for n in RENEW_FLAGS}
    if flags.get("staging"):
        flags["staging"] = "1"
        flags["acme_directory"] = ""  # --staging wins over a directory from the environment
    config = load_config(environ, flags, getattr(args, "config", None))
    if not config.domains:
        raise ConfigError("--domain", "name at least one domain (or set CERTPROXY_DOMAINS)")
    return config


def cmd_renew(args: argparse.Namespace) -> int:
    from .logs import setup_logging
    from .renew import renew

    config = renew_config(args, os.environ)
    setup_logging("text", "warning")
    # The run prints its own progress and one closing line; the manager's log would repeat it.
    logging.getLogger("certproxy.acme").setLevel(logging.CRITICAL)
    return asyncio.run(renew(config, args.force))


def cmd_htpasswd(args: argparse.Namespace) -> int:
    import getpass

    from .auth import HtpasswdError, make_entry

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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"serve": cmd_serve, "status": cmd_status, "healthcheck": cmd_healthcheck,
                "renew": cmd_renew, "htpasswd": cmd_htpasswd}
    try:
        return commands[args.command](args)
    except ConfigError as exc:
        print(f"certproxy: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
