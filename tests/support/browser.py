"""Debian's Chromium, headless, driven over the DevTools protocol (aiohttp's
websocket client), for the UI path as a user's browser takes it.

Basic-auth prompts arrive as ``Fetch.authRequired`` events and are answered
with the user's credentials (or cancelled, for a visit without a login), so a
test can count how often the browser would have asked for a password, and for
which realm. The server's certificate is trusted by its public key
(``--ignore-certificate-errors-spki-list``), which accepts that key only,
unlike ``--ignore-certificate-errors``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization

FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-port=0", "--remote-allow-origins=*"]


def spki_hash(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@dataclass
class Visit:
    url: str  # where the page ended up
    challenges: list[dict[str, Any]] = field(default_factory=list)  # each auth prompt: origin, scheme, realm
    text: dict[str, str] = field(default_factory=dict)  # element id -> its text
    first_text: str = ""  # the text of the page opened first (``first``), once loaded


async def visit(url: str, *, user: str | None, password: str | None, trust_pem: bytes,
                resolve: dict[str, str], wait_for: str, done_prefixes: tuple[str, ...], read_ids: list[str],
                first: str | None = None, timeout: float = 60) -> Visit:
    """Open ``url``, log in when asked (``user`` None: cancel every prompt), and return
    once the text of element ``wait_for`` starts with one of ``done_prefixes``.
    ``first``: a page opened before, in the same browser (a login page)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        raise RuntimeError("chromium is not installed (scripts/install-system-deps.sh installs it)")
    # Chromium's helper processes outlive the main one for a moment and keep writing to
    # the profile: the whole process group is stopped before the profile is removed.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        rules = ", ".join(f"MAP {name} {addr}" for name, addr in resolve.items())
        proc = subprocess.Popen(
            [chromium, *FLAGS, f"--user-data-dir={profile}", f"--host-resolver-rules={rules}",
             f"--ignore-certificate-errors-spki-list={spki_hash(trust_pem)}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            return await asyncio.wait_for(
                _drive(Path(profile), url, user, password, wait_for, done_prefixes, read_ids, first),
                timeout)
        finally:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return  # no process of the group is left
            time.sleep(0.1)


async def _drive(profile: Path, url: str, user: str | None, password: str | None, wait_for: str,
                 done_prefixes: tuple[str, ...], read_ids: list[str], first: str | None) -> Visit:
    port_file = profile / "DevToolsActivePort"
    while not port_file.exists() or not port_file.read_text().strip():
        await asyncio.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
            pages = [t for t in await r.json() if t["type"] == "page"]
        async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            return await _session(ws, url, user, password, wait_for, done_prefixes, read_ids, first)


async def _session(ws: aiohttp.ClientWebSocketResponse, url: str, user: str | None, password: str | None,
                   wait_for: str, done_prefixes: tuple[str, ...], read_ids: list[str],
                   first: str | None) -> Visit:
    ids = itertools.count(1)
    pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
    result = Visit(url)

    async def call(method: str, **params: Any) -> dict[str, Any]:
        n = next(ids)
        reply = pending[n] = asyncio.get_running_loop().create_future()
        await ws.send_str(json.dumps({"id": n, "method": method, "params": params}))
        try:
            return await reply
        finally:
            pending.pop(n, None)

    async def events() -> None:
        async for msg in ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in pending:
                pending[data["id"]].set_result(data.get("result", data))
            elif data.get("method") == "Fetch.requestPaused":
                asyncio.ensure_future(call("Fetch.continueRequest", requestId=data["params"]["requestId"]))
            elif data.get("method") == "Fetch.authRequired":
                params = data["params"]
                result.challenges.append(params["authChallenge"])
                response = ({"response": "CancelAuth"} if user is None else
                            {"response": "ProvideCredentials", "username": user, "password": password})
                asyncio.ensure_future(call("Fetch.continueWithAuth", requestId=params["requestId"],
                                           authChallengeResponse=response))

    reader = asyncio.ensure_future(events())
    try:
        await call("Fetch.enable", handleAuthRequests=True, patterns=[{"urlPattern": "*"}])
        await call("Page.enable")
        if first is not None:
            await call("Page.navigate", url=first)
            while not await _loaded(call, first):
                await asyncio.sleep(0.2)
            result.first_text = await _body_text(call)
        await call("Page.navigate", url=url)
        while True:
            state = await _text(call, wait_for)
            if state.startswith(done_prefixes):
                break
            await asyncio.sleep(0.2)
        for element in [wait_for, *read_ids]:
            result.text[element] = await _text(call, element)
        answer = await call("Runtime.evaluate", expression="location.href", returnByValue=True)
        result.url = answer["result"]["value"]
        return result
    finally:
        reader.cancel()


async def _loaded(call: Any, url: str) -> bool:
    answer = await call("Runtime.evaluate", returnByValue=True,
                        expression="[location.href, document.readyState]")
    value = answer.get("result", {}).get("value")
    return value == [url, "complete"]


async def _body_text(call: Any) -> str:
    answer = await call("Runtime.evaluate", returnByValue=True,
                        expression="document.body ? document.body.innerText : ''")
    value = answer.get("result", {}).get("value", "")
    return value if isinstance(value, str) else ""


async def _text(call: Any, element: str) -> str:
    answer = await call("Runtime.evaluate", returnByValue=True,
                        expression=f"(e => e ? e.innerText : '')(document.getElementById({element!r}))")
    value = answer.get("result", {}).get("value", "")
    return value if isinstance(value, str) else ""
