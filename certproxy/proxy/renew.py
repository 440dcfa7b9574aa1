"""``certproxy renew``: one issuance (or renewal) run for humans and cron.

It uses the same manager as ``certproxy serve``, so it honours the same
lock, renewal policy and store. HTTP-01 needs someone answering on the HTTP
port: if a certproxy already answers there (sharing the store), it relies on
it; otherwise it listens on the port itself for the duration of the run.
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

from ..acme_client import AcmeIssuer
from ..acme_client.manager import CertManager
from ..certs import FileStore, PairError, StoreError, is_valid_token, utcnow
from .config import Config
from .health import fetch_health
from .plain import CHALLENGE_PREFIX


def _certproxy_answers(port: int) -> bool:
    return fetch_health(f"http://127.0.0.1:{port}/healthz") is not None


async def _challenge_server(store: FileStore, bind: str, port: int) -> web.BaseRunner:
    async def answer(request: web.BaseRequest) -> web.Response:
        path = request.raw_path.partition("?")[0]
        token = path[len(CHALLENGE_PREFIX):] if path.startswith(CHALLENGE_PREFIX) else ""
        data = await asyncio.to_thread(store.read_challenge, token) if is_valid_token(token) else None
        if data is None:
            return web.Response(status=404, text="certproxy renew: no such challenge\n")
        return web.Response(body=data, content_type="application/octet-stream")

    runner = web.ServerRunner(web.Server(answer, access_log=None), handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, bind, port).start()
    return runner


async def renew(config: Config, force: bool) -> int:
    def say(line: str) -> None:
        print(line, flush=True)

    settings = config.acme_settings()
    store = FileStore(config.store)
    try:
        await asyncio.to_thread(store.ensure_layout)
    except StoreError as exc:
        print(f"certproxy renew: CERTPROXY_STORE: {exc}", file=sys.stderr)
        return 2
    runner = None
    port = config.http_port
    if port is None:
        say("no HTTP port configured: relying on whoever answers http-01 for the store")
    elif await asyncio.to_thread(_certproxy_answers, port):
        say(f"a certproxy answers on :{port}: it serves the challenges from the store")
    else:
        try:
            runner = await _challenge_server(store, config.bind, port)
        except OSError as exc:
            print(f"certproxy renew: cannot listen on {config.bind}:{port} for http-01: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return 1
        say(f"listening on {config.bind}:{port} for http-01 challenges")
    manager = CertManager(store, settings, AcmeIssuer(store, settings, progress=say), progress=say)
    try:
        await manager.maintain(force=force)
    finally:
        if runner is not None:
            await runner.cleanup()
    status = manager.status
    try:
        pair = await asyncio.to_thread(store.load_live, settings.name)
    except PairError as exc:
        reason = status.last_error or exc.reason
        print(f"certproxy renew: no valid certificate for {', '.join(settings.domains)}: {reason}",
              file=sys.stderr)
        return 1
    if status.last_error:
        print(f"certproxy renew: {status.last_error}", file=sys.stderr)
        return 1
    if not all(pair.covers(d) for d in settings.domains):
        print(f"certproxy renew: live/{settings.name} does not cover all of "
              f"{', '.join(settings.domains)}", file=sys.stderr)
        return 1
    if manager.orders == 0:
        say(f"{settings.name}: valid until {pair.not_after.isoformat(timespec='seconds')}, "
            f"renewal due {status.next_renewal.isoformat(timespec='seconds') if status.next_renewal else '?'}"
            f"; nothing to do (--force orders anyway)")
    say(f"{settings.name}: serial {pair.serial}, {pair.days_left(utcnow()):.1f} days left, "
        f"issuer {pair.issuer}")
    return 0
