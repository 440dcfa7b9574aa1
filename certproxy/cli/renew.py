"""``certproxy renew``: one issuance (or renewal) run for humans and cron.

It uses the same manager and the same choice of issuer (``make_issuer``) as
``certproxy serve``, so it honours the same lock, renewal policy and store;
when another issuer holds the lock, it waits on it for that one's outcome.
HTTP-01 needs someone answering on the HTTP port: if a certproxy already
answers there (sharing the store), it relies on it; otherwise it listens on
the port itself for the duration of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from ..acme_client import AcmeSettings
from ..acme_client.issuers import make_issuer
from ..acme_client.manager import CertManager
from ..certs import FileStore, PairError, StoreError, os_problem, utcnow
from ..proxy.client import Listener
from ..proxy.headers import Answer
from ..proxy.hostname import host_port
from ..proxy.routes import ControlRoute, Request
from ..service.checks import StartupError, check_ca_bundle, listen_error, port_owner
from ..service.config import Config, ConfigError, load_config
from ..service.plain import CHALLENGE_PREFIX, challenge_answer
from .health_client import get_health

RENEW_FLAGS = ("staging", "acme_directory", "acme_ca_bundle", "domains", "email", "store", "http_port")


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
    from ..service.logs import setup_logging

    config = renew_config(args, os.environ)
    setup_logging("text", "warning")
    # The run prints its own progress and one closing line; the manager's log would repeat it.
    logging.getLogger("certproxy.acme").setLevel(logging.CRITICAL)
    return asyncio.run(renew(config, args.force))


RACE_WAIT = 180.0  # seconds to wait for another issuer's outcome


async def _run(manager: CertManager, force: bool) -> tuple[str | None, bool]:
    """One issuance, or the outcome of the one another process sharing the store is
    running: the manager waits on the store's lock for it, then checks again, so never
    a second order for the same need. Returns (an error line or None, whether the
    certificate came from the other issuer)."""
    started = utcnow()
    await manager.maintain(force=force, fresh_since=started, lock_wait=RACE_WAIT)
    busy = manager.lock_busy
    if busy is not None:
        return f"{busy.holder} still holds {busy.path} after {RACE_WAIT:g} s", False
    issued = manager.status.last_success
    return None, manager.orders == 0 and issued is not None and issued >= started


def _certproxy_answers(port: int) -> bool:
    return get_health(f"http://127.0.0.1:{port}/healthz").is_certproxy


async def _challenge_server(store: FileStore, config: Config, port: int) -> Listener:
    async def answer(ex: Request) -> Answer:
        path = ex.target.decode("latin-1").partition("?")[0]
        token = path[len(CHALLENGE_PREFIX) :] if path.startswith(CHALLENGE_PREFIX) else ""
        return await challenge_answer(store, ex.method, token, "certproxy renew")

    listener = Listener(ControlRoute(port, answer), config.limits())
    await listener.start(config.bind, port, None)
    return listener


async def _store_problem(store: FileStore, config: Config) -> str | None:
    """Why this run cannot use the store or the CA bundle (one line), or None."""
    try:
        await asyncio.to_thread(store.ensure_layout)
        await asyncio.to_thread(check_ca_bundle, config.acme_ca_bundle)
    except StoreError as exc:
        return f"CERTPROXY_STORE: {exc}"
    except OSError as exc:
        return f"CERTPROXY_STORE: {os_problem(exc, config.store)}"
    except StartupError as exc:
        return str(exc)
    return None


def _dns_01_alone(settings: AcmeSettings, say: Callable[[str], None]) -> bool:
    """Says how dns-01 goes; False when its IP addresses take http-01 too (RFC 8738:
    dns-01 cannot prove an address), which the HTTP port then has to answer."""
    assert settings.dns is not None
    through = settings.dns.provider or f"{settings.dns.server}:{settings.dns.port}"
    say(f"dns-01: TXT records through {through}")
    if not settings.addresses:
        return True
    if settings.address_challenge == "tls-alpn-01":
        say("tls-alpn-01 for the addresses: the running certproxy sharing this store answers on port 443")
        return True
    say(f"http-01 for the addresses {', '.join(settings.addresses)}")
    return False


async def _answer_challenges(
    store: FileStore, config: Config, settings: AcmeSettings, say: Callable[[str], None]
) -> tuple[Listener | None, str | None]:
    """Says who answers the CA's challenges; for http-01 with nobody there, listens on the
    HTTP port for the run. Returns (that listener, or an error line when it cannot)."""
    port = config.http_port
    if config.local_ca:
        say(f"certificates from the local CA in {store.local_ca_folder}")
    elif config.challenge == "tls-alpn-01":
        say("tls-alpn-01: the running certproxy sharing this store answers the CA on its TLS port")
    elif config.challenge == "dns-01" and _dns_01_alone(settings, say):
        pass
    elif port is None:
        say("no HTTP port configured: relying on whoever answers http-01 for the store")
    elif await asyncio.to_thread(_certproxy_answers, port):
        say(f"a certproxy answers on :{port}: it serves the challenges from the store")
    else:
        try:
            server = await _challenge_server(store, config, port)
        except OSError as exc:
            owner = await asyncio.to_thread(port_owner, port)
            held = f" (held by {owner})" if owner else ""
            return None, (
                f"{listen_error(exc, '--http-port', config.bind, port)}{held}, and no "
                "certproxy sharing this store answers there to serve the challenges"
            )
        say(f"listening on {host_port(config.bind, port)} for http-01 challenges")
        return server, None
    return None, None


async def renew(config: Config, force: bool) -> int:
    def say(line: str) -> None:
        print(line, flush=True)

    settings = config.acme_settings()
    store = FileStore(config.store)
    problem = await _store_problem(store, config)
    if problem is not None:
        print(f"certproxy renew: {problem}", file=sys.stderr)
        return 2
    server, problem = await _answer_challenges(store, config, settings, say)
    if problem is not None:
        print(f"certproxy renew: {problem}", file=sys.stderr)
        return 1
    issuer = make_issuer(store, settings, in_child=False, progress=say)
    manager = CertManager(store, settings, issuer, progress=say)
    try:
        outcome, by_other = await _run(manager, force)
    finally:
        if server is not None:
            server.stop_accepting()
            await server.drain(1.0)
    if outcome is not None:
        print(f"certproxy renew: {outcome}", file=sys.stderr)
        return 1
    return await _report(store, settings, manager, by_other, say)


async def _report(
    store: FileStore, settings: AcmeSettings, manager: CertManager, by_other: bool, say: Callable[[str], None]
) -> int:
    """The run's closing lines from what the store holds now; the exit code."""
    status = manager.status
    try:
        pair = await asyncio.to_thread(store.load_live, settings.name)
    except PairError as exc:
        reason = status.last_error or exc.reason
        print(
            f"certproxy renew: no valid certificate for {', '.join(settings.domains)}: {reason}",
            file=sys.stderr,
        )
        return 1
    if status.last_error:
        print(f"certproxy renew: {status.last_error}", file=sys.stderr)
        return 1
    if not all(pair.covers(d) for d in settings.domains):
        print(
            f"certproxy renew: live/{settings.name} does not cover all of {', '.join(settings.domains)}",
            file=sys.stderr,
        )
        return 1
    if by_other:
        say(f"{settings.name}: another issuer sharing the store ordered it meanwhile")
    elif manager.orders == 0:
        say(
            f"{settings.name}: valid until {pair.not_after.isoformat(timespec='seconds')}, "
            f"renewal due {status.next_renewal.isoformat(timespec='seconds') if status.next_renewal else '?'}"
            f"; nothing to do (--force orders anyway)"
        )
    say(
        f"{settings.name}: serial {pair.serial}, {pair.days_left(utcnow()):.1f} days left, "
        f"issuer {pair.issuer}"
    )
    return 0
